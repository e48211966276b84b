"""What the ``cantata`` commands share: options, input, output, exit codes and failures.

Exit codes: 0 answered, 1 failed while running (a typed :class:`CantataError`), 2 invalid
topology file, 64 command-line usage error (``EX_USAGE`` from sysexits.h).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from enum import IntEnum, StrEnum
from pathlib import Path
from typing import Annotated, Any, BinaryIO, NoReturn

import structlog
import typer
from rich.console import Console

# Typer 0.26+ vendors Click; its exceptions, not the `click` package's, are what parsing raises.
from typer._click.exceptions import UsageError
from typer.core import TyperOption

from cantata.agents import CantataError, Span, TopologySpecError
from cantata.topologies import RunResult

from ._trace_view import span_tree, trace_tree

__all__ = [
    "MAX_INPUT_BYTES",
    "AddressOption",
    "ExitCode",
    "InputFileOption",
    "InputOption",
    "JsonOption",
    "LogFormat",
    "LogFormatOption",
    "LogLevel",
    "LogLevelOption",
    "NumCpusOption",
    "TraceOption",
    "fail",
    "hide_flag_value_types",
    "pattern_lines",
    "plain_stderr_unless_tty",
    "print_json",
    "print_readable",
    "print_result",
    "read_request",
    "report_failure",
]

MAX_INPUT_BYTES = 1024 * 1024
"""The largest request accepted from ``--input -`` or ``--input-file`` (1 MiB)."""


class ExitCode(IntEnum):
    """What the process's exit status means."""

    ANSWERED = 0
    FAILED = 1
    INVALID_TOPOLOGY = 2
    USAGE = 64


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
InputOption = Annotated[
    str | None,
    typer.Option(
        "--input",
        "-i",
        help="The request text; '-' reads it from stdin. Give this or --input-file.",
    ),
]
InputFileOption = Annotated[
    Path | None,
    typer.Option(
        "--input-file",
        help="Read the request from this UTF-8 file (at most 1 MiB); for long requests.",
    ),
]
TraceOption = Annotated[
    bool,
    typer.Option(
        "--trace",
        help="Draw the span tree: after the answer, or on stderr with --json.",
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


NumCpusOption = Annotated[
    int | None,
    typer.Option(min=1, help="Logical CPUs of the embedded Ray. Default: this machine's cores."),
]
LogFormatOption = Annotated[LogFormat, typer.Option(help="Log line format on stderr.")]
LogLevelOption = Annotated[LogLevel, typer.Option(help="Minimum log level.")]


def read_request(input_text: str | None, input_file: Path | None) -> str:
    """The request from ``--input TEXT``, ``--input -`` (stdin) or ``--input-file PATH``.

    Exactly one must be given, the text must not be blank, and a stream or file must hold at
    most :data:`MAX_INPUT_BYTES` of UTF-8. Raises :class:`UsageError` (exit 64) otherwise.
    """
    if input_text is not None and input_file is not None:
        raise UsageError("give the request with --input or --input-file, not both")
    if input_text is None and input_file is None:
        raise UsageError(
            "no request: give --input TEXT, --input - (read stdin) or --input-file PATH"
        )
    if input_text == "-" or input_file == Path("-"):
        if sys.stdin.isatty():  # someone typing: say why nothing happens yet
            sys.stderr.write("reading the request from stdin; end it with Ctrl-D\n")
        text = _decode(_read_bounded(sys.stdin.buffer, "stdin"), "stdin")
    elif input_file is not None:
        try:
            with input_file.open("rb") as stream:
                data = _read_bounded(stream, str(input_file))
        except OSError as exc:
            raise UsageError(f"cannot read --input-file {input_file}: {exc.strerror}") from None
        text = _decode(data, str(input_file))
    else:
        assert input_text is not None  # the checks above leave only this case
        text = input_text
    if not text.strip():
        raise UsageError("the request is empty: give some text to answer")
    return text


def _read_bounded(stream: BinaryIO, name: str) -> bytes:
    # One byte past the limit tells "exactly at the limit" from "over it" without reading all.
    data = stream.read(MAX_INPUT_BYTES + 1)
    if len(data) > MAX_INPUT_BYTES:
        raise UsageError(
            f"the request from {name} is over {MAX_INPUT_BYTES / 2**20:g} MiB; send a shorter one"
        )
    return data


def _decode(data: bytes, name: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(
            f"the request from {name} is not UTF-8 text (byte {exc.start}: {exc.reason})"
        ) from None


def plain_stderr_unless_tty() -> None:
    """Keep ANSI colour codes out of stderr when it is not a terminal (a file, a pipe, CI).

    Ray's driver colours the ``(ActorName pid=…)`` prefix of every line it forwards from an
    actor, whatever stderr is; ``RAY_COLOR_PREFIX=0`` turns that off, and Ray reads it each
    time it prints. structlog renders without colours and rich checks for a terminal itself.
    A user's own ``RAY_COLOR_PREFIX`` wins.
    """
    if not sys.stderr.isatty():
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")


def hide_flag_value_types() -> None:
    """Show boolean flags in ``--help`` without a ``<bool>`` value they do not take.

    Typer 0.29 builds the rich help's type column from ``TyperOption.display_type_rich``, which
    describes the parameter's type whether or not the option takes a value, so every flag
    (``--json``, ``--help``, ``--version``) read ``<bool>``. Typer 0.28 left out types naming
    "bool", and typer's plain (non-rich) help still skips flags and counters. This restores
    that for every option at once, the ``--help`` options typer makes itself included (no
    per-option ``metavar`` reaches those); idempotent. Drop it once typer's rich help skips
    flags again.
    """
    original = TyperOption.display_type_rich
    if getattr(original, "_cantata_hides_flags", False):
        return  # patched already

    def display_type_rich(self: TyperOption, ctx: Any) -> str | None:
        if self.metavar is None and (self.is_flag or self.count):
            return None
        return original(self, ctx)

    display_type_rich._cantata_hides_flags = True  # type: ignore[attr-defined]
    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


def print_json(data: Any) -> None:
    """One JSON object on stdout."""
    sys.stdout.write(json.dumps(data) + "\n")
    sys.stdout.flush()


def report_failure(exc: Exception, json_output: bool, *, trace: bool = False) -> NoReturn:
    """Exit with a typed error: code 2 for an invalid topology, 1 for anything else.

    A failed request's error carries the spans it finished: ``--json`` puts them in the error
    object, and ``trace`` draws them on stderr.
    """
    if not isinstance(exc, CantataError):
        # A bug, not a typed failure: keep the traceback for the report, still answer cleanly.
        structlog.get_logger("cantata.cli").exception("unexpected error")
    spans = [span for span in getattr(exc, "trace", ()) if isinstance(span, Span)]
    if trace and spans:
        Console(stderr=True).print(span_tree(spans))
    invalid = isinstance(exc, TopologySpecError)
    fail(
        exc,
        json_output,
        code=ExitCode.INVALID_TOPOLOGY if invalid else ExitCode.FAILED,
        trace=spans,
    )


def print_result(result: RunResult, json_output: bool, *, trace: bool = False) -> None:
    """The result: one JSON object, or the answer with a summary; ``trace`` adds the span tree.

    With ``json_output`` the tree goes to stderr, so stdout stays exactly one JSON object.
    """
    # No soft_wrap for the tree: rich would crop its long lines instead of wrapping them.
    if json_output:
        print_json(result.to_json_dict())
        if trace:
            Console(stderr=True).print(trace_tree(result))
    else:
        print_readable(result)
        if trace:
            console = Console()
            console.print()
            console.print(trace_tree(result))


def fail(exc: Exception, json_output: bool, *, code: int, trace: Sequence[Span] = ()) -> NoReturn:
    """Report ``exc`` (a JSON error object on stdout, or a line on stderr) and exit ``code``.

    ``trace``, the spans a failed request finished, joins the JSON error object when given.
    """
    if json_output:
        error: dict[str, Any] = {"type": type(exc).__name__, "message": str(exc)}
        if trace:
            error["trace"] = [span.model_dump(mode="json") for span in trace]
        sys.stdout.write(json.dumps({"error": error}) + "\n")
    else:
        Console(stderr=True).print(
            f"[bold red]error[/] {type(exc).__name__}: {exc}", markup=True, highlight=False
        )
    raise typer.Exit(code)


def print_readable(result: RunResult) -> None:
    """The answer, what each model did, which route or decision the pattern took, the totals."""
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
    for line in pattern_lines(result):
        console.print(line, style="dim", markup=False, highlight=False)
    console.print(
        f"[dim]{result.pattern} '{result.topology}' · {result.usage.total_tokens} tokens · "
        f"${result.cost_usd:.6f} · {result.latency_ms:.0f} ms total · trace {result.trace_id}[/]",
        highlight=False,
    )


_WINNER_CHARS = 60  # the winner is an answer text; the full text is the answer printed above


def pattern_lines(result: RunResult) -> list[str]:
    """What a router or an ensemble decided, one line each, for the plain-text output."""
    lines = []
    if result.route is not None:
        route = result.route
        defaulted = " · defaulted" if route.defaulted else ""
        lines.append(
            f"route: {route.label} → {route.target} (confidence {route.confidence:.2f}){defaulted}"
        )
    if result.decision is not None:
        decision = result.decision
        winner = " ".join(decision.winner.split())
        if len(winner) > _WINNER_CHARS:
            winner = winner[: _WINNER_CHARS - 1] + "…"
        parts = [f"winner {winner!r}", f"agreement {decision.agreement:.0%}"]
        if decision.ballots:
            parts.append(f"{len(decision.ballots)} ballots")
        if decision.escalated:
            parts.append("escalated to the strong model")
        elif result.pattern == "consensus":  # only consensus can escalate: say it did not
            parts.append("not escalated")
        lines.append("decision: " + " · ".join(parts))
    return lines
