"""Fuzzing every message type: whatever arrives ends as the message or a bounded typed error.

Inputs come from ``tests/support/strategies.py``: valid messages drawn from each type's JSON
schema, the same with one part broken, arbitrary JSON-like values (NaN, huge integers, lone
surrogates, NUL), huge strings, long lists, deep nesting, JSON text and bytes, forged instances
and other messages. ``benchmarks/fuzz.py`` times the same inputs.
"""

from __future__ import annotations

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

import cantata.agents
from cantata.agents import (
    MESSAGE_ADAPTER,
    Envelope,
    InvalidMessageError,
    TallyRequest,
    Task,
    accept,
)
from tests.support.strategies import (
    MAX_ERROR_CHARS,
    MAX_PROBLEMS,
    MESSAGE_TYPES,
    PROFILE,
    WIRE_TYPES,
    arrivals,
    check_error,
    nest,
    valid_data,
)

by_name = pytest.mark.parametrize("message_type", MESSAGE_TYPES, ids=lambda t: t.__name__)


def test_every_public_message_type_is_fuzzed():
    names = {t.__name__ for t in MESSAGE_TYPES}
    envelopes = {
        name
        for name in cantata.agents.__all__
        if isinstance(t := getattr(cantata.agents, name), type) and issubclass(t, Envelope)
    }
    assert envelopes <= names
    assert {"Span", "Budget", "ChatMessage", "Plan", "PlanStep", "Assignment", "Review"} <= names
    assert len(names) >= 35


@by_name
@settings(PROFILE, max_examples=30)
@given(data=st.data())
def test_whatever_arrives_is_accepted_as_the_message_or_refused_with_a_bounded_error(
    message_type: type[BaseModel], data: st.DataObject
):
    value = data.draw(arrivals(message_type), label="arrived")
    try:
        message = accept(value, message_type)
    except InvalidMessageError as exc:
        check_error(exc)
        event(type(exc).__name__)
    else:
        event("valid")
        assert isinstance(message, message_type)


@by_name
@settings(PROFILE, max_examples=15)
@given(data=st.data())
def test_model_validate_ends_as_the_message_or_a_validation_error(
    message_type: type[BaseModel], data: st.DataObject
):
    # pydantic's own API promises a ValidationError (its text is pydantic's: not bounded).
    value = data.draw(arrivals(message_type), label="arrived")
    try:
        if isinstance(value, str | bytes):
            message = message_type.model_validate_json(value)
        else:
            message = message_type.model_validate(value)
    except ValidationError:
        pass
    else:
        assert isinstance(message, message_type)


@by_name
@settings(PROFILE, max_examples=15)
@given(data=st.data())
def test_a_valid_message_survives_the_wire_unchanged(
    message_type: type[BaseModel], data: st.DataObject
):
    fields = data.draw(valid_data(message_type), label="fields")
    try:
        message = accept(fields, message_type)
    except InvalidMessageError as exc:  # the strategy's fault, not the message's
        pytest.fail(f"valid_data drew an invalid {message_type.__name__} (add a fixer): {exc}")
    assert accept(message.model_dump_json(), message_type) == message
    assert accept(message.model_dump_json().encode(), message_type) == message
    assert accept(message.model_dump(), message_type) == message
    assert accept(message, message_type) == message


@pytest.mark.parametrize("message_type", WIRE_TYPES, ids=lambda t: t.__name__)
@settings(PROFILE, max_examples=15)
@given(data=st.data())
def test_the_message_adapter_round_trips_every_wire_message(
    message_type: type[BaseModel], data: st.DataObject
):
    message = accept(data.draw(valid_data(message_type), label="fields"), message_type)
    again = MESSAGE_ADAPTER.validate_json(MESSAGE_ADAPTER.dump_json(message))
    assert type(again) is message_type
    assert again == message


def _cyclic() -> dict:
    loop: dict = {"text": "a"}
    loop["values"] = loop
    return loop


# What fuzzing found: each of these once gave an InvalidMessageError of megabytes.
@pytest.mark.parametrize(
    ("message_type", "value"),
    [
        pytest.param(Task, {"text": "a", "x" * 100_000: 1}, id="a huge unknown key"),
        pytest.param(
            cantata.agents.EmbedRequest, {"texts": [1] * 100_000}, id="100000 wrong items"
        ),
        pytest.param(
            Task, {"text": "a", "values": {str(i): i for i in range(100_000)}}, id="many keys"
        ),
        pytest.param(
            cantata.agents.Route,
            {"label": "a", "confidence": 1, "target": "t", "scores": {"k" * 100_000: "z"}},
            id="a huge key in a dict field",
        ),
        pytest.param(
            TallyRequest,
            {
                "parent_span_id": "p",
                "ballots": [],
                "groups": [{"indices": list(range(100_000)), "representative": "r"}],
            },
            id="100000 stray ballot indices",
        ),
        pytest.param(cantata.agents.TaskReply, {"text": "a", "structured": nest(5_000)}, id="deep"),
        pytest.param(Task, _cyclic(), id="a cycle"),
    ],
)
def test_found_by_fuzzing_an_invalid_message_error_stays_small(message_type, value):
    with pytest.raises(InvalidMessageError) as caught:
        accept(value, message_type)
    check_error(caught.value)
    assert len(str(caught.value)) <= MAX_ERROR_CHARS
    assert len(caught.value.errors) <= MAX_PROBLEMS
