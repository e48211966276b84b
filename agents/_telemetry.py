"""Where agents report what they did: spans, load, refusals, routes and decisions.

Agents and topologies never import Ray or OpenTelemetry. They report events to a
:class:`Telemetry` object, and the runtime that hosts them installs real ones: Ray's metrics
(``cantata.cluster``) and, when configured, OpenTelemetry span export. The base class records
nothing, so in-process tests pay nothing. :class:`TelemetryGroup` sends each event to several
sinks and keeps a failing sink from failing the request it observes.

Each process reports only what happened in it: a model actor reports its model calls, the driver
(or a deployment's controller) reports the role steps and requests it ran. Spans from several
processes join into one trace through their trace and parent ids.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import structlog

from ._messages import Span
from ._roles import Decision, Route

__all__ = ["RefusalReason", "Telemetry", "TelemetryGroup"]

log = structlog.get_logger("cantata.telemetry")

RefusalReason = Literal["budget", "deadline", "invalid", "overload"]
"""Why a request was turned away before any model ran for it."""


class Telemetry:
    """Receives what agents did. Every method is a cheap no-op here and must never raise."""

    def span_ended(self, span: Span) -> None:
        """A span created in this process has ended (a model call or a role agent's step)."""

    def model_load(self, model: str, version: str, *, in_flight: int, queued: int) -> None:
        """A model replica's calls running now and calls waiting for a free slot."""

    def refused(self, where: str, reason: RefusalReason, *, model: str = "") -> None:
        """A request was refused before it ran: by model ``model``'s actor or by ``where``."""

    def request_ended(
        self, topology: str, pattern: str, *, latency_s: float, error_type: str | None
    ) -> None:
        """A whole request through ``topology`` finished (``error_type`` None when answered)."""

    def routed(self, router: str, route: Route) -> None:
        """Router ``router`` chose ``route``."""

    def decided(self, topology: str, pattern: str, decision: Decision) -> None:
        """A vote, consensus or weighted ensemble decided (agreement, escalation)."""

    def flush(self) -> None:
        """Send what is buffered (before the process ends)."""


class TelemetryGroup(Telemetry):
    """Sends every event to each sink in turn; a sink that raises is logged and skipped."""

    def __init__(self, sinks: Iterable[Telemetry]) -> None:
        self.sinks = tuple(sinks)
        self._warned: set[str] = set()

    def _each(self, event: str, *args: object, **kwargs: object) -> None:
        for sink in self.sinks:
            try:
                getattr(sink, event)(*args, **kwargs)
            except Exception as exc:  # observing a request must never fail it
                key = f"{type(sink).__name__}.{event}"
                if key not in self._warned:
                    self._warned.add(key)
                    log.warning("telemetry sink failed", sink=key, error=type(exc).__name__)

    def span_ended(self, span: Span) -> None:
        self._each("span_ended", span)

    def model_load(self, model: str, version: str, *, in_flight: int, queued: int) -> None:
        self._each("model_load", model, version, in_flight=in_flight, queued=queued)

    def refused(self, where: str, reason: RefusalReason, *, model: str = "") -> None:
        self._each("refused", where, reason, model=model)

    def request_ended(
        self, topology: str, pattern: str, *, latency_s: float, error_type: str | None
    ) -> None:
        self._each("request_ended", topology, pattern, latency_s=latency_s, error_type=error_type)

    def routed(self, router: str, route: Route) -> None:
        self._each("routed", router, route)

    def decided(self, topology: str, pattern: str, decision: Decision) -> None:
        self._each("decided", topology, pattern, decision)

    def flush(self) -> None:
        self._each("flush")
