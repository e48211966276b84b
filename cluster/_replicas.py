"""A model's replicas behind one handle, balanced by load.

Each request goes to the less busy of two replicas picked at random (the "power of two choices"):
nearly as good as asking every replica, and it needs no shared state beyond this process's own
count of requests in flight per replica. A replica whose actor is dead or restarting is skipped
and the request is retried once on another, so a lost replica does not lose a request that
another can serve.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import TypeVar

from cantata.agents import (
    ActorDiedError,
    EmbedReply,
    EmbedRequest,
    Health,
    ModelReply,
    ModelRequest,
    ModelSpec,
)
from cantata.topologies import ModelHandle

from ._ray_actor import RayModelHandle

__all__ = ["Replica", "ReplicaSet"]

T = TypeVar("T")


@dataclass
class Replica:
    """One replica, with what this process knows of its load."""

    handle: RayModelHandle
    index: int
    in_flight: int = 0
    served: int = 0
    draining: bool = False


class ReplicaSet(ModelHandle):
    """Calls one of a model's replicas: the less loaded of two random choices."""

    def __init__(self, spec: ModelSpec, replicas: list[Replica] | None = None) -> None:
        self.spec = spec
        self.replicas: list[Replica] = list(replicas or [])

    def active(self) -> list[Replica]:
        """Replicas that take new requests."""
        return [replica for replica in self.replicas if not replica.draining]

    def pick(self, exclude: Collection[int] = ()) -> Replica:
        """The replica for the next request."""
        candidates = [r for r in self.active() if r.index not in exclude]
        if not candidates:
            raise ActorDiedError(f"no live replica of '{self.spec.name}' can take the request")
        if len(candidates) == 1:
            return candidates[0]
        first, second = random.sample(candidates, 2)
        return first if first.in_flight <= second.in_flight else second

    async def _balanced(self, call: Callable[[RayModelHandle], Awaitable[T]]) -> T:
        tried: set[int] = set()
        while True:
            replica = self.pick(tried)
            replica.in_flight += 1
            try:
                result = await call(replica.handle)
            except ActorDiedError:
                # Dead or restarting. Another replica gets one more try; never more, so a
                # request that kills its replica cannot take the whole set down with it.
                tried.add(replica.index)
                if len(tried) > 1:
                    raise
                continue
            finally:
                replica.in_flight -= 1
            replica.served += 1
            return result

    async def complete(self, request: ModelRequest) -> ModelReply:
        return await self._balanced(lambda handle: handle.complete(request))

    async def embed(self, request: EmbedRequest) -> EmbedReply:
        return await self._balanced(lambda handle: handle.embed(request))

    async def health(self) -> Health:
        """The first active replica's health (see the deployment's status for all of them)."""
        return await self.pick().handle.health()
