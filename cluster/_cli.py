"""The ``cantata`` command line."""

from __future__ import annotations

import importlib.metadata
import sys
from pathlib import Path
from typing import Annotated

import typer
from typer import rich_utils

# Typer 0.26+ vendors Click: these, not the `click` package's, are what its parser raises.
from typer._click.exceptions import ClickException, UsageError

from cantata.agents import LogConfig, configure_logging, new_id
from cantata.topologies import load_code, load_topology

from ._cli_cluster import add_cluster_commands
from ._cli_common import (
    AddressOption,
    ExitCode,
    InputFileOption,
    InputOption,
    JsonOption,
    LogFormat,
    LogFormatOption,
    LogLevel,
    LogLevelOption,
    NumCpusOption,
    TraceOption,
    hide_flag_value_types,
    plain_stderr_unless_tty,
    print_json,
    print_result,
    read_request,
    report_failure,
)
from ._cli_cost import add_cost_command
from ._cli_deploy import add_deployment_commands
from ._cli_eval import add_eval_command
from ._connection import connect
from ._deployment import deploy
from ._observability import Observability

__all__ = ["app", "main"]

app = typer.Typer(
    name="cantata",
    help=(
        "Run multi-model topologies on Ray: on an embedded local Ray, or on a cluster.\n\n"
        "Exit codes: 0 answered, 1 failed while running (a typed error), 2 invalid topology"
        " file, 64 command-line usage error."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
hide_flag_value_types()  # here, not in main(): the help is the app's, however it is invoked


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
    input_text: InputOption = None,
    input_file: InputFileOption = None,
    json_output: JsonOption = False,
    trace: TraceOption = False,
    address: AddressOption = None,
    num_cpus: NumCpusOption = None,
    log_format: LogFormatOption = LogFormat.console,
    log_level: LogLevelOption = LogLevel.warning,
) -> None:
    """Start a topology, answer one request, and tear everything down.

    The topology runs as a short-lived deployment on the same path as `cantata deploy`: its
    coordinator, models and hosted agents are actors with their own reservations. Without
    --address (or RAY_ADDRESS) this starts an embedded Ray on 127.0.0.1 for the run.
    """
    # Before Ray starts: a request that cannot be read is a usage error, not a failed run.
    request = read_request(input_text, input_file)
    log_config = LogConfig(format=log_format.value, level=log_level.value)
    configure_logging(log_config)
    try:
        spec = load_topology(file)
        code = load_code(spec, file.parent)
        observability = Observability.from_env(topology=spec.name)
        connection = connect(address, num_cpus=num_cpus, log_config=log_config)
        try:
            deployment = deploy(
                spec,
                f"run-{new_id()[:12]}",
                code=code,
                log_config=log_config,
                observability=observability,
                detached=False,
            )
            try:
                result = deployment.call(request)
                # The answer first: tearing down takes a moment the user need not wait for.
                print_result(result, json_output, trace=trace)
            finally:
                deployment.down()
        finally:
            connection.close()
    except Exception as exc:
        report_failure(exc, json_output, trace=trace)


add_deployment_commands(app)
add_eval_command(app)
add_cost_command(app)
add_cluster_commands(app)


def main() -> None:
    """Entry point of the ``cantata`` console script.

    Click exits 2 on a usage error, the code Cantata gives an invalid topology file; running it
    with ``standalone_mode=False`` hands usage errors back here to exit 64 (``EX_USAGE``)
    instead. ``typer.Exit`` codes (failures, ``--help``, ``--version``) come back as the return
    value.
    """
    plain_stderr_unless_tty()
    try:
        code = app(standalone_mode=False)
    except UsageError as exc:
        _report_usage_error(exc)
        code = ExitCode.USAGE
    except ClickException as exc:  # not a usage error (an unreadable file): Click's own code
        rich_utils.rich_format_error(exc)
        code = exc.exit_code
    except typer.Abort:
        rich_utils.rich_abort_error()
        code = ExitCode.FAILED
    sys.exit(code if isinstance(code, int) else ExitCode.ANSWERED)


def _report_usage_error(exc: UsageError) -> None:
    # With no arguments the help is the answer: Click printed it while raising this error.
    rich_utils.rich_format_error(exc)
    # With --json, stdout still carries one JSON object once --json has been parsed (always
    # for the request checks, which run inside the command).
    if exc.ctx is not None and exc.ctx.params.get("json_output"):
        print_json({"error": {"type": "UsageError", "message": exc.format_message()}})
