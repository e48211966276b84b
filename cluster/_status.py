"""What ``cantata status`` reports about deployments, as typed data."""

from __future__ import annotations

from cantata.agents import Frozen, Resources

__all__ = ["DeploymentStatus", "ModelStatus", "ReplicaStatus"]


class ReplicaStatus(Frozen):
    """One replica: where it runs, whether it answers, and its load."""

    actor_id: str
    node_id: str | None
    healthy: bool
    in_flight: int
    served: int
    detail: str = ""


class ModelStatus(Frozen):
    """One model of a deployment and its replicas."""

    name: str
    version: str
    resources: Resources
    replicas: tuple[ReplicaStatus, ...]


class DeploymentStatus(Frozen):
    """One deployment: its name, its topology, and every model's replicas."""

    name: str
    topology: str
    pattern: str
    models: tuple[ModelStatus, ...]
