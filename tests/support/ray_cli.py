"""Start and watch Ray clusters made of `ray start` processes on loopback addresses."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["free_port", "ray_start", "wait_for_nodes"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ray_start(
    node_ip: str, args: list[str], *, python: Path | None = None
) -> subprocess.Popen[bytes]:
    """``ray start --block`` on ``node_ip`` (with another environment's Ray if given)."""
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
