"""What the CLI commands share: reading the request, pattern lines, flags in --help."""

from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import Annotated

import pytest
import typer

# What the vendored Click in typer raises; `main()` turns it into exit 64.
from typer._click.exceptions import UsageError
from typer.testing import CliRunner

from cantata.agents import Ballot, Decision, Route, Usage
from cantata.cluster._cli_common import (
    MAX_INPUT_BYTES,
    hide_flag_value_types,
    pattern_lines,
    read_request,
)
from cantata.topologies import RunResult


def with_stdin(monkeypatch: pytest.MonkeyPatch, data: bytes) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))


def test_input_text_is_the_request():
    assert read_request("What is the capital of France?", None) == (
        "What is the capital of France?"
    )


@pytest.mark.parametrize("blank", ["", "   ", "\n\t "])
def test_a_blank_request_is_refused(blank):
    with pytest.raises(UsageError, match="empty"):
        read_request(blank, None)


def test_exactly_one_source_is_required(tmp_path):
    with pytest.raises(UsageError, match=r"--input TEXT, --input - .* or --input-file"):
        read_request(None, None)
    with pytest.raises(UsageError, match="not both"):
        read_request("hi", tmp_path / "request.txt")


def test_dash_reads_stdin(monkeypatch):
    with_stdin(monkeypatch, "Qu'est-ce que c'est ? ünïcode\n".encode())
    assert read_request("-", None) == "Qu'est-ce que c'est ? ünïcode\n"


def test_blank_stdin_is_refused(monkeypatch):
    with_stdin(monkeypatch, b"\n")
    with pytest.raises(UsageError, match="empty"):
        read_request("-", None)


def test_input_file_is_read_as_utf8(tmp_path):
    request = tmp_path / "request.txt"
    request.write_text("a long request " * 20_000, encoding="utf-8")  # 300 KB: over argv's limit
    assert read_request(None, request) == "a long request " * 20_000


def test_the_size_is_bounded_for_files_and_stdin(tmp_path, monkeypatch):
    at_limit = tmp_path / "at-limit.txt"
    at_limit.write_bytes(b"x" * MAX_INPUT_BYTES)
    assert len(read_request(None, at_limit)) == MAX_INPUT_BYTES
    over = tmp_path / "over.txt"
    over.write_bytes(b"x" * (MAX_INPUT_BYTES + 1))
    with pytest.raises(UsageError, match="over 1 MiB"):
        read_request(None, over)
    with_stdin(monkeypatch, b"x" * (MAX_INPUT_BYTES + 1))
    with pytest.raises(UsageError, match="from stdin is over"):
        read_request("-", None)


def test_a_file_that_is_not_utf8_is_refused_clearly(tmp_path):
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("café".encode("latin-1"))
    with pytest.raises(UsageError, match="not UTF-8 text"):
        read_request(None, latin1)


def test_a_missing_file_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match=r"cannot read --input-file .*No such file"):
        read_request(None, tmp_path / "nowhere.txt")
    with pytest.raises(UsageError, match="cannot read --input-file"):
        read_request(None, Path(tmp_path))  # a directory


def a_result(pattern: str, **fields) -> RunResult:
    return RunResult(
        topology="t",
        pattern=pattern,
        trace_id="x",
        text="answer",
        usage=Usage(),
        latency_ms=1.0,
        trace=(),
        **fields,
    )


def test_a_router_says_which_route_answered():
    route = Route(label="billing", confidence=0.314, target="billing-desk", scores={})
    assert pattern_lines(a_result("router", route=route)) == [
        "route: billing → billing-desk (confidence 0.31)"
    ]
    fallen = Route(label="other", confidence=0.1, target="general", scores={}, defaulted=True)
    assert pattern_lines(a_result("router", route=fallen)) == [
        "route: other → general (confidence 0.10) · defaulted"
    ]


def test_an_ensemble_says_what_it_decided():
    ballots = tuple(Ballot(member=f"m{i}", answer="Paris") for i in range(3))
    vote = Decision(winner="Paris", tally={"Paris": 2, "Lyon": 1}, agreement=2 / 3, ballots=ballots)
    assert pattern_lines(a_result("vote", decision=vote)) == [
        "decision: winner 'Paris' · agreement 67% · 3 ballots"
    ]
    kept = Decision(winner="yes", tally={"yes": 3}, agreement=1.0)
    assert pattern_lines(a_result("consensus", decision=kept)) == [
        "decision: winner 'yes' · agreement 100% · not escalated"
    ]
    escalated = Decision(winner="a\nlong " * 40, tally={}, agreement=0.4, escalated=True)
    (line,) = pattern_lines(a_result("consensus", decision=escalated))
    assert "escalated to the strong model" in line
    assert "\n" not in line
    assert "…" in line  # the winner is cut short: the full answer is printed above


def test_other_patterns_add_no_line():
    assert pattern_lines(a_result("single")) == []


def test_flags_show_no_value_in_help():
    app = typer.Typer(add_completion=False)

    @app.command()
    def command(
        json_output: Annotated[bool, typer.Option("--json", help="JSON.")] = False,
        count: Annotated[str, typer.Option(help="A value.")] = "x",
    ) -> None:
        """A command."""

    hide_flag_value_types()
    hide_flag_value_types()  # idempotent
    shown = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "100"}).output
    assert "<bool>" not in shown
    assert "--json" in shown
    assert "--help" in shown
    assert "<str>" in shown  # options that take a value still show its type
