"""How a model or an agent actor scales, and where an agent is hosted: typed, validated data."""

from __future__ import annotations

from pydantic import Field, PositiveFloat, PositiveInt, model_validator

from ._messages import Frozen
from ._resources import Resources

__all__ = ["Autoscaling", "Cooldown", "Host"]


class Cooldown(Frozen):
    """A circuit breaker per replica, kept by each process that calls it.

    After ``after_failures`` calls in a row fail for the replica's own reasons (its actor
    died, its endpoint is unreachable, too slow, erroring or rate limiting, its answers are
    broken), the replica gets no calls for ``cooldown_s``: traffic moves to the model's other
    replicas, or, when every replica is cooling down, to the model's ``fallback``
    (:class:`~cantata.agents.CircuitOpenError` without one). After the cooldown one call tries
    it again: a success closes the breaker; a failure opens it for twice as long as the last
    time, up to ``max_cooldown_s`` (backoff, so a dead replica costs few calls).
    """

    after_failures: PositiveInt = 5
    cooldown_s: PositiveFloat = 30.0
    max_cooldown_s: PositiveFloat = 300.0

    def duration(self, openings: int) -> float:
        """Seconds of the ``openings``-th cooldown in a row (1-based)."""
        return float(min(self.max_cooldown_s, self.cooldown_s * 2 ** max(openings - 1, 0)))


class Autoscaling(Frozen):
    """An autoscaling policy, in the spirit of Ray Serve's, acting on measured load.

    A replica's load is its calls in flight plus those queued at it, as the replica itself
    counts them. The wanted replica count is the total load over ``target_in_flight``, rounded
    up, within ``min_replicas`` and ``max_replicas``. A wish to grow must hold for
    ``upscale_delay_s`` and a wish to shrink for ``downscale_delay_s`` before replicas are
    added (reserved all at once, or not at all, with the reason recorded) or drained and
    removed. Every decision is counted in metrics and kept in ``cantata status``.
    """

    min_replicas: PositiveInt = 1
    max_replicas: PositiveInt = 4
    target_in_flight: PositiveFloat = Field(
        default=2.0, description="Calls in flight plus queued per replica the policy aims for."
    )
    upscale_delay_s: float = Field(default=2.0, ge=0)
    downscale_delay_s: float = Field(default=30.0, ge=0)

    @model_validator(mode="after")
    def _bounds(self) -> Autoscaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"min_replicas {self.min_replicas} exceeds max_replicas {self.max_replicas}"
            )
        return self

    def wanted(self, load: float) -> int:
        """The replica count for a total ``load`` (calls in flight plus queued)."""
        needed = -(-load // self.target_in_flight) if load > 0 else 0
        return int(min(self.max_replicas, max(self.min_replicas, needed)))


class Host(Frozen):
    """Where an agent or nested topology runs.

    By default (``actor: false``) it runs inline, in its parent's process: no hop, the fast
    path. With ``actor: true`` it runs as its own Ray actor with its own ``resources`` (custom
    resources pin it to the nodes that declare them), ``replicas`` balanced by load and an
    optional ``autoscaling`` policy; its parent sends it the same typed messages across the
    cluster. Outside Ray (the in-process runtime) every node runs inline.
    """

    actor: bool = False
    resources: Resources = Field(default_factory=lambda: Resources(num_cpus=0))
    replicas: PositiveInt = 1
    autoscaling: Autoscaling | None = None
    max_in_flight: PositiveInt = Field(
        default=256,
        description="Tasks one actor holds at once; beyond them tasks are refused at once"
        " with OverloadedError.",
    )
