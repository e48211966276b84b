"""The Ray implementation of the topology runtime, on the one hosting path.

The top-level topology runs in the calling process (the fast path: one hop per model call);
its models, and nested topologies with ``host: {actor: true}``, get actors of their own,
reserved, started and retired by a :class:`~cantata.cluster._fleet.Fleet` exactly as a
deployment's are.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from cantata.agents import LogConfig, ModelActor, ModelSpec, new_id
from cantata.topologies import Code, ModelHandle, Runtime, Started, TopologySpec, hosted_nodes

from . import _hosting
from ._fleet import Fleet
from ._observability import Observability

__all__ = ["RayRuntime"]


class RayRuntime(Runtime):
    """Starts each model, and each node hosted as an actor, with its own reservation.

    Requires a connected Ray (see :func:`cantata.cluster.connect`). A reservation no node can hold
    fails at once with :class:`~cantata.agents.UnschedulableError`; one that is feasible but
    does not start within ``start_timeout_s`` fails with ``ActorStartTimeoutError``. Either way,
    what was started for the same call is removed first. A one-off run starts one replica of
    each model and hosted node.

    ``actor_classes`` maps a model's name to a :class:`~cantata.agents.ModelActor` subclass that
    hosts it instead of the default (see ``examples/custom_model_actor.py``); the topology's own
    ``actor_classes`` (through ``code``) work the same way. ``observability`` labels the
    actors' metrics and configures span export (default: metrics only).
    """

    def __init__(
        self,
        *,
        log_config: LogConfig | None = None,
        start_timeout_s: float = 120.0,
        actor_classes: Mapping[str, type[ModelActor]] | None = None,
        observability: Observability | None = None,
    ) -> None:
        self.log_config = log_config or LogConfig()
        self.observability = observability or Observability()
        self.start_timeout_s = start_timeout_s
        self.actor_classes = dict(actor_classes or {})
        self._fleets: dict[int, Fleet] = {}  # id of a started handle -> the fleet it is in

    async def _launch(
        self, models: Sequence[ModelSpec], hosted: Mapping[str, TopologySpec], code: Code
    ) -> Fleet:
        code = Code(actor_classes=self.actor_classes).merged(code)
        _hosting.ship_code(code.modules())
        fleet = Fleet(
            f"run-{new_id()[:8]}",
            models=models,
            hosted=hosted,
            root=None,
            code=code,
            log_config=self.log_config,
            observability=self.observability,
        )
        await fleet.add({key: 1 for key in fleet.groups}, self.start_timeout_s)
        return fleet

    async def start(self, spec: TopologySpec, code: Code) -> Started:
        fleet = await self._launch(spec.models(), hosted_nodes(spec), code)
        started = Started(models=dict(fleet.model_sets), agents=dict(fleet.agent_sets))
        self._fleets[id(started)] = fleet
        return started

    async def stop(self, started: Started) -> None:
        fleet = self._fleets.pop(id(started), None)
        if fleet is not None:
            await fleet.stop()

    async def start_models(self, specs: Sequence[ModelSpec]) -> dict[str, ModelHandle]:
        fleet = await self._launch(specs, {}, Code())
        handles: dict[str, ModelHandle] = dict(fleet.model_sets)
        for handle in handles.values():
            self._fleets[id(handle)] = fleet
        return handles

    async def stop_models(self, handles: Sequence[ModelHandle]) -> None:
        fleets = {id(f): f for h in handles if (f := self._fleets.pop(id(h), None)) is not None}
        for fleet in fleets.values():
            for handle in list(self._fleets):
                if self._fleets[handle] is fleet:
                    del self._fleets[handle]
            await fleet.stop()
