"""A request's deadline holds even when a model never answers: the request ends typed, on
time, and what it had in flight is cancelled and kept in the trace."""

from __future__ import annotations

import asyncio
import time

import pytest

from cantata.agents import (
    DeadlineExceededError,
    EmbedReply,
    EmbedRequest,
    FunctionConfig,
    Health,
    ModelReply,
    ModelRequest,
    ModelSpec,
)
from cantata.topologies import FanoutSpec, ModelHandle, SingleSpec, answer

LIMIT_S = 30.0  # a test that hangs fails here instead


class Unresponsive(ModelHandle):
    """A model whose actor takes calls and never answers (hung, or lost without a word)."""

    def __init__(self, name: str) -> None:
        self.spec = ModelSpec(name=name, backend=FunctionConfig(fn=lambda _r: ""))
        self.calls = 0
        self.cancelled = 0

    async def complete(self, request: ModelRequest) -> ModelReply:
        self.calls += 1
        try:
            await asyncio.Event().wait()  # never set
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        raise AssertionError("unreachable")

    async def embed(self, request: EmbedRequest) -> EmbedReply:
        raise NotImplementedError

    async def health(self) -> Health:
        raise NotImplementedError


async def test_a_request_ends_at_its_deadline_though_its_model_never_answers():
    stuck = Unresponsive("stuck")
    spec = SingleSpec(name="single", model=stuck.spec)
    with pytest.raises(DeadlineExceededError) as failure:
        await asyncio.wait_for(
            answer(spec, "hello", {"stuck": stuck}, deadline=time.time() + 0.3), LIMIT_S
        )
    assert (stuck.calls, stuck.cancelled) == (1, 1)
    (call,) = [span for span in failure.value.trace if span.agent == "stuck"]
    assert (call.status, call.error_type) == ("error", "CancelledError")


async def test_a_fanout_past_its_deadline_cancels_every_member_still_running():
    members = [Unresponsive("a"), Unresponsive("b")]
    spec = FanoutSpec(name="team", members=[m.spec for m in members])
    with pytest.raises(DeadlineExceededError):
        await asyncio.wait_for(
            answer(spec, "hello", {m.spec.name: m for m in members}, deadline=time.time() + 0.3),
            LIMIT_S,
        )
    assert [(m.calls, m.cancelled) for m in members] == [(1, 1), (1, 1)]


async def test_a_call_is_not_sent_once_the_deadline_has_passed():
    stuck = Unresponsive("stuck")
    spec = SingleSpec(name="single", model=stuck.spec)
    with pytest.raises(DeadlineExceededError) as failure:
        await answer(spec, "hello", {"stuck": stuck}, deadline=time.time() - 1)
    assert stuck.calls == 0
    (refusal,) = [span for span in failure.value.trace if span.agent == "stuck"]
    assert refusal.error_type == "DeadlineExceededError"
