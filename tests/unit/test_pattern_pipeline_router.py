"""The pipeline and router patterns, run in-process with function and hand-made embedding models."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Callable

import pytest

from cantata.agents import (
    BackendError,
    CustomConfig,
    FunctionConfig,
    ModelRequest,
    ModelSpec,
    StructuredOutputError,
)
from cantata.agents.backends import EmbeddingBackend, Embeddings
from cantata.topologies import (
    EmbeddingClassifier,
    InProcessRuntime,
    Label,
    ModelClassifier,
    PipelineSpec,
    PromptTemplate,
    RouterSpec,
    Stage,
    answer,
    run_topology,
)


def model(name: str, fn: Callable[[ModelRequest], str] | str) -> ModelSpec:
    """A function model; a string answers with itself."""
    reply = fn if callable(fn) else (lambda _request, text=fn: text)
    return ModelSpec(name=name, backend=FunctionConfig(fn=reply))


def user_text(request: ModelRequest) -> str:
    return request.messages[-1].content


# --------------------------------------------------------------------------------- pipeline


async def test_each_stage_feeds_the_next():
    seen: list[tuple[str, str]] = []

    def stage(tag: str) -> Callable[[ModelRequest], str]:
        def answer(request: ModelRequest) -> str:
            seen.append((tag, user_text(request)))
            return f"{user_text(request)}>{tag}"

        return answer

    spec = PipelineSpec(
        name="p",
        stages=[Stage(member=model(t, stage(t))) for t in ("one", "two", "three")],
    )
    result = await run_topology(spec, "start", InProcessRuntime())

    assert result.text == "start>one>two>three"
    assert seen == [
        ("one", "start"),
        ("two", "start>one"),
        ("three", "start>one>two"),
    ]
    assert result.pattern == "pipeline"


async def test_original_in_a_stage_prompt_is_the_request():
    seen: list[str] = []

    def second(request: ModelRequest) -> str:
        seen.append(user_text(request))
        return "done"

    spec = PipelineSpec(
        name="p",
        stages=[
            Stage(member=model("draft", "a draft")),
            Stage(
                member=model("edit", second),
                prompt=PromptTemplate(system="fix it", user="Q: {original}\nDraft: {input}"),
            ),
        ],
    )
    result = await run_topology(spec, "what is 2+2?", InProcessRuntime())

    assert result.text == "done"
    assert seen == ["Q: what is 2+2?\nDraft: a draft"]


async def test_stage_output_reaches_the_next_stage_verbatim():
    seen: list[str] = []

    def second(request: ModelRequest) -> str:
        seen.append(user_text(request))
        return "ok"

    spec = PipelineSpec(
        name="p",
        stages=[
            Stage(member=model("coder", "print(f'{original}')")),
            Stage(member=model("reviewer", second), prompt=PromptTemplate(user="Review: {input}")),
        ],
    )
    await run_topology(spec, "write code", InProcessRuntime())

    assert seen == ["Review: print(f'{original}')"]


async def test_stage_spans_hang_off_the_root_and_model_calls_off_their_stage():
    spec = PipelineSpec(
        name="p",
        stages=[Stage(member=model("a", "x")), Stage(member=model("b", "y"))],
    )
    result = await run_topology(spec, "in", InProcessRuntime())

    root = result.trace[0]
    assert root.agent == "p"
    assert root.parent_id is None
    stages = {s.agent: s for s in result.trace if s.agent.startswith("stage-")}
    assert set(stages) == {"stage-1:a", "stage-2:b"}
    assert all(s.parent_id == root.span_id for s in stages.values())
    calls = {s.agent: s for s in result.trace if s.model is not None}
    assert calls["a"].parent_id == stages["stage-1:a"].span_id
    assert calls["b"].parent_id == stages["stage-2:b"].span_id
    assert stages["stage-1:a"].end <= stages["stage-2:b"].start


async def test_a_failing_stage_raises_its_typed_error_and_later_stages_do_not_run():
    later: list[str] = []

    def broken(_request: ModelRequest) -> str:
        raise ValueError("boom")

    def third(request: ModelRequest) -> str:
        later.append(user_text(request))
        return "never"

    spec = PipelineSpec(
        name="p",
        stages=[
            Stage(member=model("a", "fine")),
            Stage(member=model("b", broken)),
            Stage(member=model("c", third)),
        ],
    )
    with pytest.raises(BackendError, match="boom") as caught:
        await run_topology(spec, "in", InProcessRuntime())
    assert caught.value.model == "b"
    assert later == []


# ----------------------------------------------------------------------------- model router

LABELS = {
    "refund": Label(description="the customer wants money back"),
    "shipping": Label(examples=("where is my parcel",)),
    "other": Label(description="anything else"),
}


def classifier(label: str, confidence: float, requests: list[ModelRequest] | None = None):
    def answer(request: ModelRequest) -> str:
        if requests is not None:
            requests.append(request)
        return json.dumps({"label": label, "confidence": confidence})

    return model("cls", answer)


def router(cls: ModelSpec, *, threshold: float = 0.0, with_shipping: bool = True) -> RouterSpec:
    routes = {"refund": model("refunds", "refund handled"), "other": model("general", "general")}
    if with_shipping:
        routes["shipping"] = model("shipper", "parcel found")
    return RouterSpec(
        name="r",
        classifier=ModelClassifier(model=cls, labels=LABELS),
        routes=routes,
        default="other",
        threshold=threshold,
    )


async def test_the_chosen_label_routes_to_its_member():
    result = await run_topology(router(classifier("shipping", 0.8)), "hi", InProcessRuntime())

    assert result.text == "parcel found"
    assert result.route is not None
    assert result.route.label == "shipping"
    assert result.route.confidence == 0.8
    assert result.route.target == "shipper"
    assert result.route.defaulted is False
    assert result.route.scores == {"refund": 0.0, "shipping": 0.8, "other": 0.0}
    root = result.trace[0]
    router_span = next(s for s in result.trace if s.agent == "router")
    assert router_span.parent_id == root.span_id
    calls = {s.agent: s for s in result.trace if s.model is not None}
    assert calls["cls"].parent_id == router_span.span_id
    assert calls["shipper"].parent_id == root.span_id
    assert "refunds" not in calls
    assert "general" not in calls


async def test_the_classifier_is_asked_for_json_constrained_to_the_labels():
    requests: list[ModelRequest] = []
    await run_topology(router(classifier("refund", 1.0, requests)), "money!", InProcessRuntime())

    (request,) = requests
    fmt = request.response_format
    assert fmt is not None
    assert fmt.name == "route"
    properties = fmt.json_schema["properties"]
    assert isinstance(properties, dict)
    assert properties["label"] == {"type": "string", "enum": ["refund", "shipping", "other"]}
    assert request.messages[-1].content == "money!"
    assert "the customer wants money back" in request.messages[0].content


async def test_confidence_below_the_threshold_goes_to_the_default():
    spec = router(classifier("refund", 0.3), threshold=0.5)
    result = await run_topology(spec, "hmm", InProcessRuntime())

    assert result.text == "general"
    assert result.route is not None
    assert result.route.label == "refund"
    assert result.route.confidence == 0.3
    assert result.route.target == "general"
    assert result.route.defaulted is True


async def test_confidence_exactly_at_the_threshold_is_routed():
    spec = router(classifier("refund", 0.5), threshold=0.5)
    result = await run_topology(spec, "hmm", InProcessRuntime())

    assert result.text == "refund handled"
    assert result.route is not None
    assert result.route.defaulted is False


async def test_a_label_without_a_route_goes_to_the_default():
    spec = router(classifier("shipping", 0.99), with_shipping=False)
    result = await run_topology(spec, "parcel?", InProcessRuntime())

    assert result.text == "general"
    assert result.route is not None
    assert result.route.label == "shipping"
    assert result.route.target == "general"
    assert result.route.defaulted is True


async def test_a_label_outside_the_set_is_a_structured_output_error():
    cls = model("cls", '{"label": "nope", "confidence": 1}')
    with pytest.raises(StructuredOutputError) as caught:
        await run_topology(router(cls), "hi", InProcessRuntime())
    assert caught.value.text == '{"label": "nope", "confidence": 1}'
    assert caught.value.model == "cls"


async def test_a_confidence_out_of_range_is_a_structured_output_error():
    cls = model("cls", '{"label": "refund", "confidence": 7}')
    with pytest.raises(StructuredOutputError, match="route"):
        await run_topology(router(cls), "hi", InProcessRuntime())


# ------------------------------------------------------------------------- embedding router

VOCAB = ("money", "invoice", "crash", "bug", "parcel")


class KeywordEmbedder(EmbeddingBackend):
    """One dimension per vocabulary word: the word's count in the text."""

    def __init__(self, vocab: tuple[str, ...] = VOCAB, delay_s: float = 0.0) -> None:
        self.vocab = vocab
        self.delay_s = delay_s
        self.calls: list[tuple[tuple[str, ...], str]] = []

    async def embed(
        self, texts: tuple[str, ...], *, input_type: str = "query", deadline: float | None = None
    ) -> Embeddings:
        self.calls.append((texts, input_type))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)  # let concurrent requests overlap
        vectors = tuple(
            tuple(float(text.lower().split().count(word)) for word in self.vocab) for text in texts
        )
        return Embeddings(vectors=vectors, input_tokens=sum(len(t.split()) for t in texts))


def embedding_router(
    embedder: ModelSpec, threshold: float = 0.0, temperature: float | None = None
) -> RouterSpec:
    return RouterSpec(
        name="er",
        classifier=EmbeddingClassifier(
            model=embedder,
            labels={
                "billing": Label(description="invoice questions", examples=("money back",)),
                "tech": Label(description="crash or bug reports"),
                "other": Label(description="greetings"),
            },
            **({} if temperature is None else {"temperature": temperature}),
        ),
        routes={
            "billing": model("billing-desk", "billing answer"),
            "tech": model("tech-desk", "tech answer"),
            "other": model("front-desk", "hello answer"),
        },
        default="other",
        threshold=threshold,
    )


def softmax(similarities: dict[str, float], temperature: float) -> dict[str, float]:
    """The expected probabilities, computed independently of the router."""
    weights = {label: math.exp(value / temperature) for label, value in similarities.items()}
    total = sum(weights.values())
    return {label: weight / total for label, weight in weights.items()}


async def test_the_embedding_classifier_routes_to_the_nearest_label():
    backend = KeywordEmbedder()
    # Unique embedder names: EmbeddingRouter caches label vectors per process by name.
    embedder = ModelSpec(name="kw-embed-best", backend=CustomConfig(factory=lambda _r: backend))
    result = await run_topology(
        embedding_router(embedder), "my app shows a crash", InProcessRuntime()
    )

    assert result.text == "tech answer"
    assert result.route is not None
    assert result.route.label == "tech"
    assert result.route.target == "tech-desk"
    assert result.route.defaulted is False
    # Query (0,0,1,0,0) against "crash or bug reports" (0,0,1,1,0): cos = 1/sqrt(2); the other
    # labels share no word with it: cos = 0. At temperature 0.01 a lead of 0.7 is a certainty.
    assert result.route.scores == pytest.approx(
        softmax({"billing": 0.0, "tech": 2**-0.5, "other": 0.0}, 0.01)
    )
    assert result.route.confidence == pytest.approx(1.0)
    # Label texts are embedded as passages, the request as a query.
    assert backend.calls == [
        (("invoice questions", "money back", "crash or bug reports", "greetings"), "passage"),
        (("my app shows a crash",), "query"),
    ]


async def test_the_embedding_classifier_scores_are_probabilities_of_each_labels_best_text():
    embedder = ModelSpec(
        name="kw-embed-scores", backend=CustomConfig(factory=lambda _r: KeywordEmbedder())
    )
    spec = embedding_router(embedder, temperature=0.5)
    result = await run_topology(spec, "money money crash", InProcessRuntime())

    assert result.route is not None
    # Query (2,0,1,0,0): billing's best text, "money back" (1,0,0,0,0), scores 2/sqrt(5) (its
    # description shares no word); "crash or bug" 1/sqrt(10); "greetings" 0.
    similarities = {"billing": 2 / 5**0.5, "tech": 1 / 10**0.5, "other": 0.0}
    assert result.route.scores == pytest.approx(softmax(similarities, 0.5))
    assert sum(result.route.scores.values()) == pytest.approx(1.0)
    assert result.route.label == "billing"
    assert result.route.confidence == pytest.approx(result.route.scores["billing"])
    assert result.text == "billing answer"


async def test_the_temperature_sets_how_sharp_the_probabilities_are():
    embedder = ModelSpec(
        name="kw-embed-temperature", backend=CustomConfig(factory=lambda _r: KeywordEmbedder())
    )
    runtime = InProcessRuntime()
    confidence = {}
    for temperature in (1.0, 0.1, 0.01):
        spec = embedding_router(embedder, temperature=temperature)
        result = await run_topology(spec, "money money crash", runtime)
        assert result.route is not None
        assert result.route.label == "billing"
        assert sum(result.route.scores.values()) == pytest.approx(1.0)
        confidence[temperature] = result.route.confidence

    # Same similarities (0.89, 0.32, 0): the lower the temperature, the surer the router.
    assert 1 / 3 < confidence[1.0] < confidence[0.1] < confidence[0.01]
    assert confidence[1.0] == pytest.approx(0.5077, abs=1e-4)
    assert confidence[0.01] > 0.999


async def test_the_embedding_classifier_below_threshold_defaults():
    embedder = ModelSpec(
        name="kw-embed-threshold", backend=CustomConfig(factory=lambda _r: KeywordEmbedder())
    )
    # At temperature 1 a crash report is only about half likely to be "tech" (0.50).
    spec = embedding_router(embedder, threshold=0.9, temperature=1.0)
    result = await run_topology(spec, "my app shows a crash", InProcessRuntime())

    assert result.route is not None
    assert result.route.label == "tech"
    assert result.route.confidence == pytest.approx(softmax({"a": 2**-0.5, "b": 0, "c": 0}, 1)["a"])
    assert result.route.defaulted is True
    assert result.route.target == "front-desk"
    assert result.text == "hello answer"
    # At the default temperature the same request is sure enough.
    sure = await run_topology(
        embedding_router(embedder, threshold=0.9), "my app shows a crash", InProcessRuntime()
    )
    assert sure.route is not None
    assert sure.route.defaulted is False
    assert sure.text == "tech answer"


async def test_concurrent_first_requests_embed_the_label_texts_once():
    backend = KeywordEmbedder(delay_s=0.02)
    embedder = ModelSpec(name="kw-embed-stampede", backend=CustomConfig(factory=lambda _r: backend))
    spec = embedding_router(embedder)
    runtime = InProcessRuntime()
    handles = await runtime.start_models(spec.models())
    try:
        texts = ["a crash", "money back please", "a bug", "an invoice", "bug crash"]
        results = await asyncio.gather(*(answer(spec, text, handles) for text in texts))
    finally:
        await runtime.stop_models(list(handles.values()))

    assert [r.route.label for r in results if r.route] == [
        "tech",
        "billing",
        "tech",
        "billing",
        "tech",
    ]
    passages = [texts for texts, input_type in backend.calls if input_type == "passage"]
    assert len(passages) == 1
    assert sum(1 for _, input_type in backend.calls if input_type == "query") == len(texts)


async def test_two_embedders_with_one_name_do_not_share_label_vectors():
    first = ModelSpec(
        name="kw-embed-shared", backend=CustomConfig(factory=lambda _r: KeywordEmbedder())
    )
    # The same words, other dimensions: "crash" now lands where "money" was, and so on.
    swapped = ("crash", "bug", "money", "invoice", "parcel")
    second = ModelSpec(
        name="kw-embed-shared",
        version="1",
        backend=CustomConfig(factory=lambda _r: KeywordEmbedder(swapped)),
    )
    runtime = InProcessRuntime()
    one = await run_topology(embedding_router(first), "a crash", runtime)
    two = await run_topology(embedding_router(second), "a crash", runtime)

    assert one.route is not None
    assert one.route.label == "tech"
    assert two.route is not None
    assert two.route.label == "tech"
