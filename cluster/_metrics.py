"""Cantata's metrics, recorded through Ray's own metrics system.

Each process records what it did with ``ray.util.metrics``; Ray's metrics agent on every node
serves the series to Prometheus, named with Ray's ``ray_`` prefix and, for counters, a
``_total`` suffix. The agent listens on 127.0.0.1 only when the node's address is exactly
127.0.0.1 (or localhost); on any other address, 127.0.0.2 included, it listens on every
interface, so firewall the metrics port. :data:`SERIES` lists every series
as Prometheus sees it; the Grafana dashboard in ``docs/grafana/cantata.json`` is written against
that list, and a test checks that every panel query names one of them.

Labels are bounded: deployment, topology, pattern, model, version, node, route labels, error
type names. Never the request text, a trace id or anything a model wrote.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

import ray
from ray.util import metrics

from cantata.agents import Decision, RefusalReason, Route, Span, Telemetry

__all__ = [
    "SERIES",
    "RayMetrics",
    "record_scaling_decision",
    "set_replica_count",
    "set_reservation_rate",
]

LATENCY_BOUNDARIES_S = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
]  # fmt: skip
AGREEMENT_BOUNDARIES = [0.2, 0.34, 0.5, 0.67, 0.75, 0.9, 0.999]

_MODEL = ("deployment", "topology", "model", "version", "node")

# name -> (kind, description, tag keys); Ray exports each as ``ray_<name>`` (+ ``_total``).
_DEFINITIONS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "cantata_model_calls": (
        "counter",
        "Model calls by outcome; error_type names the Cantata error of failed ones.",
        (*_MODEL, "status", "error_type"),
    ),
    "cantata_model_latency_seconds": (
        "histogram",
        "Latency of one model call, from a free slot to the reply.",
        _MODEL,
    ),
    "cantata_model_input_tokens": ("counter", "Input (prompt) tokens consumed.", _MODEL),
    "cantata_model_output_tokens": ("counter", "Output (generated) tokens produced.", _MODEL),
    "cantata_model_cost_usd": ("counter", "Token cost of model calls, US dollars.", _MODEL),
    "cantata_model_in_flight": ("gauge", "Calls a replica is running now.", _MODEL),
    "cantata_model_queued": ("gauge", "Calls waiting for a free slot in a replica.", _MODEL),
    "cantata_model_reservation_usd_per_hour": (
        "gauge",
        "What a deployed model's reserved replicas cost per hour (pricing.per_hour x replicas).",
        ("deployment", "topology", "model", "version"),
    ),
    "cantata_refusals": (
        "counter",
        "Requests refused before running: over budget, past their deadline, or invalid.",
        ("deployment", "topology", "where", "model", "reason"),
    ),
    "cantata_requests": (
        "counter",
        "Whole requests through a topology, by outcome.",
        ("deployment", "topology", "pattern", "status", "error_type"),
    ),
    "cantata_request_latency_seconds": (
        "histogram",
        "Latency of a whole request through a topology.",
        ("deployment", "topology", "pattern"),
    ),
    "cantata_route_decisions": (
        "counter",
        "Router decisions by label and target; defaulted=true when the default route took it.",
        ("deployment", "topology", "router", "label", "target", "defaulted"),
    ),
    "cantata_decisions": (
        "counter",
        "Vote, consensus and ensemble decisions; escalated=true when the strong member answered.",
        ("deployment", "topology", "decider", "pattern", "escalated"),
    ),
    "cantata_vote_agreement": (
        "histogram",
        "The winning answer's share of the votes in a decision.",
        ("deployment", "topology", "decider", "pattern"),
    ),
    "cantata_replicas": (
        "gauge",
        "Replicas of a deployed model (kind=model) or agent actor (agent, coordinator).",
        ("deployment", "topology", "target", "kind"),
    ),
    "cantata_autoscaling_decisions": (
        "counter",
        "Autoscaling decisions; outcome=refused when the new replicas could not be reserved.",
        ("deployment", "topology", "target", "kind", "direction", "outcome"),
    ),
}


def _exported(name: str, kind: str) -> tuple[str, ...]:
    prefixed = f"ray_{name}"
    if kind == "counter":
        return (f"{prefixed}_total",)
    if kind == "histogram":
        return (f"{prefixed}_bucket", f"{prefixed}_count", f"{prefixed}_sum")
    return (prefixed,)


SERIES: tuple[str, ...] = tuple(
    series for name, (kind, _, _) in _DEFINITIONS.items() for series in _exported(name, kind)
)
"""Every Prometheus series Cantata exports, as Ray's metrics agent names them."""

_created: dict[str, Any] = {}


def _metric(name: str) -> Any:
    # One metric object per process and name: Ray registers each name once per process.
    if name not in _created:
        kind, description, tags = _DEFINITIONS[name]
        if kind == "counter":
            _created[name] = metrics.Counter(name, description=description, tag_keys=tags)
        elif kind == "gauge":
            _created[name] = metrics.Gauge(name, description=description, tag_keys=tags)
        else:
            boundaries: Sequence[float] = (
                AGREEMENT_BOUNDARIES if name == "cantata_vote_agreement" else LATENCY_BOUNDARIES_S
            )
            _created[name] = metrics.Histogram(
                name, description=description, boundaries=list(boundaries), tag_keys=tags
            )
    return _created[name]


class _GaugeKeeper:
    """Holds every gauge's latest value and reports them all, twice per Ray report interval.

    Ray's agent drops a gauge that was not reported for two report intervals, so a replica
    that sits idle, or a reservation that does not change, would vanish from Prometheus if it
    were reported only when it changed. And reporting on every change is wasted work on the
    request path: Ray exports once per interval anyway. So :meth:`set` only notes the value,
    and one daemon thread per process reports every gauge's latest value.
    """

    def __init__(self) -> None:
        self._values: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def set(self, name: str, value: float, tags: tuple[tuple[str, str], ...]) -> None:
        """Note ``value`` as the gauge's latest, for the series ``tags`` (pairs, in order)."""
        self._values[(name, tags)] = value  # one dict store: atomic under the GIL
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._report_forever, name="cantata-gauges", daemon=True
                    )
                    self._thread.start()

    def report(self) -> None:
        """Report every gauge's latest value to Ray now."""
        for (name, tags), value in list(self._values.items()):
            _metric(name).set(value, tags=dict(tags))

    def _report_forever(self) -> None:
        interval_s = max(ray._config.metrics_report_interval_ms(), 1000) / 2000
        while True:
            self.report()
            time.sleep(interval_s)


_gauges = _GaugeKeeper()


def _label(value: str | None) -> str:
    # Prometheus treats an empty label as an absent one; a dash keeps the series queryable.
    return value or "-"


class RayMetrics(Telemetry):
    """Records telemetry events as Ray metrics, labelled with this process's deployment.

    ``deployment`` is the deployment's name ("-" for a one-off ``cantata run``), ``topology``
    the top-level topology's name and ``node`` the Ray node id of this process.
    """

    def __init__(self, *, deployment: str, topology: str, node: str | None) -> None:
        self.scope = {"deployment": _label(deployment), "topology": _label(topology)}
        self.node = _label(node)
        self._tags: dict[tuple[str, str], dict[str, str]] = {}

    def _model_tags(self, model: str, version: str) -> dict[str, str]:
        # Built once per model: these run on every model call.
        tags = self._tags.get((model, version))
        if tags is None:
            tags = {**self.scope, "model": model, "version": version, "node": self.node}
            self._tags[(model, version)] = tags
        return tags

    def span_ended(self, span: Span) -> None:
        if span.model is None:
            return  # role steps are traced, not metered; requests are metered whole
        tags = self._model_tags(span.agent, span.model_version or "-")
        _metric("cantata_model_calls").inc(
            1.0, tags={**tags, "status": span.status, "error_type": _label(span.error_type)}
        )
        _metric("cantata_model_latency_seconds").observe(span.latency_ms / 1000, tags=tags)
        if span.input_tokens:
            _metric("cantata_model_input_tokens").inc(float(span.input_tokens), tags=tags)
        if span.output_tokens:
            _metric("cantata_model_output_tokens").inc(float(span.output_tokens), tags=tags)
        if span.cost_usd:
            _metric("cantata_model_cost_usd").inc(span.cost_usd, tags=tags)

    def model_load(self, model: str, version: str, *, in_flight: int, queued: int) -> None:
        key = tuple(self._model_tags(model, version).items())
        _gauges.set("cantata_model_in_flight", float(in_flight), key)
        _gauges.set("cantata_model_queued", float(queued), key)

    def refused(self, where: str, reason: RefusalReason, *, model: str = "") -> None:
        _metric("cantata_refusals").inc(
            1.0, tags={**self.scope, "where": where, "model": _label(model), "reason": reason}
        )

    def request_ended(
        self, topology: str, pattern: str, *, latency_s: float, error_type: str | None
    ) -> None:
        tags = {**self.scope, "topology": topology, "pattern": pattern}
        status = "ok" if error_type is None else "error"
        _metric("cantata_requests").inc(
            1.0, tags={**tags, "status": status, "error_type": _label(error_type)}
        )
        _metric("cantata_request_latency_seconds").observe(latency_s, tags=tags)

    def routed(self, router: str, route: Route) -> None:
        _metric("cantata_route_decisions").inc(
            1.0,
            tags={
                **self.scope,
                "router": router,
                "label": route.label,
                "target": route.target,
                "defaulted": "true" if route.defaulted else "false",
            },
        )

    def decided(self, topology: str, pattern: str, decision: Decision) -> None:
        tags = {**self.scope, "decider": topology, "pattern": pattern}
        _metric("cantata_decisions").inc(
            1.0, tags={**tags, "escalated": "true" if decision.escalated else "false"}
        )
        _metric("cantata_vote_agreement").observe(decision.agreement, tags=tags)


def set_reservation_rate(
    *, deployment: str, topology: str, model: str, version: str, usd_per_hour: float
) -> None:
    """Publish what a deployed model's reservation costs per hour (its replicas together)."""
    _gauges.set(
        "cantata_model_reservation_usd_per_hour",
        usd_per_hour,
        (
            ("deployment", _label(deployment)),
            ("topology", _label(topology)),
            ("model", model),
            ("version", version),
        ),
    )


def set_replica_count(
    *, deployment: str, topology: str, target: str, kind: str, count: int
) -> None:
    """Publish how many replicas a deployed model or agent actor has."""
    _gauges.set(
        "cantata_replicas",
        float(count),
        (
            ("deployment", _label(deployment)),
            ("topology", _label(topology)),
            ("target", target),
            ("kind", kind),
        ),
    )


def record_scaling_decision(
    *, deployment: str, topology: str, target: str, kind: str, direction: str, outcome: str
) -> None:
    """Count one autoscaling decision."""
    _metric("cantata_autoscaling_decisions").inc(
        1.0,
        tags={
            "deployment": _label(deployment),
            "topology": _label(topology),
            "target": target,
            "kind": kind,
            "direction": direction,
            "outcome": outcome,
        },
    )
