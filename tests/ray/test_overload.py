"""Bounded queues on Ray: beyond them requests are refused at once, typed, and nothing else
is lost."""

from __future__ import annotations

import asyncio
import time

import pytest
import ray

from cantata.agents import FunctionConfig, ModelRequest, ModelSpec, OverloadedError, Resources
from cantata.cluster import deploy
from cantata.topologies import Coordinator, SingleSpec

pytestmark = pytest.mark.ray


async def hang(request: ModelRequest) -> str:
    await asyncio.sleep(600)  # only cancellation ends it
    return "too late"


def until(predicate, limit_s: float = 60.0) -> bool:
    give_up = time.monotonic() + limit_s
    while not predicate() and time.monotonic() < give_up:
        time.sleep(0.1)
    return predicate()


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
