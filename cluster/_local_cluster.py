"""A development cluster on one machine: a Ray head and workers, every socket on loopback.

``cantata cluster up`` starts a *supervisor*, one detached Python process that runs the head
and the workers with :class:`ray.cluster_utils.Cluster` and stops them when it is told to. It
records what it started in a state directory (default ``~/.cantata/cluster``, or
``$CANTATA_CLUSTER_DIR``)::

    lock            held while a command changes the cluster
    auth_token      the cluster's own Ray token (0600), new at every ``up``
    supervisor.json the supervisor's pid, process group and start time
    cluster.json    its address and nodes, written once every node has joined
    failure.txt     why it failed to start, when it did
    cluster.log     the supervisor's output
    ray/            Ray's sessions and logs (or under /tmp/cantata-…, when this path is long)

Why not ``ray start``: Ray's C++ servers (GCS, raylet, core workers, dashboard agent) listen
on 127.0.0.1 only when the node's address is exactly ``127.0.0.1``, and on every interface
otherwise, 127.0.0.2 included. ``ray start`` rewrites ``127.0.0.1`` to the machine's outward
address for a joining node, and refuses to start one with the switch that stops the
rewrite. Nodes started here all have the address ``127.0.0.1`` (Ray runs several raylets on
one address), with ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``; the autoscaler's and the
dashboard's metrics servers bind 127.0.0.1 for the same reason.

Nothing here touches other Ray instances: no ``ray stop``; ``down`` signals the supervisor
and then only processes it can prove are the supervisor's (its descendants and its process
group, each checked by start time, so a reused pid is never signalled). Ray's temporary
directory is the cluster's own, so ``/tmp/ray/ray_current_cluster`` (what ``address="auto"``
finds) is left alone. Linux only: processes are read from ``/proc``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from cantata.agents import RuntimeFailure

__all__ = [
    "STATE_DIR_ENV",
    "ClusterSpec",
    "ClusterState",
    "NodeInfo",
    "Supervisor",
    "client_env",
    "default_state_dir",
    "list_nodes",
    "read_state",
    "start",
    "stop",
]

STATE_DIR_ENV = "CANTATA_CLUSTER_DIR"
LOOPBACK = "127.0.0.1"
# An AF_UNIX path holds at most 107 bytes; Ray's longest is
# RAY_TMPDIR + "/ray/session_<date>_<time>_<micros>_<pid>/sockets/plasma_store.<n>".
_MAX_RAY_TMPDIR = 32
_POLL_S = 0.2
_SETTLE_S = 10.0  # how long `down` waits for the last processes to exit after a SIGKILL


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ClusterSpec(_Model):
    """What ``cantata cluster up`` asked for."""

    nodes: int = Field(default=3, ge=1)
    cpus_per_node: int = Field(default=1, ge=1)
    object_store_mib: int = Field(default=150, ge=75)
    dashboard: bool = False
    dashboard_port: int = Field(default=0, ge=0, le=65535)
    port: int | None = Field(default=None, ge=1, le=65535)
    timeout_s: float = Field(default=120.0, gt=0)


class Supervisor(_Model):
    """The detached process that runs the cluster, recorded so ``down`` finds exactly it."""

    pid: int
    pgid: int
    start_ticks: int  # /proc/<pid>/stat field 22: tells this process from a later one
    ray_tmpdir: str
    token_path: str
    spec: ClusterSpec
    started_at: datetime


class ClusterState(_Model):
    """A cluster whose every node has joined (``cluster.json``)."""

    address: str
    nodes: int
    dashboard_url: str | None
    session_dir: str
    ready_at: datetime


class NodeInfo(_Model):
    """One node as the cluster's GCS reports it, with the ports it listens on."""

    node_id: str
    name: str
    address: str
    alive: bool
    head: bool
    cpus: float
    ports: dict[str, int]


def default_state_dir() -> Path:
    """``$CANTATA_CLUSTER_DIR``, else ``~/.cantata/cluster``."""
    configured = os.environ.get(STATE_DIR_ENV)
    return Path(configured).expanduser() if configured else Path.home() / ".cantata" / "cluster"


def client_env(state_dir: Path, address: str) -> dict[str, str]:
    """What a driver (``cantata deploy``, ``ray.init``, ``ray status``) needs to join.

    Ray sends its token only in token mode, and rewrites ``127.0.0.1`` in an address to the
    machine's outward one unless ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (Cantata's own
    commands do both by themselves).
    """
    return {
        "RAY_ADDRESS": address,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(_token_path(state_dir)),
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    }


# -- reading the state --------------------------------------------------------------------------


def read_state(state_dir: Path) -> tuple[Supervisor | None, ClusterState | None, bool]:
    """The recorded supervisor, the ready cluster, and whether the supervisor still runs."""
    supervisor = _read_model(state_dir / "supervisor.json", Supervisor)
    ready = _read_model(state_dir / "cluster.json", ClusterState)
    running = supervisor is not None and _alive(supervisor.pid, supervisor.start_ticks)
    return supervisor, ready, running


def list_nodes(state_dir: Path, address: str) -> list[NodeInfo]:
    """Ask the cluster's GCS for its nodes, authenticating with the cluster's token.

    Sets this process's Ray token settings to the cluster's (meant for a CLI process).
    """
    from ray._private.authentication.authentication_token_setup import (  # noqa: PLC0415
        _enable_token_auth,
    )
    from ray._private.state import GlobalState  # noqa: PLC0415
    from ray._raylet import (  # type: ignore[attr-defined]  # noqa: PLC0415
        AuthenticationTokenLoader,
        GcsClientOptions,
    )

    os.environ.pop("RAY_AUTH_TOKEN", None)  # it would win over the token file
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(_token_path(state_dir))
    _enable_token_auth()
    AuthenticationTokenLoader.instance().reset_cache()
    state = GlobalState()  # type: ignore[no-untyped-call]
    try:
        state._initialize_global_state(
            GcsClientOptions.create(
                address, None, allow_cluster_id_nil=True, fetch_cluster_id_if_nil=False
            )
        )
        table: list[dict[str, Any]] = state.node_table()  # type: ignore[no-untyped-call]
    except Exception as exc:
        raise RuntimeFailure(f"cannot read the nodes of the cluster at {address}: {exc}") from None
    finally:
        state.disconnect()  # type: ignore[no-untyped-call]
    port_keys = {
        "node_manager": "NodeManagerPort",
        "object_manager": "ObjectManagerPort",
        "metrics_export": "MetricsExportPort",
        "dashboard_agent_grpc": "MetricsAgentPort",
        "dashboard_agent_http": "DashboardAgentListenPort",
        "runtime_env_agent": "RuntimeEnvAgentPort",
    }
    nodes = [
        NodeInfo(
            node_id=node["NodeID"],
            name=node.get("NodeName") or node["NodeManagerAddress"],
            address=node["NodeManagerAddress"],
            alive=bool(node["Alive"]),
            head="node:__internal_head__" in node.get("Resources", {}),
            cpus=float(node.get("Resources", {}).get("CPU", 0.0)),
            ports={key: int(node[field]) for key, field in port_keys.items() if node.get(field)},
        )
        for node in table
    ]
    return sorted(nodes, key=lambda n: (not n.head, not n.alive, n.name))


# -- up ----------------------------------------------------------------------------------------


def start(state_dir: Path, spec: ClusterSpec) -> tuple[Supervisor, ClusterState]:
    """Start a cluster and wait until every node has joined; raise :class:`RuntimeFailure` if not.

    Refuses when a cluster already runs from ``state_dir``. On a failure or a timeout the
    supervisor and everything it started are stopped before the error is raised.
    """
    _require_linux()
    _prepare_private_dir(state_dir)
    with _locked(state_dir):
        supervisor, ready, running = read_state(state_dir)
        if running and supervisor is not None:
            where = f" at {ready.address}" if ready else " (still starting)"
            raise RuntimeFailure(
                f"a local cluster already runs from {state_dir}{where}, supervisor pid"
                f" {supervisor.pid}: stop it with `cantata cluster down` first"
            )
        if supervisor is not None:  # a stale record: sweep whatever it left
            _terminate(supervisor, grace_s=0)
        _clear(state_dir)
        ray_tmpdir = _ray_tmpdir(state_dir)
        token = _token_path(state_dir)
        _write_token(token)
        process = _spawn(state_dir, spec, ray_tmpdir, token)
        supervisor = Supervisor(
            pid=process.pid,
            pgid=process.pid,  # a new session: its leader's pid is the group's id
            start_ticks=_start_ticks(process.pid) or 0,
            ray_tmpdir=str(ray_tmpdir),
            token_path=str(token),
            spec=spec,
            started_at=datetime.now(UTC),
        )
        _write_json(state_dir / "supervisor.json", supervisor)
        try:
            ready = _wait_until_ready(state_dir, process, spec)
        except BaseException:
            _terminate(supervisor, grace_s=30)
            _clear(state_dir, keep_failure=True)
            raise
        return supervisor, ready


def _spawn(
    state_dir: Path, spec: ClusterSpec, ray_tmpdir: Path, token: Path
) -> subprocess.Popen[bytes]:
    env = {
        k: v
        for k, v in os.environ.items()
        # RAY_AUTH_TOKEN would win over the cluster's token file; the others point elsewhere.
        if k not in {"RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_MODE", "RAY_TMPDIR"}
    }
    env |= {
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token),
        # Keeps 127.0.0.1 as the nodes' address (Ray rewrites it to the outward one otherwise).
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_TMPDIR": str(ray_tmpdir),
        "RAY_USAGE_STATS_ENABLED": "0",  # no reports to the internet
        # Fixed by default (44217, 44227): free ones, so two clusters on a machine do not clash.
        "AUTOSCALER_METRIC_PORT": str(_free_port()),
        "DASHBOARD_METRIC_PORT": str(_free_port()),
    }
    code = "from cantata.cluster._local_cluster import _supervise; _supervise()"
    with (state_dir / "cluster.log").open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-c", code, str(state_dir), spec.model_dump_json()],
            cwd=state_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group; no signals from this terminal
        )


def _wait_until_ready(
    state_dir: Path, process: subprocess.Popen[bytes], spec: ClusterSpec
) -> ClusterState:
    # The supervisor enforces spec.timeout_s itself and says what failed; this is a backstop.
    give_up = time.monotonic() + spec.timeout_s + 30
    while True:
        ready = _read_model(state_dir / "cluster.json", ClusterState)
        if ready is not None:
            return ready
        code = process.poll()
        if code is not None:
            raise RuntimeFailure(_failure_message(state_dir, f"exited with status {code}"))
        if time.monotonic() > give_up:
            raise RuntimeFailure(
                _failure_message(state_dir, f"did not start {spec.nodes} nodes in time")
            )
        time.sleep(_POLL_S)


def _failure_message(state_dir: Path, what: str) -> str:
    failure = state_dir / "failure.txt"
    reason = failure.read_text(encoding="utf-8").strip() if failure.exists() else ""
    log = state_dir / "cluster.log"
    return (
        f"the local cluster did not start: its supervisor {what}"
        + (f": {reason}" if reason else "")
        + f" (log: {log})"
    )


# -- down --------------------------------------------------------------------------------------


def stop(state_dir: Path, grace_s: float = 30.0) -> int | None:
    """Stop the cluster recorded in ``state_dir``; None when none is recorded.

    SIGTERM to the supervisor, which stops its nodes; after ``grace_s`` seconds SIGKILL to
    whatever of the supervisor's processes is left. Returns how many processes were running.
    The token file and the records are removed; the logs stay.
    """
    _require_linux()
    if not state_dir.is_dir():
        return None
    with _locked(state_dir):
        supervisor = _read_model(state_dir / "supervisor.json", Supervisor)
        if supervisor is None:
            return None
        stopped = _terminate(supervisor, grace_s=grace_s)
        _clear(state_dir)
        return stopped


def _terminate(supervisor: Supervisor, grace_s: float) -> int:
    found = _processes_of(supervisor)
    if _alive(supervisor.pid, supervisor.start_ticks):
        with contextlib.suppress(ProcessLookupError):
            os.kill(supervisor.pid, signal.SIGTERM)
    give_up = time.monotonic() + grace_s
    while time.monotonic() < give_up and any(_alive(p, t) for p, t in found.items()):
        time.sleep(_POLL_S)
    # Anything it started since, or that outlived it (a worker whose raylet died first).
    left = {p: t for p, t in (found | _processes_of(supervisor)).items() if _alive(p, t)}
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    settle = time.monotonic() + _SETTLE_S
    while time.monotonic() < settle and any(_alive(p, t) for p, t in left.items()):
        time.sleep(_POLL_S)
    return len(found)


# -- the supervisor ------------------------------------------------------------------------------


class _Stopping(BaseException):
    """Raised in the supervisor by a signal that arrives while the nodes are starting."""


def _supervise() -> None:
    """The supervisor's main: start the nodes, record them, wait for a signal, stop them."""
    state_dir, spec = Path(sys.argv[1]), ClusterSpec.model_validate_json(sys.argv[2])
    phase = "starting"
    stop_requested = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        if phase == "starting":
            raise _Stopping
        stop_requested.set()

    def handle_signals() -> None:
        # Each Ray node installs a SIGTERM handler of its own (stop that node, exit): put
        # ours back after every node, so one signal stops them all.
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, on_signal)

    handle_signals()
    from ray.cluster_utils import Cluster  # noqa: PLC0415 - after the environment is set

    # shutdown_at_exit: the nodes' processes die with the supervisor, even a SIGKILLed one.
    cluster = Cluster(shutdown_at_exit=True)
    try:
        ready = _start_nodes(cluster, spec, handle_signals)
        _write_json(state_dir / "cluster.json", ready)
        print(f"ready: {spec.nodes} nodes at {ready.address}", flush=True)
        phase = "serving"
        stop_requested.wait()
    except _Stopping:
        print("stopped while starting", flush=True)
    except Exception as exc:
        (state_dir / "failure.txt").write_text(f"{type(exc).__name__}: {exc}\n", encoding="utf-8")
        raise
    finally:
        phase = "stopping"
        print("stopping the nodes", flush=True)
        cluster.shutdown()  # type: ignore[no-untyped-call]
        print("stopped", flush=True)


def _start_nodes(cluster: Any, spec: ClusterSpec, after_each: Callable[[], None]) -> ClusterState:
    common: dict[str, Any] = {
        "node_ip_address": LOOPBACK,
        "num_cpus": spec.cpus_per_node,
        "object_store_memory": spec.object_store_mib * 2**20,
    }
    head: dict[str, Any] = {
        **common,
        "node_name": "head",
        "include_dashboard": spec.dashboard,
        # Ray's default, 52365, would clash with any other Ray on this machine.
        "dashboard_agent_listen_port": None,
        # Ray's Client server (ray://) is not started: one listener fewer.
    }
    if spec.dashboard:
        head |= {"dashboard_host": LOOPBACK, "dashboard_port": spec.dashboard_port}
    if spec.port is not None:
        head["gcs_server_port"] = spec.port
    give_up = time.monotonic() + spec.timeout_s
    head_node = cluster.add_node(wait=False, **head)
    after_each()
    for index in range(1, spec.nodes):
        cluster.add_node(wait=False, node_name=f"worker-{index}", **common)
        after_each()
    try:
        cluster.wait_for_nodes(timeout=max(1.0, give_up - time.monotonic()))
    except TimeoutError:
        raise TimeoutError(
            f"the {spec.nodes} nodes did not all join within {spec.timeout_s:g} s: raise"
            " --timeout, or see why in Ray's logs"
        ) from None
    dashboard = head_node.webui_url if spec.dashboard else None
    return ClusterState(
        address=cluster.address,
        nodes=spec.nodes,
        dashboard_url=f"http://{dashboard}" if dashboard else None,
        session_dir=head_node.get_session_dir_path(),
        ready_at=datetime.now(UTC),
    )


# -- files and processes ---------------------------------------------------------------------------


def _token_path(state_dir: Path) -> Path:
    return state_dir / "auth_token"


def _write_token(path: Path) -> None:
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as stream:
        stream.write(secrets.token_hex(32) + "\n")
    os.chmod(path, 0o600)  # whatever the umask


def _prepare_private_dir(path: Path) -> None:
    """Create ``path`` (0700) or check that an existing one is this user's and private."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = path.stat()
    except OSError as exc:
        raise RuntimeFailure(f"cannot use {path} for the cluster's state: {exc}") from None
    if info.st_uid != os.getuid():
        raise RuntimeFailure(f"{path} belongs to another user; give a directory of your own")
    if info.st_mode & 0o077:
        raise RuntimeFailure(
            f"{path} is open to other users (mode {info.st_mode & 0o777:o}); it will hold the"
            f" cluster's token and logs: `chmod 700 {path}` or give another --state-dir"
        )


def _ray_tmpdir(state_dir: Path) -> Path:
    """Where Ray keeps sessions, logs and sockets: the state directory, unless its path is long."""
    if len(str(state_dir)) <= _MAX_RAY_TMPDIR:
        return state_dir
    digest = hashlib.sha256(str(state_dir).encode()).hexdigest()[:12]
    short = Path("/tmp") / f"cantata-{digest}"  # private (0700): checked below
    _prepare_private_dir(short)
    return short


def _clear(state_dir: Path, *, keep_failure: bool = False) -> None:
    names = ["supervisor.json", "cluster.json", "auth_token"]
    if not keep_failure:
        names.append("failure.txt")
    for name in names:
        (state_dir / name).unlink(missing_ok=True)


@contextlib.contextmanager
def _locked(state_dir: Path) -> Iterator[None]:
    with (state_dir / "lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _write_json(path: Path, model: BaseModel) -> None:
    partial = path.with_suffix(".partial")
    partial.write_text(model.model_dump_json(indent=2), encoding="utf-8")
    partial.replace(path)  # readers see the whole file or none


_M = TypeVar("_M", bound=BaseModel)


def _read_model(path: Path, kind: type[_M]) -> _M | None:
    try:
        return kind.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise RuntimeFailure(
            f"{path} is not a state file this version understands: {exc}"
        ) from None


def _require_linux() -> None:
    if not sys.platform.startswith("linux"):
        raise RuntimeFailure("`cantata cluster` runs on Linux; elsewhere use `ray start`")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def _stat(pid: int) -> tuple[str, int, int, int] | None:
    """State, parent pid, process group and start time (clock ticks) from /proc, or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) ": comm may hold spaces
    return fields[0], int(fields[1]), int(fields[2]), int(fields[19])


def _start_ticks(pid: int) -> int | None:
    stat = _stat(pid)
    return stat[3] if stat else None


def _alive(pid: int, start_ticks: int) -> bool:
    """Whether ``pid`` is still the process that started at ``start_ticks`` (zombies are not)."""
    stat = _stat(pid)
    return stat is not None and stat[0] not in {"Z", "X"} and stat[3] == start_ticks


def _processes_of(supervisor: Supervisor) -> dict[int, int]:
    """pid -> start ticks of the supervisor, its descendants and its process group's members.

    Ray's workers make process groups of their own, so descendants are followed too. The
    group is taken as the supervisor's unless its id now names a different, younger process.
    """
    table: dict[int, tuple[str, int, int, int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) is not None:
            table[int(entry.name)] = stat
    ours: dict[int, int] = {}
    if _alive(supervisor.pid, supervisor.start_ticks):
        ours[supervisor.pid] = supervisor.start_ticks
    leader = table.get(supervisor.pgid)
    group_is_ours = leader is None or leader[3] == supervisor.start_ticks
    if group_is_ours:
        ours |= {pid: s[3] for pid, s in table.items() if s[2] == supervisor.pgid}
    children: dict[int, list[int]] = {}
    for pid, stat in table.items():
        children.setdefault(stat[1], []).append(pid)
    pending = list(ours)
    while pending:
        for child in children.get(pending.pop(), []):
            if child not in ours:
                ours[child] = table[child][3]
                pending.append(child)
    return {pid: ticks for pid, ticks in ours.items() if table[pid][0] not in {"Z", "X"}}
