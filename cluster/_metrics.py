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


Tags = tuple[tuple[str, str], ...]


class _Recorder:
    """Notes metric events on the request path; one daemon thread hands them to Ray.

    A ``ray.util.metrics`` record checks and merges its tags in Python, a few microseconds
    each, and a model call made four of them: about a fifth of a replica's own work per call
    under load, spent on the event loop that should be answering. Ray exports once per
    report interval anyway, so the request path only notes the event here: counters add up
    per series, histogram observations queue, gauges keep their latest value. A thread reports
    them twice per interval, and :meth:`report` runs at once when a process flushes (an actor
    closing). Gauges are reported every time, changed or not: Ray's agent drops a gauge not
    reported for two intervals, and an idle replica must not vanish from Prometheus.
    """

    def __init__(self) -> None:
        self._gauges: dict[tuple[str, Tags], float] = {}
        self._counts: dict[tuple[str, Tags], float] = {}
        self._observed: list[tuple[str, float, Tags]] = []
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def set(self, name: str, value: float, tags: Tags) -> None:
        """Note ``value`` as the gauge's latest, for the series ``tags`` (pairs, in order)."""
        self._gauges[(name, tags)] = value  # one dict store: atomic under the GIL
        self._started()

    def count(self, name: str, value: float, tags: Tags) -> None:
        """Add ``value`` to a counter's series."""
        key = (name, tags)
        with self._lock:  # += is a read and a write: not atomic against the report's swap
            self._counts[key] = self._counts.get(key, 0.0) + value
        self._started()

    def observe(self, name: str, value: float, tags: Tags) -> None:
        """Queue an observation for a histogram's series."""
        self._observed.append((name, value, tags))  # atomic under the GIL
        self._started()

    def _started(self) -> None:
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._report_forever, name="cantata-metrics", daemon=True
                    )
                    self._thread.start()

    def report(self) -> None:
        """Hand Ray everything noted so far, and every gauge's latest value."""
        with self._lock:
            counts, self._counts = self._counts, {}
            observed, self._observed = self._observed, []
        for (name, tags), total in counts.items():
            _metric(name).inc(total, tags=dict(tags))
        for name, value, tags in observed:
            _metric(name).observe(value, tags=dict(tags))
        for (name, tags), value in list(self._gauges.items()):
            _metric(name).set(value, tags=dict(tags))

    def _report_forever(self) -> None:
        interval_s = max(ray._config.metrics_report_interval_ms(), 1000) / 2000
        while True:
            self.report()
            time.sleep(interval_s)


_recorder = _Recorder()


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
        self._tags: dict[tuple[str, str], Tags] = {}

    def _model_tags(self, model: str, version: str) -> Tags:
        # Built once per model: these run on every model call.
        tags = self._tags.get((model, version))
        if tags is None:
            tags = _pairs({**self.scope, "model": model, "version": version, "node": self.node})
            self._tags[(model, version)] = tags
        return tags

    def span_ended(self, span: Span) -> None:
        if span.model is None:
            return  # role steps are traced, not metered; requests are metered whole
        tags = self._model_tags(span.agent, span.model_version or "-")
        outcome = (("status", span.status), ("error_type", _label(span.error_type)))
        _recorder.count("cantata_model_calls", 1.0, (*tags, *outcome))
        _recorder.observe("cantata_model_latency_seconds", span.latency_ms / 1000, tags)
        if span.input_tokens:
            _recorder.count("cantata_model_input_tokens", float(span.input_tokens), tags)
        if span.output_tokens:
            _recorder.count("cantata_model_output_tokens", float(span.output_tokens), tags)
        if span.cost_usd:
            _recorder.count("cantata_model_cost_usd", span.cost_usd, tags)

    def model_load(self, model: str, version: str, *, in_flight: int, queued: int) -> None:
        tags = self._model_tags(model, version)
        _recorder.set("cantata_model_in_flight", float(in_flight), tags)
        _recorder.set("cantata_model_queued", float(queued), tags)

    def refused(self, where: str, reason: RefusalReason, *, model: str = "") -> None:
        tags = {**self.scope, "where": where, "model": _label(model), "reason": reason}
        _recorder.count("cantata_refusals", 1.0, _pairs(tags))

    def request_ended(
        self, topology: str, pattern: str, *, latency_s: float, error_type: str | None
    ) -> None:
        tags = {**self.scope, "topology": topology, "pattern": pattern}
        status = "ok" if error_type is None else "error"
        outcome = {"status": status, "error_type": _label(error_type)}
        _recorder.count("cantata_requests", 1.0, _pairs({**tags, **outcome}))
        _recorder.observe("cantata_request_latency_seconds", latency_s, _pairs(tags))

    def routed(self, router: str, route: Route) -> None:
        tags = {
            **self.scope,
            "router": router,
            "label": route.label,
            "target": route.target,
            "defaulted": "true" if route.defaulted else "false",
        }
        _recorder.count("cantata_route_decisions", 1.0, _pairs(tags))

    def decided(self, topology: str, pattern: str, decision: Decision) -> None:
        tags = {**self.scope, "decider": topology, "pattern": pattern}
        escalated = {"escalated": "true" if decision.escalated else "false"}
        _recorder.count("cantata_decisions", 1.0, _pairs({**tags, **escalated}))
        _recorder.observe("cantata_vote_agreement", decision.agreement, _pairs(tags))

    def flush(self) -> None:
        """Hand Ray what this process has noted (an actor about to close)."""
        _recorder.report()


def _pairs(tags: dict[str, str]) -> Tags:
    return tuple(tags.items())


def set_reservation_rate(
    *, deployment: str, topology: str, model: str, version: str, usd_per_hour: float
) -> None:
    """Publish what a deployed model's reservation costs per hour (its replicas together)."""
    _recorder.set(
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
    _recorder.set(
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
