"""Model actors on a real multi-node Ray: placement, stamping, validation on arrival, failures."""

from __future__ import annotations

import time

import pytest
import ray

from cantata.agents import (
    ActorDiedError,
    BackendError,
    DeadlineExceededError,
    FunctionConfig,
    InvalidMessageError,
    ModelActor,
    ModelRequest,
    ModelSpec,
    Resources,
    UnschedulableError,
    XLlamaCppConfig,
)
from cantata.cluster import RayModelHandle, RayRuntime
from cantata.cluster._replicas import ReplicaSet
from cantata.topologies import SingleSpec, VoteSpec, answer, run_topology

pytestmark = pytest.mark.ray


def echo(request: ModelRequest) -> str:
    return "echo: " + request.messages[-1].content


def failing(request: ModelRequest) -> str:
    raise ValueError("the rule engine broke")


def spec(name: str = "echo", fn=echo, **resources) -> ModelSpec:
    return ModelSpec(
        name=name,
        backend=FunctionConfig(fn=fn),
        resources=Resources(**({"num_cpus": 0.25} | resources)),
    )


def alive_actor_count() -> int:
    # The state API needs the dashboard, which these tests do not start; the GCS table does not.
    actors = ray._private.state.actors().values()
    return sum(1 for actor in actors if actor["State"] != "DEAD")


async def start_one(runtime: RayRuntime, model: ModelSpec) -> RayModelHandle:
    """The one replica's own handle; the runtime hands out the model's replica set."""
    handles = await runtime.start_models([model])
    replica_set = handles[model.name]
    assert isinstance(replica_set, ReplicaSet)
    (replica,) = replica_set.replicas
    assert isinstance(replica.handle, RayModelHandle)
    STARTED[id(replica.handle)] = replica_set
    return replica.handle


STARTED: dict[int, ReplicaSet] = {}


async def stop_one(runtime: RayRuntime, handle: RayModelHandle) -> None:
    await runtime.stop_models([STARTED.pop(id(handle))])


async def test_reply_is_stamped_with_the_actor_and_node_that_served_it(ray_cluster):
    runtime = RayRuntime()
    handle = await start_one(runtime, spec())
    try:
        reply = await handle.complete(ModelRequest.from_prompt("hello"))
    finally:
        await stop_one(runtime, handle)
    assert reply.text == "echo: hello"
    assert reply.span.actor_id == handle.actor_id
    assert reply.span.node_id in {ray_cluster.head, ray_cluster.gpu, ray_cluster.cpu}
    assert reply.span.model_version == "1"


async def test_gpu_reservation_lands_on_the_node_that_declares_a_gpu(ray_cluster):
    runtime = RayRuntime()
    handle = await start_one(runtime, spec("big", num_cpus=0.5, num_gpus=1))
    try:
        reply = await handle.complete(ModelRequest.from_prompt("where am I?"))
        health = await handle.health()
    finally:
        await stop_one(runtime, handle)
    assert reply.span.node_id == ray_cluster.gpu
    assert health.node_id == ray_cluster.gpu
    assert health.served == 1


async def test_fractional_gpu_and_custom_resource_pin_to_their_node(ray_cluster):
    runtime = RayRuntime()
    handles = await runtime.start_models(
        [
            spec("quarter", num_cpus=0.1, num_gpus=0.25),
            spec("pinned", num_cpus=0.1, custom={"big_model": 0.5}),
        ]
    )
    try:
        nodes = {name: (await h.health()).node_id for name, h in handles.items()}
    finally:
        await runtime.stop_models(list(handles.values()))
    assert nodes == {"quarter": ray_cluster.gpu, "pinned": ray_cluster.gpu}


@pytest.mark.parametrize(
    ("resources", "missing"),
    [
        ({"num_gpus": 2}, {"GPU": 2}),
        ({"num_cpus": 3}, {"CPU": 3}),
        ({"custom": {"tpu_v9": 1}}, {"tpu_v9": 1}),
        ({"num_gpus": 1, "num_cpus": 2}, {"CPU": 2}),
    ],
)
async def test_reservation_no_node_can_hold_fails_fast_naming_what_is_missing(
    ray_cluster, resources, missing
):
    before = alive_actor_count()
    runtime = RayRuntime()
    with pytest.raises(UnschedulableError) as caught:
        await runtime.start_models([spec("fits"), spec("too-big", **resources)])
    assert caught.value.missing == missing
    for name in missing:
        assert name in str(caught.value)
    assert alive_actor_count() == before


async def test_models_that_fit_alone_but_not_together_fail_at_once(ray_cluster):
    before = alive_actor_count()
    runtime = RayRuntime()
    with pytest.raises(UnschedulableError, match="whole cluster"):
        await runtime.start_models(
            [
                spec("first", custom={"big_model": 1}),
                spec("second", custom={"big_model": 1}),
            ]
        )
    assert alive_actor_count() == before


async def test_feasible_but_occupied_reservation_times_out_and_cleans_up(ray_cluster):
    before = alive_actor_count()
    holder = RayRuntime()
    held = await holder.start_models([spec("holder", custom={"big_model": 1})])
    runtime = RayRuntime(start_timeout_s=3)
    try:
        with pytest.raises(UnschedulableError, match="within 3s"):
            await runtime.start_models([spec("waiting", custom={"big_model": 1})])
    finally:
        await holder.stop_models(list(held.values()))
    # ray.kill is asynchronous; give the GCS a moment to mark the actors dead.
    for _ in range(50):
        if alive_actor_count() == before:
            break
        time.sleep(0.1)
    assert alive_actor_count() == before


def live_placement_groups() -> int:
    table = ray.util.placement_group_table().values()
    return sum(1 for group in table if group["state"] != "REMOVED")


async def test_a_model_that_fails_to_start_fails_typed_and_leaves_nothing(ray_cluster, tmp_path):
    actors, groups = alive_actor_count(), live_placement_groups()
    missing = tmp_path / "no-such-model.gguf"
    broken = ModelSpec(
        name="broken",
        backend=XLlamaCppConfig(model_path=str(missing)),  # the default engine
        resources=Resources(num_cpus=0.25),
    )
    runtime = RayRuntime()
    with pytest.raises(BackendError, match="model file not found") as caught:
        # A good model beside it is started in the same batch, and cleaned up with it.
        await runtime.start_models([spec("fine"), broken])
    assert str(missing) in str(caught.value)
    for _ in range(100):  # ray.kill is asynchronous
        if (alive_actor_count(), live_placement_groups()) == (actors, groups):
            break
        time.sleep(0.1)
    assert (alive_actor_count(), live_placement_groups()) == (actors, groups)


async def test_forged_request_is_rejected_on_arrival_in_the_actor(ray_cluster):
    runtime = RayRuntime()
    handle = await start_one(runtime, spec())
    try:
        forged = ModelRequest.model_construct(messages="not a list of turns", max_tokens=-5)
        with pytest.raises(InvalidMessageError) as caught:
            await handle.complete(forged)
        raw = handle.actor.complete.remote({"kind": "model_request", "messages": []})
        with pytest.raises(InvalidMessageError):
            await handle._call(raw)
        health = await handle.health()
    finally:
        await stop_one(runtime, handle)
    assert "messages" in str(caught.value)
    assert "max_tokens" in str(caught.value)
    assert health.served == 0
    assert health.rejected == 2


async def test_backend_error_crosses_the_actor_boundary_typed(ray_cluster):
    runtime = RayRuntime()
    handle = await start_one(runtime, spec("broken", fn=failing))
    try:
        with pytest.raises(BackendError) as caught:
            await handle.complete(ModelRequest.from_prompt("hi"))
        with pytest.raises(DeadlineExceededError):
            await handle.complete(ModelRequest.from_prompt("late", deadline=time.time() - 1))
        health = await handle.health()
    finally:
        await stop_one(runtime, handle)
    assert "the rule engine broke" in str(caught.value)
    assert caught.value.model == "broken"
    assert health.failed == 1
    assert health.rejected == 1


async def test_dead_actor_is_a_typed_error(ray_cluster):
    runtime = RayRuntime()
    handle = await start_one(runtime, spec())
    ray.kill(handle.actor, no_restart=True)
    with pytest.raises(ActorDiedError) as caught:
        await handle.complete(ModelRequest.from_prompt("anyone there?"))
    assert caught.value.actor_id == handle.actor_id


def wait_until_dead(actor_id: str) -> None:
    # ray.kill is asynchronous: without this, the next call might still reach the actor.
    for _ in range(100):
        if ray._private.state.actors(actor_id)["State"] == "DEAD":
            return
        time.sleep(0.1)
    raise AssertionError(f"actor {actor_id} did not die within 10 s")


async def test_a_member_whose_actor_died_is_in_the_trace_with_its_error(ray_cluster):
    topology = VoteSpec(name="vote", members=[spec("a"), spec("b"), spec("c")], quorum=2)
    runtime = RayRuntime()
    handles = await runtime.start_models(topology.models())
    try:
        (dead,) = handles["b"].replicas  # type: ignore[attr-defined]
        ray.kill(dead.handle.actor, no_restart=True)
        wait_until_dead(dead.handle.actor_id)
        result = await answer(topology, "ping", handles)
    finally:
        await runtime.stop_models(list(handles.values()))

    assert result.text == "echo: ping"
    failed = [span for span in result.trace if span.status == "error"]
    assert [(s.agent, s.model, s.error_type) for s in failed] == [("b", "b", "ActorDiedError")]
    assert failed[0].actor_id == dead.handle.actor_id
    # Beside its siblings, under the vote's own span.
    assert failed[0].parent_id == result.trace[0].span_id
    calls = [s for s in result.trace if s.parent_id == failed[0].parent_id and s.model]
    assert sorted(s.agent for s in calls) == ["a", "b", "c"]


async def test_single_topology_runs_on_ray_with_parented_spans(ray_cluster):
    topology = SingleSpec(name="echo-topology", model=spec())
    result = await run_topology(topology, "ping", RayRuntime())
    root, model_span = result.trace
    assert result.text == "echo: ping"
    assert root.agent == "echo-topology"
    assert root.parent_id is None
    assert model_span.parent_id == root.span_id
    assert model_span.trace_id == root.trace_id == result.trace_id
    assert model_span.actor_id
    assert root.start <= model_span.start <= model_span.end <= root.end
    assert result.usage.input_tokens == 1
    assert result.usage.output_tokens == 2


class ShoutingActor(ModelActor):
    """A user's model actor: upper-cases replies."""

    async def complete(self, request: ModelRequest):
        reply = await super().complete(request)
        return reply.model_copy(update={"text": reply.text.upper()})


async def test_a_model_actor_subclass_is_hosted_for_its_model(ray_cluster):
    runtime = RayRuntime(actor_classes={"loud": ShoutingActor})
    handles = await runtime.start_models([spec("loud"), spec("quiet")])
    loud_actor = handles["loud"].replicas[0].handle.actor_id
    try:
        loud = await handles["loud"].complete(ModelRequest.from_prompt("hi"))
        quiet = await handles["quiet"].complete(ModelRequest.from_prompt("hi"))
    finally:
        await runtime.stop_models(list(handles.values()))
    assert loud.text == "ECHO: HI"
    assert quiet.text == "echo: hi"
    assert loud.span.actor_id == loud_actor
