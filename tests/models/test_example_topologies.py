"""Every example topology runs offline with ``cantata run --json`` on real models.

One test per example file: the Foundation fields and the pattern's own fields are present,
every model member was served by its own Ray actor, and the branches that should run in
parallel did (their spans overlap in time).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.model

ROOT = Path(__file__).resolve().parents[2]
CANTATA = Path(sys.executable).with_name("cantata")

# example -> (input, the pattern fields its result must have, agents whose spans must overlap)
EXAMPLES: dict[str, tuple[str, set[str], set[str]]] = {
    "single": ("What is the capital of France?", set(), set()),
    "pipeline": ("Why is the sky blue?", set(), set()),
    "router": ("I was charged twice for my order", {"route"}, set()),
    "fanout": (
        "Suggest a name for a coffee shop.",
        {"replies"},
        {"smollm2-seed1", "smollm2-seed2", "smollm2-seed3"},
    ),
    "vote": (
        "The battery died after two days and support never answered.",
        {"decision", "replies"},
        {"voter-1", "voter-2", "voter-3"},
    ),
    "consensus": ("Can I return shoes I have worn?", {"decision", "replies"}, {"fast-1", "fast-2"}),
    "weighted_ensemble": (
        "What is the boiling point of water at sea level?",
        {"decision", "replies"},
        {"member-a", "member-b", "member-c"},
    ),
    "planner_executor": ("Compare tea and coffee for a morning drink.", {"plan"}, set()),
    "supervisor_worker": ("Describe a steel water bottle in two lines.", {"rounds"}, set()),
    "support_triage": (
        "I was charged twice for the same order, please refund one payment.",
        {"route", "decision"},
        {"refund-judge-1", "refund-judge-2", "refund-judge-3"},
    ),
    "research_team": ("Why do leaves change colour in autumn?", {"rounds"}, set()),
}


def run_example(name: str, text: str) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run(
        [str(CANTATA), "run", f"examples/{name}.yaml", "--input", text, "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=400,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def overlap(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return bool(a["start"] < b["end"] and b["start"] < a["end"])


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_runs_and_keeps_the_result_contract(name):
    text, pattern_fields, parallel = EXAMPLES[name]
    result = run_example(name, text)

    assert result["text"].strip()
    assert result["usage"]["input_tokens"] > 0
    assert result["usage"]["output_tokens"] >= 0
    assert result["latency_ms"] > 0
    assert pattern_fields <= result.keys()

    spans = result["trace"]
    root = spans[0]
    assert root["parent_id"] is None
    ids = {span["span_id"] for span in spans}
    for span in spans[1:]:
        assert span["parent_id"] in ids, f"{span['agent']} has no parent in the trace"
        assert span["trace_id"] == root["trace_id"]

    model_spans = [span for span in spans if span["model"]]
    assert model_spans
    actors_by_member: dict[str, set[str]] = {}
    for span in model_spans:
        assert span["actor_id"], f"{span['agent']} did not run in a Ray actor"
        actors_by_member.setdefault(span["agent"], set()).add(span["actor_id"])
    # One actor per model member: each member always used the same actor, none shared one.
    assert all(len(actors) == 1 for actors in actors_by_member.values())
    all_actors = [next(iter(actors)) for actors in actors_by_member.values()]
    assert len(set(all_actors)) == len(all_actors)

    parallel_spans = [span for span in model_spans if span["agent"] in parallel]
    assert {span["agent"] for span in parallel_spans} == parallel
    for i, a in enumerate(parallel_spans):
        for b in parallel_spans[i + 1 :]:
            assert overlap(a, b), f"{a['agent']} and {b['agent']} did not run in parallel"


def test_independent_plan_steps_run_in_parallel():
    result = run_example("planner_executor", "Plan a picnic for four people.")
    plan = result["plan"]["steps"]
    steps = {span["agent"]: span for span in result["trace"] if span["agent"].startswith("step:")}
    assert len(steps) == len(plan)
    roots = [f"step:{s['id']}:{s['executor']}" for s in plan if not s["depends_on"]]
    for i, a in enumerate(roots):
        for b in roots[i + 1 :]:
            assert overlap(steps[a], steps[b])
