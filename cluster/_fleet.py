"""A topology's actors on Ray: model replicas, hosted nodes' agent actors, coordinators.

The one owner of a topology's actors, for a one-off run and for a deployment alike. It reserves
every batch of new replicas at once in a placement group (a batch that cannot be held fails
with nothing left behind), creates and starts them through :mod:`cantata.cluster._hosting`,
tells every agent actor who serves what (:class:`Routing`) whenever that changes, and retires
replicas by draining them: they leave the routing first, finish what they hold, then go.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ray.util.placement_group import PlacementGroup

from cantata.agents import (
    Autoscaling,
    CantataError,
    LogConfig,
    ModelActor,
    ModelSpec,
    Resources,
    TopologyError,
)
from cantata.topologies import Code, TopologySpec

from . import _hosting
from ._agent_actor import AgentActor
from ._observability import Observability
from ._ray_actor import RayAgentHandle, RayModelHandle, ray_hosted
from ._replicas import AgentReplicaSet, Replica, ReplicaSet, Routing
from ._status import AgentStatus, ModelStatus, ReplicaStatus

__all__ = ["Fleet", "Group"]

Kind = Literal["model", "agent", "coordinator"]
DRAIN_TIMEOUT_S = 60.0
STATUS_TIMEOUT_S = 5.0
IN_TRANSIT_GRACE_S = 0.2


@dataclass
class Group:
    """The replicas of one model, one hosted node, or the coordinators."""

    kind: Kind
    name: str
    resources: Resources
    autoscaling: Autoscaling | None
    model: ModelSpec | None = None
    node: TopologySpec | None = None
    replicas: list[Replica[Any]] = field(default_factory=list)


class Fleet:
    """Every actor of one topology: reserved, started, routed, scaled and retired together."""

    def __init__(
        self,
        name: str,
        *,
        models: Sequence[ModelSpec],
        hosted: Mapping[str, TopologySpec],
        root: TopologySpec | None,
        code: Code,
        strategy: str = "PACK",
        log_config: LogConfig | None = None,
        observability: Observability | None = None,
        owner: str | None = None,
        budgeted: bool = False,
    ) -> None:
        self.name = name
        self.code = code
        self.strategy = strategy
        self.log_config = log_config or LogConfig()
        self.observability = observability or Observability()
        self.owner = owner
        self.budgeted = budgeted
        self.groups: dict[tuple[Kind, str], Group] = {}
        for model in models:
            self.groups["model", model.name] = Group(
                "model", model.name, model.resources, model.autoscaling, model=model
            )
        for node_name, node in hosted.items():
            self.groups["agent", node_name] = Group(
                "agent", node_name, node.host.resources, node.host.autoscaling, node=node
            )
        if root is not None:
            self.groups["coordinator", root.name] = Group(
                "coordinator", root.name, root.coordinator.resources, None, node=root
            )
        self.model_sets = {m.name: ReplicaSet(m) for m in models}
        self.agent_sets = {n: AgentReplicaSet(n) for n in hosted}
        self._placement: dict[int, PlacementGroup] = {}  # replica index -> its group
        self._members: dict[str, list[int]] = {}  # placement group name -> replica indices
        self._indices = itertools.count()
        self._changing = asyncio.Lock()  # one scale or drain at a time

    # -- what serves what --------------------------------------------------------------

    def find(self, name: str) -> Group:
        """The model or hosted node called ``name`` (models first)."""
        for kind in ("model", "agent", "coordinator"):
            if (kind, name) in self.groups:
                return self.groups[kind, name]
        known = sorted({group.name for group in self.groups.values()})
        raise TopologyError(f"'{self.name}' has no model or agent '{name}' (known: {known})")

    def counts(self) -> dict[tuple[Kind, str], int]:
        """Replicas per group now."""
        return {key: len(group.replicas) for key, group in self.groups.items()}

    def routing(self) -> Routing:
        """The current replicas of every model and hosted node, for agent actors."""
        routing = Routing()
        for group in self.groups.values():
            live = [(r.index, r.handle) for r in group.replicas if not r.draining]
            if group.kind == "model" and group.model is not None:
                routing.specs[group.name] = group.model
                routing.models[group.name] = live
            elif group.kind == "agent":
                routing.agents[group.name] = live
        return routing

    def coordinators(self) -> list[RayAgentHandle]:
        """The coordinators' handles (empty for a one-off run)."""
        return [
            r.handle
            for g in self.groups.values()
            if g.kind == "coordinator"
            for r in g.replicas
            if not r.draining
        ]

    async def publish(self) -> None:
        """Send the routing to every agent actor, and update this process's replica sets."""
        routing = self.routing()
        routing.model_sets(self.model_sets)
        routing.agent_sets(self.agent_sets)
        actors = [
            r.handle
            for g in self.groups.values()
            if g.kind != "model"
            for r in g.replicas
            if not r.draining
        ]
        # A dead actor is skipped: when Ray restarts it, it asks the owner for the routing.
        await asyncio.gather(
            *(
                _hosting.call(h.actor.set_routing.remote(routing), "routing", actor_id=h.actor_id)
                for h in actors
            ),
            return_exceptions=True,
        )

    # -- adding replicas ---------------------------------------------------------------

    def _create(self, group: Group, slot: _hosting.Slot) -> Any:
        if group.kind == "model" and group.model is not None:
            cls = ray_hosted(self.code.actor_classes.get(group.name, ModelActor))
            actor = _hosting.create_actor(
                cls,
                group.model,
                self.log_config,
                self.observability,
                resources=group.resources,
                slot=slot,
            )
            return RayModelHandle(actor, group.model)
        assert group.node is not None
        role = "coordinator" if group.kind == "coordinator" else "agent"
        actor = _hosting.create_actor(
            AgentActor,
            group.node,
            init={
                "role": role,
                "code": self.code,
                "log_config": self.log_config,
                "observability": self.observability,
                "owner": self.owner,
                "budgeted": self.budgeted and role == "coordinator",
            },
            resources=group.resources,
            slot=slot,
        )
        return RayAgentHandle(actor, group.name)

    async def add(self, counts: Mapping[tuple[Kind, str], int], timeout_s: float) -> None:
        """Reserve ``counts`` more replicas per group in one placement group, then start them.

        All or nothing: when the reservation or any start fails, every new actor is killed and
        the reservation released before the typed error is raised.
        """
        # Models first: the agent actors created after them are told who serves each model.
        order = {"model": 0, "agent": 1, "coordinator": 2}
        wanted = [
            self.groups[key]
            for key, count in sorted(counts.items(), key=lambda kv: order[kv[0][0]])
            for _ in range(count)
        ]
        if not wanted:
            return
        what = f"'{self.name}'"
        _hosting.check_fits(what, [(group.name, group.resources) for group in wanted])
        group_name = f"cantata:{self.name}:{next(self._indices)}"
        placement = await _hosting.reserve(
            what,
            [_hosting.bundle(group.resources) for group in wanted],
            strategy=self.strategy,
            name=group_name,
            timeout_s=timeout_s,
        )
        created: list[tuple[Group, Replica[Any]]] = []

        def undo() -> None:
            for _, replica in created:
                _hosting.kill(replica.handle.actor)
            _hosting.release(placement)

        try:
            for bundle_index, group in enumerate(wanted):
                handle = self._create(group, _hosting.Slot(placement, bundle_index))
                created.append((group, Replica(handle, next(self._indices))))
        except BaseException:
            undo()
            raise
        names = sorted({group.name for group in wanted})
        await _hosting.wait_ready(
            f"{what}'s new replicas of {names}",
            (replica.handle.start() for _, replica in created),
            timeout_s=timeout_s,
            on_failure=undo,
        )
        for group, replica in created:
            group.replicas.append(replica)
            self._placement[replica.index] = placement
        self._members[group_name] = [replica.index for _, replica in created]
        await self.publish()  # before anyone can send the new agent actors a request

    # -- removing replicas -------------------------------------------------------------

    async def load_of(self, replica: Replica[Any]) -> int:
        """A replica's calls in flight plus queued, as it counts them (0 if it cannot say)."""
        handle = replica.handle
        try:
            if isinstance(handle, RayModelHandle):
                health = await asyncio.wait_for(handle.health(), STATUS_TIMEOUT_S)
                return health.in_flight + health.queued
            status: ReplicaStatus = await asyncio.wait_for(handle.status(), STATUS_TIMEOUT_S)
            return status.in_flight + status.queued
        except (CantataError, TimeoutError):
            return 0  # dead or stuck: nothing it holds can finish anyway

    async def retire(self, leaving: Sequence[tuple[Group, Replica[Any]]]) -> None:
        """Drain ``leaving`` (no new calls, those in flight finish), then kill and release."""
        replicas = [replica for _, replica in leaving]
        for replica in replicas:
            replica.draining = True
        await self.publish()
        await asyncio.sleep(IN_TRANSIT_GRACE_S)  # calls already picked reach the replica
        give_up = time.monotonic() + DRAIN_TIMEOUT_S
        while any(r.in_flight for r in replicas) or any(
            await asyncio.gather(*(self.load_of(r) for r in replicas))
        ):
            if time.monotonic() > give_up:
                break
            await asyncio.sleep(0.05)
        closing = asyncio.gather(*(r.handle.close() for r in replicas), return_exceptions=True)
        with contextlib.suppress(TimeoutError):  # a stuck actor must not hold up its removal
            await asyncio.wait_for(closing, timeout=5.0)
        for group, replica in leaving:
            _hosting.kill(replica.handle.actor)
            group.replicas.remove(replica)
            self._release(replica.index)
        await self.publish()

    def _release(self, index: int) -> None:
        placement = self._placement.pop(index, None)
        if placement is None:
            return
        for name, members in list(self._members.items()):
            if index in members:
                members.remove(index)
                if not members:
                    del self._members[name]
                    _hosting.release(placement)

    async def scale(self, name: str, replicas: int, timeout_s: float) -> tuple[int, int]:
        """Set the replicas of the model or hosted node ``name``; returns (before, after)."""
        group = self.find(name)
        if replicas < 1:
            raise TopologyError("a model or agent needs at least one replica; use down")
        async with self._changing:
            before = len(group.replicas)
            if replicas > before:
                await self.add({(group.kind, group.name): replicas - before}, timeout_s)
            elif replicas < before:
                # Newest first, so whole scale-up batches empty out and their reservation goes.
                leaving = sorted(group.replicas, key=lambda r: r.index)[replicas:]
                await self.retire([(group, replica) for replica in leaving])
            return before, len(group.replicas)

    async def stop(self) -> None:
        """Drain and remove every replica, and release every reservation."""
        async with self._changing:
            await self.retire([(g, r) for g in self.groups.values() for r in list(g.replicas)])

    # -- status ------------------------------------------------------------------------

    async def _replica_status(self, replica: Replica[Any]) -> ReplicaStatus:
        handle = replica.handle
        try:
            if isinstance(handle, RayModelHandle):
                health = await asyncio.wait_for(handle.health(), STATUS_TIMEOUT_S)
                return ReplicaStatus(
                    actor_id=handle.actor_id,
                    node_id=health.node_id,
                    pid=health.pid,
                    healthy=health.healthy,
                    in_flight=health.in_flight,
                    queued=health.queued,
                    served=health.served,
                    refused=health.rejected,
                    batched=health.batched,
                    detail=health.detail,
                )
            status: ReplicaStatus = await asyncio.wait_for(handle.status(), STATUS_TIMEOUT_S)
            return status.model_copy(update={"actor_id": handle.actor_id})
        except (CantataError, TimeoutError) as exc:
            return ReplicaStatus(
                actor_id=handle.actor_id,
                node_id=None,
                healthy=False,
                in_flight=replica.in_flight,
                served=replica.served,
                detail=f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__,
            )

    async def status(self) -> tuple[list[ModelStatus], list[AgentStatus]]:
        """Every replica of every group: where it runs, whether it answers, its load."""
        models: list[ModelStatus] = []
        agents: list[AgentStatus] = []
        for group in self.groups.values():
            reports = tuple(
                await asyncio.gather(*(self._replica_status(r) for r in group.replicas))
            )
            if group.kind == "model" and group.model is not None:
                models.append(
                    ModelStatus(
                        name=group.name,
                        version=group.model.version,
                        resources=group.resources,
                        replicas=reports,
                        autoscaling=group.autoscaling,
                    )
                )
            else:
                agents.append(
                    AgentStatus(
                        name=group.name,
                        role="coordinator" if group.kind == "coordinator" else "agent",
                        resources=group.resources,
                        replicas=reports,
                        autoscaling=group.autoscaling,
                    )
                )
        return models, agents
