"""Where topologies run: Ray connection, model actors on Ray, reservations, deployments, the CLI."""

from ._connection import RayConnection, connect
from ._controller import DeploymentController
from ._deployment import Deployment, deploy, get_deployment, list_deployments
from ._ray_actor import RayModelActor, RayModelHandle, ray_hosted
from ._ray_runtime import RayRuntime, alive_node_totals
from ._replicas import Replica, ReplicaSet
from ._reservations import actor_options, check_feasible, placement_bundle
from ._status import DeploymentStatus, ModelStatus, ReplicaStatus

__all__ = [
    "Deployment",
    "DeploymentController",
    "DeploymentStatus",
    "ModelStatus",
    "RayConnection",
    "RayModelActor",
    "RayModelHandle",
    "RayRuntime",
    "Replica",
    "ReplicaSet",
    "ReplicaStatus",
    "actor_options",
    "alive_node_totals",
    "check_feasible",
    "connect",
    "deploy",
    "get_deployment",
    "list_deployments",
    "placement_bundle",
    "ray_hosted",
]
