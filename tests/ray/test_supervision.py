"""Supervision on Ray: a call whose replica dies is retried on another; a replica that keeps
dying is restarted a bounded number of times, then left dead, with status saying why."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import ray

from cantata.agents import (
    ActorDiedError,
    Cooldown,
    FunctionConfig,
    ModelRequest,
    ModelSpec,
    Resources,
)
from cantata.cluster import deploy
from cantata.cluster._hosting import MAX_RESTARTS
from cantata.topologies import SingleSpec

pytestmark = pytest.mark.ray


def dies_once(marker: Path, calls: Path):
    """A backend whose first call, on whichever replica gets it, kills its process."""

    def answer(request: ModelRequest) -> str:
        with calls.open("a") as log:
            log.write(f"{os.getpid()}\n")
        if not marker.exists():
            marker.touch()
            os._exit(1)  # dies in the middle of the call
        return f"answered by {os.getpid()}"

    return answer


def always_dies(request: ModelRequest) -> str:
    os._exit(1)


def single(name: str, fn, replicas: int) -> SingleSpec:
    return SingleSpec(
        name=name,
        model=ModelSpec(
            name="m",
            backend=FunctionConfig(fn=fn),
            resources=Resources(num_cpus=0.1),
            replicas=replicas,
            cooldown=Cooldown(after_failures=1000),  # this test is about restarts, not cooling
        ),
    )


def test_a_call_whose_replica_dies_mid_call_is_answered_by_another(ray_cluster, tmp_path):
    marker, calls = tmp_path / "died", tmp_path / "calls"
    deployment = deploy(single("retried", dies_once(marker, calls), replicas=2), "retry-test")
    try:
        result = deployment.call("hello")
    finally:
        deployment.down()
    first, second = calls.read_text().split()
    assert first != second  # two backend calls, on two replicas: the one repeated call
    assert result.text == f"answered by {second}"


def test_a_replica_that_keeps_dying_is_restarted_a_bounded_number_of_times(ray_cluster):
    deployment = deploy(single("crashy", always_dies, replicas=1), "crash-test")
    try:
        (replica,) = deployment.status().models[0].replicas
        actor_id = replica.actor_id
        give_up = time.monotonic() + 120
        while time.monotonic() < give_up:
            if ray._private.state.actors(actor_id)["State"] == "DEAD":
                break
            with pytest.raises(ActorDiedError):  # every call fails typed, none hangs
                deployment.call("crash")
            time.sleep(0.2)
        table = ray._private.state.actors(actor_id)
        (replica,) = deployment.status().models[0].replicas
        with pytest.raises(ActorDiedError):  # dead for good: typed, at once
            deployment.call("after")
    finally:
        deployment.down()
    assert (table["State"], table["NumRestarts"]) == ("DEAD", MAX_RESTARTS)
    assert not replica.healthy
    assert "died" in replica.detail
