"""Where topologies run: Ray connection, model actors on Ray, reservations, the CLI."""

from ._connection import RayConnection, connect
from ._ray_actor import RayModelActor, RayModelHandle, ray_hosted
from ._ray_runtime import RayRuntime, alive_node_totals
from ._reservations import actor_options, check_feasible, placement_bundle

__all__ = [
    "RayConnection",
    "RayModelActor",
    "RayModelHandle",
    "RayRuntime",
    "actor_options",
    "alive_node_totals",
    "check_feasible",
    "connect",
    "placement_bundle",
    "ray_hosted",
]
