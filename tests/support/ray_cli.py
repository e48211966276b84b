"""Start and watch Ray clusters made of `ray start` processes on loopback addresses."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

__all__ = ["free_port", "ray_start", "two_node_cluster", "wait_for_nodes"]

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:
    # Runs in the child before exec: the kernel sends it SIGTERM when the test process dies,
    # however it dies (SIGKILL included), and `ray start --block` then stops what it started.
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def ray_start(
    node_ip: str, args: list[str], *, python: Path | None = None
) -> subprocess.Popen[bytes]:
    """``ray start --block`` on ``node_ip`` (with another environment's Ray if given).

    The node stops when this process ends, even when it is killed: a test run that is
    interrupted leaves no Ray node behind.
    """
    ray_cli = (python or Path(sys.executable)).with_name("ray")
    # The session's cluster_utils switch would make `ray start` refuse to join a cluster.
    unwanted = {"RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
    env = {k: v for k, v in os.environ.items() if k not in unwanted}
    if "--head" not in args:
        env["RAY_AUTH_MODE"] = "token"  # a joining node sends the head's token only if told to
    return subprocess.Popen(
        [str(ray_cli), "start", "--block", f"--node-ip-address={node_ip}", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=_die_with_parent if sys.platform == "linux" else None,  # noqa: PLW1509
    )


def wait_for_nodes(address: str, count: int, limit_s: float = 90) -> None:
    """Block until the cluster at ``address`` has ``count`` alive nodes."""
    code = (
        "import ray, sys\n"
        f"ray.init(address={address!r}, logging_level='ERROR',"
        f" _node_ip_address={address.split(':', maxsplit=1)[0]!r})\n"
        "sys.exit(0 if sum(n['Alive'] for n in ray.nodes()) >= int(sys.argv[1]) else 3)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"RAY_AUTH_MODE": "token"}
    give_up = time.monotonic() + limit_s
    while time.monotonic() < give_up:
        try:
            done = subprocess.run(
                [sys.executable, "-c", code, str(count)], env=env, capture_output=True,
                timeout=30, check=False,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            continue
        if done.returncode == 0:
            return
        time.sleep(1)
    raise RuntimeError(f"the cluster at {address} did not reach {count} nodes in {limit_s}s")


@contextlib.contextmanager
def two_node_cluster(
    head_ip: str,
    worker_ip: str,
    *,
    worker_cpus: int,
    worker_resources: str,
    worker_python: Path | None = None,
    more_workers: Sequence[tuple[str, int, str]] = (),
) -> Iterator[str]:
    """A head (1 CPU) and a worker started with ``ray start --block``; yields the address.

    ``more_workers`` adds workers as (ip, CPUs, resources JSON). Use loopback addresses other
    than 127.0.0.1, which Ray rewrites to the machine's outward
    address for a joining node. Each ``ray start --block`` stops the processes it started when
    terminated, so this stops exactly what it started.
    """
    port = free_port()
    address = f"{head_ip}:{port}"
    nodes = [
        ray_start(
            head_ip,
            [
                "--head",
                f"--port={port}",
                "--num-cpus=1",
                "--include-dashboard=false",
                "--disable-usage-stats",
            ],
        )
    ]
    try:
        wait_for_nodes(address, 1)
        nodes.append(
            ray_start(
                worker_ip,
                [
                    f"--address={address}",
                    f"--num-cpus={worker_cpus}",
                    f"--resources={worker_resources}",
                ],
                python=worker_python,
            )
        )
        wait_for_nodes(address, 2)
        for ip, cpus, resources in more_workers:
            nodes.append(
                ray_start(
                    ip, [f"--address={address}", f"--num-cpus={cpus}", f"--resources={resources}"]
                )
            )
        wait_for_nodes(address, 2 + len(more_workers))
        yield address
    finally:
        for node in reversed(nodes):
            node.send_signal(signal.SIGTERM)
        for node in nodes:
            try:
                node.wait(timeout=60)
            except subprocess.TimeoutExpired:
                node.kill()
                node.wait()
