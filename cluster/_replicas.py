"""Replicas behind one handle, balanced by load: a model's replicas, or an agent actor's.

Each request goes to the less busy of two replicas picked at random (the "power of two
choices"): nearly as good as asking every replica, and it needs no shared state beyond this
process's own count of requests in flight per replica. Between equally busy replicas the one
that has served fewer requests from here wins, so sequential traffic rotates over every
replica instead of landing where chance puts it. A replica whose actor is dead or restarting
is skipped and the request is retried once on another, so a lost replica does not lose a
request that another can serve; so is a request a full replica refused. A replica that keeps
failing for its own reasons gets no calls for a cooldown (a circuit breaker per replica, kept
by each calling process, as Envoy's outlier detection is per client).
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable, Collection, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from cantata.agents import (
    ActorDiedError,
    CantataError,
    CircuitOpenError,
    Cooldown,
    EmbedReply,
    EmbedRequest,
    Health,
    ModelReply,
    ModelRequest,
    ModelSpec,
    OverloadedError,
    Task,
    counts_against_replica,
)
from cantata.topologies import AgentHandle, ModelHandle, RunResult

from ._ray_actor import RayAgentHandle, RayModelHandle

__all__ = ["AgentReplicaSet", "Balanced", "Replica", "ReplicaSet", "Routing"]

T = TypeVar("T")
H = TypeVar("H")
A = TypeVar("A")


@dataclass
class Replica(Generic[H]):
    """One replica, with what this process knows of its load and its failures."""

    handle: H
    index: int
    in_flight: int = 0
    served: int = 0
    draining: bool = False
    failures: int = 0  # in a row, for the replica's own reasons
    openings: int = 0  # of its breaker, in a row: each cooldown is twice the last
    cooling_until: float = 0.0  # monotonic; nonzero while its breaker is open


class Balanced(Generic[H]):
    """Calls one of a set of replicas: the less loaded of two random choices, skipping
    replicas whose circuit breaker is open (see :class:`~cantata.agents.Cooldown`)."""

    what: str

    def __init__(
        self,
        what: str,
        replicas: list[Replica[H]] | None = None,
        *,
        cooldown: Cooldown | None = None,
        backend_errors_are_ours: bool = False,
    ) -> None:
        self.what = what
        self.replicas: list[Replica[H]] = list(replicas or [])
        self.cooldown = cooldown or Cooldown()
        # A model replica's backend errors are its own; an agent actor only passes on those of
        # the models it called, so only its own death counts against it.
        self.backend_errors_are_ours = backend_errors_are_ours

    def active(self) -> list[Replica[H]]:
        """Replicas that take new requests."""
        return [replica for replica in self.replicas if not replica.draining]

    def pick(self, exclude: Collection[int] = ()) -> Replica[H]:
        """The replica for the next request."""
        if len(self.replicas) == 1 and not exclude:
            only = self.replicas[0]
            if not only.draining and not only.cooling_until:
                return only  # the common case, without building lists per call
        candidates = [r for r in self.active() if r.index not in exclude]
        if not candidates:
            raise ActorDiedError(f"no live replica of '{self.what}' can take the request")
        now = time.monotonic()
        ready = [r for r in candidates if r.cooling_until <= now]
        if not ready:
            wait_s = min(r.cooling_until for r in candidates) - now
            raise CircuitOpenError(
                f"every replica of '{self.what}' failed {self.cooldown.after_failures} calls in"
                f" a row and is cooling down; the first takes a trial call in {wait_s:.1f}s",
                model=self.what,
                retry_after_s=wait_s,
            )
        if len(ready) == 1:
            return ready[0]
        pair = random.sample(ready, 2)
        return min(pair, key=lambda r: (r.in_flight, r.served, r.index))

    def _failed(self, replica: Replica[H], error: CantataError) -> None:
        ours = self.backend_errors_are_ours or isinstance(error, ActorDiedError)
        if not (ours and counts_against_replica(error) and _about(replica, error)):
            return
        if replica.cooling_until > time.monotonic():
            # A call sent before its breaker opened: only a failed trial call (one sent after
            # the cooldown) opens it again, for twice as long.
            return
        replica.failures += 1
        if replica.failures >= self.cooldown.after_failures:
            # Open, or open again after a failed trial call: no calls until the cooldown ends.
            replica.openings += 1
            wait_s = self.cooldown.duration(replica.openings)
            replica.cooling_until = time.monotonic() + wait_s

    def update(self, members: Sequence[tuple[int, H]]) -> None:
        """Take a new membership (after a scale), keeping what is known of the replicas kept."""
        known = {replica.index: replica for replica in self.replicas}
        self.replicas = [known.get(index) or Replica(handle, index) for index, handle in members]

    async def balanced(
        self, call: Callable[[H, A], Awaitable[T]], argument: A, *, retry: bool = True
    ) -> T:
        """``call(handle, argument)`` on a replica; on a dead replica, once more on another
        if ``retry``; on a full one, once more on another (the call never started there)."""
        tried: set[int] = set()
        while True:
            replica = self.pick(tried)
            replica.in_flight += 1
            try:
                result = await call(replica.handle, argument)
            except (ActorDiedError, OverloadedError) as exc:
                if not _about(replica, exc):
                    raise  # an actor further down died; its own replica set already retried
                self._failed(replica, exc)
                # Dead or restarting, or full. Another replica gets one more try; never more,
                # so a request that kills its replica cannot take the whole set down with it.
                tried.add(replica.index)
                safe = retry or isinstance(exc, OverloadedError)
                if not safe or len(tried) > 1 or len(self.active()) < 2:
                    raise
                continue
            except CantataError as exc:
                self._failed(replica, exc)
                raise
            finally:
                replica.in_flight -= 1
            replica.served += 1
            if replica.failures:
                replica.failures = replica.openings = 0  # a success closes the breaker
                replica.cooling_until = 0.0
            return result


def _about(replica: Replica[Any], error: CantataError) -> bool:
    """Whether ``error`` is about ``replica`` itself, not an actor it called that failed."""
    if not isinstance(error, ActorDiedError):
        return True  # refused as full: by the replica itself
    own = getattr(replica.handle, "actor_id", None)
    return own is None or error.actor_id == own


class ReplicaSet(Balanced[RayModelHandle], ModelHandle):
    """A model's replicas behind one model handle."""

    def __init__(
        self, spec: ModelSpec, replicas: list[Replica[RayModelHandle]] | None = None
    ) -> None:
        super().__init__(spec.name, replicas, cooldown=spec.cooldown, backend_errors_are_ours=True)
        self.spec = spec

    # Not coroutines themselves: they hand back balanced()'s, one frame less per model call.
    def complete(self, request: ModelRequest) -> Coroutine[Any, Any, ModelReply]:
        return self.balanced(RayModelHandle.complete, request)

    def embed(self, request: EmbedRequest) -> Coroutine[Any, Any, EmbedReply]:
        return self.balanced(RayModelHandle.embed, request)

    async def health(self) -> Health:
        """The first active replica's health (see the deployment's status for all of them)."""
        return await self.pick().handle.health()


class AgentReplicaSet(Balanced[RayAgentHandle], AgentHandle):
    """A hosted node's agent actors behind one agent handle."""

    def __init__(self, name: str, replicas: list[Replica[RayAgentHandle]] | None = None) -> None:
        super().__init__(name, replicas)
        self.name = name

    def run(self, task: Task) -> Coroutine[Any, Any, RunResult]:
        return self.balanced(RayAgentHandle.run, task)


@dataclass
class Routing:
    """Who serves what: every model's and hosted node's replicas, as agent actors need it.

    Picklable: the owner of a topology's actors sends it to each agent actor whenever the
    replicas change.
    """

    specs: dict[str, ModelSpec] = field(default_factory=dict)
    models: dict[str, list[tuple[int, RayModelHandle]]] = field(default_factory=dict)
    agents: dict[str, list[tuple[int, RayAgentHandle]]] = field(default_factory=dict)

    def model_sets(self, current: dict[str, ReplicaSet] | None = None) -> dict[str, ReplicaSet]:
        """Replica sets for every model, updating ``current`` ones in place."""
        sets = dict(current or {})
        for name, members in self.models.items():
            if name not in sets:
                sets[name] = ReplicaSet(self.specs[name])
            sets[name].update(members)
        return sets

    def agent_sets(
        self, current: dict[str, AgentReplicaSet] | None = None
    ) -> dict[str, AgentReplicaSet]:
        """Replica sets for every hosted node, updating ``current`` ones in place."""
        sets = dict(current or {})
        for name, members in self.agents.items():
            if name not in sets:
                sets[name] = AgentReplicaSet(name)
            sets[name].update(members)
        return sets
