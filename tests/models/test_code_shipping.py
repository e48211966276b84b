"""A deployment runs on a worker whose Python environment does not have Cantata.

The worker node runs from a fresh virtual environment with Ray and Cantata's dependencies but
not Cantata; ``cantata deploy --wheel`` ships a wheel built from this checkout. The model is an
OpenAI-compatible HTTP backend (a small real server on loopback), so the worker needs no model
files either.
"""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.ray_cli import two_node_cluster

pytestmark = pytest.mark.model

ROOT = Path(__file__).resolve().parents[2]
CANTATA = Path(sys.executable).with_name("cantata")
DEPENDENCIES = ["ray==2.60.0", "pydantic", "httpx", "structlog", "pyyaml", "jsonschema"]


class EchoCompletions(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        reply = json.dumps(
            {
                "model": "echo",
                "choices": [
                    {
                        "message": {"content": "echo: " + body["messages"][-1]["content"]},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 2, "completion_tokens": 2},
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def echo_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), EchoCompletions)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.run(
        list(args), cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env, check=False
    )


def test_deploy_ships_a_wheel_to_a_worker_without_cantata(tmp_path, echo_server):
    bare = tmp_path / "bare"
    assert run(sys.executable, "-m", "venv", str(bare)).returncode == 0
    bare_python = bare / "bin" / "python"
    pip = [str(bare_python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    installed = run(*pip, *DEPENDENCIES, timeout=600)
    assert installed.returncode == 0, installed.stderr[-2000:]
    assert run(str(bare_python), "-c", "import cantata.agents").returncode != 0

    wheels = tmp_path / "dist"
    built = run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), ".")
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = wheels.glob("cantata-*.whl")

    with two_node_cluster(
        "127.0.0.4",
        "127.0.0.5",
        worker_cpus=1,
        worker_resources='{"bare": 1}',
        worker_python=bare_python,
    ) as address:
        topology = tmp_path / "remote.yaml"
        topology.write_text(
            "pattern: single\nname: shipped\nmodel:\n  name: remote\n"
            f"  backend: {{type: openai, base_url: '{echo_server}', model: echo}}\n"
            "  resources: {num_cpus: 0.5, custom: {bare: 1}}\n"
        )
        deployed = run(
            str(CANTATA), "deploy", str(topology), "--name", "shipped", "--address", address,
            "--wheel", str(wheel), "--json",
        )  # fmt: skip
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr[-3000:]
        try:
            called = run(
                str(CANTATA), "call", "shipped", "--input", "hello", "--address", address,
                "--json",
            )  # fmt: skip
            assert called.returncode == 0, called.stdout + called.stderr[-3000:]
            result = json.loads(called.stdout)
            assert result["text"] == "echo: hello"
        finally:
            run(str(CANTATA), "down", "shipped", "--address", address)
        (replica,) = json.loads(deployed.stdout)["deployments"][0]["models"][0]["replicas"]
        bare_node = [span["node_id"] for span in result["trace"] if span["model"]]
        assert bare_node == [replica["node_id"]]
