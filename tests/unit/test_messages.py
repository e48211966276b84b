"""Messages: frozen, strict, discriminated, and validated again on arrival."""

from __future__ import annotations

import pickle
import time

import pytest
from pydantic import ValidationError

from cantata.agents import (
    MESSAGE_ADAPTER,
    Budget,
    ChatMessage,
    EmbedRequest,
    InvalidMessageError,
    JsonSchemaFormat,
    ModelReply,
    ModelRequest,
    Span,
    Usage,
    accept,
)


def a_span(**fields) -> Span:
    now = time.time()
    return Span(trace_id="t", agent="a", start=now, end=now + 0.01, latency_ms=10, **fields)


def a_reply(**fields) -> ModelReply:
    values = {
        "request_id": "r1",
        "text": "Paris",
        "model": "m",
        "model_version": "1",
        "usage": Usage(input_tokens=3, output_tokens=1),
        "latency_ms": 12.5,
        "finish_reason": "stop",
        "span": a_span(),
    } | fields
    return ModelReply(**values)


def test_request_carries_the_envelope_fields():
    request = ModelRequest.from_prompt("hi", system="be brief", deadline=123.0)
    assert len(request.id) == 32
    assert len(request.trace_id) == 32
    assert request.parent_span_id is None
    assert request.deadline == 123.0
    assert request.budget == Budget()
    assert [m.role for m in request.messages] == ["system", "user"]


def test_messages_are_frozen():
    request = ModelRequest.from_prompt("hi")
    with pytest.raises(ValidationError):
        request.max_tokens = 5  # type: ignore[misc]


def test_unknown_fields_are_refused():
    with pytest.raises(ValidationError, match="Extra inputs"):
        ModelRequest(messages=(ChatMessage(role="user", content="x"),), temprature=0.3)


@pytest.mark.parametrize(
    "fields",
    [
        {"messages": ()},
        {"max_tokens": 0},
        {"temperature": 3.0},
        {"budget": {"tokens": -1}},
        {"response_format": {"name": "has spaces", "json_schema": {}}},
    ],
)
def test_invalid_requests_are_refused(fields):
    values = {"messages": ({"role": "user", "content": "x"},)} | fields
    with pytest.raises(ValidationError):
        ModelRequest.model_validate(values)


def test_wire_round_trip_dispatches_on_kind():
    reply = a_reply(structured={"city": "Paris"})
    decoded = MESSAGE_ADAPTER.validate_json(MESSAGE_ADAPTER.dump_json(reply))
    assert isinstance(decoded, ModelReply)
    assert decoded == reply
    embed = EmbedRequest(texts=("a", "b"))
    assert isinstance(MESSAGE_ADAPTER.validate_json(MESSAGE_ADAPTER.dump_json(embed)), EmbedRequest)


def test_unknown_kind_is_refused_on_the_wire():
    with pytest.raises(ValidationError, match="kind"):
        MESSAGE_ADAPTER.validate_python({"kind": "model_rquest", "messages": []})


def test_accept_revalidates_forged_instances():
    forged = ModelRequest.model_construct(messages="oops", max_tokens=-1)
    with pytest.raises(InvalidMessageError) as caught:
        accept(forged, ModelRequest)
    assert any(problem.startswith("messages") for problem in caught.value.errors)
    assert any(problem.startswith("max_tokens") for problem in caught.value.errors)


def test_accept_catches_forgery_that_survives_pickling():
    forged = ModelRequest.model_construct(
        messages=(ChatMessage.model_construct(role="wizard", content=42),)
    )
    crossed = pickle.loads(pickle.dumps(forged))
    with pytest.raises(InvalidMessageError, match="role"):
        accept(crossed, ModelRequest)


def test_accept_refuses_the_wrong_message_type():
    with pytest.raises(InvalidMessageError, match="expected a ModelRequest"):
        accept(EmbedRequest(texts=("x",)), ModelRequest)


def test_accept_takes_dicts_and_json():
    request = ModelRequest.from_prompt("hello")
    assert accept(request.model_dump(), ModelRequest) == request
    assert accept(request.model_dump_json(), ModelRequest) == request


def test_span_end_must_follow_start():
    with pytest.raises(ValidationError, match="before its start"):
        Span(trace_id="t", agent="a", start=10.0, end=9.0, latency_ms=0)


def test_budget_spending_and_exhaustion():
    budget = Budget(tokens=100, cost_usd=0.01)
    left = budget.spend(60, 0.004)
    assert left.tokens == 40
    assert left.cost_usd == pytest.approx(0.006)
    assert not left.exhausted
    assert left.spend(80, 0).exhausted
    assert not Budget().spend(10**9, 10.0).exhausted


def test_structured_output_format_requires_a_schema():
    with pytest.raises(ValidationError):
        JsonSchemaFormat.model_validate({"name": "answer"})
