"""The deployment controller: one actor per deployment that owns its actors and its books.

It owns the deployment's :class:`Fleet` (models, hosted nodes' agent actors, coordinators),
reserved in placement groups through the one hosting path; keeps the cost ledger and the
spending guard the coordinators report to; runs the autoscaler; and scales and drains on
request. It answers no requests itself: its coordinators do, so coordination is neither one
process nor a hop through here.
"""

from __future__ import annotations

import asyncio
from typing import Any

import ray
import structlog

from cantata.agents import LogConfig, Span, configure_logging
from cantata.topologies import Code, DeploymentBudget, TopologySpec, hosted_nodes

from ._autoscaler import Autoscaler
from ._connection import current_identity
from ._fleet import Fleet
from ._ledger import CostBy, CostLedger, CostReport, LedgerEntry
from ._metrics import set_reservation_rate
from ._observability import Observability
from ._ray_actor import RayAgentHandle
from ._replicas import Routing
from ._spending import SpendingGuard
from ._status import DeploymentStatus

__all__ = ["DeploymentController"]

WATCH_INTERVAL_S = 30.0
AUTOSCALE_INTERVAL_S = 0.5
LEDGER_SETTLE_S = 5.0
"""How long a cost report waits for the coordinators to hand over the entries they hold."""

log = structlog.get_logger("cantata.deployment")


class DeploymentController:
    """Owns one deployment's reservations, actors, ledger and autoscaling."""

    def __init__(
        self,
        name: str,
        spec: TopologySpec,
        *,
        code: Code | None = None,
        log_config: LogConfig | None = None,
        observability: Observability | None = None,
        budget: DeploymentBudget | None = None,
        start_timeout_s: float = 120.0,
    ) -> None:
        configure_logging(log_config)
        self.name = name
        self.spec = spec
        self.observability = (observability or Observability()).model_copy(
            update={"deployment": name, "topology": spec.name}
        )
        self.telemetry = self.observability.telemetry("controller")
        self.where = current_identity()
        self.ledger = CostLedger(name)
        self.guard = SpendingGuard(name, budget or spec.budget, self.ledger, self.telemetry)
        self.fleet = Fleet(
            name,
            models=spec.models(),
            hosted=hosted_nodes(spec),
            root=spec,
            code=code or Code(),
            strategy=spec.placement.strategy,
            log_config=log_config,
            observability=self.observability,
            owner=ray.get_runtime_context().get_actor_name(),
            budgeted=self.guard.limited,
        )
        self.autoscaler = Autoscaler(
            self.fleet, deployment=name, topology=spec.name, start_timeout_s=start_timeout_s
        )
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self, timeout_s: float) -> DeploymentStatus:
        """Reserve everything at once, start every actor, and report."""
        counts = {key: _initial(group) for key, group in self.fleet.groups.items()}
        await self.fleet.add(counts, timeout_s)
        self._book_reservations()
        self._tasks = [
            asyncio.create_task(self._every(WATCH_INTERVAL_S, self._watch)),
            asyncio.create_task(self._every(AUTOSCALE_INTERVAL_S, self._autoscale)),
        ]
        return await self.status()

    # -- what coordinators and agent actors ask -------------------------------------

    def routing(self) -> Routing:
        """Who serves what now (a restarted agent actor asks this)."""
        return self.fleet.routing()

    def coordinators(self) -> tuple[list[RayAgentHandle], bool]:
        """The coordinators' handles, and whether a request may be retried on another."""
        return self.fleet.coordinators(), self.spec.coordinator.retry

    def admit(self) -> float | None:
        """What the next request may spend; raises BudgetExceededError when nothing."""
        return self.guard.admit()

    def record(self, entries: list[LedgerEntry]) -> None:
        """Enter requests in the ledger: each one's spans, route and whether it failed
        (coordinators report every request, several at a time under load)."""
        for spans, route, failed in entries:
            self.ledger.record(
                [s for s in spans if isinstance(s, Span)], route=route, failed=failed
            )
        self.guard.check_alert()

    # -- books -------------------------------------------------------------------------

    def _book_reservations(self) -> None:
        held = set()
        booked = self.ledger.held()
        for group in self.fleet.groups.values():
            if group.model is None:
                continue
            for replica in group.replicas:
                held.add(replica.index)
                if replica.index not in booked:
                    spec = group.model
                    self.ledger.reserve(
                        replica.index, spec.name, spec.version, spec.pricing.per_hour
                    )
        for index in booked - held:
            self.ledger.release(index)
        rates = self.ledger.reservation_rate()
        for group in self.fleet.groups.values():
            if group.model is not None:
                spec = group.model
                set_reservation_rate(
                    deployment=self.name,
                    topology=self.spec.name,
                    model=spec.name,
                    version=spec.version,
                    usd_per_hour=rates.get((spec.name, spec.version), 0.0),
                )
        self.autoscaler.publish()

    async def _every(self, interval_s: float, job: Any) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await job()
            except Exception:  # the loop must outlive one bad round; the next may work
                log.exception("deployment housekeeping failed", deployment=self.name)

    async def _watch(self) -> None:
        # The alert must fire for a deployment that only idles on costly reservations too,
        # not just when a request or a status read happens to look.
        self.guard.check_alert()

    async def _autoscale(self) -> None:
        await self.autoscaler.tick()
        self._book_reservations()

    async def cost(self, since_s: float | None = None, by: CostBy = "model") -> CostReport:
        """What the deployment spent in the last ``since_s`` seconds (default: all kept).

        Every request answered before this call is in it: the coordinators first hand over
        the entries they hold back and the ones still on their way here.
        """
        await self._settle_ledger()
        since = None if since_s is None else self.ledger.clock() - since_s
        return self.ledger.report(since=since, by=by)

    async def _settle_ledger(self) -> None:
        # A coordinator sends an idle request's entry before answering, but the entry and the
        # caller's next call to this actor come from different processes: Ray orders neither
        # against the other. A coordinator's own calls here do start in order, so the
        # (possibly empty) entries its flush sends arrive after every earlier one.
        flushes = [handle.actor.flush_ledger.remote() for handle in self.fleet.coordinators()]
        if not flushes:
            return
        try:
            await asyncio.wait_for(
                asyncio.gather(*flushes, return_exceptions=True), LEDGER_SETTLE_S
            )
        except TimeoutError:
            # A coordinator that cannot answer (its node lost, say) must not hold up the
            # books; what it held back is reported when it comes back, or is lost with it.
            log.warning(
                "coordinators did not hand over their ledger entries in time",
                deployment=self.name,
                after_s=LEDGER_SETTLE_S,
            )

    async def status(self) -> DeploymentStatus:
        """Every model's and agent actor's replicas, autoscaling decisions, spending."""
        models, agents = await self.fleet.status()
        return DeploymentStatus(
            name=self.name,
            topology=self.spec.name,
            pattern=self.spec.pattern,
            models=tuple(models),
            agents=tuple(agents),
            scaling=tuple(self.autoscaler.decisions),
            spend=self.guard.status(),
        )

    async def scale(self, target: str, replicas: int, timeout_s: float) -> DeploymentStatus:
        """Set the replicas of one model or agent actor; requests in flight are not dropped."""
        await self.fleet.scale(target, replicas, timeout_s)
        self._book_reservations()
        return await self.status()

    async def drain(self) -> None:
        """Stop taking requests, let those in flight finish, then free every reservation.

        New requests are refused at once with a typed error from the moment the drain begins;
        those in flight get up to the fleet's drain timeout to finish.
        """
        for task in self._tasks:
            task.cancel()
        refusing = [handle.shut() for handle in self.fleet.coordinators()]
        await asyncio.gather(*refusing, return_exceptions=True)  # a dead one takes nothing
        await self.fleet.stop()
        self._book_reservations()
        self.telemetry.flush()

    def ping(self) -> dict[str, Any]:
        """A cheap liveness check for handles."""
        return {"name": self.name, "topology": self.spec.name}


def _initial(group: Any) -> int:
    if group.kind == "model":
        return int(group.model.replicas)
    if group.kind == "coordinator":
        return int(group.node.coordinator.replicas)
    return int(group.node.host.replicas)
