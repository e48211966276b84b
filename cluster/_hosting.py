"""Where every Cantata actor on Ray is made, and where Ray's exceptions become Cantata's.

Model replicas, agent actors, coordinators and deployment controllers are all created by
:func:`create_actor` from typed :class:`~cantata.agents.Resources` (actor options, or a bundle
of a placement group reserved with :func:`reserve`), waited for with a timeout by
:func:`wait_ready`, given the one restart policy (:data:`MAX_RESTARTS`), and killed by
:func:`kill`. Every call into an actor goes through :func:`call` (async) or :func:`get`
(blocking), which translate Ray's exceptions into Cantata's typed errors, once, here (and
cancel the call in the actor when its caller gives up on it):

- the actor raised a :class:`~cantata.agents.CantataError`: that error, as itself;
- it raised anything else: :class:`~cantata.agents.BackendError` for a model, otherwise
  :class:`~cantata.agents.RuntimeFailure`;
- the actor is dead, restarting or unreachable: :class:`~cantata.agents.ActorDiedError`;
- a blocking wait that timed out: :class:`~cantata.agents.DeadlineExceededError`;
- any other Ray failure (lost objects, a dead owner): :class:`~cantata.agents.RuntimeFailure`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import sysconfig
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any, TypeVar

import ray
import ray.exceptions
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from cantata.agents import (
    ActorDiedError,
    ActorStartTimeoutError,
    BackendError,
    CantataError,
    DeadlineExceededError,
    Resources,
    RuntimeFailure,
    UnschedulableError,
    excerpt,
    scrub,
)

from ._reservations import actor_options, check_feasible, placement_bundle

__all__ = [
    "ACTOR_CONCURRENCY",
    "MAX_RESTARTS",
    "Slot",
    "alive_node_totals",
    "bundle",
    "call",
    "cancel",
    "check_fits",
    "create_actor",
    "get",
    "kill",
    "release",
    "reserve",
    "ship_code",
    "translate",
    "wait_ready",
]

T = TypeVar("T")

ACTOR_CONCURRENCY = 1000
"""Ray's concurrency limit for every Cantata actor (Ray's own default for async actors).

A model's ``max_concurrency`` is enforced inside its actor instead, where calls waiting for a
slot can be counted and their deadlines kept, and health checks never queue behind them.
"""

MAX_RESTARTS = 3
"""The restart policy: an actor lost with its process or node comes back (in its bundle), at
most this many times.

Calls in flight on it fail with :class:`~cantata.agents.ActorDiedError`, and the replica
sets retry them on another replica; a coordinator's callers do the same. The bound is the
supervisor's restart intensity (as in OTP): an actor that keeps dying (a model that crashes
its process on some input, say) is not restarted forever. Once it is spent the replica stays
dead, its callers route around it (its circuit breaker opens) and fall back where the
topology declares a fallback, and ``cantata status`` says it died and why. A node that comes
back after a loss costs each of its actors one restart.
"""

_REMOTE: dict[type, Any] = {}


def _remote(cls: type) -> Any:
    # Ray exports a class once per ray.remote(); reuse it for every actor of the class.
    if cls not in _REMOTE:
        _REMOTE[cls] = ray.remote(cls)
    return _REMOTE[cls]


@dataclass(frozen=True)
class Slot:
    """A bundle of a reserved placement group: where one actor goes."""

    group: PlacementGroup
    index: int


def bundle(resources: Resources) -> dict[str, float]:
    """The placement-group bundle for ``resources``.

    A bundle must reserve something; an actor that asks for nothing gets a sliver of CPU.
    """
    return placement_bundle(resources) or {"CPU": 0.01}


def alive_node_totals() -> list[dict[str, float]]:
    """Total resources of every alive node of the connected cluster."""
    nodes = ray.nodes()  # type: ignore[no-untyped-call]
    return [dict(node["Resources"]) for node in nodes if node.get("Alive")]


def check_fits(what: str, demands: Sequence[tuple[str, Resources]]) -> None:
    """Fail with :class:`UnschedulableError` unless each demand fits some node and all fit
    the cluster together (by total, not free, resources: others' work may still finish)."""
    nodes = alive_node_totals()
    for name, resources in demands:
        check_feasible(name, resources, nodes)
    needed: dict[str, float] = {}
    for _, resources in demands:
        for key, amount in bundle(resources).items():
            needed[key] = needed.get(key, 0.0) + amount
    totals: dict[str, float] = {}
    for node in nodes:
        for key, amount in node.items():
            totals[key] = totals.get(key, 0.0) + amount
    missing = {k: v for k, v in needed.items() if totals.get(k, 0.0) + 1e-9 < v}
    if missing:
        detail = ", ".join(
            f"{k}: needs {v:g}, cluster has {totals.get(k, 0.0):g}"
            for k, v in sorted(missing.items())
        )
        raise UnschedulableError(
            f"{what} needs more than the whole cluster has ({detail})", missing=missing
        )


async def reserve(
    what: str, bundles: Sequence[dict[str, float]], *, strategy: str, name: str, timeout_s: float
) -> PlacementGroup:
    """Reserve ``bundles`` at once in one placement group, or nothing.

    Raises :class:`UnschedulableError` (and removes the group) when the cluster's free
    resources cannot hold them all within ``timeout_s``.
    """
    group: PlacementGroup = placement_group(list(bundles), strategy=strategy, name=name)
    try:
        await asyncio.wait_for(group.ready(), timeout=timeout_s)
    except TimeoutError:
        remove_placement_group(group)
        raise UnschedulableError(
            f"{what} could not reserve {len(bundles)} actor(s) within {timeout_s:g}s with"
            f" strategy {strategy}: the cluster's free resources cannot hold them all together"
        ) from None
    except BaseException:
        remove_placement_group(group)
        raise
    return group


def release(group: PlacementGroup) -> None:
    """Give a placement group's reservation back."""
    remove_placement_group(group)


def create_actor(
    cls: type,
    *args: Any,
    init: Mapping[str, Any] | None = None,
    resources: Resources,
    slot: Slot | None = None,
    name: str | None = None,
    namespace: str | None = None,
    detached: bool = False,
    on_head: bool = False,
    restarts: bool = True,
) -> Any:
    """Start an actor of ``cls`` with ``args`` and ``init`` (keyword arguments), reserving
    ``resources`` (or its ``slot``).

    ``on_head`` pins it to the head node (a controller must not die with a worker node);
    ``detached`` lets it outlive the process that made it. ``restarts`` applies
    :data:`MAX_RESTARTS`; actors whose loss must be seen at once (controllers) pass False.
    """
    options = actor_options(resources)
    if slot is not None:
        options.pop("accelerator_type", None)  # the bundle already holds that resource
        options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
            placement_group=slot.group, placement_group_bundle_index=slot.index
        )
    if on_head:
        # Ray gives the head this resource; a sliver of it pins the actor there.
        custom = dict(options.get("resources", {}))
        custom["node:__internal_head__"] = 0.001
        options["resources"] = custom
    if name is not None:
        options["name"] = name
        options["namespace"] = namespace
    if detached:
        options["lifetime"] = "detached"
    return (
        _remote(cls)
        .options(
            **options,
            max_concurrency=ACTOR_CONCURRENCY,
            max_restarts=MAX_RESTARTS if restarts else 0,
        )
        .remote(*args, **(init or {}))
    )


def kill(actor: Any) -> None:
    """Kill ``actor`` for good (no restart); an actor already gone is fine."""
    with contextlib.suppress(ValueError):  # not an actor handle Ray knows any more
        ray.kill(actor, no_restart=True)


async def wait_ready(
    what: str, starts: Iterable[Awaitable[Any]], *, timeout_s: float, on_failure: Any
) -> None:
    """Wait for every start; on timeout or failure call ``on_failure()`` and raise typed.

    A start that does not finish within ``timeout_s`` (the reservation fits the cluster but
    the actor is not scheduled, or its model loads too slowly) is an
    :class:`ActorStartTimeoutError`.
    """
    try:
        await asyncio.wait_for(asyncio.gather(*starts), timeout=timeout_s)
    except TimeoutError:
        on_failure()
        raise ActorStartTimeoutError(
            f"{what} were not ready within {timeout_s:g}s; their reservations fit the cluster"
            " but may be held by other work"
        ) from None
    except BaseException:
        on_failure()
        raise


def translate(exc: BaseException, what: str, *, model: str = "", actor_id: str = "") -> Exception:
    """The Cantata error for a Ray exception raised while ``what`` ran."""
    if isinstance(exc, ray.exceptions.RayTaskError):
        cause = exc.cause
        if isinstance(cause, CantataError):
            return cause
        detail = f"{what}: the actor raised {type(cause).__name__}: {cause}"[:2000]
        if model:
            return BackendError(detail, model=model)
        return RuntimeFailure(detail)
    if isinstance(exc, ray.exceptions.ActorUnavailableError):
        return ActorDiedError(
            f"{what}: the actor is restarting or unreachable ({type(exc).__name__})",
            actor_id=actor_id,
        )
    if isinstance(exc, ray.exceptions.RayActorError):
        # Ray's own account of the death (worker exit type and detail, lost node, spent
        # restarts): what an operator reading status needs. Bounded, and scrubbed, since an
        # actor that failed in its constructor is quoted with its exception.
        why = excerpt(scrub(" ".join(str(exc).split())), 400)
        return ActorDiedError(
            f"{what}: the actor died or is restarting ({type(exc).__name__}: {why})",
            actor_id=actor_id,
        )
    if isinstance(exc, ray.exceptions.GetTimeoutError):
        return DeadlineExceededError(f"{what} did not finish in time")
    if isinstance(exc, ray.exceptions.RayError):
        return RuntimeFailure(f"{what} failed in Ray ({type(exc).__name__})")
    return exc if isinstance(exc, Exception) else RuntimeFailure(f"{what} failed")


async def call(ref: Awaitable[T], what: str, *, model: str = "", actor_id: str = "") -> T:
    """Await an actor call; Ray's exceptions come out as Cantata's.

    A caller that stops waiting (cancelled, or its deadline passed) cancels the call in the
    actor too: nothing keeps running, holding a model, for a caller that left.
    """
    try:
        return await ref
    except ray.exceptions.RayError as exc:
        raise translate(exc, what, model=model, actor_id=actor_id) from None
    except asyncio.CancelledError:
        cancel(ref)
        raise


def cancel(ref: Any) -> None:
    """Cancel an actor call: its coroutine in the actor is cancelled, or it never starts."""
    # A call that already ended, or whose actor is gone, has nothing left to cancel.
    with contextlib.suppress(Exception):
        ray.cancel(ref)


def get(ref: Any, what: str, *, timeout_s: float | None = None, actor_id: str = "") -> Any:
    """``ray.get`` an actor call (blocking); Ray's exceptions come out as Cantata's.

    A call not done within ``timeout_s`` is cancelled in the actor and fails with
    :class:`~cantata.agents.DeadlineExceededError`; so is one whose caller is interrupted.
    """
    try:
        return ray.get(ref, timeout=timeout_s)
    except ray.exceptions.RayError as exc:
        if isinstance(exc, ray.exceptions.GetTimeoutError):
            cancel(ref)
        raise translate(exc, what, actor_id=actor_id) from None
    except KeyboardInterrupt:
        cancel(ref)
        raise


def _installed(module: ModuleType) -> bool:
    file = getattr(module, "__file__", None)
    if not file:
        return True  # built-in, or a namespace package: nothing to ship
    roots = {sysconfig.get_paths()[key] for key in ("purelib", "platlib", "stdlib")}
    path = os.path.realpath(file)
    return any(path.startswith(os.path.realpath(root) + os.sep) for root in roots)


def ship_code(modules: Iterable[ModuleType]) -> None:
    """Pickle the classes of user modules by value, so actors on any node get them.

    A topology's custom classes often live in a file beside it (``examples/…``) that other
    processes cannot import; installed packages (and Cantata) are pickled by reference.
    """
    for module in modules:
        if module.__name__ == "__main__" or module.__name__.startswith("cantata."):
            continue  # __main__ is pickled by value already
        if not _installed(module) and module.__name__ in sys.modules:
            ray.cloudpickle.register_pickle_by_value(module)  # type: ignore[no-untyped-call]
