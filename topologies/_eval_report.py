"""What ``cantata eval`` reports about one topology on one dataset.

:func:`build_report` turns the recorded :class:`CaseResult` list into an :class:`EvalReport`:
routing accuracy and its confusion matrix (routers), exact-match and semantic accuracy
(answers), agreement and escalation (votes and ensembles), per-model latency, tokens and cost
per request, and failures by error type. The report is data (pydantic), so ``--json`` and the
HTML page print the same numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import Field, NonNegativeFloat, NonNegativeInt

from cantata.agents import Frozen

from ._eval_metrics import (
    FAILED,
    ConfusionMatrix,
    LatencyStats,
    RoutedCase,
    ThresholdFit,
    fit_default_precision,
    fit_threshold,
    threshold_curve,
)
from ._evaluation import CaseResult, labels_only
from ._spec import RouterSpec, TopologySpec

__all__ = [
    "DEFAULT_SIMILARITY_THRESHOLD",
    "AnswerReport",
    "CostReport",
    "EnsembleReport",
    "EvalReport",
    "FailureReport",
    "Mistake",
    "ModelReport",
    "RoutingReport",
    "build_report",
]

DEFAULT_SIMILARITY_THRESHOLD = 0.9
# Reports list mistakes so a person can look at them; the first ones suffice for that.
MAX_MISTAKES = 50
MAX_SHOWN_CHARS = 200
# Enough points to draw accuracy against the threshold; a big dataset has a point per example.
MAX_CURVE_POINTS = 200

AccuracyMetric = Literal["routing", "exact", "semantic"]


class RoutingReport(Frozen):
    """A router's accuracy: gold label against the route key actually taken."""

    accuracy: float
    confusion: ConfusionMatrix
    threshold: float = Field(description="The threshold the topology ran with.")
    defaulted: NonNegativeInt = Field(description="Requests sent to the default route.")
    best_threshold: ThresholdFit = Field(description="The threshold that maximises accuracy.")
    default_precision_target: float | None = None
    default_precision_threshold: ThresholdFit | None = Field(
        default=None,
        description="The highest threshold keeping the default route's precision >= target.",
    )
    curve: tuple[ThresholdFit, ...] = Field(
        default=(), description="Accuracy at candidate thresholds (at most 200, ascending)."
    )


class AnswerReport(Frozen):
    """Answers against ``expected``: exactly (after normalization) and by meaning."""

    scored: NonNegativeInt
    exact_match: float
    semantic: float | None = Field(
        default=None, description="Share with cosine similarity >= similarity_threshold."
    )
    similarity_threshold: float | None = None
    mean_similarity: float | None = None


class EnsembleReport(Frozen):
    """Votes, consensus and weighted ensembles: how much members agreed; how often it escalated."""

    decided: NonNegativeInt
    mean_agreement: float
    unanimous_rate: float
    escalation_rate: float


class ModelReport(Frozen):
    """One model (by its name in the topology): calls, latency distribution, tokens, cost."""

    agent: str
    calls: NonNegativeInt
    failed: NonNegativeInt = 0
    latency: LatencyStats
    tokens: NonNegativeInt = 0
    cost_usd: NonNegativeFloat = 0.0


class CostReport(Frozen):
    """Tokens and dollars, per answered request and in total."""

    tokens_per_request: NonNegativeFloat
    cost_per_request_usd: NonNegativeFloat
    total_tokens: NonNegativeInt
    total_cost_usd: NonNegativeFloat


class FailureReport(Frozen):
    """Failed requests of one error type: how many, their lines, and one message."""

    error_type: str
    count: NonNegativeInt
    lines: tuple[int, ...] = Field(description="The first few dataset lines that failed so.")
    message: str


class Mistake(Frozen):
    """A wrong (or failed) example, shortened for display."""

    line: int
    input: str
    want: str
    got: str


class EvalReport(Frozen):
    """Everything ``cantata eval`` measured for one topology on one dataset.

    ``accuracy`` is the headline the gates use: routing accuracy for routers; exact-match
    accuracy for topologies whose answers are labels (``choices``) or when no embedder scored
    the answers; semantic accuracy otherwise (``accuracy_metric`` says which). Failed
    requests count as wrong.
    """

    topology: str
    pattern: str
    dataset: str
    requests: NonNegativeInt
    failed: NonNegativeInt
    accuracy: float | None
    accuracy_metric: AccuracyMetric | None
    latency: LatencyStats | None = Field(description="Whole requests, answered ones only.")
    routing: RoutingReport | None = None
    answers: AnswerReport | None = None
    ensemble: EnsembleReport | None = None
    models: tuple[ModelReport, ...] = ()
    cost: CostReport
    failures: tuple[FailureReport, ...] = ()
    mistakes: tuple[Mistake, ...] = ()


def _short(text: str | None) -> str:
    text = "" if text is None else " ".join(text.split())
    return text if len(text) <= MAX_SHOWN_CHARS else text[: MAX_SHOWN_CHARS - 1] + "…"


def _routing(
    spec: RouterSpec, cases: Sequence[CaseResult], default_precision: float | None
) -> RoutingReport:
    pairs = [(c.label or "", c.route if c.ok and c.route else FAILED) for c in cases]
    order = [*spec.routes, *(label for label in spec.classifier.labels if label not in spec.routes)]
    confusion = ConfusionMatrix.of(pairs, order)
    routed: list[RoutedCase] = [(c.label or "", c.scores if c.ok else None) for c in cases]
    curve = threshold_curve(spec, routed)
    step = max(1, -(-len(curve) // MAX_CURVE_POINTS))
    return RoutingReport(
        accuracy=confusion.accuracy,
        confusion=confusion,
        threshold=spec.threshold,
        defaulted=sum(1 for _, taken in pairs if taken == spec.default),
        best_threshold=fit_threshold(spec, routed),
        default_precision_target=default_precision,
        default_precision_threshold=(
            fit_default_precision(spec, routed, default_precision)
            if default_precision is not None
            else None
        ),
        curve=curve[::step],
    )


def _answers(cases: Sequence[CaseResult], similarity_threshold: float) -> AnswerReport | None:
    graded = [c for c in cases if c.expected is not None]
    if not graded:
        return None
    exact = sum(1 for c in graded if c.ok and c.exact) / len(graded)
    similarities = [c.similarity for c in graded if c.ok and c.similarity is not None]
    if not similarities:
        return AnswerReport(scored=len(graded), exact_match=exact)
    semantic = sum(
        1 for c in graded if c.ok and (c.exact or (c.similarity or 0.0) >= similarity_threshold)
    )
    return AnswerReport(
        scored=len(graded),
        exact_match=exact,
        semantic=semantic / len(graded),
        similarity_threshold=similarity_threshold,
        mean_similarity=sum(similarities) / len(similarities),
    )


def _ensemble(cases: Sequence[CaseResult]) -> EnsembleReport | None:
    decided = [c for c in cases if c.ok and c.agreement is not None]
    if not decided:
        return None
    return EnsembleReport(
        decided=len(decided),
        mean_agreement=sum(c.agreement or 0.0 for c in decided) / len(decided),
        # A float share of 1.0 is exact: every member's vote went to the winner.
        unanimous_rate=sum(1 for c in decided if (c.agreement or 0.0) >= 1.0) / len(decided),
        escalation_rate=sum(1 for c in decided if c.escalated) / len(decided),
    )


def _models(cases: Sequence[CaseResult]) -> tuple[ModelReport, ...]:
    calls: dict[str, list[tuple[float, int, float, bool]]] = {}
    for case in cases:
        for call in case.calls:
            calls.setdefault(call.agent, []).append(
                (call.latency_ms, call.tokens, call.cost_usd, call.ok)
            )
    return tuple(
        ModelReport(
            agent=agent,
            calls=len(made),
            failed=sum(1 for *_, ok in made if not ok),
            latency=LatencyStats.of([latency for latency, *_ in made]),
            tokens=sum(tokens for _, tokens, _, _ in made),
            cost_usd=sum(cost for _, _, cost, _ in made),
        )
        for agent, made in sorted(calls.items())
    )


def _failures(cases: Sequence[CaseResult]) -> tuple[FailureReport, ...]:
    by_type: dict[str, list[CaseResult]] = {}
    for case in cases:
        if not case.ok:
            by_type.setdefault(case.error_type or "Error", []).append(case)
    return tuple(
        FailureReport(
            error_type=error_type,
            count=len(failed),
            lines=tuple(c.line for c in failed[:20]),
            message=_short(failed[0].error),
        )
        for error_type, failed in sorted(by_type.items(), key=lambda item: -len(item[1]))
    )


def _is_right(case: CaseResult, metric: AccuracyMetric | None, similarity: float) -> bool:
    if not case.ok:
        return False
    if metric == "routing":
        return case.route == case.label
    if metric == "semantic":
        return bool(case.exact) or (case.similarity or 0.0) >= similarity
    return bool(case.exact)


def _mistakes(
    cases: Sequence[CaseResult], metric: AccuracyMetric | None, similarity: float
) -> tuple[Mistake, ...]:
    wrong = [c for c in cases if not _is_right(c, metric, similarity)]
    return tuple(
        Mistake(
            line=c.line,
            input=_short(c.input),
            want=_short(c.label if metric == "routing" else c.expected),
            got=_short(
                f"{c.error_type}: {c.error}"
                if not c.ok
                else (c.route if metric == "routing" else c.answer)
            ),
        )
        for c in wrong[:MAX_MISTAKES]
    )


def build_report(
    spec: TopologySpec,
    source: str,
    cases: Sequence[CaseResult],
    *,
    similarity_threshold: float = DEFAULT_SIMILARITY_THRESHOLD,
    default_precision: float | None = None,
) -> EvalReport:
    """Summarise ``cases`` (one per example of dataset ``source``) for topology ``spec``.

    ``similarity_threshold`` is the cosine similarity from which an answer counts as meaning
    the expected one; ``default_precision`` asks routers for the highest threshold that keeps
    the default route at least that precise.
    """
    routing = _routing(spec, cases, default_precision) if isinstance(spec, RouterSpec) else None
    answers = _answers(cases, similarity_threshold)
    metric: AccuracyMetric | None = None
    accuracy: float | None = None
    if routing is not None:
        metric, accuracy = "routing", routing.accuracy
    elif answers is not None and answers.semantic is not None and not labels_only(spec):
        metric, accuracy = "semantic", answers.semantic
    elif answers is not None:
        metric, accuracy = "exact", answers.exact_match
    answered = [c for c in cases if c.ok]
    return EvalReport(
        topology=spec.name,
        pattern=spec.pattern,
        dataset=source,
        requests=len(cases),
        failed=len(cases) - len(answered),
        accuracy=accuracy,
        accuracy_metric=metric,
        latency=LatencyStats.of([c.latency_ms for c in answered]) if answered else None,
        routing=routing,
        answers=answers,
        ensemble=_ensemble(cases),
        models=_models(cases),
        cost=CostReport(
            tokens_per_request=sum(c.tokens for c in answered) / len(answered) if answered else 0,
            cost_per_request_usd=(
                sum(c.cost_usd for c in answered) / len(answered) if answered else 0.0
            ),
            total_tokens=sum(c.tokens for c in answered),
            total_cost_usd=sum(c.cost_usd for c in answered),
        ),
        failures=_failures(cases),
        mistakes=_mistakes(cases, metric, similarity_threshold),
    )
