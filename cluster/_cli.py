"""The ``cantata`` command line."""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import structlog
import typer
from rich.console import Console

from cantata.agents import CantataError, LogConfig, TopologySpecError, configure_logging
from cantata.topologies import RunResult, load_topology, run_topology

from ._connection import connect
from ._ray_runtime import RayRuntime

__all__ = ["app", "main"]

app = typer.Typer(
    name="cantata",
    help="Run multi-model topologies on Ray: on an embedded local Ray, or on a cluster.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


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


def _show_version(value: bool) -> None:
    if value:
        sys.stdout.write(f"cantata {importlib.metadata.version('cantata')}\n")
        raise typer.Exit


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_show_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Cantata: multi-model AI systems on Ray."""


@app.command()
def run(
    file: Annotated[Path, typer.Argument(help="A topology YAML file, e.g. examples/single.yaml.")],
    input_text: Annotated[str, typer.Option("--input", "-i", help="The request text.")],
    json_output: Annotated[
        bool, typer.Option("--json", help="Print one JSON object on stdout (logs stay on stderr).")
    ] = False,
    address: Annotated[
        str | None,
        typer.Option(
            "--address",
            envvar="RAY_ADDRESS",
            help="Join this Ray cluster (host:port, auto, ray://host:port) instead of starting"
            " an embedded local Ray.",
        ),
    ] = None,
    num_cpus: Annotated[
        float | None,
        typer.Option(help="Logical CPUs of the embedded Ray. Default: this machine's cores."),
    ] = None,
    log_format: Annotated[LogFormat, typer.Option(help="Log line format on stderr.")] = (
        LogFormat.console
    ),
    log_level: Annotated[LogLevel, typer.Option(help="Minimum log level.")] = LogLevel.warning,
) -> None:
    """Start a topology's models, answer one request, and tear everything down."""
    log_config = LogConfig(format=log_format.value, level=log_level.value)
    configure_logging(log_config)
    try:
        spec = load_topology(file)
        connection = connect(address, num_cpus=num_cpus, log_config=log_config)
        try:
            result = asyncio.run(run_topology(spec, input_text, RayRuntime(log_config=log_config)))
            # The answer first: tearing Ray down takes a moment the user need not wait for.
            _print_result(result, json_output)
        finally:
            connection.close()
    except CantataError as exc:
        _fail(exc, json_output, code=2 if isinstance(exc, TopologySpecError) else 1)
    except Exception as exc:
        # A bug, not a typed failure: keep the traceback for the report, still answer cleanly.
        structlog.get_logger("cantata.cli").exception("unexpected error")
        _fail(exc, json_output, code=1)


def _print_result(result: RunResult, json_output: bool) -> None:
    if json_output:
        sys.stdout.write(json.dumps(result.to_json_dict()) + "\n")
        sys.stdout.flush()
    else:
        _print_readable(result)


def _fail(exc: Exception, json_output: bool, *, code: int) -> None:
    if json_output:
        error = {"error": {"type": type(exc).__name__, "message": str(exc)}}
        sys.stdout.write(json.dumps(error) + "\n")
    else:
        Console(stderr=True).print(
            f"[bold red]error[/] {type(exc).__name__}: {exc}", markup=True, highlight=False
        )
    raise typer.Exit(code)


def _print_readable(result: RunResult) -> None:
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


def main() -> None:
    """Entry point of the ``cantata`` console script."""
    app()
