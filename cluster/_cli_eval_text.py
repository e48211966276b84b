"""How ``cantata eval`` prints its report for a person (``--json`` prints the data instead)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cantata.topologies import Comparison, EvalReport, GateResult

from ._eval_format import delta_text, value_text

__all__ = ["print_evaluation"]

_SHOWN_MISTAKES = 10


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms"


def _summary(console: Console, report: EvalReport) -> None:
    console.print(
        f"[bold]{report.pattern} '{escape(report.topology)}'[/] on {escape(report.dataset)}:"
        f" {report.requests} requests, {report.failed} failed"
    )
    if report.accuracy is not None:
        console.print(f"accuracy ({report.accuracy_metric}): [bold]{_pct(report.accuracy)}[/]")
    if report.answers is not None:
        answers = report.answers
        semantic = (
            f", semantic {_pct(answers.semantic)} (cosine >= {answers.similarity_threshold:g},"
            f" mean {answers.mean_similarity:.3f})"
            if answers.semantic is not None and answers.mean_similarity is not None
            else ""
        )
        console.print(f"answers: exact match {_pct(answers.exact_match)}{semantic}")
    if report.ensemble is not None:
        ensemble = report.ensemble
        console.print(
            f"ensemble: mean agreement {_pct(ensemble.mean_agreement)}, unanimous"
            f" {_pct(ensemble.unanimous_rate)}, escalated {_pct(ensemble.escalation_rate)}"
        )
    if report.latency is not None:
        console.print(
            f"request latency: p50 {_ms(report.latency.p50_ms)}, p95 {_ms(report.latency.p95_ms)}"
        )
    console.print(
        f"per request: {report.cost.tokens_per_request:.1f} tokens,"
        f" ${report.cost.cost_per_request_usd:.6f}"
    )


def _cell(count: int, *, diagonal: bool) -> str:
    if not count:
        return "[dim]0[/]"
    return f"[bold green]{count}[/]" if diagonal else f"[red]{count}[/]"


def _routing(console: Console, report: EvalReport) -> None:
    routing = report.routing
    if routing is None:
        return
    matrix = routing.confusion
    table = Table(title="routing: gold label (rows) x route taken (columns)", title_justify="left")
    table.add_column("gold \\ taken")
    for label in matrix.labels:
        table.add_column(escape(label), justify="right")
    table.add_column("recall", justify="right")
    for i, (label, row) in enumerate(zip(matrix.labels, matrix.counts, strict=True)):
        if not sum(row):
            continue  # a label only ever predicted (the failed column, say) has no gold row
        cells = [_cell(n, diagonal=i == j) for j, n in enumerate(row)]
        table.add_row(escape(label), *cells, _pct(matrix.recall(label)))
    console.print(table)
    best = routing.best_threshold
    console.print(
        f"threshold {routing.threshold:g} sent {routing.defaulted} requests to the default route;"
        f" best threshold [bold]{best.threshold:.4f}[/] -> accuracy {_pct(best.accuracy)}"
        f" ({best.defaulted} to the default)"
    )
    if routing.default_precision_target is not None:
        fit = routing.default_precision_threshold
        if fit is None:
            console.print(
                f"no threshold keeps the default route's precision >="
                f" {routing.default_precision_target:g}"
            )
        else:
            console.print(
                f"highest threshold with default precision >= {routing.default_precision_target:g}:"
                f" [bold]{fit.threshold:.4f}[/] -> accuracy {_pct(fit.accuracy)},"
                f" default precision {_pct(fit.default_precision)}"
            )


def _models(console: Console, report: EvalReport) -> None:
    if not report.models:
        return
    table = Table(title="models", title_justify="left")
    for column in ("model", "calls", "failed", "p50", "p95", "max", "tokens", "cost"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for model in report.models:
        table.add_row(
            escape(model.agent),
            str(model.calls),
            str(model.failed),
            _ms(model.latency.p50_ms),
            _ms(model.latency.p95_ms),
            _ms(model.latency.max_ms),
            str(model.tokens),
            f"${model.cost_usd:.6f}",
        )
    console.print(table)


def _problems(console: Console, report: EvalReport) -> None:
    for failure in report.failures:
        lines = ", ".join(str(n) for n in failure.lines)
        console.print(
            f"[red]{failure.count} x {escape(failure.error_type)}[/] (lines {lines}):"
            f" {escape(failure.message)}"
        )
    if report.mistakes:
        console.print(f"[bold]first mistakes[/] ({len(report.mistakes)} listed):")
    for mistake in report.mistakes[:_SHOWN_MISTAKES]:
        console.print(
            f"  line {mistake.line}: {escape(mistake.input[:80])!s} -> want"
            f" {escape(mistake.want[:60])}, got {escape(mistake.got[:60])}"
        )


def _comparison(console: Console, comparison: Comparison) -> None:
    console.print()
    _summary(console, comparison.candidate)
    _routing(console, comparison.candidate)
    _models(console, comparison.candidate)
    _problems(console, comparison.candidate)
    table = Table(
        title=f"'{escape(comparison.candidate.topology)}' against"
        f" '{escape(comparison.base.topology)}'",
        title_justify="left",
    )
    for column in ("metric", "base", "candidate", "change"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for delta in comparison.deltas:
        table.add_row(
            delta.metric,
            value_text(delta.metric, delta.base),
            value_text(delta.metric, delta.candidate),
            delta_text(delta),
        )
    console.print(table)


def print_evaluation(
    report: EvalReport,
    comparison: Comparison | None,
    gates: Sequence[GateResult],
    html: Path | None,
) -> None:
    """The report (and the comparison and gates) as text on stdout."""
    # Piped output gets a wide console: rich would squeeze the tables into 80 columns.
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 120)
    _summary(console, report)
    _routing(console, report)
    _models(console, report)
    _problems(console, report)
    if comparison is not None:
        _comparison(console, comparison)
    for gate in gates:
        verdict = "[bold green]pass[/]" if gate.passed else "[bold red]FAIL[/]"
        console.print(f"gate {gate.gate}: {verdict} {escape(gate.detail)}")
    if html is not None:
        console.print(f"report: {escape(str(html))}")
