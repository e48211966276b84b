"""Fan-out, vote, consensus and weighted ensembles, run in-process with function models."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

import pytest
from pydantic import ValidationError

from cantata.agents import (
    CustomConfig,
    FunctionConfig,
    ModelRequest,
    ModelSpec,
    QuorumNotReachedError,
    Span,
    StructuredOutputError,
)
from cantata.agents.backends import EmbeddingBackend, Embeddings
from cantata.topologies import (
    ConsensusSpec,
    FanoutSpec,
    Grouping,
    InProcessRuntime,
    JudgeSpec,
    VoteSpec,
    WeightedEnsembleSpec,
    WeightedMember,
    run_topology,
)

Reply = Callable[[ModelRequest], str] | Callable[[ModelRequest], Awaitable[str]]


def model(name: str, fn: Reply | str) -> ModelSpec:
    """A function model; a string answers with itself."""
    reply = fn if callable(fn) else (lambda _request, text=fn: text)
    return ModelSpec(name=name, backend=FunctionConfig(fn=reply))


def sleeper(text: str, seconds: float) -> Callable[[ModelRequest], Awaitable[str]]:
    async def answer(_request: ModelRequest) -> str:
        await asyncio.sleep(seconds)
        return text

    return answer


def broken(_request: ModelRequest) -> str:
    raise RuntimeError("member exploded")


def overlap(a: Span, b: Span) -> bool:
    return a.start < b.end and b.start < a.end


def calls(spans: tuple[Span, ...]) -> dict[str, Span]:
    return {s.agent: s for s in spans if s.model is not None}


# ----------------------------------------------------------------------------------- fanout


async def test_fanout_returns_every_reply_in_member_order():
    # The first member answers last; the order is still the members' order.
    spec = FanoutSpec(
        name="f",
        members=[model("a", sleeper("alpha", 0.05)), model("b", "beta"), model("c", " gamma ")],
    )
    result = await run_topology(spec, "q", InProcessRuntime())

    assert result.replies is not None
    assert [r.member for r in result.replies] == ["a", "b", "c"]
    assert [r.text for r in result.replies] == ["alpha", "beta", " gamma "]
    assert all(r.ok for r in result.replies)
    assert result.text == "[a] alpha\n[b] beta\n[c] gamma"


async def test_fanout_reports_a_failing_member_and_the_others_still_answer():
    spec = FanoutSpec(name="f", members=[model("a", "x"), model("b", broken), model("c", "z")])
    result = await run_topology(spec, "q", InProcessRuntime())

    assert result.replies is not None
    a, b, c = result.replies
    assert (a.text, c.text) == ("x", "z")
    assert b.text is None
    assert not b.ok
    assert b.error is not None
    assert b.error.startswith("BackendError:")
    assert "member exploded" in b.error
    assert result.text.splitlines()[0] == "[a] x"
    assert result.text.splitlines()[1].startswith("[b] failed: BackendError")
    assert result.text.splitlines()[2] == "[c] z"


async def test_fanout_member_timeout_marks_the_slow_member_failed():
    spec = FanoutSpec(
        name="f",
        members=[model("fast", "quick"), model("slow", sleeper("late", 5.0)), model("b", "b")],
        member_timeout_s=0.2,
    )
    result = await run_topology(spec, "q", InProcessRuntime())

    assert result.replies is not None
    by_member = {r.member: r for r in result.replies}
    assert by_member["fast"].text == "quick"
    assert by_member["b"].text == "b"
    assert by_member["slow"].text is None
    assert by_member["slow"].error is not None
    assert by_member["slow"].error.startswith("DeadlineExceededError")


async def test_fanout_without_quorum_raises_naming_the_failed_members():
    spec = FanoutSpec(
        name="f",
        members=[model("a", "x"), model("b", broken), model("c", broken)],
    )
    with pytest.raises(QuorumNotReachedError) as caught:
        await run_topology(spec, "q", InProcessRuntime())

    assert set(caught.value.failures) == {"b", "c"}
    assert all("member exploded" in e for e in caught.value.failures.values())
    assert "1 of 3 members answered; 2 needed" in str(caught.value)


async def test_fanout_explicit_quorum_counts_answers():
    spec = FanoutSpec(
        name="f", members=[model("a", "x"), model("b", broken), model("c", broken)], quorum=1
    )
    result = await run_topology(spec, "q", InProcessRuntime())
    assert result.replies is not None
    assert [r.ok for r in result.replies] == [True, False, False]


async def test_fanout_members_run_at_the_same_time():
    spec = FanoutSpec(name="f", members=[model(n, sleeper(n, 0.2)) for n in ("a", "b", "c")])
    result = await run_topology(spec, "q", InProcessRuntime())

    spans = calls(result.trace)
    assert set(spans) == {"a", "b", "c"}
    assert overlap(spans["a"], spans["b"])
    assert overlap(spans["b"], spans["c"])
    assert overlap(spans["a"], spans["c"])
    assert all(s.parent_id == result.trace[0].span_id for s in spans.values())


# ------------------------------------------------------------------------------------- vote


async def test_vote_normalizes_answers_into_one_group():
    spec = VoteSpec(
        name="v",
        members=[
            model("a", "Paris"),
            model("b", "paris."),
            model("c", "Lyon"),
            model("d", " PARIS "),
        ],
    )
    result = await run_topology(spec, "capital?", InProcessRuntime())

    assert result.text == "Paris"
    assert result.decision is not None
    assert result.decision.tally == {"Paris": 3.0, "Lyon": 1.0}
    assert result.decision.agreement == 0.75
    assert result.decision.winner == "Paris"
    assert [b.member for b in result.decision.ballots] == ["a", "b", "c", "d"]


@pytest.mark.parametrize(
    ("answers", "winner"),
    [(("A", "B"), "A"), (("B", "A"), "B"), (("x", "y", "z"), "x"), (("y", "x", "x", "y"), "y")],
)
async def test_vote_ties_go_to_the_earliest_listed_member(answers, winner):
    # Later-listed members answer first, so arrival order never decides.
    members = [
        model(f"m{i}", sleeper(answer, 0.01 * (len(answers) - i)))
        for i, answer in enumerate(answers)
    ]
    result = await run_topology(VoteSpec(name="v", members=members), "?", InProcessRuntime())

    assert result.text == winner
    assert result.decision is not None
    assert len(set(result.decision.tally.values())) == 1


async def test_failed_members_do_not_vote():
    spec = VoteSpec(
        name="v",
        members=[model("a", broken), model("b", "Z"), model("c", "Y"), model("d", "Y")],
    )
    result = await run_topology(spec, "?", InProcessRuntime())

    assert result.text == "Y"
    assert result.decision is not None
    assert result.decision.tally == {"Z": 1.0, "Y": 2.0}
    assert result.decision.agreement == pytest.approx(2 / 3)
    assert [b.member for b in result.decision.ballots] == ["b", "c", "d"]
    assert result.replies is not None
    assert [r.ok for r in result.replies] == [False, True, True, True]


class TableEmbedder(EmbeddingBackend):
    """Vectors from a fixed table; an unknown text is a test bug."""

    def __init__(self, table: dict[str, tuple[float, ...]]) -> None:
        self.table = table

    async def embed(
        self, texts: tuple[str, ...], *, input_type: str = "query", deadline: float | None = None
    ) -> Embeddings:
        return Embeddings(vectors=tuple(self.table[text] for text in texts))


PARAPHRASES = {
    "The capital is Paris.": (1.0, 0.3),
    "Lyon": (0.0, 1.0),
    "It is Paris": (1.0, 0.0),
    "Paris, of course": (1.0, -0.3),
}


async def test_semantic_vote_groups_paraphrases_and_picks_the_most_central():
    embedder = ModelSpec(
        name="table-embed", backend=CustomConfig(factory=lambda _r: TableEmbedder(PARAPHRASES))
    )
    spec = VoteSpec(
        name="v",
        members=[model(f"m{i}", text) for i, text in enumerate(PARAPHRASES)],
        grouping=Grouping(mode="semantic", embedder=embedder, threshold=0.85),
    )
    result = await run_topology(spec, "capital?", InProcessRuntime())

    # (1, 0) is closest on average to (1, 0.3) and (1, -0.3); "Lyon" stands alone.
    assert result.text == "It is Paris"
    assert result.decision is not None
    assert result.decision.tally == {"It is Paris": 3.0, "Lyon": 1.0}
    assert result.decision.agreement == 0.75
    voter = next(s for s in result.trace if s.agent == "voter")
    assert calls(result.trace)["table-embed"].parent_id == voter.span_id


async def test_semantic_vote_below_threshold_keeps_answers_apart():
    embedder = ModelSpec(
        name="table-embed-strict",
        backend=CustomConfig(factory=lambda _r: TableEmbedder(PARAPHRASES)),
    )
    spec = VoteSpec(
        name="v",
        members=[model(f"m{i}", text) for i, text in enumerate(PARAPHRASES)],
        grouping=Grouping(mode="semantic", embedder=embedder, threshold=0.99),
    )
    result = await run_topology(spec, "capital?", InProcessRuntime())

    assert result.decision is not None
    assert result.decision.tally == {text: 1.0 for text in PARAPHRASES}
    assert result.text == "The capital is Paris."


# -------------------------------------------------------------------------------- consensus


def consensus(answers: list[str], threshold: float, strong: list[str]) -> ConsensusSpec:
    def big(_request: ModelRequest) -> str:
        strong.append("called")
        return "Paris (strong)"

    return ConsensusSpec(
        name="c",
        members=[model(f"m{i}", a) for i, a in enumerate(answers)],
        threshold=threshold,
        escalate_to=model("big", big),
    )


async def test_consensus_at_threshold_does_not_escalate():
    strong: list[str] = []
    spec = consensus(["Paris", "paris", "Lyon"], 2 / 3, strong)
    result = await run_topology(spec, "?", InProcessRuntime())

    assert result.text == "Paris"
    assert result.decision is not None
    assert result.decision.escalated is False
    assert result.decision.agreement == 2 / 3
    assert strong == []
    assert "big" not in calls(result.trace)


async def test_consensus_above_threshold_does_not_escalate():
    strong: list[str] = []
    spec = consensus(["Nice", "Nice", "Nice", "Lyon"], 0.7, strong)
    result = await run_topology(spec, "?", InProcessRuntime())

    assert result.text == "Nice"
    assert result.decision is not None
    assert result.decision.escalated is False
    assert result.decision.agreement == 0.75
    assert strong == []


async def test_consensus_below_threshold_escalates_to_the_strong_model():
    strong: list[str] = []
    spec = consensus(["Paris", "Paris", "Lyon"], 0.7, strong)
    result = await run_topology(spec, "?", InProcessRuntime())

    assert result.text == "Paris (strong)"
    assert result.decision is not None
    assert result.decision.escalated is True
    assert result.decision.winner == "Paris (strong)"
    assert result.decision.agreement == 2 / 3
    assert result.decision.tally == {"Paris": 2.0, "Lyon": 1.0}
    assert strong == ["called"]
    step = next(s for s in result.trace if s.agent == "consensus")
    assert calls(result.trace)["big"].parent_id == step.span_id


async def test_consensus_counts_failed_members_as_not_agreeing():
    strong: list[str] = []
    spec = ConsensusSpec(
        name="c",
        members=[model("a", "Paris"), model("b", "Paris"), model("c", broken)],
        threshold=0.7,
        escalate_to=model("big", lambda _r: strong.append("x") or "strong"),
    )
    result = await run_topology(spec, "?", InProcessRuntime())

    assert result.text == "strong"
    assert result.decision is not None
    assert result.decision.escalated is True
    assert result.decision.agreement == 2 / 3
    assert strong == ["x"]


# ------------------------------------------------------------------------ weighted ensemble


async def test_the_scorer_times_the_weights_decides():
    scores = {"good": 1.0, "bad": 0.5}
    spec = WeightedEnsembleSpec(
        name="w",
        members=[
            WeightedMember(member=model("a", "good"), weight=1.0),
            WeightedMember(member=model("b", "bad"), weight=1.5),
        ],
        scorer=lambda _question, answer: scores[answer],
        quorum=2,
    )
    result = await run_topology(spec, "?", InProcessRuntime())

    assert result.text == "good"
    assert result.decision is not None
    assert result.decision.tally == {"good": 1.0, "bad": 0.75}
    assert [b.score for b in result.decision.ballots] == [1.0, 0.75]
    assert [b.weight for b in result.decision.ballots] == [1.0, 1.5]


async def test_the_scorer_sees_the_question():
    seen: list[tuple[str, str]] = []

    def scorer(question: str, answer: str) -> float:
        seen.append((question, answer))
        return 1.0

    spec = WeightedEnsembleSpec(
        name="w", members=[WeightedMember(member=model("a", "ans"))], scorer=scorer
    )
    await run_topology(spec, "the question", InProcessRuntime())
    assert seen == [("the question", "ans")]


async def test_identical_answers_pool_their_scores():
    spec = WeightedEnsembleSpec(
        name="w",
        members=[
            WeightedMember(member=model("heavy", "Y"), weight=1.5),
            WeightedMember(member=model("w1", "X"), weight=1.0),
            WeightedMember(member=model("w2", "x."), weight=1.0),
        ],
        scorer=lambda _q, _a: 1.0,
    )
    result = await run_topology(spec, "?", InProcessRuntime())

    assert result.text == "X"
    assert result.decision is not None
    assert result.decision.tally == {"Y": 1.5, "X": 2.0}
    assert result.decision.agreement == pytest.approx(2.0 / 3.5)


def judge_model(requests: list[ModelRequest], scores: dict[str, int]) -> ModelSpec:
    def judge(request: ModelRequest) -> str:
        requests.append(request)
        answer = request.messages[-1].content.split("Answer: ", 1)[1]
        return json.dumps({"score": scores[answer]})

    return model("judge", judge)


async def test_a_judge_model_scores_the_answers():
    requests: list[ModelRequest] = []
    spec = WeightedEnsembleSpec(
        name="w",
        members=[
            WeightedMember(member=model("a", "weak answer"), weight=2.0),
            WeightedMember(member=model("b", "strong answer"), weight=1.0),
        ],
        judge=JudgeSpec(
            model=judge_model(requests, {"weak answer": 2, "strong answer": 9}), scale=10
        ),
    )
    result = await run_topology(spec, "the question", InProcessRuntime())

    # weak: 2/10 * 2.0 = 0.4; strong: 9/10 * 1.0 = 0.9
    assert result.text == "strong answer"
    assert result.decision is not None
    assert result.decision.tally == pytest.approx({"weak answer": 0.4, "strong answer": 0.9})
    assert len(requests) == 2
    assert {r.messages[-1].content for r in requests} == {
        "Question: the question\n\nAnswer: weak answer",
        "Question: the question\n\nAnswer: strong answer",
    }
    fmt = requests[0].response_format
    assert fmt is not None
    assert fmt.name == "score"
    assert "to 10 (correct" in requests[0].messages[0].content
    evaluator = next(s for s in result.trace if s.agent == "evaluator")
    judge_spans = [s for s in result.trace if s.agent == "judge"]
    assert len(judge_spans) == 2
    assert all(s.parent_id == evaluator.span_id for s in judge_spans)


async def test_a_judge_score_out_of_range_is_a_structured_output_error():
    spec = WeightedEnsembleSpec(
        name="w",
        members=[WeightedMember(member=model("a", "answer"))],
        judge=JudgeSpec(model=model("judge", '{"score": 99}'), scale=10),
    )
    with pytest.raises(StructuredOutputError) as caught:
        await run_topology(spec, "?", InProcessRuntime())
    assert caught.value.text == '{"score": 99}'
    assert "score" in str(caught.value)


@pytest.mark.parametrize("evaluators", ["both", "neither"])
def test_a_weighted_ensemble_needs_exactly_one_evaluator(evaluators):
    extra: dict[str, object] = (
        {"judge": JudgeSpec(model=model("judge", "{}")), "scorer": lambda _q, _a: 1.0}
        if evaluators == "both"
        else {}
    )
    with pytest.raises(ValidationError, match="exactly one evaluator"):
        WeightedEnsembleSpec(name="w", members=[WeightedMember(member=model("a", "x"))], **extra)
