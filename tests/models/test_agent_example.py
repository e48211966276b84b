"""The agent written from scratch (examples/critic.py) runs on SmolLM2, inline and hosted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.model

ROOT = Path(__file__).resolve().parents[2]
CANTATA = Path(sys.executable).with_name("cantata")
QUESTION = "What is the capital of France?"


def run(topology: Path) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run(
        [str(CANTATA), "run", str(topology), "--input", QUESTION, "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env=env, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def check_review(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    assert "Paris" in result["text"]
    steps = {span["agent"]: span for span in result["trace"] if ":" in span["agent"]}
    assert {"critic-review:draft", "critic-review:review"} <= set(steps)
    models = [span for span in result["trace"] if span["model"]]
    # Every model call hangs under one of the agent's steps, in the request's trace.
    step_ids = {span["span_id"] for span in steps.values()}
    assert models
    assert all(span["parent_id"] in step_ids for span in models)
    return steps


def test_the_critic_agent_drafts_reviews_and_answers():
    result = run(ROOT / "examples" / "critic_review.yaml")
    check_review(result)
    root = result["trace"][0]
    assert root["agent"] == "critic-review"


def test_the_critic_agent_hosted_on_its_own_actor_sends_the_same_messages(tmp_path):
    data = yaml.safe_load((ROOT / "examples" / "critic_review.yaml").read_text(encoding="utf-8"))
    data["agent"] = f"{ROOT / 'examples' / 'critic.py'}:Critic"
    inner = {**data, "host": {"actor": True, "resources": {"num_cpus": 0.1}}}
    outer = {"pattern": "pipeline", "name": "desk", "stages": [{"member": inner}]}
    path = tmp_path / "hosted_critic.yaml"
    path.write_text(yaml.safe_dump(outer), encoding="utf-8")
    result = run(path)
    steps = check_review(result)
    coordinator = result["trace"][0]["actor_id"]
    agent_root = next(span for span in result["trace"] if span["agent"] == "critic-review")
    assert agent_root["actor_id"] != coordinator  # its own actor
    assert steps["critic-review:draft"]["actor_id"] == agent_root["actor_id"]
