"""``cantata run`` end to end: a real process, an embedded Ray, SmolLM2 in a Ray actor."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.http_server import Reply, ScriptedServer

pytestmark = pytest.mark.model

ROOT = Path(__file__).resolve().parents[2]
CANTATA = Path(sys.executable).with_name("cantata")
SECRET = "sk-live-NEVER-PRINT-ME-42"


EXIT_USAGE = 64
ANSI_ESCAPE = "\x1b"


def cantata(
    *args: str, env: dict[str, str] | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    # Never a terminal here: stdout and stderr are pipes, as in CI or `2>err.txt`.
    environment = {
        k: v
        for k, v in os.environ.items()
        if k not in {"RAY_ADDRESS", "RAY_COLOR_PREFIX", "FORCE_COLOR", "PY_COLORS"}
    } | (env or {})
    return subprocess.run(
        [str(CANTATA), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        timeout=240,
        env=environment,
        check=False,
    )


def test_run_json_prints_one_object_answered_by_smollm2_in_a_ray_actor():
    done = cantata(
        "run", "examples/single.yaml", "--input", "What is the capital of France?", "--json",
        "--log-format", "json", "--log-level", "debug",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    for line in done.stderr.splitlines():  # Ray's lines and the actors' are JSON too
        if line.strip():
            assert isinstance(json.loads(line), dict), line
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert "paris" in result["text"].lower()
    assert result["usage"]["input_tokens"] > 0
    assert result["usage"]["output_tokens"] > 0
    assert result["latency_ms"] > 0
    root, model_span = result["trace"]
    assert root["parent_id"] is None
    assert model_span["parent_id"] == root["span_id"]
    assert model_span["model"] == "SmolLM2-135M-Instruct.Q4_1"
    assert model_span["model_version"] == "135m-instruct-q4_1"
    assert re.fullmatch(r"[0-9a-f]{32}", model_span["actor_id"])
    assert re.fullmatch(r"[0-9a-f]{56}", model_span["node_id"])
    for field in (
        "span_id",
        "agent",
        "start",
        "end",
        "latency_ms",
        "input_tokens",
        "output_tokens",
    ):
        assert field in model_span
    assert model_span["start"] <= model_span["end"]


def test_run_without_json_prints_the_answer_a_summary_and_the_trace_tree():
    # The request comes from stdin (`--input -`); debug logs make the model actor's line reach
    # stderr through Ray, whose forwarded-line prefix is coloured unless told otherwise.
    done = cantata(
        "run", "examples/single.yaml", "--input", "-", "--trace", "--log-level", "debug",
        stdin="What is the capital of France?\n",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "paris" in done.stdout.lower()
    assert "smollm2: SmolLM2-135M-Instruct.Q4_1 v135m-instruct-q4_1" in done.stdout
    assert "tokens" in done.stdout
    assert "actor " in done.stdout
    # The tree comes after the answer and the summary: the root, then the model call under it.
    tree = done.stdout[done.stdout.index("ask-smollm2 · ") :].splitlines()
    assert tree[0].endswith("· ok")
    assert tree[1].startswith("└── smollm2 · SmolLM2-135M-Instruct.Q4_1@135m-instruct-q4_1 · ")
    assert " in / " in done.stdout.split("└── ", 1)[1]
    assert ANSI_ESCAPE not in done.stdout
    assert ANSI_ESCAPE not in done.stderr, done.stderr


def test_run_json_with_trace_keeps_stdout_one_object_and_draws_the_tree_on_stderr(tmp_path):
    request = tmp_path / "request.txt"
    request.write_text("What is the capital of France?", encoding="utf-8")
    done = cantata("run", "examples/single.yaml", "--input-file", str(request), "--json", "--trace")
    assert done.returncode == 0, done.stderr
    (line,) = done.stdout.strip().splitlines()
    result = json.loads(line)
    assert "paris" in result["text"].lower()
    for span in result["trace"]:
        for field in ("input_tokens", "output_tokens", "cost_usd", "model_version", "node_id"):
            assert field in span, (field, span)
    model_span = result["trace"][1]
    assert model_span["cost_usd"] >= 0
    assert re.fullmatch(r"[0-9a-f]{56}", model_span["node_id"])
    assert "ask-smollm2 · " in done.stderr
    assert "└── smollm2 · SmolLM2-135M-Instruct.Q4_1@135m-instruct-q4_1" in done.stderr
    assert f"node {model_span['node_id'][:8]}" in done.stderr.replace("\n    ", " ")
    assert ANSI_ESCAPE not in done.stderr


def test_unschedulable_topology_fails_fast_with_a_typed_error(tmp_path):
    topology = tmp_path / "gpu.yaml"
    topology.write_text(
        "pattern: single\nname: needs-gpu\n"
        "model: {name: big, backend: {type: llamacpp}, resources: {num_gpus: 1}}\n"
    )
    done = cantata("run", str(topology), "--input", "hi", "--json", "--num-cpus", "2")
    assert done.returncode == 1
    error = json.loads(done.stdout)["error"]
    assert error["type"] == "UnschedulableError"
    assert "GPU" in error["message"]


def test_api_key_never_reaches_output_logs_or_errors(tmp_path):
    topology = tmp_path / "remote.yaml"
    topology.write_text(
        "pattern: single\nname: remote\n"
        "model:\n  name: gpt\n  backend:\n    type: openai\n"
        "    base_url: http://127.0.0.1:9/v1\n    model: gpt-x\n    api_key_env: CANTATA_TEST_KEY\n"
        "    retry: {max_attempts: 2, backoff_base: 0.01}\n"
    )
    done = cantata(
        "run", str(topology), "--input", "hi", "--json", "--log-level", "debug",
        env={"CANTATA_TEST_KEY": SECRET},
    )  # fmt: skip
    assert done.returncode == 1
    error = json.loads(done.stdout)["error"]
    assert error["type"] == "EndpointUnreachableError"
    # The actors' "retrying" warnings usually reach stderr too; Ray forwards them
    # asynchronously, so their arrival is not asserted. The in-process tests check them.
    assert SECRET not in done.stdout
    assert SECRET not in done.stderr


def _ray_sessions() -> set[Path]:
    return set(Path("/tmp/ray").glob("session_2*"))


def _files_holding(secret: str, sessions: set[Path]) -> list[str]:
    found = []
    for session in sessions:
        for path in session.rglob("*"):
            if path.is_file() and not path.is_symlink():
                with contextlib.suppress(OSError):
                    if secret.encode() in path.read_bytes():
                        found.append(str(path))
    return found


@pytest.mark.parametrize(
    ("field", "flags"),
    [
        ("model", ()),  # a good answer: the readable summary names the model
        ("model", ("--json", "--trace")),  # the trace's spans carry the model too
        ("prompt_tokens", ("--json",)),  # a bad answer: the error quotes the value
    ],
)
def test_a_server_echoing_the_key_in_its_answer_never_gets_it_printed(tmp_path, field, flags):
    body = {
        "id": "chatcmpl-1",
        "model": "served-model",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "echo: {authorization}"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2},
    }
    if field == "model":
        body["model"] = "{authorization}"
    else:
        body["usage"]["prompt_tokens"] = "{authorization}"
    topology = tmp_path / "echo.yaml"
    with ScriptedServer(Reply(json=body, echo_authorization=True)) as server:
        topology.write_text(
            "pattern: single\nname: echo\n"
            "model:\n  name: gpt\n  backend:\n    type: openai\n"
            f"    base_url: {server.url}\n    model: gpt-x\n    api_key_env: CANTATA_TEST_KEY\n"
        )
        before = _ray_sessions()
        done = cantata(
            "run", str(topology), "--input", "hi", "--log-level", "debug", *flags,
            env={"CANTATA_TEST_KEY": SECRET},
        )  # fmt: skip
        requests = server.requests
    assert requests
    assert requests[0].headers["authorization"] == f"Bearer {SECRET}"
    if field == "model":
        assert done.returncode == 0, done.stderr
        assert "Bearer **********" in done.stdout + done.stderr  # quoted, scrubbed
    else:
        assert done.returncode == 1
        assert json.loads(done.stdout)["error"]["type"] == "MalformedResponseError"
    assert SECRET not in done.stdout
    assert SECRET not in done.stderr
    assert _files_holding(SECRET, _ray_sessions() - before) == []


def test_invalid_topology_exits_2_with_the_problem():
    done = cantata("run", "pyproject.toml", "--input", "hi", "--json")
    assert done.returncode == 2
    assert json.loads(done.stdout)["error"]["type"] == "TopologySpecError"


def test_help_describes_run():
    done = cantata("run", "--help")
    assert done.returncode == 0
    for option in (
        "--input", "--input-file", "--json", "--trace", "--address", "--log-format", "--num-cpus",
    ):  # fmt: skip
        assert option in done.stdout


def test_help_shows_no_value_for_flags_and_documents_the_exit_codes():
    root = cantata("--help", env={"COLUMNS": "120"})
    assert root.returncode == 0
    assert "64 command-line usage error" in root.stdout
    commands = re.findall(r"^│ (\w+) ", root.stdout, flags=re.MULTILINE)
    assert {"run", "call", "deploy", "status"} <= set(commands)
    for command in commands:
        shown = cantata(command, "--help", env={"COLUMNS": "120"})
        assert shown.returncode == 0, (command, shown.stderr)
        assert "--help" in shown.stdout
        assert "<bool>" not in shown.stdout, command
    assert "<bool>" not in root.stdout


def test_version_and_no_arguments():
    version = cantata("--version")
    assert version.returncode == 0
    assert version.stdout.startswith("cantata ")
    bare = cantata()
    assert bare.returncode == EXIT_USAGE  # nothing asked: the help, as a usage error
    assert "Usage: cantata" in bare.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "examples/single.yaml"], "no request: give --input TEXT"),
        (["run", "examples/single.yaml", "--input", ""], "the request is empty"),
        (["run", "examples/single.yaml", "--input", " \n\t"], "the request is empty"),
        (["run", "examples/single.yaml", "--input", "hi", "--input-file", "README.md"], "not both"),
        (["run", "examples/single.yaml", "--input-file", "no/such/file.txt"], "cannot read"),
        (["run", "examples/single.yaml", "--input", "hi", "--no-such-option"], "No such option"),
        (["run", "--input", "hi"], "Missing argument"),
        (["call", "some-deployment"], "no request: give --input TEXT"),
        (["call", "some-deployment", "--input", "   "], "the request is empty"),
    ],
)
def test_usage_errors_exit_64_before_starting_ray(args, message):
    done = cantata(*args)
    assert done.returncode == EXIT_USAGE, done.stdout + done.stderr
    assert message in done.stderr
    assert "Try 'cantata" in done.stderr  # the usage hint
    assert done.stdout == ""
    assert ANSI_ESCAPE not in done.stderr
    assert "Ray" not in done.stderr  # refused before Ray started


def test_usage_errors_with_json_still_print_one_json_object():
    done = cantata("run", "examples/single.yaml", "--json", "--input", "")
    assert done.returncode == EXIT_USAGE
    error = json.loads(done.stdout)["error"]
    assert error["type"] == "UsageError"
    assert "empty" in error["message"]


def test_blank_stdin_and_oversized_files_are_refused(tmp_path):
    blank = cantata("run", "examples/single.yaml", "--input", "-", stdin="\n  \n")
    assert blank.returncode == EXIT_USAGE
    assert "the request is empty" in blank.stderr
    huge = tmp_path / "huge.txt"
    huge.write_bytes(b"x" * (1024 * 1024 + 1))
    too_big = cantata("run", "examples/single.yaml", "--input-file", str(huge))
    assert too_big.returncode == EXIT_USAGE
    assert "over 1 MiB" in too_big.stderr
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("café".encode("latin-1"))
    not_utf8 = cantata("run", "examples/single.yaml", "--input-file", str(latin1))
    assert not_utf8.returncode == EXIT_USAGE
    assert "not UTF-8" in not_utf8.stderr


def test_run_joins_an_existing_cluster_with_address(cli_cluster, tmp_path):
    topology = tmp_path / "pinned.yaml"
    # Pinned to the resource only the started cluster declares: it cannot run anywhere else.
    topology.write_text(
        "pattern: single\nname: pinned\nmax_tokens: 48\n"
        "model: {name: smollm2, resources: {num_cpus: 1, custom: {cli_node: 1}}}\n"
    )
    for _attempt in range(30):  # the head needs a few seconds before it accepts drivers
        done = cantata(
            "run", str(topology), "--input", "What is the capital of France?", "--json",
            "--address", cli_cluster,
        )  # fmt: skip
        if done.returncode == 0 or "cannot connect" not in done.stdout:
            break
        time.sleep(1)
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout)
    assert "paris" in result["text"].lower()
    assert result["trace"][1]["actor_id"]
