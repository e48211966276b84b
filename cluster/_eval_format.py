"""How evaluation figures read, in the terminal and in the HTML report alike."""

from __future__ import annotations

from cantata.topologies import Delta

__all__ = ["delta_text", "ms_text", "pct_text", "usd_text", "value_text"]

_RATES = ("accuracy", "failure_rate")


def pct_text(value: float | None) -> str:
    """A share as a percentage with one decimal."""
    return "-" if value is None else f"{value:.1%}"


def ms_text(value: float | None) -> str:
    """Milliseconds, as seconds from one second up."""
    if value is None:
        return "-"
    return f"{value / 1000:.2f} s" if value >= 1000 else f"{value:.0f} ms"


def usd_text(value: float) -> str:
    """Dollars, with enough decimals for the fractions of a cent models cost per request."""
    return f"${value:.6f}" if value < 0.01 else f"${value:.4f}"


def value_text(metric: str, value: float | None) -> str:
    """A report figure, formatted by what its metric name says it is."""
    if value is None:
        return "-"
    if metric in _RATES:
        return pct_text(value)
    if metric.endswith("_ms"):
        return ms_text(value)
    if metric.endswith("_usd"):
        return usd_text(value)
    return f"{value:.1f}"


def delta_text(delta: Delta) -> str:
    """A comparison's change: points for rates, units and the relative change otherwise."""
    if delta.change is None:
        return "-"
    if delta.metric in _RATES:
        return f"{delta.change * 100:+.1f} pts"
    relative = f" ({delta.relative:+.1%})" if delta.relative is not None else ""
    if delta.metric.endswith("_ms"):
        return f"{delta.change:+.0f} ms{relative}"
    if delta.metric.endswith("_usd"):
        return f"{'+' if delta.change >= 0 else '-'}{usd_text(abs(delta.change))}{relative}"
    return f"{delta.change:+.1f}{relative}"
