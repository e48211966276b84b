"""``cantata cost``: what each model, route or version of a deployment cost, and for how much."""

from __future__ import annotations

import re
import time
from enum import StrEnum
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from ._cli_common import AddressOption, JsonOption, print_json, report_failure
from ._cli_deploy import join_cluster
from ._deployment import get_deployment
from ._ledger import CostReport

__all__ = ["add_cost_command", "parse_duration"]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_NUMBER_COLUMNS = (
    "requests", "calls", "input tok", "output tok", "tokens $", "reserved $", "total $",
)  # fmt: skip


def parse_duration(text: str) -> float:
    """Seconds in a duration such as ``90s``, ``30m``, ``1h``, ``1h30m`` or ``7d``."""
    compact = text.strip().lower().replace(" ", "")
    parts = _DURATION.findall(compact)
    if not compact or "".join(f"{n}{u}" for n, u in parts) != compact:
        raise typer.BadParameter(f"{text!r} is not a duration like 90s, 30m, 1h, 1h30m or 7d")
    seconds = sum(float(number) * _UNITS[unit] for number, unit in parts)
    if seconds <= 0:
        raise typer.BadParameter("the duration must be longer than zero")
    return seconds


class CostBreakdown(StrEnum):
    """What the rows of ``cantata cost`` are."""

    model = "model"
    route = "route"
    version = "version"


def _print_report(report: CostReport) -> None:
    console = Console(soft_wrap=True)
    span_s = report.until - report.since
    since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(report.since))
    table = Table(
        title=f"{report.deployment}: cost by {report.by} since {since} ({span_s / 3600:.2f} h)"
    )
    table.add_column(report.by)
    for column in _NUMBER_COLUMNS:
        table.add_column(column, justify="right")
    for row in (*report.rows, report.total):
        style = "bold" if row is report.total else None
        table.add_row(
            row.key,
            str(row.requests),
            str(row.calls),
            str(row.input_tokens),
            str(row.output_tokens),
            f"{row.token_cost_usd:.6f}",
            f"{row.reservation_cost_usd:.6f}",
            f"{row.total_usd:.6f}",
            style=style,
        )
    console.print(table)
    console.print(
        f"[dim]{report.refused} refused by the budget · {report.failed} failed"
        " (their spending is included)[/]",
        highlight=False,
    )


def cost_command(
    name: Annotated[str, typer.Argument(help="The deployment.")],
    since: Annotated[
        str | None,
        typer.Option(
            "--since", metavar="DURATION", help="Only the last DURATION (90s, 30m, 1h, 7d)."
        ),
    ] = None,
    by: Annotated[
        CostBreakdown, typer.Option("--by", help="One row per model, per route or per version.")
    ] = CostBreakdown.model,
    address: AddressOption = None,
    json_output: JsonOption = False,
) -> None:
    """What each model (or route, or version) of a deployment cost, and for how many requests.

    Token cost comes from each model's token prices.
    Reservation cost is pricing.per_hour for the time each replica was held, serving or idle.
    The rows add up to the total.
    """
    since_s = parse_duration(since) if since is not None else None
    try:
        join_cluster(address)
        report = get_deployment(name).cost(since_s=since_s, by=by.value)
    except Exception as exc:
        report_failure(exc, json_output)
    if json_output:
        print_json(report.to_json_dict())
    else:
        _print_report(report)


def add_cost_command(app: typer.Typer) -> None:
    """Register ``cantata cost`` on the app."""
    app.command("cost")(cost_command)
