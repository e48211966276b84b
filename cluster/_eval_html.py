"""The ``cantata eval --report`` page: one self-contained HTML file, inline CSS and SVG only.

No script, no font, no stylesheet or image from anywhere else: the page opens offline and
runs nothing. Every string from a dataset or a model is untrusted, so every one is escaped
and shortened (:func:`~cantata.cluster._eval_svg.esc`) before it reaches the page.
"""

from __future__ import annotations

from collections.abc import Sequence

from cantata.topologies import Comparison, Delta, EvalReport, GateResult, RoutingReport

from ._eval_format import delta_text, ms_text, pct_text, usd_text, value_text
from ._eval_svg import (
    BASE_COLOUR,
    CANDIDATE_COLOUR,
    Bar,
    Box,
    bar_chart,
    box_plot,
    esc,
    heat_map,
    threshold_chart,
)

__all__ = ["render_report"]

_CSS = """
:root { color-scheme: light; }
body { margin: 0; background: #f6f7f9; color: #111827;
  font: 14px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; }
main { max-width: 1100px; margin: 0 auto; padding: 28px 24px 48px; }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 16px; margin: 0 0 12px; }
.meta { color: #6b7280; margin-bottom: 20px; }
section { background: #fff; border: 1px solid #e5e7eb; border-radius: 10px;
  padding: 18px 20px; margin: 16px 0; overflow-x: auto; }
.tiles { display: grid; grid-template-columns: repeat(auto-fit, minmax(160px, 1fr)); gap: 12px; }
.tile { background: #fff; border: 1px solid #e5e7eb; border-radius: 10px; padding: 12px 14px; }
.tile .k { color: #6b7280; font-size: 12px; text-transform: uppercase; letter-spacing: .04em; }
.tile .v { font-size: 24px; font-weight: 650; }
.tile .d { font-size: 12px; }
.good { color: #15803d; } .bad { color: #b91c1c; } .same { color: #6b7280; }
.banner { border-radius: 10px; padding: 12px 16px; margin: 16px 0; font-weight: 600; }
.banner.pass { background: #dcfce7; color: #14532d; border: 1px solid #86efac; }
.banner.fail { background: #fee2e2; color: #7f1d1d; border: 1px solid #fca5a5; }
.banner ul { margin: 6px 0 0; padding-left: 20px; font-weight: 400; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 6px 10px; border-bottom: 1px solid #f0f1f3;
  vertical-align: top; }
th { color: #6b7280; font-weight: 600; font-size: 12px; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
.row { display: flex; flex-wrap: wrap; gap: 24px; align-items: flex-start; }
.meter { display: flex; align-items: center; gap: 10px; margin: 6px 0; }
.meter .l { width: 180px; color: #374151; }
.meter .t { flex: 1; max-width: 420px; height: 12px; background: #f3f4f6; border-radius: 6px; }
.meter .f { height: 12px; border-radius: 6px; }
.meter .x { width: 70px; text-align: right; font-variant-numeric: tabular-nums; }
.legend span { display: inline-block; width: 12px; height: 12px; border-radius: 3px;
  vertical-align: -1px; margin: 0 6px 0 14px; }
.note { color: #6b7280; font-size: 13px; }
code { background: #f3f4f6; padding: 1px 5px; border-radius: 4px; }
svg { max-width: 100%; height: auto; }
"""

# Which way is better, per delta metric: the page colours changes by it.
_HIGHER_IS_BETTER = {"accuracy": True}


def _tone(delta: Delta) -> str:
    if not delta.change:
        return "same"
    better = (delta.change > 0) == _HIGHER_IS_BETTER.get(delta.metric, False)
    return "good" if better else "bad"


def _header(report: EvalReport, comparison: Comparison | None) -> str:
    versus = (
        f" against <b>{esc(comparison.candidate.topology)}</b>"
        f" ({esc(comparison.candidate.pattern)})"
        if comparison
        else ""
    )
    return (
        f"<h1>Evaluation of {esc(report.pattern)} <code>{esc(report.topology)}</code></h1>"
        f'<div class="meta">dataset <code>{esc(report.dataset)}</code> · {report.requests}'
        f" requests · {report.failed} failed{versus}</div>"
    )


def _gates(gates: Sequence[GateResult]) -> str:
    if not gates:
        return ""
    failed = [gate for gate in gates if not gate.passed]
    verdict = f"{len(failed)} of {len(gates)} gates failed" if failed else "every gate held"
    items = "".join(
        f'<li><b class="{"good" if gate.passed else "bad"}">'
        f"{'pass' if gate.passed else 'FAIL'}</b> <code>{esc(gate.gate)}</code>"
        f" {esc(gate.detail)}</li>"
        for gate in gates
    )
    return f'<div class="banner {"fail" if failed else "pass"}">{verdict}<ul>{items}</ul></div>'


def _tiles(report: EvalReport, comparison: Comparison | None) -> str:
    latency = report.latency
    tiles = [
        ("accuracy", "accuracy", pct_text(report.accuracy), f"{report.accuracy_metric or 'none'}"),
        ("latency_p50_ms", "request p50", ms_text(latency.p50_ms if latency else None), ""),
        ("latency_p95_ms", "request p95", ms_text(latency.p95_ms if latency else None), ""),
        ("tokens_per_request", "tokens / request", f"{report.cost.tokens_per_request:.0f}", ""),
        ("cost_per_request_usd", "cost / request", usd_text(report.cost.cost_per_request_usd), ""),
        ("failure_rate", "failed", f"{report.failed} of {report.requests}", ""),
    ]
    out = []
    for metric, name, value, note in tiles:
        extra = f'<div class="d same">{esc(note)}</div>' if note else ""
        if comparison is not None:
            delta = comparison.delta(metric)
            extra = (
                f'<div class="d {_tone(delta)}">candidate: {delta_text(delta)}</div>'
                if delta.change is not None
                else '<div class="d same">candidate: -</div>'
            )
        out.append(
            f'<div class="tile"><div class="k">{esc(name)}</div><div class="v">{value}</div>'
            f"{extra}</div>"
        )
    return f'<div class="tiles">{"".join(out)}</div>'


def _legend(comparison: Comparison | None) -> str:
    if comparison is None:
        return ""
    return (
        f'<p class="legend"><span style="background:{BASE_COLOUR}"></span>base'
        f" <code>{esc(comparison.base.topology)}</code>"
        f'<span style="background:{CANDIDATE_COLOUR}"></span>candidate'
        f" <code>{esc(comparison.candidate.topology)}</code></p>"
    )


def _deltas(comparison: Comparison) -> str:
    rows = "".join(
        f"<tr><td>{esc(d.metric)}</td>"
        f'<td class="n">{value_text(d.metric, d.base)}</td>'
        f'<td class="n">{value_text(d.metric, d.candidate)}</td>'
        f'<td class="n {_tone(d)}">{delta_text(d)}</td></tr>'
        for d in comparison.deltas
    )
    return (
        f"<section><h2>Candidate against base</h2>{_legend(comparison)}"
        '<table><tr><th>metric</th><th class="n">base</th><th class="n">candidate</th>'
        f'<th class="n">change</th></tr>{rows}</table></section>'
    )


def _fit_text(run: EvalReport, routing: RoutingReport) -> str:
    best = routing.best_threshold
    text = (
        f"<p><code>{esc(run.topology)}</code> ran with threshold <b>{routing.threshold:.4g}</b>"
        f" and sent {routing.defaulted} requests to the default route. Replaying its recorded"
        f" scores, the threshold <b>{best.threshold:.4g}</b> gives the best accuracy,"
        f" <b>{pct_text(best.accuracy)}</b> ({best.defaulted} to the default route)."
    )
    target = routing.default_precision_target
    fit = routing.default_precision_threshold
    if target is not None and fit is None:
        text += f" No threshold keeps the default route's precision at {target:.0%} or more."
    elif target is not None and fit is not None:
        text += (
            f" The highest threshold that keeps the default route's precision at {target:.0%}"
            f" or more is <b>{fit.threshold:.4g}</b> (accuracy {pct_text(fit.accuracy)})."
        )
    return text + "</p>"


def _routing(report: EvalReport, comparison: Comparison | None) -> str:
    routing = report.routing
    if routing is None:
        return ""
    maps = [heat_map(routing.confusion, report.topology)]
    texts = [_fit_text(report, routing)]
    candidate = comparison.candidate.routing if comparison else None
    if comparison is not None and candidate is not None:
        maps.append(heat_map(candidate.confusion, comparison.candidate.topology))
        texts.append(_fit_text(comparison.candidate, candidate))
    best = routing.best_threshold
    markers = [
        (f"now {routing.threshold:.4g}", routing.threshold, "#6b7280"),
        (f"best {best.threshold:.4g}", best.threshold, "#15803d"),
    ]
    fit = routing.default_precision_threshold
    if routing.default_precision_target is not None and fit is not None:
        label = f"precision ≥ {routing.default_precision_target:.0%}: {fit.threshold:.4g}"
        markers.append((label, fit.threshold, "#7c3aed"))
    chart = threshold_chart(
        routing.curve, markers, f"{report.topology}: accuracy if the threshold were…"
    )
    return (
        "<section><h2>Routing</h2>"
        '<p class="note">Rows are the gold labels, columns the route the router took; green is'
        " right, red is wrong, darker is more of the row.</p>"
        f'<div class="row">{"".join(maps)}</div>{"".join(texts)}{chart}</section>'
    )


def _meter(label: str, value: float | None, colour: str) -> str:
    width = 0.0 if value is None else max(0.0, min(1.0, value)) * 100
    return (
        f'<div class="meter"><div class="l">{esc(label)}</div><div class="t">'
        f'<div class="f" style="width:{width:.1f}%;background:{colour}"></div></div>'
        f'<div class="x">{pct_text(value)}</div></div>'
    )


def _quality(report: EvalReport, comparison: Comparison | None) -> str:
    runs = [(report, BASE_COLOUR)]
    if comparison is not None:
        runs.append((comparison.candidate, CANDIDATE_COLOUR))
    meters = []
    for run, colour in runs:
        name = run.topology
        if run.answers is not None:
            meters.append(_meter(f"{name}: exact match", run.answers.exact_match, colour))
            if run.answers.semantic is not None:
                threshold = run.answers.similarity_threshold or 0.0
                meters.append(
                    _meter(f"{name}: cosine ≥ {threshold:g}", run.answers.semantic, colour)
                )
        if run.ensemble is not None:
            meters.append(_meter(f"{name}: mean agreement", run.ensemble.mean_agreement, colour))
            meters.append(_meter(f"{name}: unanimous", run.ensemble.unanimous_rate, colour))
            meters.append(_meter(f"{name}: escalated", run.ensemble.escalation_rate, colour))
    if not meters:
        return ""
    return f"<section><h2>Answers and agreement</h2>{''.join(meters)}</section>"


def _latency(report: EvalReport, comparison: Comparison | None) -> str:
    runs = [(report, BASE_COLOUR)]
    if comparison is not None:
        runs.append((comparison.candidate, CANDIDATE_COLOUR))
    # Base and candidate side by side per row label; the colours (and legend) tell them apart.
    boxes: list[Box] = []
    for run, colour in runs:
        if run.latency is not None:
            boxes.append(Box("whole request", run.latency, colour))
    agents = sorted({model.agent for run, _ in runs for model in run.models})
    for agent in agents:
        for run, colour in runs:
            model = next((m for m in run.models if m.agent == agent), None)
            if model is not None:
                boxes.append(Box(agent, model.latency, colour))
    if not boxes:
        return ""
    return (
        "<section><h2>Latency</h2>"
        '<p class="note">Box: p25 to p75; thick bar: median; diamond: p95; whiskers: min to max.'
        " Per model, each call; per request, the whole request.</p>"
        f"{_legend(comparison)}{box_plot(boxes, 'latency per request and per model call')}"
        "</section>"
    )


def _cost(report: EvalReport, comparison: Comparison | None) -> str:
    runs = [(report, BASE_COLOUR)]
    if comparison is not None:
        runs.append((comparison.candidate, CANDIDATE_COLOUR))
    tokens: list[Bar] = []
    dollars: list[Bar] = []
    for run, colour in runs:
        per = run.cost.tokens_per_request
        tokens.append(Bar("whole request", per, f"{per:.0f} tokens", colour))
        usd = run.cost.cost_per_request_usd
        dollars.append(Bar("whole request", usd, usd_text(usd), colour))
    agents = sorted({model.agent for run, _ in runs for model in run.models})
    for agent in agents:
        for run, colour in runs:
            model = next((m for m in run.models if m.agent == agent), None)
            if model is None:
                continue
            answered = max(1, run.requests - run.failed)
            per = model.tokens / answered
            tokens.append(Bar(agent, per, f"{per:.1f} tokens", colour))
            usd = model.cost_usd / answered
            dollars.append(Bar(agent, usd, usd_text(usd), colour))
    priced = any(bar.value > 0 for bar in dollars)
    money = (
        bar_chart(dollars, "cost per answered request (US dollars)")
        if priced
        else '<p class="note">Every model here is priced at $0 (local models, or no'
        " <code>pricing</code> in the topology), so only tokens are shown.</p>"
    )
    return (
        f"<section><h2>Cost per request</h2>{_legend(comparison)}"
        f"{bar_chart(tokens, 'tokens per answered request')}{money}</section>"
    )


def _failures(report: EvalReport, comparison: Comparison | None) -> str:
    runs = [report] + ([comparison.candidate] if comparison else [])
    rows = "".join(
        f"<tr><td>{esc(run.topology)}</td><td><code>{esc(f.error_type)}</code></td>"
        f'<td class="n">{f.count}</td><td>{esc(", ".join(str(n) for n in f.lines))}</td>'
        f"<td>{esc(f.message)}</td></tr>"
        for run in runs
        for f in run.failures
    )
    if not rows:
        return ""
    return (
        "<section><h2>Failures</h2><table><tr><th>topology</th><th>error</th>"
        f'<th class="n">count</th><th>lines</th><th>message</th></tr>{rows}</table></section>'
    )


def _mistakes(report: EvalReport, comparison: Comparison | None) -> str:
    runs = [report] + ([comparison.candidate] if comparison else [])
    rows = "".join(
        f'<tr><td>{esc(run.topology)}</td><td class="n">{m.line}</td><td>{esc(m.input)}</td>'
        f"<td>{esc(m.want)}</td><td>{esc(m.got)}</td></tr>"
        for run in runs
        for m in run.mistakes
    )
    if not rows:
        return ""
    return (
        "<section><h2>Mistakes</h2>"
        '<p class="note">The first wrong or failed requests, shortened.</p>'
        '<table><tr><th>topology</th><th class="n">line</th><th>input</th><th>want</th>'
        f"<th>got</th></tr>{rows}</table></section>"
    )


def render_report(
    report: EvalReport, comparison: Comparison | None, gates: Sequence[GateResult]
) -> str:
    """The whole page for ``report`` (and the candidate, when comparing) and the gates."""
    title = f"cantata eval: {report.topology}"
    body = "".join(
        (
            _header(report, comparison),
            _gates(gates),
            _tiles(report, comparison),
            _deltas(comparison) if comparison else "",
            _routing(report, comparison),
            _quality(report, comparison),
            _latency(report, comparison),
            _cost(report, comparison),
            _failures(report, comparison),
            _mistakes(report, comparison),
        )
    )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{_CSS}</style></head>"
        f"<body><main>{body}</main></body></html>\n"
    )
