"""The model actor in-process: normalization, structured output, deadlines, budgets, counters."""

from __future__ import annotations

import asyncio
import time

import pytest
from structlog.testing import capture_logs

from cantata.agents import (
    BackendError,
    Budget,
    BudgetExhaustedError,
    CustomConfig,
    DeadlineExceededError,
    EmbedRequest,
    FunctionConfig,
    InvalidMessageError,
    JsonSchemaFormat,
    ModelActor,
    ModelRequest,
    ModelSpec,
    OverloadedError,
    Pricing,
    StructuredOutputError,
    merge_log_fields,
)
from cantata.agents.backends import Completion, ModelBackend

CITY = JsonSchemaFormat(
    name="city",
    json_schema={
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    },
)


def actor_for(fn, **spec_fields) -> ModelActor:
    return ModelActor(ModelSpec(name="m", backend=FunctionConfig(fn=fn), **spec_fields))


async def test_reply_is_normalized_and_priced():
    actor = actor_for(
        lambda request: Completion(text="Paris", model="tiny-7b", finish_reason="length"),
        version="2024-06",
        pricing=Pricing(input_per_mtok=1.0, output_per_mtok=2.0),
    )
    await actor.start()

    def completion(request):
        return Completion(
            text="Paris", model="tiny-7b", usage={"input_tokens": 1000, "output_tokens": 500}
        )

    actor.backend.fn = completion
    request = ModelRequest.from_prompt("capital?", budget=Budget(tokens=10_000))
    reply = await actor.complete(request)
    assert reply.request_id == request.id
    assert reply.trace_id == request.trace_id
    assert reply.model == "tiny-7b"
    assert reply.model_version == "2024-06"
    assert reply.cost_usd == pytest.approx(0.002)
    assert reply.budget.tokens == 8_500
    assert reply.span.parent_id is None
    assert reply.span.input_tokens == 1000
    assert reply.span.actor_id is None  # in-process: no Ray actor
    assert reply.latency_ms == reply.span.latency_ms


async def test_structured_output_is_parsed_and_checked():
    actor = actor_for(lambda request: '{"city": "Paris"}')
    reply = await actor.complete(ModelRequest.from_prompt("json please", response_format=CITY))
    assert reply.structured == {"city": "Paris"}


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("Paris", "did not answer with JSON"),
        ('{"town": "Paris"}', "does not match 'city'"),
        ('{"city": 7}', "at city"),
    ],
)
async def test_malformed_structured_output_is_a_typed_error(text, problem):
    actor = actor_for(lambda request: text)
    with pytest.raises(StructuredOutputError, match=problem) as caught:
        await actor.complete(ModelRequest.from_prompt("json", response_format=CITY))
    assert caught.value.text == text
    assert (await actor.health()).failed == 1


async def test_a_function_that_raises_becomes_a_backend_error():
    def broken(request):
        raise KeyError("lookup table")

    actor = actor_for(broken)
    with pytest.raises(BackendError, match="KeyError"):
        await actor.complete(ModelRequest.from_prompt("x"))


async def test_a_function_returning_the_wrong_type_is_a_backend_error():
    actor = actor_for(lambda request: 42)
    with pytest.raises(BackendError, match="returned int"):
        await actor.complete(ModelRequest.from_prompt("x"))


async def test_deadline_passed_before_the_call_is_rejected():
    actor = actor_for(lambda request: "late")
    with pytest.raises(DeadlineExceededError):
        await actor.complete(ModelRequest.from_prompt("x", deadline=time.time() - 0.1))
    health = await actor.health()
    assert (health.rejected, health.served, health.failed) == (1, 0, 0)


async def test_deadline_reached_during_the_call_cancels_it():
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def slow(request):
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "too late"

    actor = actor_for(slow)
    # A second is far more than a loaded machine needs to start the call, so the deadline
    # always falls during it, never before.
    with pytest.raises(DeadlineExceededError, match="during the call"):
        await actor.complete(ModelRequest.from_prompt("x", deadline=time.time() + 1.0))
    assert started.is_set()
    assert cancelled.is_set()  # the backend's work was cancelled, not left running
    assert (await actor.health()).in_flight == 0


async def test_exhausted_budget_is_rejected():
    actor = actor_for(lambda request: "free?")
    with pytest.raises(BudgetExhaustedError):
        await actor.complete(ModelRequest.from_prompt("x", budget=Budget(tokens=0)))


async def test_wrong_call_for_the_model_kind_is_refused():
    actor = actor_for(lambda request: "chat")
    with pytest.raises(InvalidMessageError, match="chat model"):
        await actor.embed(EmbedRequest(texts=("x",)))


async def test_log_lines_carry_trace_agent_and_model():
    def broken(request):
        raise RuntimeError("boom")

    actor = actor_for(broken)
    request = ModelRequest.from_prompt("x")
    with (
        capture_logs(processors=[merge_log_fields]) as logs,
        pytest.raises(BackendError),
    ):
        await actor.complete(request)
    (line,) = [entry for entry in logs if entry["event"] == "model call failed"]
    assert line["trace_id"] == request.trace_id
    assert line["agent"] == "m"
    assert line["model"] == "m"


async def test_concurrent_calls_are_counted():
    async def answer(request):
        await asyncio.sleep(0.01)
        return "ok"

    actor = actor_for(answer)
    await asyncio.gather(*(actor.complete(ModelRequest.from_prompt(str(i))) for i in range(5)))
    health = await actor.health()
    assert (health.served, health.in_flight) == (5, 0)


async def test_calls_beyond_the_queue_are_refused_at_once_and_the_accepted_ones_finish():
    release = asyncio.Event()

    async def answer(request):
        await release.wait()
        return "ok"

    actor = actor_for(answer, max_concurrency=1, max_queued=2)
    accepted = [
        asyncio.ensure_future(actor.complete(ModelRequest.from_prompt(str(i)))) for i in range(3)
    ]
    while (actor.in_flight, actor.queued) != (1, 2):  # one running, two waiting for its slot
        await asyncio.sleep(0)
    with pytest.raises(OverloadedError) as refusal:
        await actor.complete(ModelRequest.from_prompt("one too many"))
    assert refusal.value.limit == 2
    assert refusal.value.span is not None
    assert refusal.value.span.error_type == "OverloadedError"
    release.set()
    replies = await asyncio.gather(*accepted)
    health = await actor.health()
    assert [reply.text for reply in replies] == ["ok"] * 3
    assert (health.served, health.rejected, health.failed, health.queued) == (3, 1, 0, 0)


async def test_concurrent_first_calls_load_the_model_once():
    class SlowToLoad(ModelBackend):
        starts = 0

        async def start(self) -> None:
            SlowToLoad.starts += 1
            await asyncio.sleep(0.05)  # the other first calls arrive while it loads

        async def complete(self, request: ModelRequest) -> Completion:
            return Completion(text="ok")

    actor = ModelActor(ModelSpec(name="m", backend=CustomConfig(factory=lambda _r: SlowToLoad())))
    replies = await asyncio.gather(
        *(actor.complete(ModelRequest.from_prompt("hi")) for _ in range(5))
    )
    assert [reply.text for reply in replies] == ["ok"] * 5
    assert SlowToLoad.starts == 1
