"""Taking a deployment down: new requests are refused at once, typed; those in flight finish;
nothing is left behind."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import ray
from ray.util.placement_group import placement_group_table

from cantata.agents import FunctionConfig, ModelSpec, Resources, RuntimeFailure
from cantata.cluster import deploy
from cantata.topologies import SingleSpec
from tests.support.waiting import held_until, until

pytestmark = pytest.mark.ray


def held(release: Path, replicas: int = 1) -> SingleSpec:
    return SingleSpec(
        name="held",
        model=ModelSpec(
            name="m",
            backend=FunctionConfig(fn=held_until(release)),
            resources=Resources(num_cpus=0.1),
            replicas=replicas,
        ),
    )


def live_groups() -> int:
    return sum(1 for group in placement_group_table().values() if group["state"] != "REMOVED")


def test_down_refuses_new_requests_and_lets_those_in_flight_finish(ray_cluster, tmp_path):
    groups_before = live_groups()
    release = tmp_path / "release"
    deployment = deploy(held(release), "shutdown-test")
    (coordinator,) = deployment._balancer().replicas
    actor = coordinator.handle.actor
    in_flight = actor.call.remote("first", None, None)
    assert until(lambda: ray.get(actor.status.remote()).in_flight == 1)

    down = threading.Thread(target=deployment.down)
    down.start()
    try:
        assert until(lambda: "shutting down" in ray.get(actor.status.remote()).detail)
        with pytest.raises(RuntimeFailure, match="taken down"):
            deployment.call("second")
    finally:
        release.touch()
        down.join(timeout=120)
    assert not down.is_alive()
    assert ray.get(in_flight).text == "finished: first"
    assert until(lambda: live_groups() == groups_before)


def test_scaling_down_with_calls_in_flight_loses_none_of_them(ray_cluster, tmp_path):
    release = tmp_path / "release"
    deployment = deploy(held(release, replicas=2), "scale-down-test")
    try:
        (coordinator,) = deployment._balancer().replicas
        calls = [coordinator.handle.actor.call.remote(f"q{i}", None, None) for i in range(4)]

        def in_flight() -> list[int]:
            return [r.in_flight for r in deployment.status().models[0].replicas]

        assert until(lambda: in_flight() == [2, 2])  # both replicas hold calls
        scaling = threading.Thread(target=deployment.scale, args=("m", 1))
        scaling.start()
        release.touch()
        scaling.join(timeout=120)
        assert not scaling.is_alive()
        texts = sorted(result.text for result in ray.get(calls))
        replicas = deployment.status().models[0].replicas
    finally:
        deployment.down()
    assert texts == [f"finished: q{i}" for i in range(4)]
    assert len(replicas) == 1
