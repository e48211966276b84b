"""Deploy a topology to a Ray cluster once and call it many times, from any driver.

A deployment is a detached controller actor named ``deployment:<name>`` in the ``cantata``
namespace; :class:`Deployment` is a handle to it that any process connected to the cluster can
get by name. These functions need a connected Ray (:func:`cantata.cluster.connect`).
"""

from __future__ import annotations

from typing import Any

import ray
import ray.exceptions

from cantata.agents import (
    ActorDiedError,
    CantataError,
    LogConfig,
    RuntimeFailure,
    TopologyError,
)
from cantata.topologies import DeploymentBudget, RunResult, TopologySpec

from ._connection import NAMESPACE
from ._controller import DeploymentController
from ._ledger import CostBy, CostReport
from ._observability import Observability
from ._status import DeploymentStatus

__all__ = ["Deployment", "deploy", "get_deployment", "list_deployments"]

_PREFIX = "deployment:"
_remote_controller: Any = ray.remote(DeploymentController)


def _unwrap(ref: Any, what: str, timeout_s: float | None = None) -> Any:
    """``ray.get`` with Ray's errors turned into Cantata's."""
    try:
        return ray.get(ref, timeout=timeout_s)
    except ray.exceptions.RayTaskError as exc:
        if isinstance(exc.cause, CantataError):
            raise exc.cause from None
        raise RuntimeFailure(f"{what} failed: {type(exc.cause).__name__}: {exc.cause}") from None
    except ray.exceptions.RayActorError:
        raise ActorDiedError(f"{what}: the deployment's controller is dead") from None
    except ray.exceptions.GetTimeoutError:
        raise RuntimeFailure(f"{what} did not finish within {timeout_s:g}s") from None


class Deployment:
    """A handle to a deployed topology; picklable, so it can be passed to other actors."""

    def __init__(self, name: str, actor: Any) -> None:
        self.name = name
        self.actor = actor

    def __repr__(self) -> str:
        return f"Deployment({self.name!r})"

    def call(self, text: str, *, timeout_s: float | None = None) -> RunResult:
        """Answer ``text`` with the deployed topology (blocking)."""
        result: RunResult = _unwrap(
            self.actor.call.remote(text), f"call to '{self.name}'", timeout_s
        )
        return result

    async def acall(self, text: str) -> RunResult:
        """Answer ``text`` with the deployed topology (from async code)."""
        try:
            result: RunResult = await self.actor.call.remote(text)
        except ray.exceptions.RayTaskError as exc:
            if isinstance(exc.cause, CantataError):
                raise exc.cause from None
            raise RuntimeFailure(f"call to '{self.name}' failed: {exc.cause}") from None
        except ray.exceptions.RayActorError:
            raise ActorDiedError(f"the controller of '{self.name}' is dead") from None
        return result

    def status(self) -> DeploymentStatus:
        """Every model's replicas, where they run, their health and load."""
        status: DeploymentStatus = _unwrap(self.actor.status.remote(), f"status of '{self.name}'")
        return status

    def cost(self, *, since_s: float | None = None, by: CostBy = "model") -> CostReport:
        """What the deployment spent in the last ``since_s`` seconds, per model, route or version.

        Token cost comes from the model calls' pricing, reservation cost from each replica's
        ``pricing.per_hour`` for the time it was held; the rows add up to ``total``.
        """
        report: CostReport = _unwrap(self.actor.cost.remote(since_s, by), f"cost of '{self.name}'")
        return report

    def scale(self, model: str, replicas: int, *, timeout_s: float = 120.0) -> DeploymentStatus:
        """Change one model's replicas; requests in flight are not dropped."""
        status: DeploymentStatus = _unwrap(
            self.actor.scale.remote(model, replicas, timeout_s), f"scaling '{self.name}'"
        )
        return status

    def down(self) -> None:
        """Drain the deployment, free its reservations and remove it."""
        _unwrap(self.actor.drain.remote(), f"draining '{self.name}'")
        ray.kill(self.actor, no_restart=True)


def deploy(
    spec: TopologySpec,
    name: str,
    *,
    start_timeout_s: float = 120.0,
    log_config: LogConfig | None = None,
    budget: DeploymentBudget | None = None,
    observability: Observability | None = None,
) -> Deployment:
    """Deploy ``spec`` as ``name``: reserve it whole, start every replica, return a handle.

    ``budget`` overrides the topology's own ``budget`` block. ``observability`` defaults to
    Ray metrics plus span export when this process's environment configures an OTLP endpoint.

    Fails with :class:`~cantata.agents.UnschedulableError` when the cluster cannot hold the
    deployment (at once when no node could, after ``start_timeout_s`` when the free resources
    cannot), leaving no actors or placement groups behind. ``runtime_env`` ships code to
    workers that lack Cantata (see docs/deploy.md).
    """
    if name in list_deployments():
        raise TopologyError(f"a deployment named '{name}' already exists; down it first")
    options: dict[str, Any] = {
        "name": _PREFIX + name,
        "namespace": NAMESPACE,
        "lifetime": "detached",
        "num_cpus": 0,
        # On the head node: a controller on a worker would die with that worker, and every
        # replica with it. Ray gives the head this resource; a sliver of it pins us there.
        "resources": {"node:__internal_head__": 0.001},
        "max_concurrency": 1000,
        "max_restarts": 0,
    }
    observability = observability or Observability.from_env(topology=spec.name, deployment=name)
    controller = _remote_controller.options(**options).remote(
        name, spec, log_config, observability, budget
    )
    try:
        _unwrap(
            controller.start.remote(start_timeout_s),
            f"deploying '{name}'",
            timeout_s=start_timeout_s * 2 + 60,
        )
    except BaseException:
        ray.kill(controller, no_restart=True)
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
