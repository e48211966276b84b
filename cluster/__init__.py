"""Where topologies run: Ray connection, model actors on Ray, reservations, deployments, the CLI."""

from ._connection import RayConnection, connect, current_identity
from ._controller import DeploymentController
from ._deployment import Deployment, deploy, get_deployment, list_deployments
from ._hosting import alive_node_totals
from ._ledger import CostBy, CostLedger, CostReport, CostRow
from ._metrics import SERIES, RayMetrics
from ._observability import Observability
from ._otel import OtlpConfig, OtlpConfigError, OtlpSpanSink, otel_available
from ._ray_actor import RayAgentHandle, RayModelActor, RayModelHandle, ray_hosted
from ._ray_runtime import RayRuntime
from ._replicas import Replica, ReplicaSet
from ._reservations import actor_options, check_feasible, placement_bundle
from ._spending import SpendingGuard
from ._status import (
    AgentStatus,
    DeploymentStatus,
    ModelStatus,
    ReplicaStatus,
    ScalingDecision,
    SpendStatus,
)

__all__ = [
    "SERIES",
    "AgentStatus",
    "CostBy",
    "CostLedger",
    "CostReport",
    "CostRow",
    "Deployment",
    "DeploymentController",
    "DeploymentStatus",
    "ModelStatus",
    "Observability",
    "OtlpConfig",
    "OtlpConfigError",
    "OtlpSpanSink",
    "RayAgentHandle",
    "RayConnection",
    "RayMetrics",
    "RayModelActor",
    "RayModelHandle",
    "RayRuntime",
    "Replica",
    "ReplicaSet",
    "ReplicaStatus",
    "ScalingDecision",
    "SpendStatus",
    "SpendingGuard",
    "actor_options",
    "alive_node_totals",
    "check_feasible",
    "connect",
    "current_identity",
    "deploy",
    "get_deployment",
    "list_deployments",
    "otel_available",
    "placement_bundle",
    "ray_hosted",
]
