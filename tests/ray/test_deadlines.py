"""Deadlines and cancellation across actors: a request that ends stops its work everywhere."""

from __future__ import annotations

import asyncio
import time

import pytest
import ray

from cantata.agents import (
    DeadlineExceededError,
    FunctionConfig,
    ModelRequest,
    ModelSpec,
    Resources,
)
from cantata.cluster import RayModelHandle, RayRuntime, deploy
from cantata.cluster._replicas import ReplicaSet
from cantata.topologies import Code, PipelineSpec, SingleSpec, Stage, answer

pytestmark = pytest.mark.ray

HANG_S = 600.0  # far longer than any test: only cancellation ends these calls


async def hang(request: ModelRequest) -> str:
    await asyncio.sleep(HANG_S)
    return "too late"


def echo(request: ModelRequest) -> str:
    return "echo: " + request.messages[-1].content


def model(name: str, fn=hang) -> ModelSpec:
    return ModelSpec(name=name, backend=FunctionConfig(fn=fn), resources=Resources(num_cpus=0.1))


@pytest.fixture(autouse=True)
def gives_everything_back(ray_cluster):
    """Each test ends only once Ray has freed what it reserved (kills are asynchronous), so
    the next test measures a quiet cluster."""
    before = ray.available_resources()
    yield
    give_up = time.monotonic() + 30
    while ray.available_resources() != before and time.monotonic() < give_up:
        time.sleep(0.2)
    assert ray.available_resources() == before


async def in_flight(handle: RayModelHandle) -> int:
    return (await handle.health()).in_flight


async def until_idle(handle: RayModelHandle, limit_s: float = 60.0) -> int:
    """The replica's calls in flight once they drop to zero, or after ``limit_s``."""
    give_up = time.monotonic() + limit_s
    while (count := await in_flight(handle)) and time.monotonic() < give_up:
        await asyncio.sleep(0.1)
    return count


async def test_a_caller_that_stops_waiting_cancels_the_call_in_the_actor(ray_cluster):
    runtime = RayRuntime()
    handles = await runtime.start_models([model("stuck")])
    replica_set = handles["stuck"]
    assert isinstance(replica_set, ReplicaSet)
    handle = replica_set.replicas[0].handle
    try:
        call = asyncio.ensure_future(replica_set.complete(ModelRequest.from_prompt("hi")))
        while await in_flight(handle) == 0:
            await asyncio.sleep(0.05)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert await until_idle(handle) == 0
        health = await handle.health()
    finally:
        await runtime.stop_models([replica_set])
    assert (health.served, health.failed) == (0, 1)


def test_a_deployment_call_past_its_timeout_fails_typed_and_stops_its_models(ray_cluster):
    topology = SingleSpec(name="slow", model=model("stuck"))
    deployment = deploy(topology, "deadline-test")
    try:
        start = time.monotonic()
        with pytest.raises(DeadlineExceededError):
            deployment.call("hello", timeout_s=1.0)
        waited = time.monotonic() - start
        status = deployment.status()
    finally:
        deployment.down()
    assert waited < HANG_S  # ended by the deadline, not by the model
    stuck = next(m for m in status.models if m.name == "stuck")
    assert [replica.in_flight for replica in stuck.replicas] == [0]


async def test_a_request_deadline_reaches_a_nested_actor_and_its_models(ray_cluster):
    inner = SingleSpec(name="inner", model=model("stuck"), host={"actor": True})
    topology = PipelineSpec(
        name="outer", stages=[Stage(member=model("quick", echo)), Stage(member=inner)]
    )
    runtime = RayRuntime()
    started = await runtime.start(topology, Code())
    try:
        with pytest.raises(DeadlineExceededError) as failure:
            await answer(
                topology,
                "hello",
                started.models,
                agents=started.agents,
                deadline=time.time() + 1.0,
            )
        stuck = started.models["stuck"]
        assert isinstance(stuck, ReplicaSet)
        idle = await until_idle(stuck.replicas[0].handle)
    finally:
        await runtime.stop(started)
    assert idle == 0
    failed = {span.agent for span in failure.value.trace if span.status == "error"}
    assert {"outer", "inner", "stuck"} <= failed
