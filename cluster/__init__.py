"""Where topologies run: Ray connection, model actors on Ray, reservations, deployments, the CLI."""

from ._connection import RayConnection, connect
from ._deployment import Deployment, deploy, get_deployment, list_deployments
from ._ledger import CostBy, CostReport, CostRow
from ._metrics import SERIES
from ._observability import Observability
from ._otel import OtlpConfig, OtlpConfigError, OtlpSpanSink, otel_available
from ._ray_actor import RayModelHandle
from ._ray_runtime import RayRuntime
from ._reservations import actor_options, check_feasible, placement_bundle
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
    "CostReport",
    "CostRow",
    "Deployment",
    "DeploymentStatus",
    "ModelStatus",
    "Observability",
    "OtlpConfig",
    "OtlpConfigError",
    "OtlpSpanSink",
    "RayConnection",
    "RayModelHandle",
    "RayRuntime",
    "ReplicaStatus",
    "ScalingDecision",
    "SpendStatus",
    "actor_options",
    "check_feasible",
    "connect",
    "deploy",
    "get_deployment",
    "list_deployments",
    "otel_available",
    "placement_bundle",
]
