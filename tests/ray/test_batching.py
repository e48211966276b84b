"""Calls to one replica made in the same event-loop turn travel in one Ray call; each keeps its
own reply, error, deadline and cancellation (``cantata.cluster._batching``)."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import ray

from cantata.agents import (
    ActorDiedError,
    BackendError,
    DeadlineExceededError,
    FunctionConfig,
    ModelRequest,
    ModelSpec,
    Resources,
)
from cantata.cluster import RayModelHandle, RayRuntime
from cantata.cluster._replicas import ReplicaSet

pytestmark = pytest.mark.ray

HANG_S = 600.0  # far longer than any test: only cancellation ends these calls
_arrivals = itertools.count()  # in the replica's process: the order requests reached the model


async def scripted(request: ModelRequest) -> str:
    """Answers ``prompt`` with its arrival number; ``hang`` hangs; ``fail`` raises;
    ``gate:PATH`` waits until PATH exists (the test opens the gate)."""
    prompt = request.messages[-1].content
    arrival = next(_arrivals)
    if prompt == "hang":
        await asyncio.sleep(HANG_S)
    elif prompt == "fail":
        raise ValueError("this one fails")
    elif prompt.startswith("gate:"):
        gate = Path(prompt.removeprefix("gate:"))
        while not gate.exists():
            await asyncio.sleep(0.02)
    return f"{arrival}:{prompt}"


@pytest.fixture
async def replica(ray_cluster) -> AsyncIterator[RayModelHandle]:
    """One replica, reserved in its own placement group; every test ends once Ray has freed
    it (kills and removals are asynchronous), so the next test starts on a quiet cluster."""
    before = ray.available_resources()
    runtime = RayRuntime()
    spec = ModelSpec(
        name="scripted",
        backend=FunctionConfig(fn=scripted),
        resources=Resources(num_cpus=0.1),
        max_concurrency=64,
    )
    handles = await runtime.start_models([spec])
    replica_set = handles["scripted"]
    assert isinstance(replica_set, ReplicaSet)
    try:
        yield replica_set.replicas[0].handle
    finally:
        await runtime.stop_models([replica_set])
    give_up = time.monotonic() + 30
    while ray.available_resources() != before and time.monotonic() < give_up:
        await asyncio.sleep(0.2)
    assert ray.available_resources() == before


def ask(handle: RayModelHandle, prompt: str, deadline: float | None = None) -> asyncio.Task:
    request = ModelRequest.from_prompt(prompt).model_copy(update={"deadline": deadline})
    return asyncio.ensure_future(handle.complete(request))


async def in_flight_becomes(handle: RayModelHandle, count: int, limit_s: float = 60.0) -> int:
    """The replica's calls in flight once they reach ``count``, or after ``limit_s``."""
    give_up = time.monotonic() + limit_s
    while (now := (await handle.health()).in_flight) != count and time.monotonic() < give_up:
        await asyncio.sleep(0.05)
    return now


async def test_calls_of_one_turn_share_a_ray_call_and_each_gets_its_own_reply(replica):
    prompts = [f"p{n}" for n in range(8)]
    replies = await asyncio.gather(
        *(replica.complete(ModelRequest.from_prompt(p)) for p in prompts)
    )
    assert [reply.text.split(":")[1] for reply in replies] == prompts
    health = await replica.health()
    # The turn's first call goes alone at once; the seven after it travel together.
    assert (health.served, health.batched) == (8, 7)
    # A batch's requests reach the model in the order their callers made them.
    arrivals = [int(reply.text.split(":")[0]) for reply in replies[1:]]
    assert arrivals == sorted(arrivals)
    assert len({reply.span.span_id for reply in replies}) == 8  # each call its own span


async def test_a_lone_call_goes_unbatched(replica):
    for prompt in ("a", "b", "c"):
        assert (await replica.complete(ModelRequest.from_prompt(prompt))).text.endswith(prompt)
    assert (await replica.health()).batched == 0


async def test_an_error_fails_only_its_own_call_in_a_batch(replica):
    prompts = ["p0", "p1", "fail", "p3", "fail"]
    outcomes = await asyncio.gather(*(ask(replica, p) for p in prompts), return_exceptions=True)
    failed = [n for n, outcome in enumerate(outcomes) if isinstance(outcome, BaseException)]
    assert failed == [2, 4]
    for n in failed:
        error = outcomes[n]
        assert isinstance(error, BackendError)
        assert error.model == "scripted"
        assert "this one fails" in str(error)
        assert error.span is not None  # the failed call's span comes back with it
    assert [outcomes[n].text.split(":")[1] for n in (0, 1, 3)] == ["p0", "p1", "p3"]
    health = await replica.health()
    assert (health.served, health.failed, health.batched) == (3, 2, 4)


async def test_each_call_in_a_batch_keeps_its_own_deadline(replica, tmp_path):
    gate = tmp_path / "open"
    calls = [
        ask(replica, f"gate:{gate}"),
        ask(replica, "hang", deadline=time.time() + 1.0),
        ask(replica, f"gate:{gate}"),
    ]
    assert await in_flight_becomes(replica, 3) == 3
    with pytest.raises(DeadlineExceededError):
        await calls[1]
    assert await in_flight_becomes(replica, 2) == 2  # the late one stopped; its mates run on
    gate.touch()
    replies = await asyncio.gather(calls[0], calls[2])
    assert all(reply.text.endswith(str(gate)) for reply in replies)
    assert (await replica.health()).batched == 2


async def test_a_caller_that_leaves_cancels_its_own_request_only(replica, tmp_path):
    gate = tmp_path / "open"
    calls = [ask(replica, f"gate:{gate}"), ask(replica, "hang"), ask(replica, f"gate:{gate}")]
    assert await in_flight_becomes(replica, 3) == 3
    calls[1].cancel()
    with pytest.raises(asyncio.CancelledError):
        await calls[1]
    assert await in_flight_becomes(replica, 2) == 2  # cancelled in the replica too
    gate.touch()
    replies = await asyncio.gather(calls[0], calls[2])
    assert all(reply.text.endswith(str(gate)) for reply in replies)


async def test_a_batch_whose_callers_all_leave_stops(replica):
    calls = [ask(replica, "hang") for _ in range(4)]
    assert await in_flight_becomes(replica, 4) == 4
    for call in calls:
        call.cancel()
    await asyncio.gather(*calls, return_exceptions=True)
    assert await in_flight_becomes(replica, 0) == 0


async def test_a_call_cancelled_before_its_batch_leaves_is_never_sent(replica):
    first, second, third = ask(replica, "a"), ask(replica, "hang"), ask(replica, "c")
    await asyncio.sleep(0)  # the three calls are made and waiting for the turn to end
    second.cancel()
    replies = await asyncio.gather(first, third)
    assert [reply.text.split(":")[1] for reply in replies] == ["a", "c"]
    health = await replica.health()
    # The third, alone once the second left, went as a plain call.
    assert (health.served, health.in_flight, health.batched) == (2, 0, 0)


async def test_a_replica_that_dies_fails_every_call_of_its_batch_typed(replica):
    calls = [ask(replica, "hang") for _ in range(4)]
    assert await in_flight_becomes(replica, 4) == 4
    ray.kill(replica.actor, no_restart=True)
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    assert all(isinstance(outcome, ActorDiedError) for outcome in outcomes), outcomes
    assert {outcome.actor_id for outcome in outcomes} == {replica.actor_id}
