"""Turn typed :class:`~cantata.agents.Resources` into Ray's scheduling terms, and check them.

Ray leaves an actor whose reservation no node can hold pending forever; :func:`check_feasible`
turns that into an immediate :class:`~cantata.agents.UnschedulableError` naming what is missing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from cantata.agents import Resources, UnschedulableError

__all__ = ["actor_options", "check_feasible", "placement_bundle"]


def actor_options(resources: Resources) -> dict[str, Any]:
    """Keyword arguments for ``ActorClass.options(...)`` that reserve ``resources``."""
    options: dict[str, Any] = {"num_cpus": resources.num_cpus, "num_gpus": resources.num_gpus}
    if resources.memory:
        options["memory"] = resources.memory
    if resources.custom:
        options["resources"] = dict(resources.custom)
    if resources.accelerator_type:
        options["accelerator_type"] = resources.accelerator_type
    return options


def placement_bundle(resources: Resources) -> dict[str, float]:
    """One placement-group bundle holding ``resources`` (Ray's resource names)."""
    return resources.demand()


def check_feasible(
    name: str, resources: Resources, node_totals: Iterable[Mapping[str, float]]
) -> None:
    """Raise :class:`UnschedulableError` unless some node's total resources can hold ``resources``.

    ``node_totals`` are the alive nodes' total (not currently free) resources, so a reservation
    that only has to wait for others to finish passes.
    """
    demand = resources.demand()
    nodes = list(node_totals)
    best_shortfall: dict[str, float] | None = None
    best_score = float("inf")
    for totals in nodes:
        shortfall = {
            key: amount - totals.get(key, 0.0)
            for key, amount in demand.items()
            if totals.get(key, 0.0) + 1e-9 < amount
        }
        if not shortfall:
            return
        # The closest node (fewest missing, then least missing relative to the demand) names
        # what to add; ties keep the first node, so the message is deterministic.
        score = len(shortfall) + sum(gap / demand[key] for key, gap in shortfall.items()) / 2
        if score < best_score:
            best_shortfall, best_score = shortfall, score
    missing = best_shortfall if best_shortfall is not None else dict(demand)
    largest = {key: max((totals.get(key, 0.0) for totals in nodes), default=0.0) for key in missing}
    detail = ", ".join(
        f"{key}: needs {demand[key]:g}, largest node has {largest[key]:g}"
        for key in sorted(missing)
    )
    raise UnschedulableError(
        f"model '{name}' cannot be scheduled: no node in the cluster ({len(nodes)} alive) can hold"
        f" its reservation ({detail})",
        missing={key: demand[key] for key in missing},
    )
