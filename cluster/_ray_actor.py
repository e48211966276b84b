"""Model actors and agent actors as Ray hosts them, and the handles that call them.

:func:`ray_hosted` adds to a model actor class only what Ray knows (its actor and node ids) and
per-process logging; it works for :class:`~cantata.agents.ModelActor` and for user subclasses.
:class:`RayModelHandle` and :class:`RayAgentHandle` call actors through
:mod:`cantata.cluster._hosting`, where Ray's exceptions become Cantata's.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
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
from ._batching import BatchedCalls, BatchesInFlight, Outcome, serve_batch
from ._connection import current_identity
from ._heap import settle_heap
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
        self.__dict__["_batches"] = BatchesInFlight()
        self.telemetry = (observability or Observability()).telemetry("model")

    def identity(self: ModelActor) -> Identity:
        identity: Identity = self.__dict__["_ray_identity"]
        return identity

    async def complete_batch(
        self: ModelActor, batch_id: str, requests: list[tuple[ModelRequest]]
    ) -> AsyncIterator[list[Outcome]]:
        """Answer requests that one caller sent together; see :mod:`._batching`."""
        # An async generator function itself: that is how Ray knows to stream its results.
        batches = self.__dict__["_batches"]
        async for outcomes in serve_batch(
            self.complete, batches, batch_id, requests, what=self.spec.name, model=self.spec.name
        ):
            yield outcomes

    def cancel_batched(self: ModelActor, batch_id: str, indices: list[int]) -> None:
        """Cancel requests of a batch whose callers left; the others run on."""
        self.__dict__["_batches"].cancel(batch_id, indices)

    async def start(self: ModelActor) -> Health:
        health = await base.start(self)
        settle_heap()  # the model is loaded: what the process holds now, it holds for good
        return health

    async def health(self: ModelActor) -> Health:
        health = await base.health(self)
        return health.model_copy(update={"batched": self.__dict__["_batches"].requests})

    hosted = type(
        f"Ray{base.__name__}",
        (base,),
        {
            "__init__": __init__,
            "identity": identity,
            "complete_batch": complete_batch,
            "cancel_batched": cancel_batched,
            "start": start,
            "health": health,
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
        self._batched: BatchedCalls[ModelReply] | None = None

    def __getstate__(self) -> dict[str, Any]:
        # The batcher belongs to this process's event loop; a copy in another process makes
        # its own.
        return {"actor": self.actor, "spec": self.spec}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.actor = state["actor"]
        self.spec = state["spec"]
        self._batched = None

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

    async def complete(self, request: ModelRequest) -> ModelReply:
        """The replica's reply; calls made in the same loop turn share one Ray call."""
        batched = self._batched
        if batched is None or batched.loop is not asyncio.get_running_loop():
            batched = self._batched = BatchedCalls(
                self.actor,
                "complete",
                f"the call to '{self.spec.name}'",
                actor_id=self.actor_id,
                model=self.spec.name,
            )
        return await batched.call(request)

    # embed is every embedding call's path: it awaits the actor here, without a helper
    # coroutine, and words an error only when there is one.

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
        self._batched: BatchedCalls[RunResult] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"actor": self.actor, "name": self.name}  # the batcher stays with its loop

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.actor = state["actor"]
        self.name = state["name"]
        self._batched = None

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
        """Answer a request as the deployment's coordinator, by ``deadline`` (epoch seconds).

        Requests made in the same loop turn share one Ray call, as model calls do.
        """
        batched = self._batched
        if batched is None or batched.loop is not asyncio.get_running_loop():
            batched = self._batched = BatchedCalls(
                self.actor, "call", f"the coordinator of '{self.name}'", actor_id=self.actor_id
            )
        return await batched.call(text, trace_id, deadline)

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
