"""The Ray implementation of the topology runtime: one Ray actor per model replica."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence
from typing import Any

import ray

from cantata.agents import (
    ActorStartTimeoutError,
    LogConfig,
    ModelActor,
    ModelSpec,
)
from cantata.topologies import ModelHandle, Runtime

from ._observability import Observability
from ._ray_actor import ACTOR_CONCURRENCY, RayModelHandle, ray_hosted
from ._reservations import actor_options, check_feasible

__all__ = ["RayRuntime", "alive_node_totals", "close_quietly"]


_REMOTE_CLASSES: dict[type[ModelActor], Any] = {}


def _remote_class(base: type[ModelActor]) -> Any:
    # Ray exports a class once per remote() call; reuse it for every replica.
    if base not in _REMOTE_CLASSES:
        _REMOTE_CLASSES[base] = ray.remote(ray_hosted(base))
    return _REMOTE_CLASSES[base]


def alive_node_totals() -> list[dict[str, float]]:
    """Total resources of every alive node of the connected cluster."""
    nodes = ray.nodes()  # type: ignore[no-untyped-call]
    return [dict(node["Resources"]) for node in nodes if node.get("Alive")]


class RayRuntime(Runtime):
    """Starts each model as a Ray actor with the model's own reservation.

    Requires a connected Ray (see :func:`cantata.cluster.connect`). A reservation no node can hold
    fails at once with :class:`~cantata.agents.UnschedulableError`; one that is feasible but
    does not start within ``start_timeout_s`` fails with ``ActorStartTimeoutError``. Either way,
    the models already started for the same call are killed first.

    ``actor_classes`` maps a model's name to a :class:`~cantata.agents.ModelActor` subclass that
    hosts it instead of the default (see ``examples/custom_model_actor.py``). ``observability``
    labels the actors' metrics and configures span export (default: metrics only).
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

    def create_actor(self, spec: ModelSpec) -> RayModelHandle:
        """Create the actor for one replica of ``spec`` (not yet waited on)."""
        options = actor_options(spec.resources)
        actor_class = _remote_class(self.actor_classes.get(spec.name, ModelActor))
        actor = actor_class.options(
            **options,
            max_concurrency=ACTOR_CONCURRENCY,
            max_restarts=0,
        ).remote(spec, self.log_config, self.observability)
        return RayModelHandle(actor, spec)

    async def start_models(self, specs: Sequence[ModelSpec]) -> dict[str, ModelHandle]:
        totals = alive_node_totals()
        for spec in specs:
            check_feasible(spec.name, spec.resources, totals)
        handles = [self.create_actor(spec) for spec in specs]
        try:
            await asyncio.wait_for(
                asyncio.gather(*(handle.start() for handle in handles)),
                timeout=self.start_timeout_s,
            )
        except TimeoutError:
            await self.stop_models(handles)
            raise ActorStartTimeoutError(
                f"models {[s.name for s in specs]} were not ready within {self.start_timeout_s:g}s;"
                " their reservations fit the cluster but may be held by other work"
            ) from None
        except BaseException:
            await self.stop_models(handles)
            raise
        return {handle.name: handle for handle in handles}

    async def stop_models(self, handles: Sequence[ModelHandle]) -> None:
        ray_handles = [handle for handle in handles if isinstance(handle, RayModelHandle)]
        await close_quietly(ray_handles)
        for handle in ray_handles:
            ray.kill(handle.actor, no_restart=True)


CLOSE_TIMEOUT_S = 5.0


async def close_quietly(handles: Sequence[RayModelHandle]) -> None:
    """Let actors release their models and flush telemetry, briefly, before they are killed.

    A dead or stuck actor must not hold up teardown, so failures and slowness are ignored.
    """
    if not handles:
        return
    closing = asyncio.gather(*(handle.close() for handle in handles), return_exceptions=True)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(closing, timeout=CLOSE_TIMEOUT_S)
