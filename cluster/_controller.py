"""The deployment controller: one detached actor per deployment that owns its models.

It reserves the whole deployment at once in a placement group (every replica of every model is
a bundle), so a cluster that cannot hold it fails the deploy with nothing left behind. It hosts
the replicas in their bundles, answers requests by running the topology next to them (one hop
from the caller to the controller, one per model call), balances each model's replicas by load,
scales a model without dropping requests in flight, and drains before it goes.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import ray
import structlog
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from cantata.agents import (
    CantataError,
    LogConfig,
    ModelActor,
    ModelSpec,
    Resources,
    Route,
    Span,
    Telemetry,
    TelemetryGroup,
    TopologyError,
    UnschedulableError,
    configure_logging,
)
from cantata.topologies import DeploymentBudget, RouterSpec, RunResult, TopologySpec, answer

from ._connection import current_identity
from ._ledger import CostBy, CostLedger, CostReport
from ._metrics import set_reservation_rate
from ._observability import Observability
from ._ray_actor import ACTOR_CONCURRENCY, RayModelHandle, ray_hosted
from ._ray_runtime import alive_node_totals, close_quietly
from ._replicas import Replica, ReplicaSet
from ._reservations import actor_options, check_feasible, placement_bundle
from ._spending import SpendingGuard
from ._status import DeploymentStatus, ModelStatus, ReplicaStatus

__all__ = ["DeploymentController"]

HEALTH_TIMEOUT_S = 5.0
DRAIN_TIMEOUT_S = 60.0
WATCH_INTERVAL_S = 30.0

log = structlog.get_logger("cantata.deployment")

_remote_model_actor: Any = ray.remote(ray_hosted(ModelActor))


def _bundle(resources: Resources) -> dict[str, float]:
    # A bundle must reserve something; a model that asks for nothing gets a sliver of CPU.
    return placement_bundle(resources) or {"CPU": 0.01}


class DeploymentController:
    """Owns one deployment's reservations and replicas, and answers its requests."""

    def __init__(
        self,
        name: str,
        spec: TopologySpec,
        log_config: LogConfig | None = None,
        observability: Observability | None = None,
        budget: DeploymentBudget | None = None,
    ) -> None:
        configure_logging(log_config)
        self.name = name
        self.spec = spec
        self.log_config = log_config or LogConfig()
        self.observability = (observability or Observability()).model_copy(
            update={"deployment": name, "topology": spec.name}
        )
        self.telemetry = self.observability.telemetry("controller")
        self.where = current_identity()
        self.ledger = CostLedger(name)
        self.guard = SpendingGuard(name, budget or spec.budget, self.ledger, self.telemetry)
        self.sets: dict[str, ReplicaSet] = {
            model.name: ReplicaSet(model) for model in spec.models()
        }
        self.groups: dict[int, PlacementGroup] = {}  # replica index -> its placement group
        self._group_members: dict[str, list[int]] = {}  # group name -> replica indices
        self._indices = itertools.count()
        self._changing = asyncio.Lock()  # one scale or drain at a time
        self._watcher: asyncio.Task[None] | None = None

    async def start(self, timeout_s: float) -> DeploymentStatus:
        """Reserve everything at once, start every replica, and report."""
        wanted = {model.name: model.replicas for model in self.spec.models()}
        await self._add_replicas(wanted, timeout_s)
        self._watcher = asyncio.create_task(self._watch())
        return await self.status()

    def _check_cluster(self, bundles: list[dict[str, float]], models: list[ModelSpec]) -> None:
        nodes = alive_node_totals()
        for model in models:
            check_feasible(model.name, model.resources, nodes)
        needed: dict[str, float] = {}
        for bundle in bundles:
            for key, amount in bundle.items():
                needed[key] = needed.get(key, 0.0) + amount
        totals: dict[str, float] = {}
        for node in nodes:
            for key, amount in node.items():
                totals[key] = totals.get(key, 0.0) + amount
        missing = {k: v for k, v in needed.items() if totals.get(k, 0.0) + 1e-9 < v}
        if missing:
            detail = ", ".join(
                f"{k}: needs {v:g}, cluster has {totals.get(k, 0.0):g}"
                for k, v in sorted(missing.items())
            )
            raise UnschedulableError(
                f"deployment '{self.name}' needs more than the whole cluster has ({detail})",
                missing=missing,
            )

    async def _add_replicas(self, counts: dict[str, int], timeout_s: float) -> None:
        """Reserve ``counts`` more replicas per model in one placement group, then start them."""
        models = [self.sets[name].spec for name, count in counts.items() for _ in range(count)]
        if not models:
            return
        bundles = [_bundle(model.resources) for model in models]
        self._check_cluster(bundles, models)
        group_name = f"cantata:{self.name}:{next(self._indices)}"
        group = placement_group(bundles, strategy=self.spec.placement.strategy, name=group_name)
        try:
            await asyncio.wait_for(group.ready(), timeout=timeout_s)
        except TimeoutError:
            remove_placement_group(group)
            raise UnschedulableError(
                f"deployment '{self.name}' could not reserve {len(bundles)} replica(s) within"
                f" {timeout_s:g}s with strategy {self.spec.placement.strategy}: the cluster's"
                " free resources cannot hold them all together"
            ) from None
        replicas: list[tuple[str, Replica]] = []
        for bundle_index, model in enumerate(models):
            index = next(self._indices)
            options = actor_options(model.resources)
            options.pop("accelerator_type", None)  # the bundle already holds that resource
            actor = _remote_model_actor.options(
                **options,
                max_concurrency=ACTOR_CONCURRENCY,
                max_restarts=-1,  # a replica lost with its node comes back where its bundle goes
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    placement_group=group, placement_group_bundle_index=bundle_index
                ),
            ).remote(model, self.log_config, self.observability)
            replicas.append((model.name, Replica(RayModelHandle(actor, model), index)))
            self.groups[index] = group
        self._group_members[group_name] = [replica.index for _, replica in replicas]
        try:
            await asyncio.wait_for(
                asyncio.gather(*(replica.handle.start() for _, replica in replicas)),
                timeout=timeout_s,
            )
        except BaseException:
            for _, replica in replicas:
                ray.kill(replica.handle.actor, no_restart=True)
                self.groups.pop(replica.index, None)
            del self._group_members[group_name]
            remove_placement_group(group)
            raise
        for name, replica in replicas:
            self.sets[name].replicas.append(replica)
            spec = self.sets[name].spec
            self.ledger.reserve(replica.index, spec.name, spec.version, spec.pricing.per_hour)
        self._publish_reservations()

    def _publish_reservations(self) -> None:
        rates = self.ledger.reservation_rate()
        for replica_set in self.sets.values():
            spec = replica_set.spec
            set_reservation_rate(
                deployment=self.name,
                topology=self.spec.name,
                model=spec.name,
                version=spec.version,
                usd_per_hour=rates.get((spec.name, spec.version), 0.0),
            )

    async def call(self, text: str, trace_id: str | None = None) -> RunResult:
        """Answer one request with the deployed topology, within the deployment's budget.

        Every request is entered in the cost ledger, failed ones with the spans they finished;
        one the budget refuses raises :class:`~cantata.agents.BudgetExceededError` at once.
        """
        cost_limit = self.guard.admit()
        route = _RouteTaken(self.spec)
        try:
            result = await answer(
                self.spec,
                text,
                self.sets,
                trace_id=trace_id,
                telemetry=TelemetryGroup([self.telemetry, route]),
                cost_limit_usd=cost_limit,
                where=self.where,
            )
        except CantataError as exc:
            spans = [span for span in exc.trace if isinstance(span, Span)]
            self.ledger.record(spans, route=route.key, failed=True)
            self.guard.check_alert()
            raise
        self.ledger.record(result.trace, route=route.key)
        self.guard.check_alert()
        return result

    async def _watch(self) -> None:
        # The alert must fire for a deployment that only idles on costly reservations too,
        # not just when a request or a status read happens to look.
        while True:
            await asyncio.sleep(WATCH_INTERVAL_S)
            try:
                self.guard.check_alert()
            except Exception:  # the watch must outlive a bad check; the next one may work
                log.exception("spend check failed", deployment=self.name)

    def cost(self, since_s: float | None = None, by: CostBy = "model") -> CostReport:
        """What the deployment spent in the last ``since_s`` seconds (default: all kept)."""
        since = None if since_s is None else self.ledger.clock() - since_s
        return self.ledger.report(since=since, by=by)

    async def status(self) -> DeploymentStatus:
        """Every model's replicas: where they are, whether they answer, their load."""
        models = []
        for replica_set in self.sets.values():
            reports = await asyncio.gather(*(self._replica_status(r) for r in replica_set.replicas))
            spec = replica_set.spec
            models.append(
                ModelStatus(
                    name=spec.name,
                    version=spec.version,
                    resources=spec.resources,
                    replicas=tuple(reports),
                )
            )
        return DeploymentStatus(
            name=self.name,
            topology=self.spec.name,
            pattern=self.spec.pattern,
            models=tuple(models),
            spend=self.guard.status(),
        )

    async def _replica_status(self, replica: Replica) -> ReplicaStatus:
        try:
            health = await asyncio.wait_for(replica.handle.health(), timeout=HEALTH_TIMEOUT_S)
        except (CantataError, TimeoutError) as exc:
            return ReplicaStatus(
                actor_id=replica.handle.actor_id,
                node_id=None,
                healthy=False,
                in_flight=replica.in_flight,
                served=replica.served,
                detail=f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__,
            )
        return ReplicaStatus(
            actor_id=replica.handle.actor_id,
            node_id=health.node_id,
            healthy=health.healthy,
            in_flight=health.in_flight,
            served=health.served,
            detail=health.detail,
        )

    async def scale(self, model: str, replicas: int, timeout_s: float) -> DeploymentStatus:
        """Set one model's replica count; requests in flight finish before a replica goes."""
        if model not in self.sets:
            raise TopologyError(
                f"deployment '{self.name}' has no model '{model}' (models: {sorted(self.sets)})"
            )
        if replicas < 1:
            raise TopologyError("a model needs at least one replica; use down to remove all")
        replica_set = self.sets[model]
        async with self._changing:
            current = len(replica_set.replicas)
            if replicas > current:
                await self._add_replicas({model: replicas - current}, timeout_s)
            elif replicas < current:
                # Newest first, so whole scale-up groups empty out and their reservations go.
                leaving = sorted(replica_set.replicas, key=lambda r: r.index)[replicas:]
                await self._retire(replica_set, leaving)
        return await self.status()

    async def _retire(self, replica_set: ReplicaSet, leaving: list[Replica]) -> None:
        for replica in leaving:
            replica.draining = True  # no new requests; the ones in flight finish
        give_up = time.monotonic() + DRAIN_TIMEOUT_S
        while any(r.in_flight for r in leaving) and time.monotonic() < give_up:
            await asyncio.sleep(0.05)
        await close_quietly([replica.handle for replica in leaving])
        for replica in leaving:
            ray.kill(replica.handle.actor, no_restart=True)
            replica_set.replicas.remove(replica)
            self.ledger.release(replica.index)
            self._release(replica.index)
        self._publish_reservations()

    def _release(self, index: int) -> None:
        group = self.groups.pop(index, None)
        if group is None:
            return
        for name, members in list(self._group_members.items()):
            if index in members:
                members.remove(index)
                if not members:
                    del self._group_members[name]
                    remove_placement_group(group)

    async def drain(self) -> None:
        """Stop taking requests, let those in flight finish, then free every reservation."""
        if self._watcher is not None:
            self._watcher.cancel()
        async with self._changing:
            for replica_set in self.sets.values():
                await self._retire(replica_set, list(replica_set.replicas))
        self.telemetry.flush()

    def ping(self) -> dict[str, Any]:
        """A cheap liveness check for handles."""
        return {"name": self.name, "topology": self.spec.name}


class _RouteTaken(Telemetry):
    """Notes the route a request took at the top-level router, even if the request fails."""

    def __init__(self, spec: TopologySpec) -> None:
        self.spec = spec
        self.key: str | None = None

    def routed(self, router: str, route: Route) -> None:
        # The top-level router decides first; a nested router of the same name comes later.
        if self.key is None and isinstance(self.spec, RouterSpec) and router == self.spec.name:
            self.key = self.spec.default if route.defaulted else route.label
