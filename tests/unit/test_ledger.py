"""A deployment's cost ledger and spending guard, on a clock the test moves."""

from __future__ import annotations

import pytest
from structlog.testing import capture_logs

from cantata.agents import BudgetExceededError, BudgetExhaustedError, Span, Telemetry
from cantata.cluster._ledger import CostLedger
from cantata.cluster._spending import SpendingGuard
from cantata.topologies import DeploymentBudget


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


class Refusals(Telemetry):
    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def refused(self, where: str, reason: str, *, model: str = "") -> None:
        self.seen.append((where, reason))


def model_span(model: str, *, version: str = "1", tokens=(10, 5), cost: float = 0.0) -> Span:
    return Span(
        trace_id="t" * 32,
        agent=model,
        model=f"{model}-weights",
        model_version=version,
        start=0.0,
        end=0.1,
        latency_ms=100.0,
        input_tokens=tokens[0],
        output_tokens=tokens[1],
        cost_usd=cost,
    )


def step_span(agent: str) -> Span:
    return Span(trace_id="t" * 32, agent=agent, start=0.0, end=0.1, latency_ms=100.0)


def test_rows_add_up_to_the_total_by_model_route_and_version():
    clock = Clock()
    ledger = CostLedger("triage", clock=clock)
    ledger.reserve(0, "big", "70b", per_hour=15.0)
    ledger.reserve(1, "small", "7b", per_hour=1.0)
    ledger.record(
        [
            step_span("router"),
            model_span("small", cost=0.01),
            model_span("big", version="70b", cost=0.2),
        ],
        route="billing",
    )
    ledger.record(
        [model_span("small", cost=0.01), model_span("small", cost=0.01)], route="shipping"
    )
    clock.now += 1800  # half an hour of reservations
    for by in ("model", "route", "version"):
        report = ledger.report(by=by)
        total = report.total
        assert sum(row.token_cost_usd for row in report.rows) == pytest.approx(total.token_cost_usd)
        assert sum(row.reservation_cost_usd for row in report.rows) == pytest.approx(
            total.reservation_cost_usd
        )
        assert sum(row.calls for row in report.rows) == total.calls == 4
        assert total.requests == 2
        assert total.token_cost_usd == pytest.approx(0.23)
        assert total.reservation_cost_usd == pytest.approx(7.5 + 0.5)
    by_model = {row.key: row for row in ledger.report(by="model").rows}
    assert by_model["small"].requests == 2
    assert by_model["small"].calls == 3
    assert by_model["small"].input_tokens == 30
    assert by_model["big"].reservation_cost_usd == pytest.approx(7.5)
    assert list(by_model) == ["big", "small"]  # the costliest first
    by_route = {row.key: row for row in ledger.report(by="route").rows}
    assert by_route["billing"].token_cost_usd == pytest.approx(0.21)
    # One request per route, however many models it called.
    assert (by_route["billing"].requests, by_route["shipping"].requests) == (1, 1)
    assert by_route["(reserved capacity)"].reservation_cost_usd == pytest.approx(8.0)
    assert set(ledger.report(by="version").rows[0].key.split("@")) == {"big", "70b"}


def test_since_keeps_only_recent_requests_and_the_reservation_time_inside_it():
    clock = Clock()
    ledger = CostLedger("d", clock=clock)
    ledger.reserve(0, "m", "1", per_hour=3.6)
    ledger.record([model_span("m", cost=1.0)], route=None)
    clock.now += 7200
    ledger.record([model_span("m", cost=0.5)], route=None)
    ledger.release(0)
    clock.now += 600  # released: the last ten minutes cost nothing more
    recent = ledger.report(since=clock.now - 3600)
    assert recent.total.token_cost_usd == pytest.approx(0.5)
    assert recent.total.requests == 1
    assert recent.total.reservation_cost_usd == pytest.approx(3.6 * 50 / 60)
    everything = ledger.report()
    assert everything.total.reservation_cost_usd == pytest.approx(7.2)


def test_failed_requests_are_counted_and_their_spending_kept():
    ledger = CostLedger("d", clock=Clock())
    ledger.record([model_span("m", cost=0.3)], route=None, failed=True)
    report = ledger.report()
    assert report.failed == 1
    assert report.total.token_cost_usd == pytest.approx(0.3)


def test_the_budget_refuses_the_request_that_would_exceed_it():
    clock = Clock()
    ledger = CostLedger("d", clock=clock)
    refusals = Refusals()
    guard = SpendingGuard("d", DeploymentBudget(usd_per_hour=0.25), ledger, refusals)
    assert guard.admit() == pytest.approx(0.25)
    ledger.record([model_span("m", cost=0.1)], route=None)
    assert guard.admit() == pytest.approx(0.15)
    ledger.record([model_span("m", cost=0.1)], route=None)
    # 0.2 spent, and a request costs 0.1: the next one would pass 0.25.
    with pytest.raises(BudgetExceededError) as caught:
        guard.admit()
    error = caught.value
    assert isinstance(error, BudgetExhaustedError)
    assert (error.limit_usd, error.spent_usd, error.expected_usd) == pytest.approx((0.25, 0.2, 0.1))
    assert refusals.seen == [("deployment:d", "budget")]
    assert ledger.report().refused == 1
    clock.now += 3700  # an hour later the spending has left the window
    assert guard.admit() == pytest.approx(0.25)


def test_no_budget_admits_everything():
    guard = SpendingGuard("d", DeploymentBudget(), CostLedger("d", clock=Clock()), Telemetry())
    assert guard.admit() is None


def test_a_spend_rate_above_the_alert_marks_the_status_and_names_the_culprits():
    clock = Clock()
    ledger = CostLedger("d", clock=clock)
    guard = SpendingGuard("d", DeploymentBudget(alert_usd_per_hour=1.0), ledger, Telemetry())
    clock.now += 600  # older than the five-minute window
    ledger.record([model_span("cheap", cost=0.001)], route="shipping")
    assert not guard.status().alerting
    ledger.record([model_span("pricey", cost=0.5)], route="billing")
    with capture_logs() as logs:
        status = guard.status()
        assert guard.check_alert()
        assert guard.check_alert()  # warned once, not on every check
    assert status.alerting
    assert status.rate_usd_per_hour == pytest.approx(0.501 * 12)
    assert next(iter(status.top_models)) == "pricey"
    assert next(iter(status.top_routes)) == "billing"
    (warning,) = [entry for entry in logs if entry["event"].startswith("spend rate")]
    assert "pricey" in warning["top_models"]
    clock.now += 600  # five quiet minutes later the rate is back to zero
    assert not guard.status().alerting


def test_reserved_capacity_counts_toward_the_rate_from_the_start():
    clock = Clock()
    ledger = CostLedger("d", clock=clock)
    guard = SpendingGuard("d", DeploymentBudget(alert_usd_per_hour=10.0), ledger, Telemetry())
    ledger.reserve(0, "big", "70b", per_hour=15.0)
    status = guard.status()
    assert status.rate_usd_per_hour == pytest.approx(15.0)
    assert status.alerting
    ledger.release(0)
    assert guard.rate_per_hour() == 0.0


def test_a_young_deployment_divides_its_spending_by_its_age():
    clock = Clock()
    ledger = CostLedger("d", clock=clock)
    guard = SpendingGuard("d", DeploymentBudget(), ledger, Telemetry())
    clock.now += 120
    ledger.record([model_span("m", cost=1.0)], route=None)
    assert guard.rate_per_hour() == pytest.approx(1.0 * 3600 / 120)
