"""What ``cantata status`` reports about deployments, as typed data."""

from __future__ import annotations

from cantata.agents import Frozen, Resources

__all__ = ["DeploymentStatus", "ModelStatus", "ReplicaStatus", "SpendStatus"]


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


class SpendStatus(Frozen):
    """What a deployment is spending, against its budget and alert threshold.

    ``last_hour_usd`` is the trailing hour's token cost plus reserved capacity;
    ``rate_usd_per_hour`` the spend rate the alert watches: the reserved capacity held now,
    plus the token cost of the last five minutes, per hour; ``top_models`` and ``top_routes``
    name who spent most in those five minutes.
    """

    last_hour_usd: float
    last_hour_token_usd: float
    rate_usd_per_hour: float
    budget_usd_per_hour: float | None
    alert_usd_per_hour: float | None
    alerting: bool
    refused_last_hour: int
    top_models: dict[str, float]
    top_routes: dict[str, float]


class DeploymentStatus(Frozen):
    """One deployment: its name, its topology, every model's replicas, and its spending."""

    name: str
    topology: str
    pattern: str
    models: tuple[ModelStatus, ...]
    spend: SpendStatus | None = None
