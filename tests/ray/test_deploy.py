"""Deployments on the multi-node test cluster: placement, calls, scaling, teardown, failure."""

from __future__ import annotations

import time

import pytest
import ray
from ray.util.placement_group import placement_group_table

from cantata.agents import (
    FunctionConfig,
    ModelRequest,
    ModelSpec,
    Resources,
    TopologyError,
    UnschedulableError,
)
from cantata.cluster import ReplicaStatus, deploy, get_deployment, list_deployments
from cantata.topologies import FanoutSpec, Placement, RouterSpec, SingleSpec

pytestmark = pytest.mark.ray


def label_of(request: ModelRequest) -> str:
    return '{"label": "big", "confidence": 1.0}'


def answer_with(name: str):
    def answer(request: ModelRequest) -> str:
        return f"{name}: {request.messages[-1].content}"

    return answer


def model(name: str, fn=None, replicas: int = 1, **resources) -> ModelSpec:
    return ModelSpec(
        name=name,
        backend=FunctionConfig(fn=fn or answer_with(name)),
        resources=Resources(**resources),
        replicas=replicas,
    )


def live_groups() -> int:
    return sum(1 for group in placement_group_table().values() if group["state"] != "REMOVED")


def alive_actors() -> int:
    return sum(1 for actor in ray._private.state.actors().values() if actor["State"] != "DEAD")


def settle(predicate, limit_s: float = 15.0) -> bool:
    """Wait for Ray's bookkeeping (kills and removals are asynchronous) to catch up."""
    give_up = time.monotonic() + limit_s
    while time.monotonic() < give_up:
        if predicate():
            return True
        time.sleep(0.2)
    return predicate()


def test_deploy_places_call_scale_and_down(ray_cluster):
    available_before = ray.available_resources()
    topology = FanoutSpec(
        name="team",
        placement=Placement(strategy="SPREAD"),
        members=[
            model("big", num_cpus=0.5, num_gpus=1),
            model("small", replicas=2, num_cpus=0.25),
        ],
        quorum=2,
    )
    deployment = deploy(topology, "team-test")
    try:
        assert "team-test" in list_deployments()
        status = deployment.status()
        by_model = {m.name: m for m in status.models}
        (big,) = by_model["big"].replicas
        assert big.node_id == ray_cluster.gpu
        assert big.healthy
        small_nodes = [r.node_id for r in by_model["small"].replicas]
        assert len(small_nodes) == 2
        assert len(set(small_nodes)) == 2  # spread over two nodes
        assert by_model["small"].resources.num_cpus == 0.25

        # Any driver finds it by name; requests are balanced over the replicas. Sequential
        # calls leave both replicas idle each time, and ties between idle replicas go to the
        # one that has served fewer, so the eight calls split evenly, every run.
        handle = get_deployment("team-test")
        results = [handle.call(f"q{i}") for i in range(8)]
        assert all("big: q" in r.text and "small: q" in r.text for r in results)

        # A replica that misses status's health deadline (a loaded machine) reports what the
        # controller knows instead; read the counts once both replicas have answered.
        def small_replicas() -> list[ReplicaStatus]:
            return {m.name: m for m in handle.status().models}["small"].replicas

        replicas = small_replicas()
        give_up = time.monotonic() + 30
        while not all(r.healthy for r in replicas) and time.monotonic() < give_up:
            replicas = small_replicas()
        assert [r.served for r in replicas] == [4, 4]

        scaled = deployment.scale("small", 3)
        assert len({m.name: m for m in scaled.models}["small"].replicas) == 3
        assert handle.call("after scale-up").text.count("small:") == 1
        scaled = deployment.scale("small", 1)
        assert len({m.name: m for m in scaled.models}["small"].replicas) == 1
        assert "small: after" in handle.call("after scale-down").text
    finally:
        deployment.down()
    assert "team-test" not in list_deployments()
    assert settle(lambda: ray.available_resources() == available_before)


def test_deploy_that_no_node_can_hold_fails_fast_and_leaves_nothing(ray_cluster):
    groups, actors = live_groups(), alive_actors()
    topology = SingleSpec(name="huge", model=model("huge", num_gpus=2))
    start = time.monotonic()
    with pytest.raises(UnschedulableError) as caught:
        deploy(topology, "huge-test", start_timeout_s=60)
    assert time.monotonic() - start < 60  # it did not wait out the start timeout
    assert caught.value.missing == {"GPU": 2.0}
    assert "huge-test" not in list_deployments()
    assert settle(lambda: (live_groups(), alive_actors()) == (groups, actors))


def test_deploy_larger_than_the_cluster_in_total_fails_and_leaves_nothing(ray_cluster):
    groups, actors = live_groups(), alive_actors()
    # Each replica fits a node, but five whole CPUs do not fit a four-CPU cluster.
    topology = SingleSpec(name="wide", model=model("wide", replicas=5, num_cpus=1))
    with pytest.raises(UnschedulableError, match="whole cluster"):
        deploy(topology, "wide-test")
    assert settle(lambda: (live_groups(), alive_actors()) == (groups, actors))


def test_deploy_that_cannot_fit_the_free_resources_times_out_and_leaves_nothing(ray_cluster):
    # The one big_model resource is held by another deployment: feasible, but not free now.
    holder = deploy(
        SingleSpec(name="holder", model=model("holder", num_cpus=0.1, custom={"big_model": 1})),
        "holder-test",
    )
    try:
        groups, actors = live_groups(), alive_actors()
        topology = SingleSpec(
            name="pinned", model=model("pinned", num_cpus=0.1, custom={"big_model": 1})
        )
        with pytest.raises(UnschedulableError, match="could not reserve"):
            deploy(topology, "pinned-test", start_timeout_s=3)
        assert settle(lambda: (live_groups(), alive_actors()) == (groups, actors))
    finally:
        holder.down()


def test_router_deployment_answers_with_its_route(ray_cluster):
    topology = RouterSpec.model_validate(
        {
            "pattern": "router",
            "name": "route",
            "classifier": {
                "type": "model",
                "model": model("classifier", fn=label_of, num_cpus=0.1),
                "labels": {"big": {"description": "hard questions"}},
            },
            "routes": {"big": model("expert", num_cpus=0.1), "small": model("fast", num_cpus=0.1)},
            "default": "small",
        }
    )
    deployment = deploy(topology, "route-test")
    try:
        result = deployment.call("why?")
    finally:
        deployment.down()
    assert result.route is not None
    assert result.route.target == "expert"
    assert result.text == "expert: why?"


def test_names_are_unique_and_unknown_names_are_typed_errors(ray_cluster):
    topology = SingleSpec(name="one", model=model("one", num_cpus=0.1))
    deployment = deploy(topology, "unique-test")
    try:
        with pytest.raises(TopologyError, match="already exists"):
            deploy(topology, "unique-test")
        with pytest.raises(TopologyError, match="no model or agent 'nope'"):
            deployment.scale("nope", 2)
    finally:
        deployment.down()
    with pytest.raises(TopologyError, match="no deployment named 'unique-test'"):
        get_deployment("unique-test")


def replica_health(deployment, model_name: str) -> list[bool]:
    (model_status,) = [m for m in deployment.status().models if m.name == model_name]
    return [replica.healthy for replica in model_status.replicas]


def test_a_lost_node_shows_unhealthy_replicas_that_recover_when_it_returns(ray_cluster):
    loopback = {"node_ip_address": "127.0.0.1", "object_store_memory": 100 * 2**20}
    node = ray_cluster.cluster.add_node(**loopback, num_cpus=1, resources={"spare": 1})
    topology = SingleSpec(name="fragile", model=model("fragile", num_cpus=0.5, custom={"spare": 1}))
    deployment = deploy(topology, "fragile-test")
    try:
        (controller,) = [
            actor
            for actor in ray._private.state.actors().values()
            if actor["Name"] == "deployment:fragile-test" and actor["State"] == "ALIVE"
        ]
        assert controller["Address"]["NodeID"] == ray_cluster.head  # it survives worker loss
        assert replica_health(deployment, "fragile") == [True]
        ray_cluster.cluster.remove_node(node)
        assert settle(lambda: replica_health(deployment, "fragile") == [False], limit_s=60)
        # Capacity comes back: the bundle is placed again and the replica restarts there.
        ray_cluster.cluster.add_node(**loopback, num_cpus=1, resources={"spare": 1})
        assert settle(lambda: replica_health(deployment, "fragile") == [True], limit_s=90)
        assert deployment.call("still there?").text == "fragile: still there?"
    finally:
        deployment.down()
