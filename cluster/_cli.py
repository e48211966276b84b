"""The ``cantata`` command line."""

from __future__ import annotations

import asyncio
import importlib.metadata
import sys
from pathlib import Path
from typing import Annotated

import typer

from cantata.agents import LogConfig, configure_logging
from cantata.topologies import load_topology, run_topology

from ._cli_common import (
    AddressOption,
    JsonOption,
    LogFormat,
    LogLevel,
    print_result,
    report_failure,
)
from ._cli_deploy import add_deployment_commands
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
    json_output: JsonOption = False,
    address: AddressOption = None,
    num_cpus: Annotated[
        int | None,
        typer.Option(
            min=1, help="Logical CPUs of the embedded Ray. Default: this machine's cores."
        ),
    ] = None,
    log_format: Annotated[LogFormat, typer.Option(help="Log line format on stderr.")] = (
        LogFormat.console
    ),
    log_level: Annotated[LogLevel, typer.Option(help="Minimum log level.")] = LogLevel.warning,
) -> None:
    """Start a topology's models, answer one request, and tear everything down.

    Without --address (or RAY_ADDRESS) this starts an embedded Ray on 127.0.0.1 for the run.
    """
    log_config = LogConfig(format=log_format.value, level=log_level.value)
    configure_logging(log_config)
    try:
        spec = load_topology(file)
        connection = connect(address, num_cpus=num_cpus, log_config=log_config)
        try:
            result = asyncio.run(run_topology(spec, input_text, RayRuntime(log_config=log_config)))
            # The answer first: tearing Ray down takes a moment the user need not wait for.
            print_result(result, json_output)
        finally:
            connection.close()
    except Exception as exc:
        report_failure(exc, json_output)


add_deployment_commands(app)


def main() -> None:
    """Entry point of the ``cantata`` console script."""
    app()
