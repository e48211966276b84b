"""Deploy a topology to a Ray cluster once and call it many times, from any driver.

A deployment is a controller actor named ``deployment:<name>`` in the ``cantata`` namespace
(detached, so it outlives the driver that made it; a one-off ``cantata run`` makes a
short-lived one the same way, as ``serve.run`` does) and the coordinators, agent actors and
model replicas it owns. :class:`Deployment` is a handle any connected process can get by
name: it sends each request to the less busy of the coordinators, and to another one when
its coordinator dies and the topology allows a retry. These functions need a connected Ray
(:func:`cantata.cluster.connect`).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable
from typing import Any

import ray

from cantata.agents import ActorDiedError, LogConfig, Resources, TopologyError
from cantata.topologies import Code, DeploymentBudget, RunResult, TopologySpec

from . import _hosting
from ._connection import NAMESPACE
from ._controller import DeploymentController
from ._ledger import CostBy, CostReport
from ._observability import Observability
from ._ray_actor import RayAgentHandle
from ._replicas import Balanced
from ._status import DeploymentStatus

__all__ = ["Deployment", "deploy", "get_deployment", "list_deployments"]

_PREFIX = "deployment:"

DEADLINE_BACKSTOP_S = 5.0
"""How long past a request's deadline a blocking call waits for a coordinator that cannot
end the request itself (one lost with its node, say) before giving up on it."""


class Deployment:
    """A handle to a deployed topology; picklable, so it can be passed to other actors."""

    def __init__(self, name: str, controller: Any) -> None:
        self.name = name
        self.controller = controller
        self._coordinators: Balanced[RayAgentHandle] | None = None
        self._retry = True

    def __repr__(self) -> str:
        return f"Deployment({self.name!r})"

    def _what(self, action: str) -> str:
        return f"{action} '{self.name}'"

    def _balancer(self, refresh: bool = False) -> Balanced[RayAgentHandle]:
        if self._coordinators is None or refresh:
            handles, retry = _hosting.get(
                self.controller.coordinators.remote(), self._what("finding the coordinators of")
            )
            self._retry = bool(retry)
            members = [(index, handle) for index, handle in enumerate(handles)]
            if self._coordinators is None:
                self._coordinators = Balanced(f"{self.name} coordinators")
            self._coordinators.update(members)
        return self._coordinators

    def call(self, text: str, *, timeout_s: float | None = None) -> RunResult:
        """Answer ``text`` with the deployed topology (blocking).

        ``timeout_s`` is the request's deadline: it travels with the request to every model
        and agent actor it reaches, which stop working on it once it passes, and the call
        fails with DeadlineExceededError. A request whose coordinator dies goes to another
        coordinator when the topology's ``coordinator.retry`` allows; otherwise it fails with
        ActorDiedError.
        """
        deadline = None if timeout_s is None else time.time() + timeout_s
        # The coordinator ends the request at its deadline; this wait is only the backstop
        # for a coordinator that cannot (lost with its node, say).
        wait_s = None if timeout_s is None else timeout_s + DEADLINE_BACKSTOP_S
        balancer = self._balancer()
        tried: set[int] = set()
        while True:
            replica = balancer.pick(tried)
            replica.in_flight += 1
            try:
                result: RunResult = _hosting.get(
                    replica.handle.actor.call.remote(text, None, deadline),
                    self._what("call to"),
                    timeout_s=wait_s,
                    actor_id=replica.handle.actor_id,
                )
            except ActorDiedError as exc:
                if exc.actor_id != replica.handle.actor_id:
                    raise  # a model or agent died under it: the coordinator already retried
                tried.add(replica.index)
                if not self._retry or len(tried) >= len(balancer.active()):
                    raise
                continue
            finally:
                replica.in_flight -= 1
            replica.served += 1
            return result

    async def acall(self, text: str, *, timeout_s: float | None = None) -> RunResult:
        """Answer ``text`` with the deployed topology (from async code); see :meth:`call`."""
        balancer = self._balancer()
        deadline = None if timeout_s is None else time.time() + timeout_s

        def call(handle: RayAgentHandle, text: str) -> Awaitable[RunResult]:
            return handle.call(text, deadline=deadline)

        return await balancer.balanced(call, text, retry=self._retry)

    def status(self) -> DeploymentStatus:
        """Every model's and agent actor's replicas, where they run, their health and load."""
        status: DeploymentStatus = _hosting.get(
            self.controller.status.remote(), self._what("status of")
        )
        return status

    def cost(self, *, since_s: float | None = None, by: CostBy = "model") -> CostReport:
        """What the deployment spent in the last ``since_s`` seconds, per model, route or version.

        Token cost comes from the model calls' pricing, reservation cost from each replica's
        ``pricing.per_hour`` for the time it was held; the rows add up to ``total``.
        """
        report: CostReport = _hosting.get(
            self.controller.cost.remote(since_s, by), self._what("cost of")
        )
        return report

    def scale(self, target: str, replicas: int, *, timeout_s: float = 120.0) -> DeploymentStatus:
        """Change the replicas of one model or agent actor; requests in flight are not dropped."""
        status: DeploymentStatus = _hosting.get(
            self.controller.scale.remote(target, replicas, timeout_s), self._what("scaling")
        )
        self._coordinators = None  # the coordinators may have changed
        return status

    def down(self) -> None:
        """Drain the deployment, free its reservations and remove it."""
        _hosting.get(self.controller.drain.remote(), self._what("draining"))
        _hosting.kill(self.controller)


def deploy(
    spec: TopologySpec,
    name: str,
    *,
    code: Code | None = None,
    start_timeout_s: float = 120.0,
    log_config: LogConfig | None = None,
    budget: DeploymentBudget | None = None,
    observability: Observability | None = None,
    detached: bool = True,
) -> Deployment:
    """Deploy ``spec`` as ``name``: reserve it whole, start every actor, return a handle.

    ``code`` supplies the custom model-actor classes, role replacements and agents the topology
    names (see :func:`cantata.topologies.load_code`); they are shipped to the cluster with it.
    ``budget`` overrides the topology's own ``budget`` block. ``observability`` defaults to Ray
    metrics plus span export when this process's environment configures an OTLP endpoint.
    ``detached=False`` makes a deployment that dies with this driver (a one-off run).

    Fails with :class:`~cantata.agents.UnschedulableError` when the cluster cannot hold the
    deployment (at once when no node could, after ``start_timeout_s`` when the free resources
    cannot), leaving no actors or placement groups behind. ``runtime_env`` ships code to
    workers that lack Cantata (see docs/deploy.md).
    """
    if name in list_deployments():
        raise TopologyError(f"a deployment named '{name}' already exists; down it first")
    code = code or Code()
    _hosting.ship_code(code.modules())
    observability = observability or Observability.from_env(topology=spec.name, deployment=name)
    # On the head node, and not restarted: a controller on a worker would die with that
    # worker, and a restarted one would have lost the books of every actor it owned.
    controller = _hosting.create_actor(
        DeploymentController,
        name,
        spec,
        init={
            "code": code,
            "log_config": log_config,
            "observability": observability,
            "budget": budget,
            "start_timeout_s": start_timeout_s,
        },
        resources=Resources(num_cpus=0),
        name=_PREFIX + name,
        namespace=NAMESPACE,
        detached=detached,
        on_head=True,
        restarts=False,
    )
    try:
        _hosting.get(
            controller.start.remote(start_timeout_s),
            f"deploying '{name}'",
            timeout_s=start_timeout_s * 2 + 60,
        )
    except BaseException:
        _hosting.kill(controller)
        raise
    return Deployment(name, controller)


def get_deployment(name: str) -> Deployment:
    """The handle of the deployment called ``name``."""
    try:
        actor = ray.get_actor(_PREFIX + name, namespace=NAMESPACE)
    except ValueError:
        known = ", ".join(list_deployments()) or "none"
        raise TopologyError(f"no deployment named '{name}' (deployments: {known})") from None
    return Deployment(name, actor)


def list_deployments() -> list[str]:
    """The names of every deployment on the connected cluster."""
    actors = ray.util.list_named_actors(all_namespaces=True)
    return sorted(
        entry["name"].removeprefix(_PREFIX)
        for entry in actors
        if entry.get("namespace") == NAMESPACE and entry["name"].startswith(_PREFIX)
    )
