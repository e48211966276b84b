"""Every example topology runs offline with ``cantata run --json`` on real models.

One test per example file: the Foundation fields and the pattern's own fields are present,
every model member was served by its own Ray actor, and the branches that should run in
parallel did (their spans overlap in time).
"""

from __future__ import annotations

import functools
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
        "What is the capital of Japan?",
        {"decision", "replies"},
        {"member-a", "member-b", "member-c"},
    ),
    "planner_executor": (
        "Find the capitals of France and Japan, then write one sentence naming both.",
        {"plan", "steps"},
        set(),
    ),
    "supervisor_worker": ("What is the capital of Japan?", {"rounds"}, set()),
    "support_triage": (
        "I was charged twice for the same order, please refund one payment.",
        {"route", "decision"},
        {"refund-judge-1", "refund-judge-2", "refund-judge-3"},
    ),
    "research_team": ("Why do leaves change colour in autumn?", {"rounds"}, set()),
}


@functools.cache
def _run_example_json(name: str, text: str) -> str:
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
    return done.stdout


def run_example(name: str, text: str) -> dict[str, Any]:
    """The example's ``--json`` result; each (example, input) runs once per test session."""
    result: dict[str, Any] = json.loads(_run_example_json(name, text))
    return result


def overlap(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return bool(a["start"] < b["end"] and b["start"] < a["end"])


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_runs_and_keeps_the_result_contract(name):
    text, pattern_fields, parallel = EXAMPLES[name]
    result = run_example(name, text)

    assert result["text"].strip()
    assert result["usage"]["input_tokens"] > 0
    assert result["usage"]["output_tokens"] > 0  # the answer above was generated, not empty
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


# The answers below are checked for the inputs in each example's header comment. Runs are
# deterministic (greedy decoding, fixed llama.cpp seeds for sampled members), so these checks fail
# only when a prompt, a pattern, the model or its engine (a seed samples differently in each)
# changes what the example does.


def test_planner_plans_independent_steps_that_run_in_parallel():
    result = run_example("planner_executor", EXAMPLES["planner_executor"][0])
    plan = result["plan"]["steps"]
    steps = {span["agent"]: span for span in result["trace"] if span["agent"].startswith("step:")}
    assert len(steps) == len(plan)
    roots = [f"step:{s['id']}:{s['executor']}" for s in plan if not s["depends_on"]]
    assert len(roots) >= 2, f"the plan has fewer than two independent steps: {plan}"
    for i, a in enumerate(roots):
        for b in roots[i + 1 :]:
            assert overlap(steps[a], steps[b]), f"{a} and {b} did not run in parallel"
    # A step that depends on others starts only after they are done.
    ends = {s["id"]: steps[f"step:{s['id']}:{s['executor']}"]["end"] for s in plan}
    for s in plan:
        start = steps[f"step:{s['id']}:{s['executor']}"]["start"]
        assert all(ends[d] <= start for d in s["depends_on"])
    assert "Paris" in result["text"], result["text"]
    assert "Tokyo" in result["text"], result["text"]


def test_weighted_ensemble_judge_separates_answers_and_the_right_one_wins():
    result = run_example("weighted_ensemble", EXAMPLES["weighted_ensemble"][0])
    decision = result["decision"]
    ballots = decision["ballots"]
    assert len(ballots) == 3
    # The judge's own scores (before the weights): full marks for each answer naming Tokyo, none
    # for the others, and the members' answers include both (member-a's seed answers wrongly).
    judged = {ballot["answer"]: ballot["score"] / ballot["weight"] for ballot in ballots}
    assert {score for answer, score in judged.items() if "Tokyo" in answer} == {1.0}, judged
    assert {score for answer, score in judged.items() if "Tokyo" not in answer} == {0.0}, judged
    assert "Tokyo" in decision["winner"], decision["winner"]
    assert result["text"] == decision["winner"]
    assert decision["tally"][decision["winner"]] == max(decision["tally"].values())


def test_supervisor_answer_is_right():
    result = run_example("supervisor_worker", EXAMPLES["supervisor_worker"][0])
    assert "Tokyo" in result["text"], result["text"]
    assert 1 <= result["rounds"] <= 2
