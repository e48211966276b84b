"""Compare two evaluations of one dataset, and gate a change on the differences.

``cantata eval BASE.yaml --compare CANDIDATE.yaml`` evaluates both topologies and reports the
candidate's deltas against the base. :class:`Gates` are the limits a candidate must keep (from
CLI flags or a YAML file); :func:`check_gates` says which held.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, NonNegativeFloat, ValidationError

from cantata.agents import Frozen, TopologySpecError

from ._eval_report import EvalReport
from ._spec import read_yaml

__all__ = ["Comparison", "Delta", "GateResult", "Gates", "check_gates", "compare", "load_gates"]

# Float noise must not fail a gate that holds exactly (an accuracy drop of 0.02 at a 0.02 limit).
_SLACK = 1e-9


class Delta(Frozen):
    """One metric in both runs: ``change`` is candidate minus base; ``relative`` is that over
    the base (None when the base is 0 or either side is missing)."""

    metric: str
    base: float | None
    candidate: float | None
    change: float | None
    relative: float | None


class Comparison(Frozen):
    """The candidate against the base, metric by metric, and both full reports."""

    base: EvalReport
    candidate: EvalReport
    deltas: tuple[Delta, ...]

    def delta(self, metric: str) -> Delta:
        """The delta of ``metric`` (``accuracy``, ``latency_p50_ms``, …)."""
        return next(d for d in self.deltas if d.metric == metric)


def _delta(metric: str, base: float | None, candidate: float | None) -> Delta:
    if base is None or candidate is None:
        return Delta(metric=metric, base=base, candidate=candidate, change=None, relative=None)
    change = candidate - base
    return Delta(
        metric=metric,
        base=base,
        candidate=candidate,
        change=change,
        relative=change / base if base else None,
    )


def _metrics(report: EvalReport) -> dict[str, float | None]:
    return {
        "accuracy": report.accuracy,
        "failure_rate": report.failed / report.requests if report.requests else None,
        "latency_p50_ms": report.latency.p50_ms if report.latency else None,
        "latency_p95_ms": report.latency.p95_ms if report.latency else None,
        "cost_per_request_usd": report.cost.cost_per_request_usd,
        "tokens_per_request": report.cost.tokens_per_request,
    }


def compare(base: EvalReport, candidate: EvalReport) -> Comparison:
    """The candidate's deltas against the base."""
    ours, theirs = _metrics(base), _metrics(candidate)
    return Comparison(
        base=base,
        candidate=candidate,
        deltas=tuple(_delta(metric, ours[metric], theirs[metric]) for metric in ours),
    )


class Gates(Frozen):
    """Limits a candidate must keep. Unset gates are not checked.

    ``min_accuracy`` is absolute (the candidate's accuracy, or the only run's); the others need
    a base to compare with: ``max_accuracy_drop`` in accuracy points (0.02 = two points),
    ``max_latency_increase`` and ``max_cost_increase`` relative to the base (0.2 = 20%; latency
    is checked at p50 and at p95).
    """

    min_accuracy: float | None = Field(default=None, ge=0.0, le=1.0)
    max_accuracy_drop: NonNegativeFloat | None = None
    max_latency_increase: NonNegativeFloat | None = None
    max_cost_increase: NonNegativeFloat | None = None

    @property
    def comparative(self) -> list[str]:
        """The gates that are set and need ``--compare``."""
        names = ("max_accuracy_drop", "max_latency_increase", "max_cost_increase")
        return [name for name in names if getattr(self, name) is not None]

    def overridden(self, **values: float | None) -> Gates:
        """These gates, with every value given (not None) replacing this one's."""
        given = {name: value for name, value in values.items() if value is not None}
        return Gates.model_validate({**self.model_dump(), **given})


def load_gates(path: str | Path) -> Gates:
    """Read gates from YAML: a mapping of gate names to limits, optionally under ``gates:``."""
    path = Path(path)
    data = read_yaml(path)
    if isinstance(data, dict) and set(data) == {"gates"}:
        data = data["gates"]
    if not isinstance(data, dict):
        raise TopologySpecError(f"{path} must hold a mapping of gate names to limits")
    try:
        return Gates.model_validate(data)
    except ValidationError as exc:
        problems = "\n".join(
            f"  {'.'.join(str(p) for p in err['loc'])}: {err['msg']}"
            for err in exc.errors(include_url=False, include_input=False)
        )
        raise TopologySpecError(f"{path} holds invalid gates:\n{problems}") from None


class GateResult(Frozen):
    """One gate: its limit, the value measured (None: not measurable), and whether it held."""

    gate: str
    limit: float
    value: float | None
    passed: bool
    detail: str


def _relative_increase(delta: Delta) -> float | None:
    """The relative increase; None when it is infinite (from zero to more than zero)."""
    if delta.base is None or delta.candidate is None:
        return None
    if delta.base == 0:
        return 0.0 if delta.candidate <= 0 else None
    return (delta.candidate - delta.base) / delta.base


def _increase_gate(gate: str, limit: float, deltas: list[Delta]) -> GateResult:
    increases = [_relative_increase(d) for d in deltas]
    if any(value is None for value in increases):
        return GateResult(
            gate=gate,
            limit=limit,
            value=None,
            passed=False,
            detail="not measurable against the base (from zero, or missing)",
        )
    worst = max(value for value in increases if value is not None)
    names = ", ".join(
        f"{d.metric} {value:+.1%}" for d, value in zip(deltas, increases, strict=True)
    )
    return GateResult(
        gate=gate,
        limit=limit,
        value=worst,
        passed=worst <= limit + _SLACK,
        detail=f"{names} (limit +{limit:.1%})",
    )


def _points(drop: float) -> str:
    if abs(drop) < _SLACK:
        return "no change"
    return f"a {'drop' if drop > 0 else 'gain'} of {abs(drop) * 100:.1f} points"


def check_gates(
    gates: Gates, report: EvalReport, comparison: Comparison | None = None
) -> tuple[GateResult, ...]:
    """Check every set gate. ``report`` is the run graded alone: the candidate when comparing.

    Raises :class:`~cantata.agents.TopologySpecError` when a comparative gate is set without a
    comparison.
    """
    if gates.comparative and comparison is None:
        raise TopologySpecError(f"gates {gates.comparative} compare two runs: give --compare")
    results: list[GateResult] = []
    if gates.min_accuracy is not None:
        value = report.accuracy
        results.append(
            GateResult(
                gate="min_accuracy",
                limit=gates.min_accuracy,
                value=value,
                passed=value is not None and value >= gates.min_accuracy - _SLACK,
                detail=(
                    f"accuracy {value:.1%} (limit {gates.min_accuracy:.1%})"
                    if value is not None
                    else "no accuracy was measured"
                ),
            )
        )
    if comparison is None:
        return tuple(results)
    if gates.max_accuracy_drop is not None:
        accuracy = comparison.delta("accuracy")
        drop = None if accuracy.change is None else -accuracy.change
        results.append(
            GateResult(
                gate="max_accuracy_drop",
                limit=gates.max_accuracy_drop,
                value=drop,
                passed=drop is not None and drop <= gates.max_accuracy_drop + _SLACK,
                detail=(
                    f"accuracy {accuracy.base:.1%} -> {accuracy.candidate:.1%}: {_points(drop)}"
                    f" (limit: a drop of {gates.max_accuracy_drop * 100:.1f})"
                    if drop is not None
                    else "accuracy was not measured in both runs"
                ),
            )
        )
    if gates.max_latency_increase is not None:
        results.append(
            _increase_gate(
                "max_latency_increase",
                gates.max_latency_increase,
                [comparison.delta("latency_p50_ms"), comparison.delta("latency_p95_ms")],
            )
        )
    if gates.max_cost_increase is not None:
        results.append(
            _increase_gate(
                "max_cost_increase",
                gates.max_cost_increase,
                [comparison.delta("cost_per_request_usd")],
            )
        )
    return tuple(results)
