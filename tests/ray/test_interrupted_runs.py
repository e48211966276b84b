"""A test run that is killed leaves no Ray node behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.waiting import until

pytestmark = pytest.mark.ray

ROOT = Path(__file__).resolve().parents[2]

# A stand-in for a test process that started a `ray start` node and is then killed outright.
STARTS_A_NODE = """
import sys, time
from tests.support.ray_cli import free_port, ray_start, wait_for_nodes
port = free_port()
node = ray_start("127.0.0.5", ["--head", f"--port={port}", "--num-cpus=0",
                               "--include-dashboard=false", "--disable-usage-stats"])
wait_for_nodes(f"127.0.0.5:{port}", 1)
print(node.pid, port, flush=True)
time.sleep(600)
"""


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def processes_with(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if text in command and alive(int(entry.name)):
                found.append(int(entry.name))
    return found


@pytest.mark.skipif(sys.platform != "linux", reason="parent-death signals are Linux's")
def test_a_killed_test_process_takes_its_ray_start_nodes_with_it():
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    runner = subprocess.Popen(
        [sys.executable, "-c", STARTS_A_NODE], cwd=ROOT, env=env, stdout=subprocess.PIPE
    )
    try:
        assert runner.stdout is not None
        pid, port = runner.stdout.readline().split()
        assert alive(int(pid))
        assert processes_with(f"--gcs_server_port={port.decode()}")  # the node's GCS runs
        runner.send_signal(signal.SIGKILL)
        runner.wait()
        assert until(lambda: not alive(int(pid)))
        assert until(lambda: not processes_with(f"--gcs_server_port={port.decode()}"))
    finally:
        runner.kill()
        runner.wait()
