"""What every process Cantata hosts reports, and under which labels.

:class:`Observability` is decided once, on the driver (``cantata run``) or at deploy time, and
travels to every actor with its spec, like :class:`~cantata.agents.LogConfig`: the OpenTelemetry
exporter settings are read from the driver's environment, so actors on other nodes need no
environment of their own. Each process then builds its own :class:`~cantata.agents.Telemetry`
from it: Ray metrics, and span export when an OTLP endpoint is configured.
"""

from __future__ import annotations

import structlog
from pydantic import Field

from cantata.agents import CantataError, Frozen, Telemetry, TelemetryGroup

from ._connection import current_identity
from ._metrics import RayMetrics
from ._otel import OtlpConfig, OtlpSpanSink

__all__ = ["Observability"]

log = structlog.get_logger("cantata.telemetry")


class Observability(Frozen):
    """Labels and exporters for the telemetry of one run or deployment."""

    deployment: str = Field(default="", description="The deployment's name; empty for a run.")
    topology: str = Field(default="", description="The top-level topology's name.")
    metrics: bool = Field(default=True, description="Record Ray metrics (Prometheus).")
    otlp: OtlpConfig | None = Field(
        default=None, description="Export spans over OTLP/HTTP; None exports nothing."
    )

    @classmethod
    def from_env(cls, *, topology: str, deployment: str = "") -> Observability:
        """Labels for ``topology``, with the OTLP exporter the environment configures."""
        return cls(deployment=deployment, topology=topology, otlp=OtlpConfig.from_env())

    def telemetry(self, role: str) -> Telemetry:
        """This process's telemetry: ``role`` is ``driver``, ``controller``, ``coordinator``,
        ``agent`` or ``model``.

        Needs a connected Ray (it reads this process's node and actor ids).
        """
        where = current_identity()
        node_id, actor_id = where.node_id, where.actor_id
        sinks: list[Telemetry] = []
        if self.metrics:
            sinks.append(
                RayMetrics(deployment=self.deployment, topology=self.topology, node=node_id)
            )
        if self.otlp is not None:
            resource = {
                "cantata.role": role,
                "cantata.deployment": self.deployment,
                "cantata.topology": self.topology,
                "cantata.node_id": node_id or "",
                "cantata.actor_id": actor_id or "",
            }
            try:
                sinks.append(OtlpSpanSink(self.otlp, resource=resource))
            except CantataError as exc:
                # Tracing is optional: a missing exporter package must not stop the models.
                log.warning("span export is off", reason=str(exc))
        return TelemetryGroup(sinks)
