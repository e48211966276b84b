"""The model actor as a Ray actor, and the handle that calls it.

:func:`ray_hosted` adds to a model actor class only what Ray knows (its actor and node ids) and
per-process logging; it works for :class:`~cantata.agents.ModelActor` and for user subclasses.
:class:`RayModelHandle` is where Ray's exceptions become Cantata's: the error an actor raised is
re-raised as itself, a dead actor becomes :class:`~cantata.agents.ActorDiedError`.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, TypeVar

import ray
import ray.exceptions

from cantata.agents import (
    ActorDiedError,
    BackendError,
    CantataError,
    EmbedReply,
    EmbedRequest,
    Health,
    Identity,
    LogConfig,
    ModelActor,
    ModelReply,
    ModelRequest,
    ModelSpec,
    RuntimeFailure,
    configure_logging,
)
from cantata.topologies import ModelHandle

from ._connection import current_identity
from ._observability import Observability

__all__ = [
    "ACTOR_CONCURRENCY",
    "RayModelActor",
    "RayModelHandle",
    "ray_hosted",
]

T = TypeVar("T")

ACTOR_CONCURRENCY = 1000
"""Ray's concurrency limit for a model actor (Ray's own default for async actors).

The model's ``max_concurrency`` is enforced inside the actor instead, where calls waiting
for a slot can be counted and their deadlines kept, and health checks never queue behind them.
"""


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


class RayModelHandle(ModelHandle):
    """Calls one :class:`RayModelActor`; picklable, so it can be passed to other actors."""

    def __init__(self, actor: Any, spec: ModelSpec) -> None:
        self.actor = actor
        self.spec = spec

    @property
    def actor_id(self) -> str:
        """The Ray actor id (hex)."""
        return str(self.actor._actor_id.hex())

    async def _call(self, ref: Awaitable[T]) -> T:
        try:
            return await ref
        except ray.exceptions.RayTaskError as exc:
            cause = exc.cause
            if isinstance(cause, CantataError):
                raise cause from None
            raise BackendError(
                f"{self.spec.name}: actor raised {type(cause).__name__}: {cause}",
                model=self.spec.name,
            ) from None
        except ray.exceptions.RayActorError as exc:
            raise ActorDiedError(
                f"the actor serving '{self.spec.name}' is dead or unreachable"
                f" ({type(exc).__name__})",
                actor_id=self.actor_id,
            ) from None
        except ray.exceptions.RayError as exc:
            # Lost objects, a dead owner and the like: the call's result cannot be had.
            raise RuntimeFailure(
                f"the call to '{self.spec.name}' failed in Ray ({type(exc).__name__})"
            ) from None

    async def complete(self, request: ModelRequest) -> ModelReply:
        return await self._call(self.actor.complete.remote(request))

    async def embed(self, request: EmbedRequest) -> EmbedReply:
        return await self._call(self.actor.embed.remote(request))

    async def health(self) -> Health:
        return await self._call(self.actor.health.remote())

    async def start(self) -> Health:
        """Load the model in the actor; resolves once the actor is scheduled and ready."""
        return await self._call(self.actor.start.remote())

    async def close(self) -> None:
        """Release the model and flush the actor's telemetry (before the actor is killed)."""
        await self._call(self.actor.close.remote())
