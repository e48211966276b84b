"""What ``cantata status`` reports about deployments, as typed data."""

from __future__ import annotations

from typing import Literal

from cantata.agents import Autoscaling, Frozen, Resources

__all__ = [
    "AgentStatus",
    "DeploymentStatus",
    "ModelStatus",
    "ReplicaStatus",
    "ScalingDecision",
    "SpendStatus",
]


class ReplicaStatus(Frozen):
    """One replica (of a model, or an agent actor): where it runs, whether it answers, its load.

    ``in_flight``, ``queued`` and ``refused`` are counted by the replica itself: calls running,
    calls waiting for one of its concurrency slots, and calls turned away before they ran
    (beyond its queue, late, over budget or invalid); ``batched``, the calls that arrived
    together with others in one Ray call (those a caller made in the same event-loop turn).
    """

    actor_id: str
    node_id: str | None
    pid: int | None = None
    healthy: bool
    in_flight: int
    queued: int = 0
    served: int
    refused: int = 0
    batched: int = 0
    detail: str = ""


class ModelStatus(Frozen):
    """One model of a deployment, its reservation per replica, and its replicas."""

    name: str
    version: str
    resources: Resources
    replicas: tuple[ReplicaStatus, ...]
    autoscaling: Autoscaling | None = None


class AgentStatus(Frozen):
    """An agent actor's replicas: the deployment's coordinators, or a hosted node's actors."""

    name: str
    role: Literal["coordinator", "agent"]
    resources: Resources
    replicas: tuple[ReplicaStatus, ...]
    autoscaling: Autoscaling | None = None


class ScalingDecision(Frozen):
    """One autoscaling decision: what was measured, what was wanted, and what happened.

    ``outcome`` is ``scaled`` when the replicas changed, ``refused`` when the new replicas
    could not be reserved (``detail`` says why).
    """

    at: float
    target: str
    kind: Literal["model", "agent", "coordinator"]
    load: float
    replicas_before: int
    replicas_after: int
    outcome: Literal["scaled", "refused"]
    detail: str = ""


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
    """One deployment: its topology, every model's and agent actor's replicas, the latest
    autoscaling decisions (newest last), and its spending."""

    name: str
    topology: str
    pattern: str
    models: tuple[ModelStatus, ...]
    agents: tuple[AgentStatus, ...] = ()
    scaling: tuple[ScalingDecision, ...] = ()
    spend: SpendStatus | None = None
