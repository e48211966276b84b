"""``cantata cluster up | status | down``, and what listens while Cantata runs: loopback only.

Each check lists the listening TCP sockets of a process tree (``/proc/net/tcp``, ``tcp6`` and
each process's file descriptors, as ``ss -ltnp`` does) while the thing runs: a local
three-node cluster, bare and with a deployment on it, and an embedded ``cantata run`` held
in the middle of its request by a model server that answers only when told to.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.http_server import Reply, ScriptedServer

pytestmark = pytest.mark.ray

ROOT = Path(__file__).resolve().parents[2]
CANTATA = Path(sys.executable).with_name("cantata")
# Settings of the machine's own Ray or of the test session that must not leak into the CLI.
UNWANTED_ENV = {
    "RAY_ADDRESS",
    "RAY_AUTH_MODE",
    "RAY_AUTH_TOKEN",
    "RAY_AUTH_TOKEN_PATH",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER",
    "CANTATA_CLUSTER_DIR",
}
COMPLETION = {
    "id": "chatcmpl-1",
    "model": "echo-1",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "hello from loopback"},
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 3, "completion_tokens": 3},
}
# A hang guard only: every wait below ends as soon as its condition holds.
HANG_GUARD_S = 300


def cantata(
    *args: str, env: dict[str, str] | None = None, timeout: float = HANG_GUARD_S
) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k not in UNWANTED_ENV} | (env or {})
    return subprocess.run(
        [str(CANTATA), *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
        env=environment, stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip


def json_of(done: subprocess.CompletedProcess[str]) -> Any:
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    return json.loads(done.stdout)


def echo_topology(path: Path, base_url: str) -> Path:
    """A one-model topology whose model is an OpenAI-style server on loopback."""
    path.write_text(
        "pattern: single\nname: echo\n"
        "model:\n  name: echo\n  version: '1'\n"
        f"  backend: {{type: openai, base_url: '{base_url}', model: echo-1}}\n"
        "  resources: {num_cpus: 0.25}\n",
        encoding="utf-8",
    )
    return path


# -- processes and their sockets ---------------------------------------------------------------


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time) of ``pid``, or None when it is gone (or a zombie, which holds
    no sockets and only waits for its parent to reap it)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return None if fields[0] in {"Z", "X"} else (int(fields[1]), int(fields[19]))


def process_tree(root: int) -> dict[int, int]:
    """pid -> start time of ``root`` and every descendant alive now."""
    table = {
        int(entry.name): stat
        for entry in Path("/proc").iterdir()
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) is not None
    }
    tree = {root: table[root][1]} if root in table else {}
    grew = True
    while grew:
        grew = False
        for pid, (parent, started) in table.items():
            if parent in tree and pid not in tree:
                tree[pid] = started
                grew = True
    return tree


def still_running(tree: dict[int, int]) -> set[int]:
    """The processes of ``tree`` that still run (the same pid with the same start time)."""
    return {pid for pid, started in tree.items() if (stat := _stat(pid)) and stat[1] == started}


def command_of(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    return ""


def _address(hex_address: str) -> str:
    raw = bytes.fromhex(hex_address)
    # The kernel prints each 32-bit word in host (little-endian) order.
    address = ipaddress.ip_address(b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4)))
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return f"::ffff:{address.ipv4_mapped}"  # an IPv6 socket on 127.0.0.1, as gRPC listens
    return str(address)


def _listening_inodes() -> dict[int, tuple[str, int]]:
    """Socket inode -> (address, port) of every listening TCP socket (state 0A)."""
    found = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text(encoding="ascii").splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A":
                continue
            host, port = fields[1].split(":")
            found[int(fields[9])] = (_address(host), int(port, 16))
    return found


@dataclass(frozen=True)
class Listener:
    address: str
    port: int
    pid: int
    command: str

    @property
    def on_loopback(self) -> bool:
        return ipaddress.ip_address(self.address.removeprefix("::ffff:")).is_loopback


def listeners(pids: set[int]) -> list[Listener]:
    """Every listening TCP socket that one of ``pids`` holds."""
    listening = _listening_inodes()
    found = []
    for pid in sorted(pids):
        with contextlib.suppress(OSError):  # a process that exits meanwhile holds nothing
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    target = os.readlink(fd)
                    if target.startswith("socket:["):
                        inode = int(target[len("socket:[") : -1])
                        if inode in listening:
                            address, port = listening[inode]
                            found.append(Listener(address, port, pid, command_of(pid)))
    return found


def assert_loopback_only(found: list[Listener]) -> None:
    assert found, "found no listening sockets: the check saw nothing"
    exposed = [listener for listener in found if not listener.on_loopback]
    assert exposed == [], "\n".join(map(str, exposed))


def kill_tree(tree: dict[int, int]) -> None:
    """SIGKILL what is left of ``tree`` (pids checked by start time); a last resort."""
    for pid in still_running(tree):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


# -- the local cluster -------------------------------------------------------------------------


@dataclass
class LocalCluster:
    state_dir: Path
    address: str
    env: dict[str, str]
    supervisor: int
    dashboard_url: str | None
    status: dict[str, Any]

    def tree(self) -> dict[int, int]:
        return process_tree(self.supervisor)


@contextlib.contextmanager
def cluster_up(state_dir: Path, nodes: int, *flags: str) -> Iterator[LocalCluster]:
    """``cantata cluster up --nodes N`` from ``state_dir``; always brought down again, and
    whatever its supervisor started killed if `down` left anything."""
    option = ["--state-dir", str(state_dir)]
    seen: dict[int, int] = {}
    tmpdirs = {state_dir}
    try:
        started = json_of(
            cantata("cluster", "up", "--nodes", str(nodes), *flags, *option, "--json")
        )
        tmpdirs.add(Path(started["ray_tmpdir"]))
        seen |= process_tree(started["supervisor_pid"])
        status = json_of(cantata("cluster", "status", *option, "--json"))
        yield LocalCluster(
            state_dir,
            started["address"],
            started["env"],
            started["supervisor_pid"],
            started["dashboard_url"],
            status,
        )
    finally:
        with contextlib.suppress(OSError, ValueError, KeyError):  # `up` was interrupted
            recorded = json.loads((state_dir / "supervisor.json").read_text(encoding="utf-8"))
            seen |= process_tree(recorded["pid"])
            tmpdirs.add(Path(recorded["ray_tmpdir"]))
        down = cantata("cluster", "down", *option)
        kill_tree(seen)  # nothing, unless `down` failed
        for tmpdir in tmpdirs - {state_dir}:  # Ray's directory under /tmp, for a long path
            shutil.rmtree(tmpdir, ignore_errors=True)
        assert down.returncode == 0, down.stderr


@pytest.fixture(scope="module")
def local_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A three-node local cluster, dashboard on, for the tests that read it or deploy to it."""
    state_dir = tmp_path_factory.mktemp("local-cluster") / "state"
    with cluster_up(state_dir, 3, "--dashboard") as cluster:
        yield cluster


def test_cluster_up_starts_three_loopback_nodes_with_a_private_token(local_cluster):
    status = local_cluster.status
    assert status["state"] == "running"
    assert status["alive"] == 3
    nodes = status["nodes"]
    assert [node["name"] for node in nodes] == ["head", "worker-1", "worker-2"]
    assert [node["head"] for node in nodes] == [True, False, False]
    assert all(node["alive"] and node["address"] == "127.0.0.1" for node in nodes)
    host, port = local_cluster.address.rsplit(":", 1)
    assert host == "127.0.0.1"
    assert local_cluster.env == {
        "RAY_ADDRESS": local_cluster.address,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(local_cluster.state_dir / "auth_token"),
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    }
    token = local_cluster.state_dir / "auth_token"
    assert token.stat().st_mode & 0o777 == 0o600
    assert local_cluster.state_dir.stat().st_mode & 0o777 == 0o700
    assert len(token.read_text(encoding="utf-8").strip()) == 64

    found = listeners(set(local_cluster.tree()))
    assert_loopback_only(found)
    # Every port Ray reports for its nodes was among them: the check covered what matters.
    ports = {(listener.address, listener.port) for listener in found}
    ports |= {(address.removeprefix("::ffff:"), port) for address, port in ports}
    assert ("127.0.0.1", int(port)) in ports  # the GCS
    dashboard = httpx.URL(local_cluster.dashboard_url)
    assert (dashboard.host, dashboard.port) in ports
    for node in nodes:
        assert set(node["ports"]) == {
            "node_manager", "object_manager", "metrics_export", "dashboard_agent_grpc",
            "dashboard_agent_http", "runtime_env_agent",
        }  # fmt: skip
        for name, number in node["ports"].items():
            assert ("127.0.0.1", number) in ports, (node["name"], name, number)

    # The dashboard answers only with the cluster's token.
    version = httpx.URL(local_cluster.dashboard_url).join("/api/version")
    assert httpx.get(version, trust_env=False, timeout=30).status_code == 401
    bearer = {"Authorization": f"Bearer {token.read_text(encoding='utf-8').strip()}"}
    assert httpx.get(version, headers=bearer, trust_env=False, timeout=30).status_code == 200

    again = cantata("cluster", "up", "--state-dir", str(local_cluster.state_dir))
    assert again.returncode == 1
    assert "already runs" in again.stderr
    assert local_cluster.address in " ".join(again.stderr.split())


def test_a_deployment_on_the_local_cluster_answers_and_listens_on_loopback(local_cluster, tmp_path):
    reply = Reply(json=COMPLETION)
    with ScriptedServer(reply) as server:
        topology = echo_topology(tmp_path / "echo.yaml", server.url)
        env = local_cluster.env
        deployed = cantata("deploy", str(topology), "--name", "echo", "--json", env=env)
        try:
            assert deployed.returncode == 0, deployed.stdout + deployed.stderr[-3000:]
            result = json_of(cantata("call", "echo", "--input", "hi", "--json", env=env))
            assert result["text"] == "hello from loopback"
            (model_span,) = [span for span in result["trace"] if span["model"]]
            assert model_span["node_id"] in {
                node["node_id"] for node in local_cluster.status["nodes"]
            }

            tree = local_cluster.tree()
            found = listeners(set(tree))
            assert_loopback_only(found)
            # The deployment's actors were in the tree, and listening, when it was checked.
            actors = {listener.command for listener in found if "RayModelActor" in listener.command}
            assert actors, [listener.command for listener in found]
        finally:
            down = cantata("down", "echo", "--json", env=env)
    assert json_of(down) == {"down": "echo"}
    assert server.requests  # the model's actor reached the server


def test_cluster_down_stops_exactly_what_up_started(tmp_path):
    state_dir = tmp_path / "state"
    option = ["--state-dir", str(state_dir)]
    with cluster_up(state_dir, nodes=2) as cluster:
        tree = cluster.tree()
        assert len(tree) > 2  # the supervisor, and the nodes' processes under it
        down = cantata("cluster", "down", *option, "--json")
        assert json_of(down) == {"state_dir": str(state_dir), "stopped": True}
        assert still_running(tree) == set()
        assert not (state_dir / "auth_token").exists()
        assert (state_dir / "cluster.log").exists()  # the logs stay
        status = cantata("cluster", "status", *option)
        assert status.returncode == 1
        assert "no local cluster runs" in status.stderr
        again = cantata("cluster", "down", *option)
        assert again.returncode == 0
        assert "no local cluster runs" in again.stdout


def test_cluster_commands_refuse_bad_input_and_open_state_dirs(tmp_path):
    done = cantata("cluster", "up", "--nodes", "0", "--state-dir", str(tmp_path / "s"))
    assert done.returncode == 64
    assert not (tmp_path / "s").exists()
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    done = cantata("cluster", "up", "--state-dir", str(shared), "--json")
    assert done.returncode == 1
    error = json.loads(done.stdout)["error"]
    assert error["type"] == "RuntimeFailure"
    assert "chmod 700" in error["message"]
    assert not (shared / "auth_token").exists()
    helped = cantata("cluster", "--help")
    assert helped.returncode == 0
    assert all(command in helped.stdout for command in ("up", "down", "status"))


# -- an embedded `cantata run` -------------------------------------------------------------------


class GatedServer(ThreadingHTTPServer):
    """An OpenAI-style server on 127.0.0.1 that holds each request until ``release`` is set."""

    daemon_threads = True

    def __init__(self) -> None:
        self.arrived = threading.Event()
        self.release = threading.Event()
        super().__init__(("127.0.0.1", 0), _GatedHandler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class _GatedHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: GatedServer

    def log_message(self, format: str, *args: Any) -> None:
        return

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.arrived.set()
        self.server.release.wait(HANG_GUARD_S)
        body = json.dumps(COMPLETION).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@contextlib.contextmanager
def gated_server() -> Iterator[GatedServer]:
    server = GatedServer()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server
    finally:
        server.release.set()
        server.shutdown()
        server.server_close()
        thread.join()


def test_a_default_cantata_run_listens_on_loopback_only(tmp_path):
    with gated_server() as server:
        topology = echo_topology(tmp_path / "echo.yaml", server.url)
        env = {k: v for k, v in os.environ.items() if k not in UNWANTED_ENV}
        out, err = tmp_path / "out.txt", tmp_path / "err.txt"  # files: a full pipe would block
        with out.open("wb") as stdout, err.open("wb") as stderr:
            run = subprocess.Popen(
                [str(CANTATA), "run", str(topology), "--input", "hi", "--json", "--num-cpus", "2"],
                cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
                start_new_session=True,
            )  # fmt: skip
        tree: dict[int, int] = {}
        try:
            # Wait for the model's request (or for the run to end early, which fails below).
            give_up = time.monotonic() + HANG_GUARD_S
            while not server.arrived.wait(0.2) and run.poll() is None:
                assert time.monotonic() < give_up, "the run never asked its model"
            assert run.poll() is None, err.read_text(encoding="utf-8")[-3000:]
            tree = process_tree(run.pid)  # mid-request: driver, Ray, the model's actor
            found = listeners(set(tree))
            server.release.set()
            run.wait(timeout=HANG_GUARD_S)
        finally:
            server.release.set()
            if run.poll() is None:  # interrupted, or failed: stop it and the Ray it started
                tree |= process_tree(run.pid)
                run.kill()
                run.wait()
            kill_tree(tree)
    assert run.returncode == 0, err.read_text(encoding="utf-8")[-3000:]
    assert json.loads(out.read_text(encoding="utf-8"))["text"] == "hello from loopback"
    assert_loopback_only(found)
    assert any(listener.pid == run.pid for listener in found)  # the driver's own server
    assert any("RayModelActor" in listener.command for listener in found)
    assert any("gcs_server" in listener.command for listener in found)
