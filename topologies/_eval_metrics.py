"""The numbers an evaluation reports: percentiles, confusion matrices, fitted router thresholds.

Plain functions over recorded results, so they are exact and deterministic: the same results
always give the same report.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from itertools import pairwise

from pydantic import NonNegativeFloat, NonNegativeInt

from cantata.agents import Frozen

from ._router import Scores, choose, route_key
from ._spec import RouterSpec

__all__ = [
    "FAILED",
    "ConfusionMatrix",
    "LatencyStats",
    "ThresholdFit",
    "candidate_thresholds",
    "fit_default_precision",
    "fit_threshold",
    "percentile",
    "replay_routes",
    "threshold_curve",
]

RoutedCase = tuple[str, Scores | None]
"""A router example for threshold fitting: its gold label, and its scores (None: it failed)."""


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by linear interpolation between closest ranks.

    The same definition as NumPy's default, so figures agree with other tools.
    """
    if not values:
        raise ValueError("no values")
    if not 0 <= q <= 100:
        raise ValueError("q must be between 0 and 100")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


class LatencyStats(Frozen):
    """The distribution of some latencies, milliseconds: what a box plot needs, and the mean."""

    count: NonNegativeInt
    mean_ms: NonNegativeFloat
    min_ms: NonNegativeFloat
    p25_ms: NonNegativeFloat
    p50_ms: NonNegativeFloat
    p75_ms: NonNegativeFloat
    p95_ms: NonNegativeFloat
    max_ms: NonNegativeFloat

    @classmethod
    def of(cls, values: Sequence[float]) -> LatencyStats:
        """The statistics of ``values`` (at least one)."""
        return cls(
            count=len(values),
            mean_ms=sum(values) / len(values) if values else 0.0,
            min_ms=min(values),
            p25_ms=percentile(values, 25),
            p50_ms=percentile(values, 50),
            p75_ms=percentile(values, 75),
            p95_ms=percentile(values, 95),
            max_ms=max(values),
        )


class ConfusionMatrix(Frozen):
    """Counts of (gold label, predicted label): ``counts[i][j]`` is gold ``labels[i]``
    predicted as ``labels[j]``. A failed request is predicted as ``"(failed)"``.
    """

    labels: tuple[str, ...]
    counts: tuple[tuple[NonNegativeInt, ...], ...]

    @classmethod
    def of(cls, pairs: Iterable[tuple[str, str]], labels: Sequence[str] = ()) -> ConfusionMatrix:
        """Count ``(gold, predicted)`` pairs; ``labels`` fixes the order (others follow)."""
        pairs = list(pairs)
        order = list(dict.fromkeys(labels))
        for gold, predicted in pairs:
            for name in (gold, predicted):
                if name not in order:
                    order.append(name)
        index = {name: i for i, name in enumerate(order)}
        grid = [[0] * len(order) for _ in order]
        for gold, predicted in pairs:
            grid[index[gold]][index[predicted]] += 1
        return cls(labels=tuple(order), counts=tuple(tuple(row) for row in grid))

    @property
    def total(self) -> int:
        """Every counted example."""
        return sum(sum(row) for row in self.counts)

    @property
    def accuracy(self) -> float:
        """The share on the diagonal (0 when empty)."""
        right = sum(self.counts[i][i] for i in range(len(self.labels)))
        return right / self.total if self.total else 0.0

    def precision(self, label: str) -> float | None:
        """Of the examples predicted ``label``, the share that were; None if none were."""
        j = self.labels.index(label)
        predicted = sum(row[j] for row in self.counts)
        return self.counts[j][j] / predicted if predicted else None

    def recall(self, label: str) -> float | None:
        """Of the examples that were ``label``, the share predicted so; None if none were."""
        i = self.labels.index(label)
        actual = sum(self.counts[i])
        return self.counts[i][i] / actual if actual else None


class ThresholdFit(Frozen):
    """A router threshold replayed over recorded scores, and what it would have given."""

    threshold: float
    accuracy: float
    default_precision: float | None = None
    defaulted: NonNegativeInt = 0


FAILED = "(failed)"


def replay_routes(
    spec: RouterSpec, cases: Sequence[RoutedCase], threshold: float
) -> list[tuple[str, str]]:
    """``(gold, route key taken)`` for each case had the router used ``threshold``."""
    return [
        (gold, route_key(spec, choose(spec, scores, threshold=threshold)) if scores else FAILED)
        for gold, scores in cases
    ]


def candidate_thresholds(confidences: Iterable[float]) -> list[float]:
    """Thresholds worth trying, ascending: 0, and midway between each pair of neighbouring
    confidences (in [0, 1]), and just above the highest.

    Between two neighbouring confidences every threshold routes the same way, so one per gap
    covers them all; the midpoint is the choice farthest from both examples.
    """
    values = sorted({c for c in confidences if 0.0 <= c <= 1.0})
    candidates = [0.0]
    candidates += [(a + b) / 2 for a, b in pairwise(values)]
    if values and values[-1] < 1.0:
        candidates.append(min(1.0, values[-1] + 1e-6))
    return sorted(set(candidates))


def threshold_curve(spec: RouterSpec, cases: Sequence[RoutedCase]) -> tuple[ThresholdFit, ...]:
    """What every candidate threshold would have given on ``cases``, ascending by threshold.

    Equivalent to :func:`replay_routes` at each candidate (the unit tests check that), but in
    one sweep: :func:`choose` runs once per case for its label and confidence, and a case goes
    from its label's route to the default once the threshold passes its confidence. Failed
    cases are wrong at every threshold.
    """
    # Per case: its confidence, its route while the threshold is at most that, its route once
    # the threshold is above it (the default), and its gold label.
    outcomes: list[tuple[float, str, str, str]] = []
    for gold, scores in cases:
        if scores is None:
            outcomes.append((math.inf, FAILED, FAILED, gold))
            continue
        route = choose(spec, scores, threshold=-math.inf)
        outcomes.append((route.confidence, route_key(spec, route), spec.default, gold))
    outcomes.sort(key=lambda outcome: outcome[0])
    right = sum(1 for _, high, _, gold in outcomes if high == gold)
    defaulted = sum(1 for _, high, _, _ in outcomes if high == spec.default)
    default_right = sum(1 for _, high, _, gold in outcomes if high == spec.default == gold)
    switching = [c for c, high, low, _ in outcomes if high != low]
    fits: list[ThresholdFit] = []
    passed = 0
    for threshold in candidate_thresholds(switching):
        while passed < len(outcomes) and outcomes[passed][0] < threshold:
            _, high, low, gold = outcomes[passed]
            right += (low == gold) - (high == gold)
            defaulted += (low == spec.default) - (high == spec.default)
            default_right += (low == spec.default == gold) - (high == spec.default == gold)
            passed += 1
        fits.append(
            ThresholdFit(
                threshold=threshold,
                accuracy=right / len(outcomes) if outcomes else 0.0,
                default_precision=default_right / defaulted if defaulted else None,
                defaulted=defaulted,
            )
        )
    return tuple(fits)


def fit_threshold(spec: RouterSpec, cases: Sequence[RoutedCase]) -> ThresholdFit:
    """The threshold with the highest accuracy over ``cases`` (the lowest such, on ties).

    On ties the lowest wins because it sends the fewest requests to the default route.
    """
    fits = threshold_curve(spec, cases)
    best = max(fit.accuracy for fit in fits)
    return next(fit for fit in fits if fit.accuracy == best)


def fit_default_precision(
    spec: RouterSpec, cases: Sequence[RoutedCase], precision: float
) -> ThresholdFit | None:
    """The highest threshold that keeps the default route's precision at least ``precision``.

    Raising the threshold sends more requests to the default route; this is as far as it can
    go while at most ``1 - precision`` of what lands there belongs elsewhere. A threshold that
    sends nothing to the default counts as precise. None when no threshold qualifies.
    """
    good = [
        fit
        for fit in threshold_curve(spec, cases)
        if fit.default_precision is None or fit.default_precision >= precision
    ]
    return max(good, key=lambda fit: fit.threshold) if good else None
