"""``cantata run`` end to end: a real process, an embedded Ray, SmolLM2 in a Ray actor."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.model

ROOT = Path(__file__).resolve().parents[2]
CANTATA = Path(sys.executable).with_name("cantata")
SECRET = "sk-live-NEVER-PRINT-ME-42"


def cantata(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | (env or {})
    return subprocess.run(
        [str(CANTATA), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        env=environment,
        check=False,
    )


def test_run_json_prints_one_object_answered_by_smollm2_in_a_ray_actor():
    done = cantata(
        "run", "examples/single.yaml", "--input", "What is the capital of France?", "--json",
        "--log-format", "json", "--log-level", "debug",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    for line in done.stderr.splitlines():  # Ray's lines and the actors' are JSON too
        if line.strip():
            assert isinstance(json.loads(line), dict), line
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert "paris" in result["text"].lower()
    assert result["usage"]["input_tokens"] > 0
    assert result["usage"]["output_tokens"] > 0
    assert result["latency_ms"] > 0
    root, model_span = result["trace"]
    assert root["parent_id"] is None
    assert model_span["parent_id"] == root["span_id"]
    assert model_span["model"] == "SmolLM2-135M-Instruct.Q4_1"
    assert model_span["model_version"] == "135m-instruct-q4_1"
    assert re.fullmatch(r"[0-9a-f]{32}", model_span["actor_id"])
    assert re.fullmatch(r"[0-9a-f]{56}", model_span["node_id"])
    for field in (
        "span_id",
        "agent",
        "start",
        "end",
        "latency_ms",
        "input_tokens",
        "output_tokens",
    ):
        assert field in model_span
    assert model_span["start"] <= model_span["end"]


def test_run_without_json_prints_the_answer_and_a_summary():
    done = cantata("run", "examples/single.yaml", "--input", "What is the capital of France?")
    assert done.returncode == 0, done.stderr
    assert "paris" in done.stdout.lower()
    assert "smollm2: SmolLM2-135M-Instruct.Q4_1 v135m-instruct-q4_1" in done.stdout
    assert "tokens" in done.stdout
    assert "actor " in done.stdout


def test_unschedulable_topology_fails_fast_with_a_typed_error(tmp_path):
    topology = tmp_path / "gpu.yaml"
    topology.write_text(
        "pattern: single\nname: needs-gpu\n"
        "model: {name: big, backend: {type: llamacpp}, resources: {num_gpus: 1}}\n"
    )
    done = cantata("run", str(topology), "--input", "hi", "--json", "--num-cpus", "2")
    assert done.returncode == 1
    error = json.loads(done.stdout)["error"]
    assert error["type"] == "UnschedulableError"
    assert "GPU" in error["message"]


def test_api_key_never_reaches_output_logs_or_errors(tmp_path):
    topology = tmp_path / "remote.yaml"
    topology.write_text(
        "pattern: single\nname: remote\n"
        "model:\n  name: gpt\n  backend:\n    type: openai\n"
        "    base_url: http://127.0.0.1:9/v1\n    model: gpt-x\n    api_key_env: CANTATA_TEST_KEY\n"
        "    retry: {max_attempts: 2, backoff_base: 0.01}\n"
    )
    done = cantata(
        "run", str(topology), "--input", "hi", "--json", "--log-level", "debug",
        env={"CANTATA_TEST_KEY": SECRET},
    )  # fmt: skip
    assert done.returncode == 1
    error = json.loads(done.stdout)["error"]
    assert error["type"] == "EndpointUnreachableError"
    # The actors' "retrying" warnings usually reach stderr too; Ray forwards them
    # asynchronously, so their arrival is not asserted. The in-process tests check them.
    assert SECRET not in done.stdout
    assert SECRET not in done.stderr


def test_invalid_topology_exits_2_with_the_problem():
    done = cantata("run", "pyproject.toml", "--input", "hi", "--json")
    assert done.returncode == 2
    assert json.loads(done.stdout)["error"]["type"] == "TopologySpecError"


def test_help_describes_run():
    done = cantata("run", "--help")
    assert done.returncode == 0
    for option in ("--input", "--json", "--address", "--log-format", "--num-cpus"):
        assert option in done.stdout


def test_run_joins_an_existing_cluster_with_address(cli_cluster, tmp_path):
    topology = tmp_path / "pinned.yaml"
    # Pinned to the resource only the started cluster declares: it cannot run anywhere else.
    topology.write_text(
        "pattern: single\nname: pinned\nmax_tokens: 48\n"
        "model: {name: smollm2, resources: {num_cpus: 1, custom: {cli_node: 1}}}\n"
    )
    for _attempt in range(30):  # the head needs a few seconds before it accepts drivers
        done = cantata(
            "run", str(topology), "--input", "What is the capital of France?", "--json",
            "--address", cli_cluster,
        )  # fmt: skip
        if done.returncode == 0 or "cannot connect" not in done.stdout:
            break
        time.sleep(1)
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout)
    assert "paris" in result["text"].lower()
    assert result["trace"][1]["actor_id"]
