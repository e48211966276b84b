"""Fuzzing planner and supervisor output: every answer ends as a valid plan or assignments,
or as a bounded typed error; and nothing undeclared ever comes out of validation.

Model answers come from ``tests/support/strategies.py``: random text, JSON of random shapes,
plans with unknown or look-alike executors, cycles, self-references, repeated ids, up to 10,000
steps, deep nesting, huge strings and injected instructions, dressed as a model dresses JSON
(fenced, chatty, cut short, with NaN, with a decoy key). ``benchmarks/fuzz.py`` times them.
"""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from cantata.agents import (
    AssignmentError,
    PlanValidationError,
    StructuredOutputError,
    parse_output,
)
from cantata.agents._structured import parse_structured
from cantata.topologies import Planner, Supervisor, validate_plan
from cantata.topologies._supervisor import _rejected, _undeclared_workers
from tests.support.strategies import (
    EXECUTORS,
    FORMATS,
    PROFILE,
    WORKERS,
    Scripted,
    assign_through_supervisor,
    assignment_data,
    assignment_text,
    check_error,
    check_plan,
    junk,
    long_plans,
    model_text,
    plan_data,
    plan_text,
    planner_spec,
    run_planner_topology,
    run_supervisor_topology,
    structured_answers,
    supervisor_spec,
)

max_steps = st.integers(1, 20)  # what a PlannerExecutorSpec allows
# Assignments to up to 5,000 different undeclared workers.
strangers = st.integers(1, 5_000).map(
    lambda n: json.dumps({"assignments": [{"worker": f"intern{i}", "task": "t"} for i in range(n)]})
)
any_text = st.one_of(plan_text(), assignment_text(), model_text(junk))


# ---------------------------------------------------------------------------- parse_structured


class Reply:
    """What parse_output reads: a reply's text and its parsed JSON."""

    def __init__(self, text: str, structured: Any) -> None:
        self.text, self.structured = text, structured


@settings(PROFILE, max_examples=150)
@given(case=structured_answers)
def test_structured_output_is_strict_json_matching_its_schema_or_a_bounded_error(case):
    name, text = case
    try:
        value = parse_structured(text, FORMATS[name], model="fuzz")
    except StructuredOutputError as exc:
        check_error(exc)
        event(type(exc).__name__)
        return
    event("valid")
    json.dumps(value, allow_nan=False)  # strict JSON: no NaN, no Infinity
    if name == "plan":  # the plan schema admits only valid plans, by construction
        check_plan(validate_plan(value, EXECUTORS, 5), EXECUTORS, 5)
    if name == "assignments":
        assignments = parse_output(Supervisor(supervisor_spec()).assign_type, Reply(text, value))
        assert {a.worker for a in assignments.assignments} <= set(WORKERS)


# ---------------------------------------------------------------------------- validate_plan


@settings(PROFILE, max_examples=100)
@given(data=st.data(), limit=max_steps)
def test_validate_plan_returns_a_plan_of_declared_executors_or_a_bounded_error(data, limit):
    plan = data.draw(plan_data(EXECUTORS, limit), label="plan")
    try:
        validated = validate_plan(plan, EXECUTORS, limit)
    except PlanValidationError as exc:
        check_error(exc)
        event(type(exc).__name__)
    else:
        event("valid")
        check_plan(validated, EXECUTORS, limit)


@settings(PROFILE, max_examples=30)
@given(data=st.data(), limit=st.integers(21, 10_000) | st.sampled_from([5_000, 10_000]))
def test_validate_plan_holds_for_any_max_steps(data, limit):
    # Through a spec max_steps is at most 20; validate_plan itself takes any.
    plan = data.draw(long_plans(EXECUTORS, limit), label="plan")
    try:
        validated = validate_plan(plan, EXECUTORS, limit)
    except PlanValidationError as exc:
        check_error(exc)
        event(type(exc).__name__)
    else:
        event("valid")
        check_plan(validated, EXECUTORS, limit)


# ---------------------------------------------------------------------------- the planner


@settings(PROFILE, max_examples=40)
@given(data=st.data(), limit=max_steps)
def test_a_planner_ends_with_a_plan_of_declared_executors_or_a_bounded_error(data, limit):
    text = data.draw(plan_text(EXECUTORS, limit), label="answer")
    context = Scripted(text)
    planner = Planner(planner_spec(max_steps=limit, repair_attempts=1))
    try:
        plan = asyncio.run(planner.plan("the request", context, "parent"))
    except PlanValidationError as exc:
        check_error(exc)
        event(type(exc).__name__)
        assert len(context.prompts) == 2  # it was sent back once for repair
        # The repair prompt quotes the rejection, never the model's whole answer.
        assert len(context.prompts[1]) <= len("the request") + 1_200
    else:
        event("valid")
        check_plan(plan, EXECUTORS, limit)


@settings(PROFILE, max_examples=60)
@given(text=any_text)
def test_explaining_a_failed_plan_is_a_bounded_plan_validation_error(text):
    planner = Planner(planner_spec())
    failure = StructuredOutputError("fuzz's JSON does not match 'plan'", text=text, model="fuzz")
    explained = planner._explain(failure)
    assert isinstance(explained, PlanValidationError)
    check_error(explained)


# ---------------------------------------------------------------------------- the supervisor


@settings(PROFILE, max_examples=80)
@given(text=assignment_text())
def test_a_supervisor_assigns_only_declared_workers_or_fails_with_a_bounded_error(text):
    try:
        assignments = assign_through_supervisor(text)
    except (AssignmentError, StructuredOutputError) as exc:
        check_error(exc)
        event(type(exc).__name__)
    else:
        event("valid")
        assert 1 <= len(assignments) <= 2 * len(WORKERS)
        assert {a.worker for a in assignments} <= set(WORKERS)
        assert all(1 <= len(a.task) <= 400 for a in assignments)


@settings(PROFILE, max_examples=80)
@given(text=st.one_of(assignment_text(), model_text(assignment_data(WORKERS)), strangers))
def test_undeclared_workers_are_named_only_if_undeclared_and_bounded_when_rejected(text):
    named = _undeclared_workers(text, set(WORKERS))
    assert all(isinstance(name, str) and name not in WORKERS for name in named)
    if named:
        check_error(_rejected(named))


# ---------------------------------------------------------------------------- whole topologies


@settings(PROFILE, max_examples=25)
@given(data=st.data(), limit=max_steps)
def test_a_planner_executor_topology_runs_only_declared_executors(data, limit):
    text = data.draw(plan_text(EXECUTORS, limit), label="answer")
    try:
        result = run_planner_topology((text, limit))
    except PlanValidationError as exc:
        check_error(exc)
        event(type(exc).__name__)
        # Either outcome is allowed, so pytest.raises cannot express this.
        assert not any(span.agent.startswith("step:") for span in exc.trace)  # noqa: PT017
    else:
        event("valid")
        assert result.plan is not None
        check_plan(result.plan, EXECUTORS, limit)
        ran = [span.agent.split(":")[2] for span in result.trace if span.agent.startswith("step:")]
        assert len(ran) == len(result.plan.steps)
        assert set(ran) <= set(EXECUTORS)


@settings(PROFILE, max_examples=25)
@given(text=assignment_text())
def test_a_supervisor_worker_topology_runs_only_declared_workers(text):
    try:
        result = run_supervisor_topology(text)
    except (AssignmentError, StructuredOutputError) as exc:
        check_error(exc)
        event(type(exc).__name__)
        # Either outcome is allowed, so pytest.raises cannot express this.
        assert not any(span.agent.startswith("worker:") for span in exc.trace)  # noqa: PT017
    else:
        event("valid")
        worked = {
            s.agent.removeprefix("worker:") for s in result.trace if s.agent.startswith("worker:")
        }
        assert worked
        assert worked <= set(WORKERS)


# ---------------------------------------------------------------------------- found by fuzzing


def _steps(count: int, *, chain: bool = False, same_id: bool = False) -> dict[str, Any]:
    return {
        "steps": [
            {
                "id": "s1" if same_id else f"s{n}",
                "executor": "llm",
                "prompt": "x",
                "depends_on": [f"s{n + 1}"] if chain and n < count else [],
            }
            for n in range(1, count + 1)
        ]
    }


@pytest.mark.parametrize(
    ("text", "said"),
    [
        # Not JSON, though Python reads it.
        pytest.param('{"steps": NaN}', "NaN is not a JSON number", id="NaN"),
        pytest.param('{"steps": [-Infinity]}', "-Infinity is not a JSON", id="Infinity"),
    ],
)
def test_found_by_fuzzing_structured_output(text, said):
    with pytest.raises(StructuredOutputError, match=said) as caught:
        parse_structured(text, FORMATS["plan"], model="fuzz")
    check_error(caught.value)


@pytest.mark.parametrize("as_dict", [False, True], ids=["lists", "dicts"])
def test_found_by_fuzzing_json_nested_near_the_recursion_limit_is_refused_as_too_deep(as_dict):
    # json.loads reads JSON nested a little less deep than the recursion limit allows, and
    # checking or quoting it then passed the limit: a RecursionError, not a typed error.
    # Where that happens depends on how deep the stack already is, so every depth around the
    # limit is tried, on a thread of its own (a shallow stack, as a model actor's may be).
    def parse(depth: int) -> BaseException | None:
        inner = '{"a": ' * depth + "0" + "}" * depth if as_dict else "[" * depth + "]" * depth
        try:
            parse_structured('{"steps": ' + inner + "}", FORMATS["plan"], model="fuzz")
        except BaseException as exc:
            return exc
        return None

    with ThreadPoolExecutor(max_workers=1) as pool:
        failures = list(pool.map(parse, range(850, 1_001, 2)))
    for failure in failures:
        assert isinstance(failure, StructuredOutputError), repr(failure)
        assert "too deep" in str(failure)
        check_error(failure)


def test_found_by_fuzzing_a_long_chain_of_steps_is_checked_without_recursion():
    plan = validate_plan(_steps(10_000, chain=True), EXECUTORS, 10_000)
    assert len(plan.steps) == 10_000


def test_found_by_fuzzing_repeated_ids_and_long_cycles_are_quoted_short():
    with pytest.raises(PlanValidationError, match="step ids repeat") as repeated:
        validate_plan({"steps": _steps(10_000)["steps"] * 2}, EXECUTORS, 20_000)
    check_error(repeated.value)
    cycle = _steps(500, chain=True)
    cycle["steps"][-1]["depends_on"] = ["s1"]
    with pytest.raises(PlanValidationError, match="in a cycle: s1 -> s2") as cyclic:
        validate_plan(cycle, EXECUTORS, 500)
    check_error(cyclic.value)
