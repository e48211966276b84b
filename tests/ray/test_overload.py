"""Bounded queues on Ray: beyond them requests are refused at once, typed, and nothing else
is lost."""

from __future__ import annotations

import asyncio
import time

import pytest
import ray

from cantata.agents import FunctionConfig, ModelRequest, ModelSpec, OverloadedError, Resources
from cantata.cluster import RayRuntime, deploy
from cantata.cluster._replicas import ReplicaSet
from cantata.topologies import Coordinator, SingleSpec
from tests.support.waiting import held_until, until

pytestmark = pytest.mark.ray


async def hang(request: ModelRequest) -> str:
    await asyncio.sleep(600)  # only cancellation ends it
    return "too late"


def test_a_full_coordinator_refuses_at_once_and_says_so_in_status(ray_cluster):
    topology = SingleSpec(
        name="narrow",
        model=ModelSpec(
            name="stuck", backend=FunctionConfig(fn=hang), resources=Resources(num_cpus=0.1)
        ),
        coordinator=Coordinator(max_in_flight=1),
    )
    deployment = deploy(topology, "overload-test")
    try:
        (coordinator,) = deployment._balancer().replicas
        running = coordinator.handle.actor.call.remote("first", None, time.time() + 120)

        def coordinators():
            return next(a for a in deployment.status().agents if a.role == "coordinator")

        assert until(lambda: coordinators().replicas[0].in_flight == 1)
        with pytest.raises(OverloadedError) as refusal:
            deployment.call("second")
        ray.cancel(running)
        (status,) = coordinators().replicas
    finally:
        deployment.down()
    assert refusal.value.limit == 1
    assert status.refused == 1


async def test_health_answers_at_once_while_every_slot_is_busy_and_calls_queue(
    ray_cluster, tmp_path
):
    release = tmp_path / "release"
    spec = ModelSpec(
        name="busy",
        backend=FunctionConfig(fn=held_until(release)),
        resources=Resources(num_cpus=0.1),
        max_concurrency=2,
    )
    runtime = RayRuntime()
    handles = await runtime.start_models([spec])
    busy = handles["busy"]
    assert isinstance(busy, ReplicaSet)
    replica = busy.replicas[0].handle
    try:
        calls = [
            asyncio.ensure_future(busy.complete(ModelRequest.from_prompt("q"))) for _ in range(16)
        ]
        give_up = time.monotonic() + 60
        health = await replica.health()
        while (health.in_flight, health.queued) != (2, 14) and time.monotonic() < give_up:
            await asyncio.sleep(0.05)
            health = await replica.health()  # answered beside the calls, not behind them
        release.touch()
        replies = await asyncio.gather(*calls)
    finally:
        release.touch()
        await runtime.stop_models([busy])
    assert (health.healthy, health.in_flight, health.queued) == (True, 2, 14)
    assert [reply.text for reply in replies] == ["finished: q"] * 16
