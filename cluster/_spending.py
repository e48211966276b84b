"""A deployment's budget and spend alert, judged from its :class:`CostLedger`."""

from __future__ import annotations

import structlog

from cantata.agents import BudgetExceededError, Telemetry
from cantata.topologies import DeploymentBudget

from ._ledger import BUCKET_S, CostLedger, CostReport
from ._status import SpendStatus

__all__ = ["SpendingGuard"]

log = structlog.get_logger("cantata.spending")

PERIOD_S = 3600.0
ALERT_WINDOW_S = 300.0
MIN_WINDOW_S = 60.0  # a young deployment's first request is not yet a rate
ALERT_REPEAT_S = 600.0
TOP = 3


class SpendingGuard:
    """Refuses requests that would break the budget; warns when spending runs too fast.

    A request is refused when the trailing hour's token cost plus what a request has cost on
    average over that hour would pass ``usd_per_hour``: the check is made before anything runs,
    so a refused request costs nothing. An admitted request may spend at most what the budget
    has left (its cost limit); past that its next model call fails with a typed budget error.
    """

    def __init__(
        self, deployment: str, budget: DeploymentBudget, ledger: CostLedger, telemetry: Telemetry
    ) -> None:
        self.deployment = deployment
        self.budget = budget
        self.ledger = ledger
        self.telemetry = telemetry
        self._alerting = False
        self._last_warning = float("-inf")

    @property
    def limited(self) -> bool:
        """True when the budget caps spending (requests must be admitted one by one)."""
        return self.budget.usd_per_hour is not None

    def admit(self) -> float | None:
        """The cost limit of the next request (None: unlimited), or BudgetExceededError."""
        limit = self.budget.usd_per_hour
        if limit is None:
            return None
        since = self.ledger.clock() - PERIOD_S
        spent = self.ledger.token_spend(since)
        expected = self.ledger.mean_request_cost(since)
        if spent + expected > limit or spent >= limit:
            self.ledger.refused()
            self.telemetry.refused(f"deployment:{self.deployment}", "budget")
            raise BudgetExceededError(
                f"deployment '{self.deployment}' refused the request: the last hour spent"
                f" ${spent:.6f} of its ${limit:g}/hour budget and a request costs about"
                f" ${expected:.6f}",
                limit_usd=limit,
                spent_usd=spent,
                expected_usd=expected,
                period_s=PERIOD_S,
            )
        return limit - spent

    def _window(self) -> CostReport:
        return self.ledger.report(since=self.ledger.clock() - ALERT_WINDOW_S, by="model")

    def rate_per_hour(self) -> float:
        """The spend rate now, per hour: the replicas held, plus the last five minutes' tokens.

        A deployment younger than five minutes divides by its age (at least a minute), so a
        spike right after deploying is not diluted by time it did not exist.
        """
        window = self._window()
        # The report reaches back to the start of its first minute (or to the deployment's
        # start): divide by the time it really covers.
        covered = window.until - max(window.since // BUCKET_S * BUCKET_S, self.ledger.started)
        tokens = window.total.token_cost_usd * PERIOD_S / max(MIN_WINDOW_S, covered)
        return tokens + sum(self.ledger.reservation_rate().values())

    def alerting(self) -> bool:
        """Whether the spend rate is above the alert threshold now."""
        threshold = self.budget.alert_usd_per_hour
        return threshold is not None and self.rate_per_hour() > threshold

    def check_alert(self) -> bool:
        """:meth:`alerting`, and a warning naming the models and routes behind it.

        Warned when the alert starts, then every ten minutes while it lasts.
        """
        alerting = self.alerting()
        now = self.ledger.clock()
        if alerting and (not self._alerting or now - self._last_warning >= ALERT_REPEAT_S):
            self._last_warning = now
            log.warning(
                "spend rate above the alert threshold",
                deployment=self.deployment,
                rate_usd_per_hour=round(self.rate_per_hour(), 6),
                alert_usd_per_hour=self.budget.alert_usd_per_hour,
                top_models=self._top("model"),
                top_routes=self._top("route"),
            )
        self._alerting = alerting
        return alerting

    def _top(self, by: str) -> dict[str, float]:
        report = self.ledger.report(
            since=self.ledger.clock() - ALERT_WINDOW_S, by="model" if by == "model" else "route"
        )
        return {row.key: round(row.total_usd, 6) for row in report.rows[:TOP] if row.total_usd}

    def status(self) -> SpendStatus:
        """The deployment's spending against its budget and alert threshold."""
        hour = self.ledger.report(since=self.ledger.clock() - PERIOD_S, by="model")
        return SpendStatus(
            last_hour_usd=hour.total.total_usd,
            last_hour_token_usd=hour.total.token_cost_usd,
            rate_usd_per_hour=self.rate_per_hour(),
            budget_usd_per_hour=self.budget.usd_per_hour,
            alert_usd_per_hour=self.budget.alert_usd_per_hour,
            alerting=self.alerting(),
            refused_last_hour=hour.refused,
            top_models=self._top("model"),
            top_routes=self._top("route"),
        )
