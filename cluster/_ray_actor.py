"""Model actors and agent actors as Ray hosts them, and the handles that call them.

:func:`ray_hosted` adds to a model actor class only what Ray knows (its actor and node ids) and
per-process logging; it works for :class:`~cantata.agents.ModelActor` and for user subclasses.
:class:`RayModelHandle` and :class:`RayAgentHandle` call actors through
:mod:`cantata.cluster._hosting`, where Ray's exceptions become Cantata's.
"""

from __future__ import annotations

import asyncio
from typing import Any

import ray

from cantata.agents import (
    EmbedReply,
    EmbedRequest,
    Health,
    Identity,
    LogConfig,
    ModelActor,
    ModelReply,
    ModelRequest,
    ModelSpec,
    Task,
    configure_logging,
)
from cantata.topologies import ModelHandle, RunResult

from . import _hosting
from ._connection import current_identity
from ._observability import Observability
from ._status import ReplicaStatus

__all__ = [
    "RayAgentHandle",
    "RayModelActor",
    "RayModelHandle",
    "ray_hosted",
]
_HOSTED: dict[type[ModelActor], type[ModelActor]] = {}


def ray_hosted(base: type[ModelActor]) -> type[ModelActor]:
    """``base`` as a class Ray can host: it configures logging and knows its actor and node.

    ``base`` is :class:`~cantata.agents.ModelActor` or a subclass whose ``__init__`` takes the
    spec as its only argument. The result is cached, so each class is wrapped once.
    """
    if base in _HOSTED:
        return _HOSTED[base]

    def __init__(
        self: ModelActor,
        spec: ModelSpec,
        log_config: LogConfig | None = None,
        observability: Observability | None = None,
    ) -> None:
        configure_logging(log_config)  # each actor is its own process with its own structlog
        base.__init__(self, spec)
        self.__dict__["_ray_identity"] = current_identity()
        self.telemetry = (observability or Observability()).telemetry("model")

    def identity(self: ModelActor) -> Identity:
        identity: Identity = self.__dict__["_ray_identity"]
        return identity

    hosted = type(
        f"Ray{base.__name__}",
        (base,),
        {
            "__init__": __init__,
            "identity": identity,
            "__doc__": base.__doc__,
            "__module__": base.__module__,
        },
    )
    _HOSTED[base] = hosted
    return hosted


RayModelActor = ray_hosted(ModelActor)
"""The default model actor as Ray hosts it."""


def _actor_id(actor: Any) -> str:
    return str(actor._actor_id.hex())


class RayModelHandle(ModelHandle):
    """Calls one :class:`RayModelActor`; picklable, so it can be passed to other actors."""

    def __init__(self, actor: Any, spec: ModelSpec) -> None:
        self.actor = actor
        self.spec = spec

    @property
    def actor_id(self) -> str:
        """The Ray actor id (hex)."""
        return _actor_id(self.actor)

    def _error(self, exc: ray.exceptions.RayError) -> Exception:
        return _hosting.translate(
            exc, f"the call to '{self.spec.name}'", model=self.spec.name, actor_id=self.actor_id
        )

    async def _call(self, ref: Any) -> Any:
        return await _hosting.call(
            ref, f"the call to '{self.spec.name}'", model=self.spec.name, actor_id=self.actor_id
        )

    # complete and embed are every model call's path: they await the actor here, without a
    # helper coroutine, and word an error only when there is one.
    async def complete(self, request: ModelRequest) -> ModelReply:
        ref = self.actor.complete.remote(request)
        try:
            reply: ModelReply = await ref
        except ray.exceptions.RayError as exc:
            raise self._error(exc) from None
        except asyncio.CancelledError:
            _hosting.cancel(ref)  # the model stops working for a caller that left
            raise
        return reply

    async def embed(self, request: EmbedRequest) -> EmbedReply:
        ref = self.actor.embed.remote(request)
        try:
            reply: EmbedReply = await ref
        except ray.exceptions.RayError as exc:
            raise self._error(exc) from None
        except asyncio.CancelledError:
            _hosting.cancel(ref)  # the model stops working for a caller that left
            raise
        return reply

    async def health(self) -> Health:
        health: Health = await self._call(self.actor.health.remote())
        return health

    async def start(self) -> Health:
        """Load the model in the actor; resolves once the actor is scheduled and ready."""
        health: Health = await self._call(self.actor.start.remote())
        return health

    async def close(self) -> None:
        """Release the model and flush the actor's telemetry (before the actor is killed)."""
        await self._call(self.actor.close.remote())


class RayAgentHandle:
    """Calls one agent actor (a hosted node or a coordinator); picklable."""

    def __init__(self, actor: Any, name: str) -> None:
        self.actor = actor
        self.name = name

    @property
    def actor_id(self) -> str:
        """The Ray actor id (hex)."""
        return _actor_id(self.actor)

    async def _call(self, ref: Any, what: str) -> Any:
        return await _hosting.call(ref, f"{what} '{self.name}'", actor_id=self.actor_id)

    async def run(self, task: Task) -> RunResult:
        """Run the hosted node on ``task`` (its trace, deadline and budget continue there)."""
        result: RunResult = await self._call(self.actor.run.remote(task), "the agent actor of")
        return result

    async def call(
        self, text: str, trace_id: str | None = None, deadline: float | None = None
    ) -> RunResult:
        """Answer a request as the deployment's coordinator, by ``deadline`` (epoch seconds)."""
        result: RunResult = await self._call(
            self.actor.call.remote(text, trace_id, deadline), "the coordinator of"
        )
        return result

    async def status(self) -> ReplicaStatus:
        """Where the actor runs and its load; never queues behind its requests."""
        status: ReplicaStatus = await self._call(self.actor.status.remote(), "the status of")
        return status

    async def start(self) -> ReplicaStatus:
        """Resolves once the actor is scheduled and ready."""
        return await self.status()

    async def shut(self) -> None:
        """Make a coordinator refuse new requests (its deployment is draining)."""
        await self._call(self.actor.shut.remote(), "shutting")

    async def close(self) -> None:
        """Flush the actor's telemetry before it is killed."""
        await self._call(self.actor.close.remote(), "closing")
