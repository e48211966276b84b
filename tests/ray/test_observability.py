"""Metrics, cost and budgets of a deployment on the multi-node test cluster.

The series are read the way Prometheus reads them: over HTTP from the metrics endpoint that
Ray's metrics agent serves on every node, on loopback.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import ray
from prometheus_client.parser import text_string_to_metric_families

from cantata.agents import (
    BudgetExceededError,
    FunctionConfig,
    ModelRequest,
    ModelSpec,
    Pricing,
    Resources,
)
from cantata.agents.backends import Completion
from cantata.cluster import SERIES, Deployment, deploy
from cantata.cluster._metrics import record_scaling_decision
from cantata.topologies import (
    ConsensusSpec,
    DeploymentBudget,
    Label,
    ModelClassifier,
    RouterSpec,
    SingleSpec,
)

pytestmark = pytest.mark.ray

DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana" / "cantata.json"
PRICES = Pricing(input_per_mtok=1_000_000, output_per_mtok=1_000_000)  # $1 per token


def classify(request: ModelRequest) -> Completion:
    text = request.messages[-1].content
    label = "billing" if "charged" in text else "other"
    return Completion(
        text=json.dumps({"label": label, "confidence": 0.9}),
        usage={"input_tokens": 2, "output_tokens": 1},
    )


def answering(text: str):
    def answer(request: ModelRequest) -> Completion:
        return Completion(text=text, usage={"input_tokens": 3, "output_tokens": 2})

    return answer


def model(name: str, fn, *, version: str = "v1", per_hour: float = 0.0) -> ModelSpec:
    return ModelSpec(
        name=name,
        version=version,
        backend=FunctionConfig(fn=fn),
        resources=Resources(num_cpus=0.05),
        pricing=PRICES.model_copy(update={"per_hour": per_hour}),
    )


def support_router() -> RouterSpec:
    """A router whose billing desk is a consensus that cannot agree, so it escalates."""
    return RouterSpec(
        name="obs-router",
        classifier=ModelClassifier(
            model=model("clf", classify, version="clf-2"),
            labels={"billing": Label(description="money"), "other": Label(description="rest")},
        ),
        routes={
            "billing": ConsensusSpec(
                name="refund-desk",
                members=[model(f"fast-{i}", answering(f"answer {i}")) for i in range(3)],
                escalate_to=model("strong", answering("refund issued"), per_hour=36.0),
                threshold=0.7,
            ),
            "other": SingleSpec(name="general-desk", model=model("general", answering("hello"))),
        },
        default="other",
        threshold=0.5,
    )


@pytest.fixture(scope="module")
def deployed(ray_cluster) -> Iterator[tuple[Deployment, Deployment]]:
    """The router, called twice per route, and a budgeted deployment that refused one call.

    Ends once Ray has freed what they reserved (removals are asynchronous), so the next
    module's tests start from a quiet cluster."""
    before = ray.available_resources()
    router = deploy(support_router(), "obs")
    budgeted = deploy(
        SingleSpec(name="metered", model=model("meter", answering("ok"))),
        "obs-budget",
        budget=DeploymentBudget(usd_per_hour=12.0, alert_usd_per_hour=1.0),
    )
    try:
        for text in ("I was charged twice", "hello there", "charged again", "hi"):
            router.call(text)
        # Each call costs $5 (3 + 2 tokens at $1): two fit under $12, the third would not.
        budgeted.call("one")
        budgeted.call("two")
        with pytest.raises(BudgetExceededError):
            budgeted.call("three")
        yield router, budgeted
    finally:
        router.down()
        budgeted.down()
    give_up = time.monotonic() + 30
    while ray.available_resources() != before and time.monotonic() < give_up:
        time.sleep(0.2)
    assert ray.available_resources() == before


def scrape() -> dict[str, list[dict[str, str]]]:
    """Every Cantata sample of every alive node's metrics endpoint: name -> label sets."""
    found: dict[str, list[dict[str, str]]] = {}
    for node in ray.nodes():  # type: ignore[no-untyped-call]
        if not node["Alive"]:
            continue
        url = f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
        assert node["NodeManagerAddress"].startswith("127."), url
        text = httpx.get(url, timeout=10, trust_env=False).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name.startswith("ray_cantata_"):
                    found.setdefault(sample.name, []).append(dict(sample.labels))
    return found


def scrape_until(
    wanted: dict[str, dict[str, str]], limit_s: float = 90.0
) -> dict[str, list[dict[str, str]]]:
    """Poll until each wanted series has a sample with the wanted labels (Ray reports every
    second in these tests, and Prometheus-style scraping sees it only then)."""

    def missing(found: dict[str, list[dict[str, str]]]) -> dict[str, dict[str, str]]:
        return {
            name: want
            for name, want in wanted.items()
            if not any(labels.items() >= want.items() for labels in found.get(name, []))
        }

    give_up = time.monotonic() + limit_s
    found = scrape()
    while missing(found) and time.monotonic() < give_up:
        time.sleep(1)
        found = scrape()
    assert not missing(found), f"missing series: {missing(found)}; have {sorted(found)}"
    return found


def test_prometheus_holds_per_model_route_and_escalation_series(deployed):
    scope = {"deployment": "obs", "topology": "obs-router"}
    strong = {**scope, "model": "strong", "version": "v1"}
    found = scrape_until(
        {
            "ray_cantata_model_latency_seconds_bucket": {
                **scope,
                "model": "clf",
                "version": "clf-2",
            },
            "ray_cantata_model_input_tokens_total": strong,
            "ray_cantata_model_output_tokens_total": strong,
            "ray_cantata_model_cost_usd_total": strong,
            "ray_cantata_model_calls_total": {**strong, "status": "ok"},
            "ray_cantata_model_reservation_usd_per_hour": strong,
            "ray_cantata_route_decisions_total": {
                **scope,
                "router": "obs-router",
                "label": "billing",
            },
            "ray_cantata_decisions_total": {**scope, "decider": "refund-desk", "escalated": "true"},
            "ray_cantata_vote_agreement_bucket": {**scope, "decider": "refund-desk"},
            "ray_cantata_requests_total": {**scope, "pattern": "router", "status": "ok"},
            "ray_cantata_request_latency_seconds_bucket": scope,
            "ray_cantata_refusals_total": {"deployment": "obs-budget", "reason": "budget"},
        }
    )
    # Model series name the node that served them; no label holds request text or trace ids.
    assert all(labels["node"] for labels in found["ray_cantata_model_calls_total"])
    for samples in found.values():
        for labels in samples:
            assert not any(
                "charged" in value or re.fullmatch(r"[0-9a-f]{32}", value)
                for value in labels.values()
            )
    assert set(found) <= set(SERIES)


def test_every_dashboard_query_names_a_series_ray_exports(deployed):
    # No deployment here autoscales; the counter its panel reads is recorded as the
    # autoscaler records it, so this test does not lean on an earlier module having scaled.
    record_scaling_decision(
        deployment="obs", topology="obs-router", target="clf", kind="model", direction="up",
        outcome="scaled",
    )  # fmt: skip
    found = scrape_until(
        {
            "ray_cantata_model_queued": {"deployment": "obs"},
            "ray_cantata_autoscaling_decisions_total": {"deployment": "obs"},
        }
    )
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    queries = [
        target["expr"]
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
        if "expr" in target
    ]
    assert queries
    for query in queries:
        names = set(re.findall(r"ray_cantata_[a-z_]+", query))
        assert names, query
        assert names <= set(found), f"{query} names {names - set(found)}, not exported"


def test_cost_by_model_adds_up_to_the_total(deployed):
    router, _ = deployed
    report = router.cost(by="model")
    rows = {row.key: row for row in report.rows}
    assert report.total.requests == 4
    # Two billing requests: classifier, three members, the strong model; two others: classifier
    # and the general desk.
    assert rows["clf"].calls == 4
    assert rows["strong"].calls == 2
    assert rows["general"].calls == 2
    assert rows["clf"].token_cost_usd == pytest.approx(4 * 3.0)
    assert rows["strong"].token_cost_usd == pytest.approx(2 * 5.0)
    assert rows["strong"].reservation_cost_usd > 0  # $36 an hour since it was deployed
    assert sum(row.token_cost_usd for row in report.rows) == pytest.approx(
        report.total.token_cost_usd
    )
    assert sum(row.reservation_cost_usd for row in report.rows) == pytest.approx(
        report.total.reservation_cost_usd
    )
    by_route = {row.key: row for row in router.cost(by="route").rows}
    assert by_route["billing"].token_cost_usd == pytest.approx(2 * (3 + 3 * 5 + 5))
    assert by_route["other"].token_cost_usd == pytest.approx(2 * (3 + 5))


def test_the_budget_refusal_shows_in_status(deployed):
    _, budgeted = deployed
    spend = budgeted.status().spend
    assert spend is not None
    assert spend.refused_last_hour == 1
    assert spend.budget_usd_per_hour == 12.0
    assert spend.last_hour_token_usd == pytest.approx(10.0)
    assert spend.alerting  # $10 in five minutes is $120 an hour, above the $1 alert
    assert spend.top_models == {"meter": pytest.approx(10.0)}
