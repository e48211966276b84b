"""The agent actor: a node of a topology (or a deployment's whole topology) on a Ray actor.

A hosted node's actor answers its parent's :class:`~cantata.agents.Task` messages with the
node's pattern, continuing the parent's trace, deadline and budget; a coordinator (the
deployment's entry point) answers requests with the top-level topology, admitted by the
deployment's budget and entered in its cost ledger. Both call models and other hosted nodes
through the replica sets of the :class:`~cantata.cluster.Routing` their owner sends them.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import Any, Literal

import ray

from cantata.agents import (
    CantataError,
    LogConfig,
    OverloadedError,
    Route,
    RuntimeFailure,
    Span,
    Task,
    Telemetry,
    TelemetryGroup,
    accept,
    configure_logging,
)
from cantata.topologies import Code, RouterSpec, RunResult, TopologySpec, answer, answer_task

from . import _hosting
from ._batching import BatchesInFlight, Outcome, serve_batch
from ._connection import NAMESPACE, current_identity
from ._heap import settle_heap
from ._ledger import LedgerEntry
from ._observability import Observability
from ._replicas import AgentReplicaSet, ReplicaSet, Routing
from ._status import ReplicaStatus

__all__ = ["LEDGER_BATCH_S", "AgentActor", "RouteTaken"]

LEDGER_BATCH_S = 0.05
"""Under load, how long a coordinator collects ledger entries before sending them together."""


class AgentActor:
    """Hosts one topology node on Ray. ``role`` is ``coordinator`` for a deployment's entry.

    ``owner`` names the deployment's controller actor (None for a one-off run). The routing
    arrives through :meth:`set_routing` (actor handles are kept out of the constructor's
    arguments, which Ray must keep to restart the actor); a replica that Ray restarted asks the
    owner for it before its first request.
    """

    def __init__(
        self,
        node: TopologySpec,
        *,
        role: Literal["coordinator", "agent"],
        code: Code,
        log_config: LogConfig | None = None,
        observability: Observability | None = None,
        owner: str | None = None,
        budgeted: bool = False,
    ) -> None:
        configure_logging(log_config)
        self.node = node
        self.role = role
        self.code = code
        self.owner_name = owner
        self._owner: Any = None
        self.budgeted = budgeted
        self.where = current_identity()
        self.telemetry = (observability or Observability()).telemetry(role)
        self.models: dict[str, ReplicaSet] = {}
        self.agents: dict[str, AgentReplicaSet] = {}
        self._fresh = False
        self.in_flight = 0
        self.served = 0
        self.refused = 0
        self.shutting = False
        self.max_in_flight = (
            node.coordinator.max_in_flight if role == "coordinator" else node.host.max_in_flight
        )
        self._ledger: list[LedgerEntry] = []
        self._ledger_due: asyncio.TimerHandle | None = None
        self._batches = BatchesInFlight()
        settle_heap()  # the node and its code are loaded: they live as long as the actor

    def set_routing(self, routing: Routing) -> None:
        """Take the current replicas of every model and hosted node."""
        self.models = routing.model_sets(self.models)
        self.agents = routing.agent_sets(self.agents)
        self._fresh = True

    @property
    def owner(self) -> Any:
        """The owning controller's handle, or None for a one-off run."""
        if self._owner is None and self.owner_name is not None:
            self._owner = ray.get_actor(self.owner_name, namespace=NAMESPACE)
        return self._owner

    async def _refresh(self) -> None:
        if self._fresh:
            return
        if self.owner is None:
            raise RuntimeFailure(
                f"the agent actor of '{self.node.name}' was restarted during a one-off run and"
                " no longer knows its models; run the request again"
            )
        routing: Routing = await _hosting.call(self.owner.routing.remote(), "fetching routing")
        self.set_routing(routing)

    async def run(self, task: Task) -> RunResult:
        """Answer a parent's task with this node's pattern."""
        task = accept(task, Task)  # crossed a process boundary: validate on arrival
        self._admit()
        await self._refresh()
        self.in_flight += 1
        try:
            return await answer_task(
                self.node,
                task,
                self.models,
                telemetry=self.telemetry,
                where=self.where,
                agents=self.agents,
                code=self.code,
            )
        finally:
            self.in_flight -= 1
            self.served += 1

    async def call(
        self, text: str, trace_id: str | None = None, deadline: float | None = None
    ) -> RunResult:
        """Answer one request as the deployment's coordinator, within its budget and by its
        ``deadline`` (epoch seconds; the topology's own ``timeout_s`` applies too).

        Every request is entered in the owner's cost ledger (failed ones with the spans they
        finished); one the budget refuses raises :class:`~cantata.agents.BudgetExceededError`.
        """
        if self.shutting:
            self.refused += 1
            raise RuntimeFailure(
                f"deployment of '{self.node.name}' is being taken down; it takes no new requests"
            )
        self._admit()
        await self._refresh()
        cost_limit = None
        if self.budgeted and self.owner is not None:
            cost_limit = await _hosting.call(self.owner.admit.remote(), "the budget check")
        route = RouteTaken(self.node)
        self.in_flight += 1
        try:
            result = await answer(
                self.node,
                text,
                self.models,
                trace_id=trace_id,
                deadline=deadline,
                telemetry=TelemetryGroup([self.telemetry, route]),
                cost_limit_usd=cost_limit,
                where=self.where,
                agents=self.agents,
                code=self.code,
            )
        except CantataError as exc:
            self._record([span for span in exc.trace if isinstance(span, Span)], route, True)
            raise
        finally:
            self.in_flight -= 1
            self.served += 1
        self._record(list(result.trace), route, False)
        return result

    async def call_batch(
        self, batch_id: str, requests: list[tuple[str, str | None, float | None]]
    ) -> AsyncIterator[list[Outcome]]:
        """Answer requests that one caller sent together, each as :meth:`call` would; the
        answers stream back as they finish (see :mod:`cantata.cluster._batching`)."""
        what = f"the coordinator of '{self.node.name}'"
        async for outcomes in serve_batch(self.call, self._batches, batch_id, requests, what=what):
            yield outcomes

    def cancel_batched(self, batch_id: str, indices: list[int]) -> None:
        """Cancel requests of a batch whose callers left; the others run on."""
        self._batches.cancel(batch_id, indices)

    def shut(self) -> None:
        """Refuse new requests from now on (the deployment is draining); those in flight go on."""
        self.shutting = True

    def _admit(self) -> None:
        # Refused at once rather than queued without bound: memory stays bounded, and the
        # requests already accepted keep their latency.
        if self.in_flight >= self.max_in_flight:
            self.refused += 1
            self.telemetry.refused(self.node.name, "overload")
            raise OverloadedError(
                f"the {self.role} of '{self.node.name}' holds {self.in_flight} requests, the"
                f" most it takes (max_in_flight={self.max_in_flight}); retry later",
                limit=self.max_in_flight,
            )

    def _record(self, spans: list[Span], route: RouteTaken, failed: bool) -> None:
        if self.owner is None:
            return
        self._ledger.append((spans, route.key, failed))
        if self.in_flight == 0:
            # Nothing else running: sent now, before this reply (a cost report first asks
            # for it anyway: see flush_ledger).
            self._send_ledger()
        elif self._ledger_due is None:
            # Under load, one Ray call per request to the ledger was a fifth of a request's
            # CPU: entries of the next LEDGER_BATCH_S travel together (a request ending the
            # burst sends them at once, above).
            loop = asyncio.get_running_loop()
            self._ledger_due = loop.call_later(LEDGER_BATCH_S, self._send_ledger)

    async def flush_ledger(self) -> None:
        """Hand the owner the ledger entries held back, and return once it has every entry this
        coordinator sent (its calls to the owner start in the order they were sent)."""
        if self.owner is None:
            return
        if self._ledger_due is not None:
            self._ledger_due.cancel()
            self._ledger_due = None
        entries, self._ledger = self._ledger, []
        sent = self.owner.record.remote(entries)
        await _hosting.call(sent, "sending ledger entries to the controller")

    def _send_ledger(self) -> None:
        if self._ledger_due is not None:
            self._ledger_due.cancel()
            self._ledger_due = None
        entries, self._ledger = self._ledger, []
        if entries:
            # Not awaited: the ledger must not add a hop to any request's latency.
            self.owner.record.remote(entries)

    def status(self) -> ReplicaStatus:
        """Where this actor runs and its load."""
        return ReplicaStatus(
            actor_id=self.where.actor_id or "",
            node_id=self.where.node_id,
            pid=os.getpid(),
            healthy=True,
            in_flight=self.in_flight,
            served=self.served,
            refused=self.refused,
            batched=self._batches.requests,
            detail="shutting down: refusing new requests" if self.shutting else "",
        )

    def close(self) -> None:
        """Send what telemetry and the ledger have buffered (before the actor is killed)."""
        if self.owner is not None:
            self._send_ledger()
        self.telemetry.flush()


class RouteTaken(Telemetry):
    """Notes the route a request took at the top-level router, even if the request fails."""

    def __init__(self, spec: TopologySpec) -> None:
        self.spec = spec
        self.key: str | None = None

    def routed(self, router: str, route: Route) -> None:
        # The top-level router decides first; a nested router of the same name comes later.
        if self.key is None and isinstance(self.spec, RouterSpec) and router == self.spec.name:
            self.key = self.spec.default if route.defaulted else route.label
