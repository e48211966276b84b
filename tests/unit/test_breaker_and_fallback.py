"""A replica that keeps failing cools down (a circuit breaker), and a model that fails for
its own reasons hands the call to its fallback; what fails for the request's reasons does not."""

from __future__ import annotations

import asyncio

import pytest

from cantata.agents import (
    CircuitOpenError,
    Cooldown,
    EndpointUnreachableError,
    FunctionConfig,
    ModelRequest,
    ModelSpec,
    RequestRejectedError,
)
from cantata.cluster._replicas import Balanced, Replica
from cantata.topologies import InProcessRuntime, SingleSpec, run_topology


class Endpoint:
    """A replica's endpoint: down until told otherwise. Counts the calls that reach it."""

    def __init__(self, up: bool) -> None:
        self.up = up
        self.calls = 0

    async def __call__(self, _argument: str) -> str:
        self.calls += 1
        if not self.up:
            raise EndpointUnreachableError("connection refused", model="m")
        return "ok"


async def call(endpoint: Endpoint, argument: str) -> str:
    return await endpoint(argument)


def replicas(*endpoints: Endpoint, cooldown: Cooldown) -> Balanced[Endpoint]:
    members = [Replica(endpoint, index) for index, endpoint in enumerate(endpoints)]
    return Balanced("m", members, cooldown=cooldown, backend_errors_are_ours=True)


async def test_a_replica_failing_in_a_row_cools_down_and_a_trial_call_closes_it():
    endpoint = Endpoint(up=False)
    balanced = replicas(endpoint, cooldown=Cooldown(after_failures=3, cooldown_s=0.2))
    for _ in range(3):
        with pytest.raises(EndpointUnreachableError):
            await balanced.balanced(call, "q")
    with pytest.raises(CircuitOpenError) as refusal:
        await balanced.balanced(call, "q")
    assert endpoint.calls == 3  # refused without reaching the endpoint
    assert 0 < refusal.value.retry_after_s <= 0.2

    await asyncio.sleep(0.3)  # past the cooldown: one trial call goes through
    endpoint.up = True
    assert await balanced.balanced(call, "q") == "ok"
    endpoint.up = False  # closed again: it takes three failures in a row to open it
    for _ in range(3):
        with pytest.raises(EndpointUnreachableError):
            await balanced.balanced(call, "q")
    assert endpoint.calls == 7


async def test_a_failed_trial_call_opens_the_breaker_again_for_twice_as_long():
    endpoint = Endpoint(up=False)
    cooldown = Cooldown(after_failures=2, cooldown_s=0.2, max_cooldown_s=0.3)
    balanced = replicas(endpoint, cooldown=cooldown)
    for _ in range(2):
        with pytest.raises(EndpointUnreachableError):
            await balanced.balanced(call, "q")
    await asyncio.sleep(0.3)
    with pytest.raises(EndpointUnreachableError):
        await balanced.balanced(call, "q")  # the trial call fails
    with pytest.raises(CircuitOpenError) as refusal:
        await balanced.balanced(call, "q")
    assert endpoint.calls == 3
    assert balanced.replicas[0].openings == 2  # its second cooldown: doubled, up to the max
    assert refusal.value.retry_after_s <= 0.3
    assert [cooldown.duration(n) for n in (1, 2, 3)] == [0.2, 0.3, 0.3]


async def test_traffic_moves_to_the_healthy_replica_while_the_failing_one_cools_down():
    failing, healthy = Endpoint(up=False), Endpoint(up=True)
    balanced = replicas(failing, healthy, cooldown=Cooldown(after_failures=3, cooldown_s=60))
    outcomes = []
    for _ in range(10):
        try:
            outcomes.append(await balanced.balanced(call, "q"))
        except EndpointUnreachableError:
            outcomes.append("failed")
    # Ties go to the first replica until its breaker opens; then every call goes elsewhere.
    assert outcomes == ["failed"] * 3 + ["ok"] * 7
    assert (failing.calls, healthy.calls) == (3, 7)


async def test_calls_failing_after_the_breaker_opened_do_not_lengthen_the_cooldown():
    async def fails_later(endpoint: Endpoint, argument: str) -> str:
        await asyncio.sleep(0.01)  # all 32 are in flight when the first failures come back
        return await endpoint(argument)

    endpoint = Endpoint(up=False)
    balanced = replicas(endpoint, cooldown=Cooldown(after_failures=5, cooldown_s=2))
    calls = [balanced.balanced(fails_later, "q") for _ in range(32)]
    await asyncio.gather(*calls, return_exceptions=True)
    (replica,) = balanced.replicas
    assert (endpoint.calls, replica.openings) == (32, 1)  # opened once, for cooldown_s


async def test_an_agent_actor_is_not_blamed_for_the_errors_of_the_models_it_called():
    agents = Balanced(
        "agent", [Replica(Endpoint(up=False), 0)], cooldown=Cooldown(after_failures=1)
    )
    for _ in range(3):
        with pytest.raises(EndpointUnreachableError):
            await agents.balanced(call, "q")
    assert agents.replicas[0].cooling_until == 0.0


async def test_failures_of_the_request_do_not_open_the_breaker():
    async def rejected(_endpoint: Endpoint, _argument: str) -> str:
        raise RequestRejectedError("400 bad request", status_code=400, model="m")

    balanced = replicas(Endpoint(up=True), cooldown=Cooldown(after_failures=2, cooldown_s=60))
    for _ in range(5):
        with pytest.raises(RequestRejectedError):
            await balanced.balanced(rejected, "q")
    assert balanced.replicas[0].cooling_until == 0.0


def down(request: ModelRequest) -> str:
    raise EndpointUnreachableError("connection refused", model="big")


def wrong_request(request: ModelRequest) -> str:
    raise RequestRejectedError("400: unknown parameter", status_code=400, model="big")


def small(request: ModelRequest) -> str:
    return "small: " + request.messages[-1].content


def with_fallback(fn) -> SingleSpec:
    return SingleSpec(
        name="answer",
        model=ModelSpec(
            name="big",
            backend=FunctionConfig(fn=fn),
            fallback=ModelSpec(name="small", backend=FunctionConfig(fn=small)),
        ),
    )


async def test_a_model_that_fails_for_its_own_reasons_hands_the_call_to_its_fallback():
    result = await run_topology(with_fallback(down), "hello", InProcessRuntime())
    assert result.text == "small: hello"
    calls = [(s.agent, s.status, s.error_type) for s in result.trace if s.model is not None]
    assert calls == [("big", "error", "EndpointUnreachableError"), ("small", "ok", None)]


async def test_a_request_the_model_rejects_is_not_sent_to_the_fallback():
    with pytest.raises(RequestRejectedError) as failure:
        await run_topology(with_fallback(wrong_request), "hello", InProcessRuntime())
    assert {s.agent for s in failure.value.trace if s.model is not None} == {"big"}


def test_fallbacks_are_started_with_the_topology_and_named_uniquely():
    spec = with_fallback(down)
    assert [m.name for m in spec.models()] == ["big", "small"]
