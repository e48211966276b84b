"""Agent actors across the cluster: hosted teams, coordinator replicas, autoscaling, user code."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest
import ray

from cantata.agents import (
    Autoscaling,
    CantataError,
    FunctionConfig,
    Host,
    ModelActor,
    ModelReply,
    ModelRequest,
    ModelSpec,
    Resources,
)
from cantata.cluster import RayRuntime, deploy
from cantata.topologies import (
    Code,
    Coordinator,
    Label,
    ModelClassifier,
    PipelineSpec,
    RouterSpec,
    SingleSpec,
    Stage,
    Voter,
    VoteSpec,
    run_topology,
)

pytestmark = pytest.mark.ray


def say(text: str, delay_s: float = 0.0):
    async def answer(request: ModelRequest) -> str:
        await asyncio.sleep(delay_s)
        return text

    return answer


def model(name: str, fn, *, custom: dict[str, float] | None = None, **fields) -> ModelSpec:
    return ModelSpec(
        name=name,
        backend=FunctionConfig(fn=fn),
        resources=Resources(num_cpus=0.05, custom=custom or {}),
        **fields,
    )


def wait_for(predicate, limit_s: float) -> bool:
    give_up = time.monotonic() + limit_s
    while time.monotonic() < give_up:
        if predicate():
            return True
        time.sleep(0.25)
    return predicate()


@pytest.fixture(autouse=True)
def leaves_the_cluster_as_it_found_it(ray_cluster):
    """Each test gives back everything it reserved (Ray frees asynchronously: wait for it)."""
    before = ray.available_resources()
    yield
    assert wait_for(lambda: ray.available_resources() == before, 20)


def pinned_team() -> PipelineSpec:
    """An intake model, then a vote team hosted as its own actor on the big_model node."""
    on_gpu_node = {"big_model": 0.1}
    team = VoteSpec(
        name="refund-team",
        host=Host(actor=True, resources=Resources(num_cpus=0.05, custom=on_gpu_node)),
        members=[model(f"judge-{i}", say("approve"), custom=on_gpu_node) for i in (1, 2, 3)],
    )
    return PipelineSpec(
        name="desk",
        stages=[Stage(member=model("intake", say("refund request"))), Stage(member=team)],
        # Only the head node has 1.5 CPUs: the coordinator cannot share the team's node.
        coordinator=Coordinator(resources=Resources(num_cpus=1.5)),
    )


def test_a_hosted_team_runs_on_its_pinned_node_in_one_trace(ray_cluster):
    deployment = deploy(pinned_team(), "hosted-team")
    try:
        status = deployment.status()
        (team,) = [agent for agent in status.agents if agent.name == "refund-team"]
        assert team.role == "agent"
        assert [replica.node_id for replica in team.replicas] == [ray_cluster.gpu]
        judges = [m for m in status.models if m.name.startswith("judge-")]
        assert {r.node_id for m in judges for r in m.replicas} == {ray_cluster.gpu}
        (coordinator,) = [agent for agent in status.agents if agent.role == "coordinator"]

        result = deployment.call("I was charged twice")
        assert result.text == "approve"
        spans = {span.span_id: span for span in result.trace}
        root = result.trace[0]
        assert root.parent_id is None
        # Every other span hangs off a span of the same trace, across processes and nodes.
        assert all(s.parent_id in spans for s in result.trace[1:])
        assert {s.trace_id for s in result.trace} == {result.trace_id}
        team_root = next(s for s in result.trace if s.agent == "refund-team")
        assert team_root.node_id == ray_cluster.gpu
        assert team_root.actor_id == team.replicas[0].actor_id
        assert spans[team_root.parent_id].actor_id == coordinator.replicas[0].actor_id
        assert len({s.node_id for s in result.trace}) >= 2
        assert len({s.actor_id for s in result.trace}) >= 3  # coordinator, team, models
        assert len([s for s in result.trace if s.model]) == 4
    finally:
        deployment.down()


def test_a_one_off_run_hosts_the_team_the_same_way(ray_cluster):
    result = asyncio.run(run_topology(pinned_team(), "charged twice", RayRuntime()))
    assert result.text == "approve"
    team_root = next(s for s in result.trace if s.agent == "refund-team")
    assert team_root.node_id == ray_cluster.gpu
    assert all(s.parent_id in {x.span_id for x in result.trace} for s in result.trace[1:])


def test_killing_a_coordinator_loses_no_request(ray_cluster):
    spec = SingleSpec(
        name="coordinated",
        model=model("slow", say("done", delay_s=0.5), max_concurrency=32),
        coordinator=Coordinator(replicas=2),
    )
    deployment = deploy(spec, "coordinators")
    try:
        (coordinators,) = [a for a in deployment.status().agents if a.role == "coordinator"]
        assert len(coordinators.replicas) == 2
        victim = coordinators.replicas[0].pid
        assert victim is not None

        async def burst() -> list[object]:
            calls = [asyncio.ensure_future(deployment.acall(f"q{i}")) for i in range(16)]
            await asyncio.sleep(0.2)  # all 16 are in flight, shared by both coordinators
            os.kill(victim, signal.SIGKILL)
            return await asyncio.gather(*calls, return_exceptions=True)

        outcomes = asyncio.run(burst())
        # Each request ends in an answer or a typed error; none is lost or hangs.
        assert len(outcomes) == 16
        assert all(
            getattr(o, "text", None) == "done" or isinstance(o, CantataError) for o in outcomes
        ), outcomes
        # Model calls have no side effects, so the dead coordinator's requests were retried.
        assert all(getattr(o, "text", None) == "done" for o in outcomes), outcomes

        start = time.monotonic()
        assert deployment.call("again").text == "done"
        assert time.monotonic() - start < 10
        assert wait_for(
            lambda: all(
                r.healthy
                for a in deployment.status().agents
                if a.role == "coordinator"
                for r in a.replicas
            ),
            30,
        )
    finally:
        deployment.down()


def test_every_request_of_a_burst_reaches_the_books(ray_cluster):
    """Under load a coordinator sends ledger entries together; none is lost, and a caller
    that reads the books after its last answer finds every request in them (the report has
    the coordinators hand over their entries first: no waiting needed)."""
    spec = SingleSpec(
        name="booked", model=model("steady", say("done", delay_s=0.2), max_concurrency=64)
    )
    deployment = deploy(spec, "books")
    try:

        async def burst() -> list[object]:
            return await asyncio.gather(*(deployment.acall(f"q{i}") for i in range(40)))

        outcomes = asyncio.run(burst())
        assert [getattr(o, "text", None) for o in outcomes] == ["done"] * 40
        assert deployment.cost().total.requests == 40
        assert deployment.call("one more").text == "done"
        assert deployment.cost().total.requests == 41
    finally:
        deployment.down()


def gated(gate: Path):
    """Answers at once, except a 'wait' request, which waits until ``gate`` exists."""

    async def answer(request: ModelRequest) -> str:
        if request.messages[-1].content == "wait":
            while not gate.exists():
                await asyncio.sleep(0.02)
        return "done"

    return answer


def test_a_cost_report_includes_what_a_busy_coordinator_holds_back(ray_cluster, tmp_path):
    """While a request runs, a coordinator holds the entries of the ones that end (sent every
    LEDGER_BATCH_S); a cost report read right after their answers still counts them."""
    gate = tmp_path / "open"
    spec = SingleSpec(name="held", model=model("gated", gated(gate), max_concurrency=64))
    deployment = deploy(spec, "held-books")
    try:

        async def books_after_quick_answers() -> tuple[int, int]:
            waiting = asyncio.ensure_future(deployment.acall("wait"))
            quick = await asyncio.gather(*(deployment.acall(f"q{i}") for i in range(10)))
            assert [result.text for result in quick] == ["done"] * 10
            held = (await asyncio.to_thread(deployment.cost)).total.requests
            gate.touch()
            assert (await waiting).text == "done"
            return held, (await asyncio.to_thread(deployment.cost)).total.requests

        assert asyncio.run(books_after_quick_answers()) == (10, 11)
    finally:
        deployment.down()


def classify(request: ModelRequest) -> str:
    text = request.messages[-1].content
    return '{"label": "%s", "confidence": 0.9}' % ("slow" if "slow" in text else "quick")


def test_a_burst_grows_only_the_busy_model_and_it_shrinks_after(ray_cluster):
    policy = Autoscaling(
        min_replicas=1,
        max_replicas=3,
        target_in_flight=2,
        upscale_delay_s=0.5,
        downscale_delay_s=2.0,
    )
    spec = RouterSpec(
        name="scaled-router",
        classifier=ModelClassifier(
            model=model("clf", classify),
            labels={"slow": Label(description="slow"), "quick": Label(description="quick")},
        ),
        routes={
            "slow": model(
                "reasoner", say("thought", delay_s=1.0), max_concurrency=2, autoscaling=policy
            ),
            "quick": model("answerer", say("quick")),
        },
        default="quick",
    )
    deployment = deploy(spec, "autoscaled")

    def replicas() -> dict[str, int]:
        return {m.name: len(m.replicas) for m in deployment.status().models}

    try:
        assert replicas() == {"clf": 1, "reasoner": 1, "answerer": 1}

        async def burst() -> list[object]:
            calls = [deployment.acall(f"slow question {i}") for i in range(24)]
            return await asyncio.gather(*calls, return_exceptions=True)

        outcomes = asyncio.run(burst())
        assert [getattr(o, "text", o) for o in outcomes] == ["thought"] * 24
        status = deployment.status()
        grew = [d for d in status.scaling if d.target == "reasoner" and d.outcome == "scaled"]
        assert grew
        assert grew[0].replicas_after > grew[0].replicas_before
        assert max(d.replicas_after for d in grew) <= 3
        assert {d.target for d in status.scaling} == {"reasoner"}
        # Back down once the burst is over, and the other models never moved.
        assert wait_for(lambda: replicas() == {"clf": 1, "reasoner": 1, "answerer": 1}, 30)
        shrank = [d for d in deployment.status().scaling if d.replicas_after < d.replicas_before]
        assert shrank
    finally:
        deployment.down()


class ShoutingActor(ModelActor):
    """A custom model actor: upper-cases its model's replies."""

    async def complete(self, request: ModelRequest) -> ModelReply:
        reply = await super().complete(request)
        return reply.model_copy(update={"text": reply.text.upper()})


class LastWordVoter(Voter):
    """A custom role: the last member's ballot decides."""

    def decide(self, ballots, groups):
        decision = super().decide(ballots, groups)
        return decision.model_copy(update={"winner": ballots[-1].answer})


def test_custom_actor_classes_and_roles_work_in_run_and_deploy(ray_cluster):
    spec = VoteSpec(
        name="custom-code",
        members=[model("a", say("yes")), model("b", say("yes")), model("c", say("no"))],
    )
    code = Code(actor_classes={"c": ShoutingActor}, roles={Voter: LastWordVoter})
    ran = asyncio.run(run_topology(spec, "q", RayRuntime(), code=code))
    assert ran.text == "NO"
    deployment = deploy(spec, "custom-code", code=code)
    try:
        assert deployment.call("q").text == "NO"
    finally:
        deployment.down()
