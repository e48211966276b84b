"""Telemetry events from model actors and topologies, in-process: what is reported, and when."""

from __future__ import annotations

import asyncio
import time

import pytest
from structlog.testing import capture_logs

from cantata.agents import (
    BackendError,
    Budget,
    BudgetExhaustedError,
    DeadlineExceededError,
    Decision,
    FunctionConfig,
    ModelActor,
    ModelRequest,
    ModelSpec,
    Pricing,
    Route,
    Span,
    Telemetry,
    TelemetryGroup,
    merge_log_fields,
)
from cantata.agents.backends import Completion
from cantata.topologies import (
    ConsensusSpec,
    InProcessRuntime,
    Label,
    ModelClassifier,
    RouterSpec,
    SingleSpec,
    run_topology,
)


class Recorder(Telemetry):
    """Keeps every event, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []

    def span_ended(self, span: Span) -> None:
        self.events.append(("span", span))

    def model_load(self, model: str, version: str, *, in_flight: int, queued: int) -> None:
        self.events.append(("load", (model, in_flight, queued)))

    def refused(self, where: str, reason: str, *, model: str = "") -> None:
        self.events.append(("refused", (where, reason, model)))

    def request_ended(self, topology, pattern, *, latency_s, error_type) -> None:
        self.events.append(("request", (topology, pattern, error_type)))

    def routed(self, router: str, route: Route) -> None:
        self.events.append(("routed", (router, route.label, route.defaulted)))

    def decided(self, topology: str, pattern: str, decision: Decision) -> None:
        self.events.append(("decided", (topology, pattern, decision.escalated)))

    def of(self, kind: str) -> list[object]:
        return [payload for name, payload in self.events if name == kind]


def priced(name: str, fn, **fields) -> ModelSpec:
    return ModelSpec(
        name=name,
        version="v7",
        backend=FunctionConfig(fn=fn),
        pricing=Pricing(input_per_mtok=1_000_000, output_per_mtok=2_000_000),
        **fields,
    )


def fixed(text: str, tokens: tuple[int, int] = (3, 2)):
    def answer(request: ModelRequest) -> Completion:
        return Completion(text=text, usage={"input_tokens": tokens[0], "output_tokens": tokens[1]})

    return answer


async def test_a_model_call_reports_its_span_with_cost_and_its_load():
    actor = ModelActor(priced("m", fixed("hi")))
    actor.telemetry = recorder = Recorder()
    reply = await actor.complete(ModelRequest.from_prompt("hello"))
    (span,) = recorder.of("span")
    assert span == reply.span
    assert span.cost_usd == reply.cost_usd == 3 * 1.0 + 2 * 2.0
    assert span.model_version == "v7"
    assert span.status == "ok"
    # a free slot: running at once (nothing queued), then done
    assert recorder.of("load") == [("m", 1, 0), ("m", 0, 0)]


async def test_a_failed_call_ends_in_an_error_span_attached_to_the_error():
    def broken(request):
        raise RuntimeError("boom")

    actor = ModelActor(priced("m", broken))
    actor.telemetry = recorder = Recorder()
    with pytest.raises(BackendError) as caught:
        await actor.complete(ModelRequest.from_prompt("hello", parent_span_id="p" * 32))
    (span,) = recorder.of("span")
    assert span.status == "error"
    assert span.error_type == "BackendError"
    assert "boom" in (span.error or "")
    assert span.parent_id == "p" * 32
    assert caught.value.span == span
    assert actor.failed == 1


async def test_calls_beyond_max_concurrency_wait_and_are_counted_as_queued():
    release = asyncio.Event()

    async def slow(request):
        await release.wait()
        return "done"

    actor = ModelActor(priced("m", slow, max_concurrency=1))
    actor.telemetry = recorder = Recorder()
    calls = [asyncio.create_task(actor.complete(ModelRequest.from_prompt("x"))) for _ in range(3)]
    for _ in range(20):
        await asyncio.sleep(0)
    assert (actor.in_flight, actor.queued) == (1, 2)
    release.set()
    await asyncio.gather(*calls)
    assert (actor.in_flight, actor.queued) == (0, 0)
    assert max(queued for _, _, queued in recorder.of("load")) == 2


async def test_a_call_whose_deadline_passes_in_the_queue_fails_without_running():
    release = asyncio.Event()
    ran: list[str] = []

    async def slow(request):
        ran.append(request.messages[-1].content)
        await release.wait()
        return "done"

    actor = ModelActor(priced("m", slow, max_concurrency=1))
    first = asyncio.create_task(actor.complete(ModelRequest.from_prompt("first")))
    await asyncio.sleep(0)
    # The first call holds the only slot until released, so this one's deadline passes in line.
    late = ModelRequest.from_prompt("late", deadline=time.time() + 1.0)
    with pytest.raises(DeadlineExceededError, match="waited for a free slot"):
        await actor.complete(late)
    release.set()
    await first
    assert ran == ["first"]


async def test_refusals_are_reported_with_their_reason():
    actor = ModelActor(priced("m", fixed("hi")))
    actor.telemetry = recorder = Recorder()
    with pytest.raises(BudgetExhaustedError):
        await actor.complete(ModelRequest.from_prompt("x", budget=Budget(cost_usd=0.0)))
    assert recorder.of("refused") == [("m", "budget", "m")]


async def test_log_lines_during_a_call_carry_trace_span_agent_model_and_version():
    def chatty(request):
        import structlog  # noqa: PLC0415

        structlog.get_logger("user").info("inside the backend")
        return "ok"

    actor = ModelActor(priced("m", chatty))
    request = ModelRequest.from_prompt("x")
    with capture_logs(processors=[merge_log_fields]) as logs:
        reply = await actor.complete(request)
    (line,) = [entry for entry in logs if entry["event"] == "inside the backend"]
    assert line["trace_id"] == request.trace_id
    assert line["span_id"] == reply.span.span_id
    assert (line["agent"], line["model"], line["version"]) == ("m", "m", "v7")


async def test_a_request_reports_its_steps_route_and_end():
    recorder = Recorder()
    classifier = priced("clf", fixed('{"label": "billing", "confidence": 0.9}'))
    spec = RouterSpec(
        name="desk",
        classifier=ModelClassifier(
            model=classifier,
            labels={"billing": Label(description="money"), "other": Label(description="rest")},
        ),
        routes={
            "billing": SingleSpec(name="billing-desk", model=priced("bill", fixed("refund"))),
            "other": SingleSpec(name="other-desk", model=priced("gen", fixed("hello"))),
        },
        default="other",
        threshold=0.5,
    )
    result = await run_topology(spec, "charged twice", InProcessRuntime(), telemetry=recorder)
    assert recorder.of("routed") == [("desk", "billing", False)]
    assert recorder.of("request") == [("desk", "router", None)]
    step_spans = [span for span in recorder.of("span") if isinstance(span, Span)]
    # The steps run here are reported here; model calls are the model actors' to report.
    assert {span.agent for span in step_spans} == {"desk", "router", "billing-desk"}
    assert all(span.model is None for span in step_spans)
    assert {span.span_id for span in step_spans} <= {span.span_id for span in result.trace}


async def test_a_failed_request_keeps_its_trace_and_reports_the_error_type():
    def broken(request):
        raise RuntimeError("down")

    recorder = Recorder()
    spec = SingleSpec(name="ask", model=priced("m", broken))
    with pytest.raises(BackendError) as caught:
        await run_topology(spec, "x", InProcessRuntime(), telemetry=recorder)
    assert recorder.of("request") == [("ask", "single", "BackendError")]
    trace = caught.value.trace
    assert [span.agent for span in trace] == ["ask", "m"]
    assert all(span.status == "error" for span in trace)
    assert trace[1].parent_id == trace[0].span_id


async def test_consensus_reports_its_escalation():
    answers = iter(["yes", "no", "maybe"])
    recorder = Recorder()
    spec = ConsensusSpec(
        name="agree",
        members=[priced(f"m{i}", lambda request: next(answers)) for i in range(3)],
        escalate_to=priced("strong", fixed("sure")),
        threshold=0.7,
    )
    result = await run_topology(spec, "x", InProcessRuntime(), telemetry=recorder)
    assert result.decision is not None
    assert result.decision.escalated
    assert recorder.of("decided") == [("agree", "consensus", True)]


def test_a_failing_sink_is_skipped_and_logged_once():
    class Broken(Telemetry):
        def flush(self) -> None:
            raise RuntimeError("collector down")

    recorder = Recorder()
    group = TelemetryGroup([Broken(), recorder])
    with capture_logs() as logs:
        group.flush()
        group.flush()
        group.refused("x", "invalid")
    assert [entry["event"] for entry in logs] == ["telemetry sink failed"]
    assert recorder.of("refused") == [("x", "invalid", "")]
