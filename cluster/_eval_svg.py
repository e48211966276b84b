"""Inline SVG charts for the ``cantata eval`` HTML report: heat map, box plots, curves, bars.

Every chart is a string of SVG with no script and no external reference. Every label that
came from a dataset or a model passes through :func:`esc`, which escapes it and bounds it.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass

from cantata.topologies import ConfusionMatrix, LatencyStats, ThresholdFit

__all__ = [
    "BASE_COLOUR",
    "CANDIDATE_COLOUR",
    "Bar",
    "Box",
    "bar_chart",
    "box_plot",
    "esc",
    "heat_map",
    "threshold_chart",
]

BASE_COLOUR = "#2563eb"
CANDIDATE_COLOUR = "#ea580c"
_FONT = 'font-family="system-ui, -apple-system, Segoe UI, sans-serif"'
_GRID = "#e5e7eb"
_INK = "#111827"
_MUTED = "#6b7280"


def esc(value: object, limit: int = 200) -> str:
    """``value`` as text, shortened to ``limit`` characters, escaped for HTML and SVG."""
    text = str(value)
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return html.escape(text, quote=True)


def _svg(width: float, height: float, body: str, label: str) -> str:
    return (
        f'<svg viewBox="0 0 {width:.0f} {height:.0f}"'
        f' width="{width:.0f}" height="{height:.0f}" role="img" aria-label="{esc(label)}"'
        f" {_FONT}>{body}</svg>"
    )


def _title(x: float, text: str) -> str:
    return f'<text x="{x}" y="16" font-size="13" font-weight="600" fill="{_INK}">{esc(text)}</text>'


def _cell_fill(share: float, *, diagonal: bool, empty: bool) -> str:
    if empty:
        return "#f3f4f6"
    # Right answers in green, mistakes in red; darker where more of the row landed.
    hue, saturation = (142, 64) if diagonal else (0, 72)
    lightness = 94 - 56 * share
    return f"hsl({hue} {saturation}% {lightness:.0f}%)"


def heat_map(matrix: ConfusionMatrix, title: str) -> str:
    """The confusion matrix: rows are gold labels, columns the route taken, shaded by row share."""
    rows = [i for i, row in enumerate(matrix.counts) if sum(row)]
    used = {j for i in rows for j, n in enumerate(matrix.counts[i]) if n}
    cols = [j for j in range(len(matrix.labels)) if j in used or j in rows]
    cell, left, top = 58, 130, 96
    width = left + cell * len(cols) + 80
    height = top + cell * len(rows) + 34
    parts = [
        _title(left, title),
        f'<text x="{left}" y="36" font-size="11" fill="{_MUTED}">route taken →</text>',
        f'<text x="{left - 8}" y="{top - 8}" font-size="11" fill="{_MUTED}"'
        ' text-anchor="end">gold label ↓</text>',
        f'<text x="{left + cell * len(cols) + 40}" y="{top - 8}" font-size="11"'
        f' fill="{_MUTED}" text-anchor="middle">recall</text>',
    ]
    for x, j in enumerate(cols):
        cx = left + x * cell + cell / 2
        parts.append(
            f'<text transform="translate({cx:.0f},{top - 10}) rotate(-35)" font-size="12"'
            f' fill="{_INK}"><title>{esc(matrix.labels[j])}</title>'
            f"{esc(matrix.labels[j], 16)}</text>"
        )
    for y, i in enumerate(rows):
        total = sum(matrix.counts[i])
        cy = top + y * cell
        parts.append(
            f'<text x="{left - 8}" y="{cy + cell / 2 + 4:.0f}" font-size="12" fill="{_INK}"'
            f' text-anchor="end"><title>{esc(matrix.labels[i])}</title>'
            f"{esc(matrix.labels[i], 16)}</text>"
        )
        for x, j in enumerate(cols):
            count = matrix.counts[i][j]
            share = count / total
            fill = _cell_fill(share, diagonal=i == j, empty=count == 0)
            ink = "#ffffff" if share > 0.55 else _INK
            tip = f"gold {matrix.labels[i]} → {matrix.labels[j]}: {count} of {total} ({share:.0%})"
            parts.append(
                f'<rect x="{left + x * cell + 1}" y="{cy + 1}" width="{cell - 2}"'
                f' height="{cell - 2}" rx="4" fill="{fill}"><title>{esc(tip)}</title></rect>'
            )
            if count:
                parts.append(
                    f'<text x="{left + x * cell + cell / 2:.0f}" y="{cy + cell / 2 + 5:.0f}"'
                    f' font-size="15" font-weight="600" fill="{ink}" text-anchor="middle">'
                    f"{count}</text>"
                )
        recall = matrix.recall(matrix.labels[i])
        parts.append(
            f'<text x="{left + cell * len(cols) + 40}" y="{cy + cell / 2 + 4:.0f}"'
            f' font-size="12" fill="{_INK}" text-anchor="middle">'
            f"{'-' if recall is None else f'{recall:.0%}'}</text>"
        )
    accuracy = f"accuracy {matrix.accuracy:.1%} of {matrix.total}"
    parts.append(
        f'<text x="{left}" y="{height - 10}" font-size="12" fill="{_MUTED}">{accuracy}</text>'
    )
    return _svg(width, height, "".join(parts), title)


@dataclass(frozen=True)
class Box:
    """One row of a box plot: a label, its latency statistics and a colour."""

    label: str
    stats: LatencyStats
    colour: str = BASE_COLOUR


def _log_ticks(low: float, high: float) -> list[float]:
    ticks = []
    for exponent in range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1):
        for mantissa in (1, 2, 5):
            value = mantissa * 10.0**exponent
            if low <= value <= high:
                ticks.append(value)
    return ticks


def _ms_label(value: float) -> str:
    if value >= 1000:
        return f"{value / 1000:g} s"
    return f"{value:g} ms"


def box_plot(boxes: Sequence[Box], title: str) -> str:
    """Horizontal box plots on one logarithmic axis: whiskers min-max, box p25-p75, a bar at
    the median and a diamond at p95. Log scale, because an embedder's few milliseconds and an
    LLM's seconds belong on one chart."""
    left, right, row, top = 190, 250, 30, 34
    plot = 1040 - left - right
    low = max(0.1, min(box.stats.min_ms for box in boxes) * 0.8)
    high = max(low * 10, max(box.stats.max_ms for box in boxes) * 1.25)
    span = math.log10(high) - math.log10(low)

    def x(value: float) -> float:
        return left + plot * (math.log10(max(value, low)) - math.log10(low)) / span

    height = top + row * len(boxes) + 30
    parts = [_title(0, title)]
    for tick in _log_ticks(low, high):
        parts.append(
            f'<line x1="{x(tick):.1f}" x2="{x(tick):.1f}" y1="{top - 6}"'
            f' y2="{height - 24}" stroke="{_GRID}"/>'
            f'<text x="{x(tick):.1f}" y="{height - 8}" font-size="10" fill="{_MUTED}"'
            f' text-anchor="middle">{_ms_label(tick)}</text>'
        )
    for index, box in enumerate(boxes):
        s = box.stats
        mid = top + index * row + row / 2
        tip = (
            f"{box.label}: n={s.count}, min {s.min_ms:.1f}, p25 {s.p25_ms:.1f}, p50 {s.p50_ms:.1f},"
            f" p75 {s.p75_ms:.1f}, p95 {s.p95_ms:.1f}, max {s.max_ms:.1f} ms"
        )
        parts.append(
            f"<g><title>{esc(tip, 400)}</title>"
            f'<text x="{left - 10}" y="{mid + 4:.0f}" font-size="12" fill="{_INK}"'
            f' text-anchor="end">{esc(box.label, 26)}</text>'
            f'<line x1="{x(s.min_ms):.1f}" x2="{x(s.max_ms):.1f}" y1="{mid}" y2="{mid}"'
            f' stroke="{box.colour}" stroke-width="1.5"/>'
            f'<rect x="{x(s.p25_ms):.1f}" y="{mid - 8}"'
            f' width="{max(2.0, x(s.p75_ms) - x(s.p25_ms)):.1f}"'
            f' height="16" rx="3" fill="{box.colour}" fill-opacity="0.28" stroke="{box.colour}"/>'
            f'<line x1="{x(s.p50_ms):.1f}" x2="{x(s.p50_ms):.1f}" y1="{mid - 9}" y2="{mid + 9}"'
            f' stroke="{box.colour}" stroke-width="3"/>'
            f'<path d="M{x(s.p95_ms):.1f},{mid - 6} l5,6 l-5,6 l-5,-6 z" fill="{box.colour}"/>'
            f'<text x="{left + plot + 12}" y="{mid + 4:.0f}" font-size="11" fill="{_MUTED}">'
            f"p50 {_ms_label(round(s.p50_ms))} · p95 {_ms_label(round(s.p95_ms))} · n={s.count}"
            "</text></g>"
        )
    return _svg(1040, height, "".join(parts), title)


def threshold_chart(
    curve: Sequence[ThresholdFit], markers: Sequence[tuple[str, float, str]], title: str
) -> str:
    """Accuracy (solid) and the default route's precision (dashed) against the threshold, with
    vertical markers (label, threshold, colour) for the thresholds worth seeing."""
    left, top, plot_w, plot_h = 56, 30, 640, 220
    # A router's confidence is a probability (or a model's stated confidence): 0 to 1.
    low, high = 0.0, 1.0

    def x(value: float) -> float:
        return left + plot_w * (min(max(value, low), high) - low) / (high - low)

    def y(value: float) -> float:
        return top + plot_h * (1 - value)

    def steps(values: Sequence[tuple[float, float | None]]) -> str:
        points: list[str] = []
        for index, (threshold, value) in enumerate(values):
            if value is None:
                continue
            end = values[index + 1][0] if index + 1 < len(values) else high
            points.append(f"{x(threshold):.1f},{y(value):.1f} {x(end):.1f},{y(value):.1f}")
        return " ".join(points)

    parts = [_title(0, title)]
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        parts.append(
            f'<line x1="{left}" x2="{left + plot_w}" y1="{y(tick):.1f}" y2="{y(tick):.1f}"'
            f' stroke="{_GRID}"/><text x="{left - 8}" y="{y(tick) + 4:.1f}" font-size="10"'
            f' fill="{_MUTED}" text-anchor="end">{tick:.0%}</text>'
        )
    for index in range(6):
        value = low + (high - low) * index / 5
        parts.append(
            f'<text x="{x(value):.1f}" y="{top + plot_h + 16}" font-size="10" fill="{_MUTED}"'
            f' text-anchor="middle">{value:.3g}</text>'
        )
    parts.append(
        f'<text x="{left + plot_w / 2:.0f}" y="{top + plot_h + 34}" font-size="11"'
        f' fill="{_MUTED}" text-anchor="middle">threshold (probability of the best label)'
        "</text>"
    )
    accuracy = steps([(fit.threshold, fit.accuracy) for fit in curve])
    precision = steps([(fit.threshold, fit.default_precision) for fit in curve])
    parts.append(
        f'<polyline points="{precision}" fill="none" stroke="#7c3aed" stroke-width="1.5"'
        ' stroke-dasharray="5 4"/>'
        f'<polyline points="{accuracy}" fill="none" stroke="{_INK}" stroke-width="2"/>'
    )
    legend_x = left + plot_w + 16
    for index, (label, threshold, colour) in enumerate(markers):
        # Markers are often close together, so their names go in the legend, not the plot.
        dash = ' stroke-dasharray="3 3"' if index == 0 else ""
        parts.append(
            f'<line x1="{x(threshold):.1f}" x2="{x(threshold):.1f}" y1="{top}"'
            f' y2="{top + plot_h}" stroke="{colour}" stroke-width="1.5"{dash}/>'
            f'<line x1="{legend_x + 11}" x2="{legend_x + 11}" y1="{top + 44 + 20 * index}"'
            f' y2="{top + 58 + 20 * index}" stroke="{colour}" stroke-width="1.5"{dash}/>'
            f'<text x="{legend_x + 28}" y="{top + 55 + 20 * index}" font-size="11"'
            f' fill="{colour}">{esc(label, 40)}</text>'
        )
    parts.append(
        f'<line x1="{legend_x}" x2="{legend_x + 22}" y1="{top + 10}" y2="{top + 10}"'
        f' stroke="{_INK}" stroke-width="2"/><text x="{legend_x + 28}" y="{top + 14}"'
        f' font-size="11" fill="{_INK}">accuracy</text>'
        f'<line x1="{legend_x}" x2="{legend_x + 22}" y1="{top + 30}" y2="{top + 30}"'
        ' stroke="#7c3aed" stroke-width="1.5" stroke-dasharray="5 4"/>'
        f'<text x="{legend_x + 28}" y="{top + 34}" font-size="11" fill="{_INK}">'
        "default route precision</text>"
    )
    return _svg(left + plot_w + 230, top + plot_h + 44, "".join(parts), title)


@dataclass(frozen=True)
class Bar:
    """One bar: a label, a value, the text shown after it, and a colour."""

    label: str
    value: float
    text: str
    colour: str = BASE_COLOUR


def bar_chart(bars: Sequence[Bar], title: str) -> str:
    """Horizontal bars on a linear axis from zero."""
    left, row, top, plot = 190, 24, 30, 560
    high = max((bar.value for bar in bars), default=0.0) or 1.0
    parts = [_title(0, title)]
    for index, bar in enumerate(bars):
        mid = top + index * row + row / 2
        width = plot * bar.value / high
        parts.append(
            f'<text x="{left - 10}" y="{mid + 4:.0f}" font-size="12" fill="{_INK}"'
            f' text-anchor="end">{esc(bar.label, 26)}</text>'
            f'<rect x="{left}" y="{mid - 8}" width="{max(width, 1.5):.1f}" height="16" rx="3"'
            f' fill="{bar.colour}" fill-opacity="0.8"/>'
            f'<text x="{left + max(width, 1.5) + 8:.1f}" y="{mid + 4:.0f}" font-size="11"'
            f' fill="{_MUTED}">{esc(bar.text, 60)}</text>'
        )
    return _svg(left + plot + 200, top + row * len(bars) + 10, "".join(parts), title)
