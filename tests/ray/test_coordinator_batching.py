"""Requests a driver sends a deployment's coordinator in the same event-loop turn travel in one
Ray call, as model calls do; each keeps its own answer, error, deadline and cancellation."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray

from cantata.agents import (
    BackendError,
    DeadlineExceededError,
    FunctionConfig,
    ModelRequest,
    ModelSpec,
    OverloadedError,
    Resources,
)
from cantata.cluster import Deployment, ReplicaStatus, deploy
from cantata.topologies import Coordinator, SingleSpec

pytestmark = pytest.mark.ray

HANG_S = 600.0  # far longer than any test: only cancellation or a deadline ends these
MAX_IN_FLIGHT = 6


async def scripted(request: ModelRequest) -> str:
    """Echoes the prompt; ``hang`` hangs; ``fail`` raises; ``gate:PATH`` waits for PATH."""
    prompt = request.messages[-1].content
    if prompt == "hang":
        await asyncio.sleep(HANG_S)
    elif prompt == "fail":
        raise ValueError("this one fails")
    elif prompt.startswith("gate:"):
        gate = Path(prompt.removeprefix("gate:"))
        while not gate.exists():
            await asyncio.sleep(0.02)
    return f"echo {prompt}"


@pytest.fixture(scope="module")
def deployment(ray_cluster) -> Iterator[Deployment]:
    """One coordinator taking at most MAX_IN_FLIGHT requests; the module ends once Ray has
    freed everything it reserved (frees are asynchronous), so the next module starts clean."""
    before = ray.available_resources()
    spec = SingleSpec(
        name="echoing",
        model=ModelSpec(
            name="scripted",
            backend=FunctionConfig(fn=scripted),
            resources=Resources(num_cpus=0.05),
            max_concurrency=64,
        ),
        coordinator=Coordinator(max_in_flight=MAX_IN_FLIGHT, resources=Resources(num_cpus=0.05)),
    )
    deployed = deploy(spec, "coordinator-batching")
    try:
        yield deployed
    finally:
        deployed.down()
        give_up = time.monotonic() + 30
        while ray.available_resources() != before and time.monotonic() < give_up:
            time.sleep(0.2)
        assert ray.available_resources() == before


def coordinator(deployment: Deployment) -> ReplicaStatus:
    (entry,) = [a for a in deployment.status().agents if a.role == "coordinator"]
    (replica,) = entry.replicas
    return replica


async def in_flight_becomes(deployment: Deployment, count: int, limit_s: float = 60.0) -> int:
    give_up = time.monotonic() + limit_s
    while (now := coordinator(deployment).in_flight) != count and time.monotonic() < give_up:
        await asyncio.sleep(0.05)
    return now


def test_requests_of_one_turn_share_a_ray_call_and_each_gets_its_own_answer(deployment):
    before = coordinator(deployment).batched

    async def burst() -> list[str]:
        results = await asyncio.gather(*(deployment.acall(f"q{i}") for i in range(5)))
        return [result.text for result in results]

    assert asyncio.run(burst()) == [f"echo q{i}" for i in range(5)]
    # The first request of the turn went alone, at once; the other four together.
    assert coordinator(deployment).batched - before == 4


def test_an_error_fails_only_its_own_request_in_a_batch(deployment):
    async def burst() -> list[object]:
        prompts = ["a", "fail", "b", "c"]
        calls = (deployment.acall(prompt) for prompt in prompts)
        return await asyncio.gather(*calls, return_exceptions=True)

    first, failed, *rest = asyncio.run(burst())
    assert getattr(first, "text", first) == "echo a"
    assert isinstance(failed, BackendError)
    assert "this one fails" in str(failed)
    assert [getattr(o, "text", o) for o in rest] == ["echo b", "echo c"]


def test_a_full_coordinator_refuses_only_the_requests_beyond_its_limit(deployment, tmp_path):
    gate = tmp_path / "open"

    async def burst() -> list[object]:
        calls = [
            asyncio.ensure_future(deployment.acall(f"gate:{gate}"))
            for _ in range(MAX_IN_FLIGHT + 2)
        ]
        assert await in_flight_becomes(deployment, MAX_IN_FLIGHT) == MAX_IN_FLIGHT
        gate.touch()
        return await asyncio.gather(*calls, return_exceptions=True)

    outcomes = asyncio.run(burst())
    answered = [o for o in outcomes if getattr(o, "text", None) == f"echo gate:{gate}"]
    refused = [o for o in outcomes if isinstance(o, OverloadedError)]
    assert len(answered) == MAX_IN_FLIGHT
    assert len(refused) == 2, outcomes


def test_each_request_in_a_batch_keeps_its_own_deadline(deployment, tmp_path):
    gate = tmp_path / "open"

    async def burst() -> list[object]:
        calls = [
            asyncio.ensure_future(deployment.acall(f"gate:{gate}")),
            asyncio.ensure_future(deployment.acall("hang", timeout_s=0.5)),
            asyncio.ensure_future(deployment.acall(f"gate:{gate}")),
        ]
        late = await asyncio.gather(calls[1], return_exceptions=True)
        gate.touch()  # opened only once the short deadline has ended its request
        return [*late, *await asyncio.gather(calls[0], calls[2], return_exceptions=True)]

    late, *answered = asyncio.run(burst())
    assert isinstance(late, DeadlineExceededError)
    assert [getattr(o, "text", o) for o in answered] == [f"echo gate:{gate}"] * 2


def test_a_caller_that_leaves_cancels_its_own_request_only(deployment, tmp_path):
    gate = tmp_path / "open"

    async def burst() -> list[str]:
        kept = [asyncio.ensure_future(deployment.acall(f"gate:{gate}")) for _ in range(2)]
        leaving = asyncio.ensure_future(deployment.acall("hang"))
        assert await in_flight_becomes(deployment, 3) == 3
        leaving.cancel()
        # The coordinator stops the hanging request; its batch-mates run on.
        assert await in_flight_becomes(deployment, 2) == 2
        gate.touch()
        return [result.text for result in await asyncio.gather(*kept)]

    assert asyncio.run(burst()) == [f"echo gate:{gate}"] * 2
    assert coordinator(deployment).in_flight == 0
