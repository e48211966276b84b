"""Role agents are Agents: typed requests in through ``handle``, typed replies out.

Each role is run in-process with function (or hand-made embedding) models, its handler is
checked against its request type, and a subclass that overrides the public method the handler
calls (``Voter.decide``, ``Planner.plan``, ...) changes the reply.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from pydantic import BaseModel

from cantata.agents import (
    AnswerScore,
    Assignment,
    AssignmentError,
    Assignments,
    AssignRequest,
    Ballot,
    CustomConfig,
    Decision,
    FunctionConfig,
    InvalidMessageError,
    LabelScores,
    ModelRequest,
    ModelSpec,
    Plan,
    PlanRequest,
    PlanStep,
    Review,
    ReviewRequest,
    RouteRequest,
    ScoreRequest,
    StepResult,
    SynthesisRequest,
    TallyRequest,
    Task,
    TaskReply,
)
from cantata.agents.backends import EmbeddingBackend, Embeddings
from cantata.topologies import (
    AnswerGroup,
    EmbeddingClassifier,
    EmbeddingRouter,
    InProcessRuntime,
    Judge,
    JudgeSpec,
    Label,
    ModelClassifier,
    ModelRouter,
    Planner,
    PlannerExecutorSpec,
    RequestContext,
    Supervisor,
    SupervisorWorkerSpec,
    Voter,
    VoteSpec,
    WorkerRole,
    run_topology,
)

PARENT = "step-parent"
PLAN = {"steps": [{"id": "s1", "executor": "llm", "prompt": "do it", "depends_on": []}]}


def model(name: str, fn: Callable[[ModelRequest], str]) -> ModelSpec:
    return ModelSpec(name=name, backend=FunctionConfig(fn=fn))


def supervisor_model(request: ModelRequest) -> str:
    assert request.response_format is not None
    if request.response_format.name == "assignments":
        return json.dumps({"assignments": [{"worker": "writer", "task": "write it"}]})
    return json.dumps({"approved": True, "feedback": "", "answer": "done"})


def planner_model(request: ModelRequest) -> str:
    return json.dumps(PLAN) if request.response_format is not None else "synthesized"


class WordEmbedder(EmbeddingBackend):
    """One dimension per word of a tiny vocabulary: the word's count in the text."""

    async def embed(
        self, texts: tuple[str, ...], *, input_type: str = "query", deadline: float | None = None
    ) -> Embeddings:
        vocab = ("money", "crash")
        vectors = tuple(tuple(float(t.split().count(w)) for w in vocab) for t in texts)
        return Embeddings(vectors=vectors, input_tokens=len(texts))


LABELS = {"billing": Label(description="money"), "tech": Label(description="crash")}
PE_SPEC = PlannerExecutorSpec(
    name="pe",
    planner=model("planner", planner_model),
    executors={"llm": model("exec", lambda _r: "x")},
)
SW_SPEC = SupervisorWorkerSpec(
    name="sw",
    supervisor=model("boss", supervisor_model),
    workers={"writer": WorkerRole(description="writes", member=model("w", lambda _r: "x"))},
)
JUDGE_SPEC = JudgeSpec(model=model("judge", lambda _r: '{"score": 7}'), scale=10)
MODEL_CLASSIFIER = ModelClassifier(
    model=model("cls", lambda _r: '{"label": "tech", "confidence": 0.75}'), labels=LABELS
)
EMBEDDING_CLASSIFIER = EmbeddingClassifier(
    model=ModelSpec(name="role-embed", backend=CustomConfig(factory=lambda _r: WordEmbedder())),
    labels=LABELS,
    temperature=0.5,
)
BALLOTS = (
    Ballot(member="a", answer="yes"),
    Ballot(member="b", answer="no"),
    Ballot(member="c", answer="Yes"),
)
GROUPS = [{"indices": (0, 2), "representative": "yes"}, {"indices": (1,), "representative": "no"}]


@dataclass
class Case:
    """One role, one request it handles, and what its reply must be."""

    make: Callable[[], Any]
    models: Sequence[ModelSpec]
    request: type[BaseModel]
    fields: dict[str, Any]
    check: Callable[[Any], None]


def _decision(reply: Decision) -> None:
    assert (reply.winner, reply.tally) == ("yes", {"yes": 2.0, "no": 1.0})


def _plan(reply: Plan) -> None:
    assert [step.id for step in reply.steps] == ["s1"]


def _synthesis(reply: TaskReply) -> None:
    assert reply.text == "synthesized"


def _assignments(reply: Assignments) -> None:
    assert [(a.worker, a.task) for a in reply.assignments] == [("writer", "write it")]


def _review(reply: Review) -> None:
    assert (reply.approved, reply.answer) == (True, "done")


def _score(reply: AnswerScore) -> None:
    assert reply.score == pytest.approx(0.7)


def _model_scores(reply: LabelScores) -> None:
    assert reply.scores == {"billing": 0.0, "tech": 0.75}


def _embedding_scores(reply: LabelScores) -> None:
    assert reply.scores["billing"] > reply.scores["tech"]
    assert sum(reply.scores.values()) == pytest.approx(1.0)


RESULTS = (StepResult(step_id="s1", executor="llm", text="x"),)
CASES = {
    "voter": Case(Voter, (), TallyRequest, {"ballots": BALLOTS, "groups": GROUPS}, _decision),
    "planner:plan": Case(
        lambda: Planner(PE_SPEC), [PE_SPEC.planner], PlanRequest, {"request": "go"}, _plan
    ),
    "planner:synthesize": Case(
        lambda: Planner(PE_SPEC),
        [PE_SPEC.planner],
        SynthesisRequest,
        {"request": "go", "results": RESULTS},
        _synthesis,
    ),
    "supervisor:assign": Case(
        lambda: Supervisor(SW_SPEC),
        [SW_SPEC.supervisor],
        AssignRequest,
        {"request": "go"},
        _assignments,
    ),
    "supervisor:review": Case(
        lambda: Supervisor(SW_SPEC),
        [SW_SPEC.supervisor],
        ReviewRequest,
        {"request": "go", "results": "[writer] x"},
        _review,
    ),
    "judge": Case(
        lambda: Judge(JUDGE_SPEC),
        [JUDGE_SPEC.model],
        ScoreRequest,
        {"question": "q?", "answer": "a"},
        _score,
    ),
    "model-router": Case(
        lambda: ModelRouter(MODEL_CLASSIFIER),
        [MODEL_CLASSIFIER.model],
        RouteRequest,
        {"text": "it will not start"},
        _model_scores,
    ),
    "embedding-router": Case(
        lambda: EmbeddingRouter(EMBEDDING_CLASSIFIER),
        [EMBEDDING_CLASSIFIER.model],
        RouteRequest,
        {"text": "my money back"},
        _embedding_scores,
    ),
}


async def context(models: Sequence[ModelSpec]) -> RequestContext:
    return RequestContext(handles=await InProcessRuntime().start_models(list(models)))


def request_for(case: Case, ctx: RequestContext) -> BaseModel:
    return case.request(trace_id=ctx.trace_id, parent_span_id=PARENT, **case.fields)


@pytest.mark.parametrize("name", CASES)
async def test_each_role_handles_its_request_under_the_parent_span(name):
    case = CASES[name]
    ctx = await context(case.models)
    role = case.make()
    assert case.request in role.message_types()
    case.check(await role.handle(request_for(case, ctx), ctx))
    # The role's model calls hang under the span the request names.
    assert all(span.parent_id == PARENT for span in ctx.spans)
    assert bool(ctx.spans) == bool(case.models)


@pytest.mark.parametrize("name", CASES)
async def test_a_role_validates_a_dict_on_arrival(name):
    case = CASES[name]
    ctx = await context(case.models)
    wire = request_for(case, ctx).model_dump(mode="json")
    case.check(await case.make().handle(wire, ctx))
    with pytest.raises(InvalidMessageError, match=case.request.__name__):
        await case.make().handle({**wire, "unexpected": 1}, ctx)


@pytest.mark.parametrize("name", CASES)
async def test_a_role_refuses_a_message_it_does_not_handle(name):
    case = CASES[name]
    ctx = await context(case.models)
    with pytest.raises(InvalidMessageError, match="cannot handle a Task"):
        await case.make().handle(Task(text="hi"), ctx)
    with pytest.raises(InvalidMessageError, match="cannot handle a dict"):
        await case.make().handle({"kind": "no_such_request"}, ctx)


async def test_a_request_as_data_is_validated_on_arrival():
    # Roles take their patterns' requests as built (role_request validated them); a request
    # that arrives as data, from the wire, is validated before any handler sees it.
    data = {
        "kind": "tally_request",
        "parent_span_id": PARENT,
        "ballots": [ballot.model_dump() for ballot in BALLOTS],
        "groups": [{"indices": [5], "representative": "x"}],
    }
    with pytest.raises(InvalidMessageError, match="name no ballot"):
        await Voter().handle(data, await context(()))


# ------------------------------------------------------------------- overriding the methods


class Contrarian(Voter):
    def decide(self, ballots: Sequence[Ballot], groups: Sequence[AnswerGroup]) -> Decision:
        decision = super().decide(ballots, groups)
        loser = min(decision.tally, key=lambda answer: decision.tally[answer])
        return decision.model_copy(update={"winner": loser})


class OneStepPlanner(Planner):
    async def plan(self, request: str, ctx: RequestContext, parent_id: str) -> Plan:
        return Plan(steps=(PlanStep(id="only", executor="llm", prompt=request),))

    async def synthesize(
        self, request: str, results: list[StepResult], ctx: RequestContext, parent_id: str
    ) -> str:
        return f"{len(results)} result(s) for {request}"


class SelfReliantSupervisor(Supervisor):
    async def assign(
        self, request: str, feedback: str, ctx: RequestContext, parent_id: str
    ) -> list[Assignment]:
        return [Assignment(worker="writer", task=f"{request} ({feedback or 'first round'})")]

    async def review(
        self, request: str, results: str, ctx: RequestContext, parent_id: str
    ) -> Review:
        return Review(approved=False, feedback="again")


class GenerousJudge(Judge):
    async def score(self, question: str, answer: str, ctx: RequestContext, parent_id: str) -> float:
        return 1.0


class AlwaysBilling(ModelRouter):
    async def classify(self, text: str, ctx: RequestContext, parent_id: str) -> dict[str, float]:
        return {"billing": 1.0, "tech": 0.0}


OVERRIDES: dict[str, tuple[Callable[[], Any], Callable[[Any], None]]] = {
    "voter": (Contrarian, lambda r: _check(r.winner, "no")),
    "planner:plan": (lambda: OneStepPlanner(PE_SPEC), lambda r: _check(r.steps[0].id, "only")),
    "planner:synthesize": (
        lambda: OneStepPlanner(PE_SPEC),
        lambda r: _check(r.text, "1 result(s) for go"),
    ),
    "supervisor:assign": (
        lambda: SelfReliantSupervisor(SW_SPEC),
        lambda r: _check(r.assignments[0].task, "go (first round)"),
    ),
    "supervisor:review": (
        lambda: SelfReliantSupervisor(SW_SPEC),
        lambda r: _check((r.approved, r.feedback), (False, "again")),
    ),
    "judge": (lambda: GenerousJudge(JUDGE_SPEC), lambda r: _check(r.score, 1.0)),
    "model-router": (
        lambda: AlwaysBilling(MODEL_CLASSIFIER),
        lambda r: _check(r.scores, {"billing": 1.0, "tech": 0.0}),
    ),
}


def _check(actual: object, expected: object) -> None:
    assert actual == expected


@pytest.mark.parametrize("name", OVERRIDES)
async def test_overriding_the_public_method_changes_the_handlers_reply(name):
    case = CASES[name]
    make, check = OVERRIDES[name]
    ctx = await context(case.models)
    check(await make().handle(request_for(case, ctx), ctx))


async def test_a_supervisor_that_assigns_nothing_is_refused():
    class Idle(Supervisor):
        async def assign(self, *args: Any) -> list[Assignment]:
            return []

    ctx = await context(())
    with pytest.raises(AssignmentError, match="no assignments"):
        await Idle(SW_SPEC).handle(AssignRequest(parent_span_id=PARENT, request="go"), ctx)


async def test_a_pattern_reaches_the_replacement_role_through_its_handler():
    seen: list[TallyRequest] = []

    class Watching(Voter):
        async def on_tally(self, request: TallyRequest, ctx: RequestContext) -> Decision:
            seen.append(request)
            return await super().on_tally(request, ctx)

    spec = VoteSpec(
        name="v",
        members=[model(f"m{i}", lambda _r, a=answer: a) for i, answer in enumerate("aab")],
    )
    result = await run_topology(spec, "?", InProcessRuntime(), roles={Voter: Watching})
    assert result.text == "a"
    (request,) = seen
    voter_span = next(span for span in result.trace if span.agent == "voter")
    assert (request.trace_id, request.parent_span_id) == (result.trace_id, voter_span.span_id)
