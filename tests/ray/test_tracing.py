"""OpenTelemetry export end to end: a nested topology on Ray, spans to a real OTLP receiver."""

from __future__ import annotations

import asyncio

import pytest

from cantata.agents import FunctionConfig, ModelRequest, ModelSpec, Resources
from cantata.cluster import Observability, RayRuntime
from cantata.cluster._connection import current_identity
from cantata.topologies import ConsensusSpec, Label, ModelClassifier, RouterSpec, run_topology
from tests.support.otlp_receiver import OtlpReceiver

pytestmark = pytest.mark.ray


def model(name: str, answer: str) -> ModelSpec:
    def reply(request: ModelRequest) -> str:
        return answer

    return ModelSpec(
        name=name, backend=FunctionConfig(fn=reply), resources=Resources(num_cpus=0.05)
    )


def nested_router() -> RouterSpec:
    """A router whose only desk is a consensus of three members (a topology inside another)."""
    return RouterSpec(
        name="traced-router",
        classifier=ModelClassifier(
            model=model("traced-clf", '{"label": "billing", "confidence": 1.0}'),
            labels={"billing": Label(description="money")},
        ),
        routes={
            "billing": ConsensusSpec(
                name="traced-desk",
                members=[model(f"traced-{i}", "refund") for i in range(3)],
                escalate_to=model("traced-strong", "refund"),
            )
        },
        default="billing",
    )


def test_a_nested_request_arrives_as_one_trace_from_several_processes(ray_cluster, monkeypatch):
    with OtlpReceiver() as receiver:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.base_url)
        spec = nested_router()
        observability = Observability.from_env(topology=spec.name)
        assert observability.otlp is not None
        driver = observability.telemetry("driver")
        runtime = RayRuntime(observability=observability)
        result = asyncio.run(
            run_topology(spec, "charged twice", runtime, telemetry=driver, where=current_identity())
        )
        driver.flush()  # the model actors flushed when the runtime closed them

        # OTLP span ids are 64 bits: the first 16 hex digits of Cantata's.
        expected = {span.span_id[:16]: span for span in result.trace}
        spans = receiver.wait_for(lambda got: expected.keys() <= {s.span_id for s in got})

    # Every span says where it ran: the driver's node for role steps, the actor's for models.
    assert all(span.node_id for span in result.trace)
    received = {span.span_id: span for span in spans if span.span_id in expected}
    assert {span.trace_id for span in received.values()} == {result.trace_id}
    for span_id, span in received.items():
        parent = expected[span_id].parent_id
        assert span.parent_span_id == (parent[:16] if parent else None)
    model_spans = [span for span in received.values() if span.attributes.get("cantata.model")]
    assert {span.attributes["cantata.agent"] for span in model_spans} >= {"traced-clf", "traced-0"}
    processes = {span.resource["process.pid"] for span in received.values()}
    assert len(processes) > 1  # the driver's steps and each model actor's calls
    roles = {span.resource["cantata.role"] for span in received.values()}
    assert roles == {"driver", "model"}
