"""Running datasets through topologies in-process: records, failures, reports, concurrency."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import pytest

from cantata.agents import (
    CustomConfig,
    FunctionConfig,
    ModelRequest,
    ModelSpec,
    Pricing,
    TopologySpecError,
    Usage,
)
from cantata.agents.backends import Completion, EmbeddingBackend, Embeddings
from cantata.topologies import (
    ConsensusSpec,
    DatasetError,
    InProcessRuntime,
    Label,
    ModelClassifier,
    RouterSpec,
    SingleSpec,
    VoteSpec,
    build_report,
    evaluate,
    parse_dataset,
    run_evaluation,
)


def model(name: str, fn: Callable[[ModelRequest], str] | str, **extra: object) -> ModelSpec:
    reply = fn if callable(fn) else (lambda _request, text=fn: text)
    return ModelSpec(name=name, backend=FunctionConfig(fn=reply), **extra)  # type: ignore[arg-type]


def user_text(request: ModelRequest) -> str:
    return request.messages[-1].content


def dataset(*rows: dict[str, str]):
    return parse_dataset([json.dumps(row) for row in rows], source="test.jsonl")


# -------------------------------------------------------------------------------- routers


def keyword_classifier(request: ModelRequest) -> str:
    """Picks a label by keyword, sure of it; 'boom' makes the classifier fail."""
    text = user_text(request)
    if "boom" in text:
        raise RuntimeError("classifier exploded")
    if "refund" in text:
        return json.dumps({"label": "billing", "confidence": 0.9})
    if "parcel" in text:
        return json.dumps({"label": "shipping", "confidence": 0.8})
    return json.dumps({"label": "billing", "confidence": 0.1})  # unsure: should default


def support_router(threshold: float = 0.5) -> RouterSpec:
    return RouterSpec(
        name="support",
        classifier=ModelClassifier(
            model=model("cls", keyword_classifier),
            labels={
                "billing": Label(description="money"),
                "shipping": Label(description="parcels"),
            },
        ),
        routes={
            "billing": model("billing-agent", "billing answer"),
            "shipping": model("shipping-agent", "shipping answer"),
            "general": model("general-agent", "general answer"),
        },
        default="general",
        threshold=threshold,
    )


ROUTER_DATA = dataset(
    {"input": "refund please", "label": "billing"},
    {"input": "where is my parcel", "label": "shipping"},
    {"input": "hello there", "label": "general"},
    {"input": "parcel refund", "label": "shipping"},  # the classifier says billing: a mistake
    {"input": "boom", "label": "billing"},  # the classifier fails
)


async def test_a_router_is_graded_on_the_route_actually_taken():
    cases = await run_evaluation(support_router(), ROUTER_DATA, InProcessRuntime())

    assert [c.line for c in cases] == [1, 2, 3, 4, 5]
    assert [c.route for c in cases] == ["billing", "shipping", "general", "billing", None]
    # An unsure classification (0.1 < 0.5) took the default route; its raw scores are kept.
    assert cases[2].scores == {"billing": 0.1, "shipping": 0.0}
    assert cases[2].confidence == pytest.approx(0.1)
    assert cases[0].answer == "billing answer"


async def test_a_failed_request_is_recorded_never_dropped():
    cases = await run_evaluation(support_router(), ROUTER_DATA, InProcessRuntime())

    failed = cases[4]
    assert not failed.ok
    assert failed.error_type == "BackendError"
    assert failed.error is not None
    assert "classifier exploded" in failed.error
    assert failed.answer is None
    # The spans it finished stay on record.
    assert [(call.agent, call.ok) for call in failed.calls] == [("cls", False)]


async def test_the_router_report_has_accuracy_a_confusion_matrix_and_failures():
    spec = support_router()
    cases = await run_evaluation(spec, ROUTER_DATA, InProcessRuntime())
    report = build_report(spec, "test.jsonl", cases)

    assert report.requests == 5
    assert report.failed == 1
    assert report.accuracy_metric == "routing"
    assert report.accuracy == pytest.approx(3 / 5)  # the failed request counts as wrong
    assert report.routing is not None
    matrix = report.routing.confusion
    assert matrix.labels == ("billing", "shipping", "general", "(failed)")
    assert matrix.counts == ((1, 0, 0, 1), (1, 1, 0, 0), (0, 0, 1, 0), (0, 0, 0, 0))
    assert report.routing.defaulted == 1
    (failure,) = report.failures
    assert (failure.error_type, failure.count, failure.lines) == ("BackendError", 1, (5,))
    assert [(m.line, m.want, m.got) for m in report.mistakes] == [
        (4, "shipping", "billing"),
        (5, "billing", f"BackendError: {failure.message}"),
    ]


async def test_the_router_report_fits_a_threshold_from_the_recorded_scores():
    spec = support_router(threshold=0.95)  # far too high: everything defaults
    cases = await run_evaluation(spec, ROUTER_DATA, InProcessRuntime())
    report = build_report(spec, "test.jsonl", cases, default_precision=1.0)

    assert report.accuracy == pytest.approx(1 / 5)
    assert report.routing is not None
    best = report.routing.best_threshold
    # Confidences are 0.9, 0.8, 0.1, 0.9: between 0.1 and 0.8 only "hello there" defaults.
    assert best.threshold == pytest.approx(0.45)
    assert best.accuracy == pytest.approx(3 / 5)
    fit = report.routing.default_precision_threshold
    assert fit is not None
    assert fit.threshold == pytest.approx(0.45)
    assert fit.default_precision == 1.0


async def test_model_latency_is_keyed_by_the_models_name_in_the_topology():
    spec = support_router()
    cases = await run_evaluation(spec, ROUTER_DATA, InProcessRuntime())
    report = build_report(spec, "test.jsonl", cases)

    calls = {m.agent: (m.calls, m.failed) for m in report.models}
    # The failed request's classifier call counts too: it was made, and it failed.
    assert calls == {
        "cls": (5, 1),
        "billing-agent": (2, 0),
        "shipping-agent": (1, 0),
        "general-agent": (1, 0),
    }
    for model_report in report.models:
        assert model_report.latency.count == model_report.calls
        assert model_report.latency.p50_ms <= model_report.latency.p95_ms


# -------------------------------------------------------------------------------- answers


class WordEmbedder(EmbeddingBackend):
    """One dimension per vocabulary word: equal word sets embed identically."""

    VOCAB = ("paris", "france", "capital", "london", "four")

    async def embed(
        self, texts: tuple[str, ...], *, input_type: str = "query", deadline: float | None = None
    ) -> Embeddings:
        vectors = tuple(tuple(float(word in text.lower()) for word in self.VOCAB) for text in texts)
        return Embeddings(vectors=vectors, input_tokens=len(texts))


def embedder() -> ModelSpec:
    return ModelSpec(name="scorer", backend=CustomConfig(factory=lambda _r: WordEmbedder()))


def priced(text: str) -> Callable[[ModelRequest], Completion]:
    def reply(_request: ModelRequest) -> Completion:
        return Completion(text=text, usage=Usage(input_tokens=100, output_tokens=50))

    return reply


ANSWER_DATA = dataset(
    {"input": "capital of France?", "expected": "Paris"},
    {"input": "capital of France, in a sentence?", "expected": "The capital of France is Paris."},
    {"input": "2+2?", "expected": "four"},
)


async def test_answers_are_graded_exactly_and_by_meaning():
    answers = {
        "capital of France?": "paris.",  # exact after normalization
        "capital of France, in a sentence?": "Paris is the capital of France",  # same words
        "2+2?": "London",  # wrong
    }
    spec = SingleSpec(name="qa", model=model("m", lambda r: answers[user_text(r)]))
    cases = await run_evaluation(spec, ANSWER_DATA, InProcessRuntime(), embedder=embedder())
    report = build_report(spec, "test.jsonl", cases)

    assert [c.exact for c in cases] == [True, False, False]
    assert cases[1].similarity == pytest.approx(1.0)
    assert cases[2].similarity == pytest.approx(0.0)
    assert report.answers is not None
    assert report.answers.exact_match == pytest.approx(1 / 3)
    assert report.answers.semantic == pytest.approx(2 / 3)
    assert report.accuracy_metric == "semantic"
    assert report.accuracy == pytest.approx(2 / 3)
    assert report.routing is None


async def test_without_an_embedder_answers_are_graded_exactly():
    spec = SingleSpec(name="qa", model=model("m", "Paris"))
    cases = await run_evaluation(spec, ANSWER_DATA, InProcessRuntime(), embedder=None)
    report = build_report(spec, "test.jsonl", cases)

    assert all(c.similarity is None for c in cases)
    assert report.accuracy_metric == "exact"
    assert report.accuracy == pytest.approx(1 / 3)


async def test_tokens_and_cost_are_reported_per_request():
    spec = SingleSpec(
        name="qa",
        model=model("m", priced("Paris"), pricing=Pricing(input_per_mtok=1.0, output_per_mtok=2.0)),
    )
    cases = await run_evaluation(spec, ANSWER_DATA, InProcessRuntime())
    report = build_report(spec, "test.jsonl", cases)

    assert report.cost.tokens_per_request == 150
    assert report.cost.cost_per_request_usd == pytest.approx(200 / 1e6)
    assert report.cost.total_cost_usd == pytest.approx(600 / 1e6)
    (only,) = report.models
    assert only.tokens == 450


async def test_the_embedder_may_not_clash_with_a_topology_model():
    spec = SingleSpec(name="qa", model=model("scorer", "Paris"))
    with pytest.raises(TopologySpecError, match="already has a different model named 'scorer'"):
        await run_evaluation(spec, ANSWER_DATA, InProcessRuntime(), embedder=embedder())


async def test_a_dataset_that_does_not_fit_fails_before_any_model_starts():
    started: list[str] = []

    class Watching(InProcessRuntime):
        async def start_models(self, specs):
            started.extend(spec.name for spec in specs)
            return await super().start_models(specs)

    with pytest.raises(DatasetError, match="need 'label'"):
        await run_evaluation(support_router(), ANSWER_DATA, Watching())
    assert started == []


# ---------------------------------------------------------------------- votes, consensus


def voter(answers: dict[str, str]) -> Callable[[ModelRequest], str]:
    return lambda request: json.dumps({"choice": answers.get(user_text(request), "negative")})


VOTE_DATA = dataset(
    {"input": "great", "expected": "positive"},
    {"input": "awful", "expected": "negative"},
    {"input": "meh", "expected": "positive"},
)


async def test_votes_report_agreement_and_labels_are_graded_exactly():
    spec = VoteSpec(
        name="v",
        members=[
            model("a", voter({"great": "positive", "meh": "positive"})),
            model("b", voter({"great": "positive"})),
            model("c", voter({"great": "positive", "awful": "positive"})),
        ],
        choices=("positive", "negative"),
    )
    runtime = InProcessRuntime()
    cases = await run_evaluation(spec, VOTE_DATA, runtime, embedder=embedder())
    report = build_report(spec, "test.jsonl", cases)

    # Answers constrained to choices are labels: no embedder is started to grade them.
    assert all(c.similarity is None for c in cases)
    assert report.accuracy_metric == "exact"
    assert report.accuracy == pytest.approx(2 / 3)
    assert report.ensemble is not None
    assert report.ensemble.mean_agreement == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)
    assert report.ensemble.unanimous_rate == pytest.approx(1 / 3)
    assert report.ensemble.escalation_rate == 0.0


async def test_consensus_reports_how_often_it_escalated():
    spec = ConsensusSpec(
        name="c",
        members=[model("a", "yes"), model("b", "no"), model("c", "yes")],
        threshold=1.0,  # anything short of unanimity escalates
        escalate_to=model("strong", "maybe"),
    )
    data = dataset({"input": "q", "expected": "maybe"})
    cases = await run_evaluation(spec, data, InProcessRuntime(), embedder=None)
    report = build_report(spec, "test.jsonl", cases)

    assert report.ensemble is not None
    assert report.ensemble.escalation_rate == 1.0
    assert report.accuracy == 1.0


# ------------------------------------------------------------------------ concurrency


async def test_at_most_concurrency_requests_are_in_flight_and_results_keep_dataset_order():
    in_flight = 0
    most = 0
    finished: list[str] = []
    full = asyncio.Event()  # set once three requests are in flight together
    five_done = asyncio.Event()

    async def gated(request: ModelRequest) -> str:
        nonlocal in_flight, most
        text = user_text(request)
        in_flight += 1
        most = max(most, in_flight)
        if in_flight == 3:
            full.set()
        # The first requests wait until the limit is reached (a lower limit times out here);
        # request 0 then waits for request 5, so it finishes after later ones.
        await asyncio.wait_for(full.wait(), 5)
        if text == "0":
            await asyncio.wait_for(five_done.wait(), 5)
        in_flight -= 1
        if text == "5":
            five_done.set()
        return text

    spec = SingleSpec(name="s", model=model("m", gated))
    data = dataset(*({"input": str(i), "expected": str(i)} for i in range(10)))
    runtime = InProcessRuntime()
    handles = await runtime.start_models(spec.models())
    try:
        cases = await evaluate(
            spec,
            data,
            handles,
            concurrency=3,
            on_result=lambda case: finished.append(case.input),
        )
    finally:
        await runtime.stop_models(list(handles.values()))

    assert most == 3
    assert finished.index("0") > finished.index("5")
    assert sorted(finished) == [str(i) for i in range(10)]
    assert [c.input for c in cases] == [str(i) for i in range(10)]
    assert all(c.exact for c in cases)


async def test_concurrency_must_be_positive():
    with pytest.raises(ValueError, match="at least 1"):
        await evaluate(SingleSpec(name="s", model=model("m", "x")), ANSWER_DATA, {}, concurrency=0)
