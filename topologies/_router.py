"""The ``router`` pattern, and its classifier roles.

A classifier scores the route labels for a request; the router sends the request to the chosen
label's member, or to ``default`` when the best label is below the threshold or has no route.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import ClassVar

from cantata.agents import JsonSchemaFormat, Route, StructuredOutputError

from ._context import RequestContext
from ._dispatch import register
from ._grouping import cosine
from ._outcome import Outcome
from ._prompt import PromptTemplate
from ._spec import EmbeddingClassifier, ModelClassifier, RouterSpec, member_name

__all__ = ["EmbeddingRouter", "ModelRouter", "Scores", "run_router"]

Scores = dict[str, float]
Vectors = tuple[tuple[float, ...], ...]


class EmbeddingRouter:
    """Scores each label by the best cosine similarity between the request and its texts.

    A label's texts are its description and its examples, embedded as passages (once per
    process and embedder). Scores are cosine similarities, so thresholds are in [-1, 1].
    """

    # Label vectors per started embedder (its handle), so a deployment embeds them once and
    # two embedders that share a name never share vectors.
    _cache: ClassVar[weakref.WeakKeyDictionary[object, dict[tuple[str, ...], Vectors]]] = (
        weakref.WeakKeyDictionary()
    )

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
        known = self._cache.get(handle)
        if known is None:
            known = self._cache[handle] = {}
        if texts not in known:
            reply = await ctx.embed(name, texts, parent_id=parent_id, input_type="passage")
            known[texts] = reply.vectors
        return known[texts]

    async def classify(self, text: str, ctx: RequestContext, parent_id: str) -> Scores:
        """Every label's score for ``text``."""
        label_vectors = await self._label_vectors(ctx, parent_id)
        (query,) = (await ctx.embed(self.spec.model.name, (text,), parent_id=parent_id)).vectors
        scores: Scores = dict.fromkeys(self.spec.labels, -1.0)
        for (label, _), vector in zip(self.texts, label_vectors, strict=True):
            scores[label] = max(scores[label], cosine(query, vector))
        return scores


class ModelRouter:
    """Asks a model for ``{"label": <one of the labels>, "confidence": 0..1}``.

    The label set is enforced by the JSON schema (constrained decoding where the backend can)
    and checked again here. Without log-probabilities only the chosen label has a score: the
    model's stated confidence; every other label scores 0.
    """

    def __init__(self, spec: ModelClassifier) -> None:
        self.spec = spec
        labels = list(spec.labels)
        self.schema = JsonSchemaFormat(
            name="route",
            json_schema={
                "type": "object",
                "properties": {
                    "label": {"type": "string", "enum": labels},
                    "confidence": {"type": "number", "minimum": 0, "maximum": 1},
                },
                "required": ["label", "confidence"],
                "additionalProperties": False,
            },
        )
        menu = "\n".join(
            f"- {label}: {definition.description or '; '.join(definition.examples)}"
            for label, definition in spec.labels.items()
        )
        self.prompt = PromptTemplate(
            system=f"{spec.instructions}\nLabels:\n{menu}\n"
            'Reply with JSON: {"label": "<label>", "confidence": <0 to 1>}.'
        )

    async def classify(self, text: str, ctx: RequestContext, parent_id: str) -> Scores:
        """The chosen label's confidence, and zero for the others."""
        reply = await ctx.ask(
            self.spec.model.name,
            text,
            prompt=self.prompt,
            parent_id=parent_id,
            max_tokens=48,
            response_format=self.schema,
        )
        choice = reply.structured if isinstance(reply.structured, dict) else {}
        label, confidence = choice.get("label"), choice.get("confidence")
        if label not in self.spec.labels or not isinstance(confidence, int | float):
            raise StructuredOutputError(
                f"the classifier chose {label!r}, not one of {sorted(self.spec.labels)}",
                text=reply.text,
                model=reply.model,
            )
        scores: Scores = dict.fromkeys(self.spec.labels, 0.0)
        scores[str(label)] = float(confidence)
        return scores


def choose(spec: RouterSpec, scores: Scores) -> Route:
    """The route for ``scores``: the best label if it has a route and clears the threshold."""
    label = max(scores, key=lambda name: scores[name])
    confidence = scores[label]
    routed = label in spec.routes and confidence >= spec.threshold
    target_label = label if routed else spec.default
    return Route(
        label=label,
        confidence=confidence,
        target=member_name(spec.routes[target_label]),
        scores=scores,
        defaulted=not routed,
    )


@register(RouterSpec)
async def run_router(spec: RouterSpec, text: str, ctx: RequestContext, parent_id: str) -> Outcome:
    """Classify, pick the route, and let that member answer."""
    classifier = spec.classifier
    router: EmbeddingRouter | ModelRouter = (
        ctx.role(EmbeddingRouter)(classifier)
        if isinstance(classifier, EmbeddingClassifier)
        else ctx.role(ModelRouter)(classifier)
    )
    with ctx.step("router", parent_id) as router_id:
        scores = await router.classify(text, ctx, router_id)
        route = choose(spec, scores)
    target = spec.routes[route.label if not route.defaulted else spec.default]
    answer = await ctx.call_member(
        target,
        text,
        prompt=spec.prompt,
        parent_id=parent_id,
        max_tokens=spec.max_tokens,
        temperature=spec.temperature,
    )
    return answer.model_copy(update={"route": route})
