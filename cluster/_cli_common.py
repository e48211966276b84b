"""What the ``cantata`` commands share: options, output, and how failures are reported."""

from __future__ import annotations

import json
import sys
from enum import StrEnum
from typing import Annotated, Any, NoReturn

import structlog
import typer
from rich.console import Console

from cantata.agents import CantataError, TopologySpecError
from cantata.topologies import RunResult

__all__ = [
    "AddressOption",
    "JsonOption",
    "LogFormat",
    "LogLevel",
    "fail",
    "print_json",
    "print_result",
    "report_failure",
]

JsonOption = Annotated[
    bool, typer.Option("--json", help="Print one JSON object on stdout (logs stay on stderr).")
]
AddressOption = Annotated[
    str | None,
    typer.Option(
        "--address",
        envvar="RAY_ADDRESS",
        help="The Ray cluster to use (host:port, auto, ray://host:port).",
    ),
]


class LogFormat(StrEnum):
    """How log lines on stderr look."""

    console = "console"
    json = "json"


class LogLevel(StrEnum):
    """The minimum level logged."""

    debug = "debug"
    info = "info"
    warning = "warning"
    error = "error"


def print_json(data: Any) -> None:
    """One JSON object on stdout."""
    sys.stdout.write(json.dumps(data) + "\n")
    sys.stdout.flush()


def report_failure(exc: Exception, json_output: bool) -> NoReturn:
    """Exit with a typed error: code 2 for an invalid topology, 1 for anything else."""
    if not isinstance(exc, CantataError):
        # A bug, not a typed failure: keep the traceback for the report, still answer cleanly.
        structlog.get_logger("cantata.cli").exception("unexpected error")
    fail(exc, json_output, code=2 if isinstance(exc, TopologySpecError) else 1)


def print_result(result: RunResult, json_output: bool) -> None:
    if json_output:
        print_json(result.to_json_dict())
    else:
        print_readable(result)


def fail(exc: Exception, json_output: bool, *, code: int) -> NoReturn:
    if json_output:
        error = {"error": {"type": type(exc).__name__, "message": str(exc)}}
        sys.stdout.write(json.dumps(error) + "\n")
    else:
        Console(stderr=True).print(
            f"[bold red]error[/] {type(exc).__name__}: {exc}", markup=True, highlight=False
        )
    raise typer.Exit(code)


def print_readable(result: RunResult) -> None:
    console = Console(soft_wrap=True)
    console.print(result.text.strip() or "(empty answer)", markup=False, highlight=False)
    console.print()
    models = [span for span in result.trace if span.model]
    for span in models:
        where = f"actor {span.actor_id[:12]}…" if span.actor_id else "in-process"
        console.print(
            f"[dim]{span.agent}: {span.model} v{span.model_version} · "
            f"{span.input_tokens} in / {span.output_tokens} out tokens · "
            f"{span.latency_ms:.0f} ms · {where}[/]",
            highlight=False,
        )
    console.print(
        f"[dim]{result.pattern} '{result.topology}' · {result.usage.total_tokens} tokens · "
        f"${result.cost_usd:.6f} · {result.latency_ms:.0f} ms total · trace {result.trace_id}[/]",
        highlight=False,
    )
