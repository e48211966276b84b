"""Chaos scenarios: faults injected into a real Ray cluster, and what came of them, as figures.

Each scenario is an async function that runs for real (a Ray cluster on loopback, deployments,
``kill -9``, nodes removed, a scripted HTTP server) and returns a small dataclass of figures:
requests completed, failed (by error type) and lost, backend calls made twice, time to recover,
attempts, latency, memory, key leaks. ``tests/chaos`` runs them at small sizes and asserts the
invariants only (nothing lost, every failure typed, no key anywhere); ``benchmarks/chaos.py``
runs them at the sizes of issue 9 and prints the figures (``docs/reliability.md`` quotes them).

The Ray scenarios use function backends that sleep (no inference), so they are quick. Backend
calls are counted where they happen: every call appends a line to a file (one ``write`` with
``O_APPEND`` each, so lines from concurrent calls and processes never mix). Faults are injected
only once the requests are observably in flight: the calls that must be hit wait at a gate (a
file) until the fault has happened, so no kill can come too early or too late.

Lost means a request that ended in neither a result nor an error: still pending when the
scenario stopped waiting (its deadline plus a margin).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import ray
import ray.cloudpickle
import structlog

from cantata.agents import (
    CantataError,
    Cooldown,
    FunctionConfig,
    ModelRequest,
    ModelSpec,
    Resources,
)
from cantata.cluster import Deployment, deploy
from cantata.topologies import (
    Coordinator,
    FanoutSpec,
    PlannerExecutorSpec,
    RunResult,
    SingleSpec,
)
from tests.support.http_server import RecordedRequest, Reply, ScriptedServer

# The backend functions below run in Ray workers, which may not import this file: ship it.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

T = TypeVar("T")

LOOPBACK: dict[str, Any] = {"node_ip_address": "127.0.0.1", "object_store_memory": 100 * 2**20}
"""Arguments for ``Cluster.add_node``: every node on 127.0.0.1, with a small object store."""

GATE_POLL_S = 0.02
SETTLE_MARGIN_S = 30.0
"""How long past their deadline the scenarios wait for requests before counting them lost."""


# -- backends that count their calls ---------------------------------------------------------------


def _note(path: str, line: str) -> None:
    """Append one line to ``path`` in one write (atomic for short lines with O_APPEND)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def worker(
    name: str, log: str, *, service_s: float, gate: str | None = None, gated: str = "r"
) -> Callable[[ModelRequest], Awaitable[str]]:
    """A model that notes each call in ``log``, works ``service_s``, and, for calls whose key
    starts with ``gated``, then waits until the file ``gate`` exists.

    A call's key is the first line of its last message: the scenario's request id, and for a
    planner's steps the step's prompt.
    """

    async def work(request: ModelRequest) -> str:
        key = request.messages[-1].content.splitlines()[0]
        _note(log, f"{name}\t{key}\t{os.getpid()}\n")
        await asyncio.sleep(service_s)
        while gate is not None and key.startswith(gated) and not os.path.exists(gate):
            await asyncio.sleep(GATE_POLL_S)
        return f"{name} did {key}"

    return work


async def two_step_plan(request: ModelRequest) -> str:
    """A planner: two independent steps for the ``work`` executor; any synthesis is short."""
    if request.response_format is None:
        return "synthesis of the steps"
    rid = request.messages[-1].content.split()[0]
    steps = [
        {"id": f"s{n}", "executor": "work", "prompt": f"{rid} part {n}", "depends_on": []}
        for n in (1, 2)
    ]
    return json.dumps({"steps": steps})


def backend_calls(log: str, model: str, prefix: str) -> tuple[int, int]:
    """Calls of ``model`` noted in ``log`` for keys starting with ``prefix``: how many, and how
    many of them repeated a call already made for the same key."""
    try:
        lines = Path(log).read_text().splitlines()
    except FileNotFoundError:
        return 0, 0
    keys = Counter(
        parts[1]
        for line in lines
        if len(parts := line.split("\t")) == 3 and parts[0] == model and parts[1].startswith(prefix)
    )
    return sum(keys.values()), sum(count - 1 for count in keys.values())


# -- requests and how they ended -------------------------------------------------------------------


@dataclass
class Ended:
    """How one request ended: its result or its error, and how long it took."""

    elapsed_s: float
    result: RunResult | None = None
    error: BaseException | None = None

    @property
    def error_type(self) -> str | None:
        return None if self.error is None else type(self.error).__name__

    @property
    def typed(self) -> bool:
        return self.error is None or isinstance(self.error, CantataError)


async def timed(call: Awaitable[RunResult]) -> Ended:
    start = time.monotonic()
    try:
        result = await call
    except Exception as exc:
        return Ended(time.monotonic() - start, error=exc)
    return Ended(time.monotonic() - start, result=result)


class Lost(Exception):
    """A request that ended in neither a result nor an error within its deadline and a margin."""


async def bounded(call: Awaitable[RunResult], deadline_s: float) -> Ended:
    """:func:`timed`, giving up ``SETTLE_MARGIN_S`` past ``deadline_s`` (the request is lost)."""
    start = time.monotonic()
    try:
        async with asyncio.timeout(deadline_s + SETTLE_MARGIN_S):
            return await timed(call)
    except TimeoutError:
        return Ended(time.monotonic() - start, error=Lost(f"no end after {deadline_s:g} s"))


async def settle(tasks: Sequence[asyncio.Task[Ended]], limit_s: float) -> tuple[list[Ended], int]:
    """Wait up to ``limit_s`` for ``tasks``; the ended ones, and how many never ended (lost)."""
    if not tasks:
        return [], 0
    done, pending = await asyncio.wait(tasks, timeout=limit_s)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    return [task.result() for task in tasks if task in done], len(pending)


@dataclass(frozen=True)
class Tally:
    """Requests submitted, and how they ended. ``lost`` ended in neither result nor error."""

    submitted: int
    completed: int
    failed: dict[str, int]
    untyped: int
    lost: int
    slowest_s: float

    @classmethod
    def of(cls, submitted: int, ended: Sequence[Ended], lost: int) -> Tally:
        failed = Counter(e.error_type for e in ended if e.error is not None)
        return cls(
            submitted=submitted,
            completed=sum(1 for e in ended if e.error is None),
            failed=dict(sorted(failed.items())),  # type: ignore[arg-type]
            untyped=sum(1 for e in ended if not e.typed),
            lost=lost,
            slowest_s=max((e.elapsed_s for e in ended), default=0.0),
        )

    @property
    def failed_total(self) -> int:
        return sum(self.failed.values())

    def rows(self) -> list[tuple[str, Any]]:
        failed = ", ".join(f"{k} {v}" for k, v in self.failed.items()) or "0"
        return [
            ("submitted", self.submitted),
            ("completed", self.completed),
            ("failed (typed, by type)", failed),
            ("failed untyped", self.untyped),
            ("lost", self.lost),
        ]


async def abandon(tasks: Sequence[asyncio.Task[Ended]]) -> None:
    """Cancel the tasks a failed scenario left running (none, when it ran to its end)."""
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def tally_of(ends: Sequence[Ended]) -> Tally:
    """The tally of requests bounded one by one (:func:`bounded`): the lost ones ended in
    :class:`Lost`."""
    kept = [e for e in ends if not isinstance(e.error, Lost)]
    return Tally.of(len(ends), kept, len(ends) - len(kept))


def percentile(values: Sequence[float], q: float) -> float | None:
    """The nearest-rank ``q``-th percentile of ``values`` (None when empty)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def ms(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds * 1000:.0f} ms"


def sec(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds:.2f} s"


# -- polling the cluster ---------------------------------------------------------------------------


async def poll(
    read: Callable[[], T], done: Callable[[T], bool], *, limit_s: float, every_s: float = 0.1
) -> tuple[T, bool]:
    """Call the blocking ``read`` (in a thread) until ``done(value)``; the last value, and
    whether ``done`` held before ``limit_s``."""
    give_up = time.monotonic() + limit_s
    while True:
        value = await asyncio.to_thread(read)
        if done(value):
            return value, True
        if time.monotonic() > give_up:
            return value, False
        await asyncio.sleep(every_s)


def model_replicas(deployment: Deployment, model: str) -> dict[str, Any]:
    """A model's replicas in ``deployment.status()``, by actor id."""
    (status,) = [m for m in deployment.status().models if m.name == model]
    return {replica.actor_id: replica for replica in status.replicas}


def actor_record(actor_id: str) -> dict[str, Any]:
    """What the GCS knows of an actor: ``Pid``, ``State``, ``NumRestarts``, its node."""
    record: dict[str, Any] = ray._private.state.actors(actor_id)
    return record


def rss_mib(pid: int) -> float | None:
    """Resident memory of process ``pid`` in MiB, from /proc (None when it cannot be read)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        return None
    return None


class RssSampler:
    """Samples the RSS of some processes every ``every_s`` in a thread; keeps each one's peak."""

    def __init__(self, pids: dict[str, int], every_s: float = 0.02) -> None:
        self.pids = pids
        self.every_s = every_s
        self.peak: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for name, pid in self.pids.items():
                value = rss_mib(pid)
                if value is not None:
                    self.peak[name] = max(value, self.peak.get(name, 0.0))
            self._stop.wait(self.every_s)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


@contextlib.contextmanager
def workdir() -> Iterator[Path]:
    """A private temporary directory for a scenario's call log and gate."""
    path = Path(tempfile.mkdtemp(prefix="cantata-chaos-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


async def deployed(topology: Any, name: str) -> Deployment:
    """Deploy ``topology`` as ``name`` and warm up the handle's view of its coordinators."""
    deployment = await asyncio.to_thread(deploy, topology, name)
    await asyncio.to_thread(deployment._balancer)
    return deployment


def fast_model(name: str, fn: Callable[..., Any], **fields: Any) -> ModelSpec:
    """A function model with a small CPU reservation (``fields`` override the spec's)."""
    resources = fields.pop("resources", Resources(num_cpus=0.1))
    return ModelSpec(name=name, backend=FunctionConfig(fn=fn), resources=resources, **fields)


def breaker(cooldown_s: float) -> Cooldown:
    """The default breaker (five failures in a row), cooling down for ``cooldown_s``."""
    return Cooldown(cooldown_s=cooldown_s)


async def served_by(
    deployment: Deployment,
    model: str,
    actor_id: str,
    *,
    since: float,
    limit_s: float,
    deadline_s: float,
    prefix: str = "p",
) -> tuple[float | None, int]:
    """Send probe requests one at a time until one's ``model`` call is served by ``actor_id``;
    the seconds from ``since`` (monotonic) until then (None if never), and the probes sent."""
    give_up = time.monotonic() + limit_s
    sent = 0
    while time.monotonic() < give_up:
        ended = await timed(deployment.acall(f"{prefix}{sent:03d}", timeout_s=deadline_s))
        sent += 1
        spans = () if ended.result is None else ended.result.trace
        if any(s.agent == model and s.status == "ok" and s.actor_id == actor_id for s in spans):
            return time.monotonic() - since, sent
        await asyncio.sleep(0.05)
    return None, sent


# -- 1. a model replica killed (SIGKILL) with requests in flight -----------------------------------


@dataclass(frozen=True)
class ReplicaKill:
    """A fan-out's model replica killed with ``kill -9`` while every request was in flight.

    ``killed_held`` is how many of the model's calls the killed replica was holding;
    ``backend_calls`` counts the calls that reached the killed model's backend (either
    replica), and ``duplicated_calls`` those that repeated a call already started: the calls
    retried on the other replica after the kill. ``done_s``, ``restart_s`` and
    ``traffic_back_s`` count from the kill: until every request had ended, until Ray had the
    replica running again (healthy in ``status``), until it served a call again (after its
    circuit breaker's ``cooldown_s`` in the coordinator).
    """

    tally: Tally
    killed_held: int
    backend_calls: int
    duplicated_calls: int
    done_s: float
    restart_s: float | None
    traffic_back_s: float | None
    restarts: int
    cooldown_s: float
    deadline_s: float
    p99_s: float | None

    def rows(self) -> list[tuple[str, Any]]:
        return [
            ("requests in flight at the kill", self.tally.submitted),
            *self.tally.rows()[1:],
            ("calls the killed replica held", self.killed_held),
            ("backend calls (killed model)", self.backend_calls),
            ("duplicated backend calls", self.duplicated_calls),
            ("slowest request / deadline", f"{sec(self.tally.slowest_s)} / {sec(self.deadline_s)}"),
            ("p99 request latency", sec(self.p99_s)),
            ("kill -> every request ended", sec(self.done_s)),
            ("kill -> replica restarted (healthy)", sec(self.restart_s)),
            (f"kill -> it serves again (cooldown {self.cooldown_s:g} s)", sec(self.traffic_back_s)),
            ("restarts (Ray)", self.restarts),
        ]


async def replica_kill(
    *,
    requests: int = 64,
    service_s: float = 0.2,
    deadline_s: float = 60.0,
    cooldown_s: float = 5.0,
    name: str = "chaos-kill",
) -> ReplicaKill:
    """``requests`` at once through a fan-out of ``steady`` (one replica) and ``victim`` (two
    replicas; every call waits at a gate); once all of victim's calls are held by its replicas,
    the busier replica's process is killed with SIGKILL and the gate opens."""
    with workdir() as work:
        log, gate = str(work / "calls.log"), str(work / "gate")
        steady = fast_model(
            "steady", worker("steady", log, service_s=service_s), max_concurrency=requests
        )
        victim = fast_model(
            "victim",
            worker("victim", log, service_s=service_s, gate=gate),
            replicas=2,
            max_concurrency=requests,
            cooldown=breaker(cooldown_s),
        )
        topology = FanoutSpec(name=name, members=[steady, victim], quorum=2, timeout_s=deadline_s)
        deployment = await deployed(topology, name)
        tasks: list[asyncio.Task[Ended]] = []
        try:
            tasks += [
                asyncio.ensure_future(timed(deployment.acall(f"r{i:03d}", timeout_s=deadline_s)))
                for i in range(requests)
            ]
            # Observably in flight: every victim call is running or queued at a replica.
            replicas, held = await poll(
                lambda: model_replicas(deployment, "victim"),
                lambda rs: sum(r.in_flight + r.queued for r in rs.values()) == requests,
                limit_s=deadline_s,
            )
            if not held:
                raise RuntimeError(f"the calls never all reached the replicas: {replicas}")
            target = max(replicas.values(), key=lambda r: r.in_flight + r.queued)
            before = await asyncio.to_thread(actor_record, target.actor_id)
            killed_at = time.monotonic()
            os.kill(int(before["Pid"]), signal.SIGKILL)
            Path(gate).touch()
            ended, lost = await settle(tasks, deadline_s + SETTLE_MARGIN_S)
            done_s = time.monotonic() - killed_at

            def restarted() -> bool:
                record = actor_record(target.actor_id)
                if record["State"] != "ALIVE" or record["NumRestarts"] <= before["NumRestarts"]:
                    return False
                return bool(model_replicas(deployment, "victim")[target.actor_id].healthy)

            _, up = await poll(restarted, bool, limit_s=90.0, every_s=0.05)
            restart_s = time.monotonic() - killed_at if up else None
            traffic_back_s, _ = await served_by(
                deployment,
                "victim",
                target.actor_id,
                since=killed_at,
                limit_s=cooldown_s + 60.0,
                deadline_s=deadline_s,
            )
            after = await asyncio.to_thread(actor_record, target.actor_id)
        finally:
            await abandon(tasks)
            await asyncio.to_thread(deployment.down)
        calls, duplicated = backend_calls(log, "victim", "r")
    return ReplicaKill(
        tally=Tally.of(requests, ended, lost),
        killed_held=target.in_flight + target.queued,
        backend_calls=calls,
        duplicated_calls=duplicated,
        done_s=done_s,
        restart_s=restart_s,
        traffic_back_s=traffic_back_s,
        restarts=int(after["NumRestarts"]) - int(before["NumRestarts"]),
        cooldown_s=cooldown_s,
        deadline_s=deadline_s,
        p99_s=percentile([e.elapsed_s for e in ended], 99),
    )


# -- 2. a node lost while a planner-executor serves ------------------------------------------------


@dataclass(frozen=True)
class NodeLoss:
    """A node removed from the cluster while a planner-executor deployment serves requests.

    The executor has two replicas, one on a node that stays and one on the node removed;
    every executor call waits at a gate until the node is gone. ``lost_held`` is how many
    executor calls the removed node's replica held. ``heal_s`` counts from the moment a node
    with the same resources joins until every replica is healthy again; ``traffic_back_s``
    until the replica restarted there served a call.
    """

    tally: Tally
    nodes: int
    lost_held: int
    backend_calls: int
    duplicated_calls: int
    done_s: float
    unhealthy_seen: bool
    heal_s: float | None
    healed_on_new_node: bool
    traffic_back_s: float | None
    cooldown_s: float
    deadline_s: float

    def rows(self) -> list[tuple[str, Any]]:
        return [
            ("cluster nodes before the loss", self.nodes),
            *self.tally.rows(),
            ("executor calls on the lost node", self.lost_held),
            ("executor backend calls", self.backend_calls),
            ("duplicated backend calls", self.duplicated_calls),
            ("slowest request / deadline", f"{sec(self.tally.slowest_s)} / {sec(self.deadline_s)}"),
            ("node removed -> every request ended", sec(self.done_s)),
            ("status showed the replica unhealthy", "yes" if self.unhealthy_seen else "no"),
            ("capacity back -> every replica healthy", sec(self.heal_s)),
            ("restarted on the new node", "yes" if self.healed_on_new_node else "no"),
            (
                f"capacity back -> it serves again (cooldown {self.cooldown_s:g} s)",
                sec(self.traffic_back_s),
            ),
        ]


async def node_loss(
    cluster: Any,
    *,
    requests: int = 20,
    service_s: float = 0.2,
    deadline_s: float = 30.0,
    cooldown_s: float = 5.0,
    name: str = "chaos-node",
) -> NodeLoss:
    """Adds two nodes to ``cluster`` (a ``ray.cluster_utils.Cluster``): ``stable`` holds the
    coordinator, the planner and one executor replica; ``doomed`` the other executor replica.
    Sends ``requests`` requests (two executor steps each); once every executor call is held,
    removes ``doomed``, then brings the capacity back with a new node, and removes the nodes
    it added at the end."""
    added: list[Any] = []

    def add(resources: dict[str, float]) -> Any:
        # In this thread: Ray's Node sets signal handlers, which only the main thread may. It
        # blocks the event loop for the second or so a node takes to start; nothing is in
        # flight then.
        node = cluster.add_node(**LOOPBACK, num_cpus=1, resources=resources)
        added.append(node)
        return node

    with workdir() as work:
        log, gate = str(work / "calls.log"), str(work / "gate")
        try:
            add({"chaos_stable": 10, "chaos_exec": 1})
            doomed = add({"chaos_exec": 1})
            nodes = sum(1 for node in ray.nodes() if node["Alive"])  # type: ignore[no-untyped-call]
            stable = {"chaos_stable": 1.0}
            planner = fast_model(
                "planner",
                two_step_plan,
                resources=Resources(num_cpus=0.1, custom=stable),
                max_concurrency=requests * 2,
            )
            executor = fast_model(
                "executor",
                worker("executor", log, service_s=service_s, gate=gate),
                resources=Resources(num_cpus=0.1, custom={"chaos_exec": 1}),
                replicas=2,
                max_concurrency=requests * 2,
                cooldown=breaker(cooldown_s),
            )
            topology = PlannerExecutorSpec(
                name=name,
                planner=planner,
                executors={"work": executor},
                max_steps=2,
                timeout_s=deadline_s,
                coordinator=Coordinator(resources=Resources(num_cpus=0, custom=stable)),
            )
            deployment = await deployed(topology, name)
            tasks: list[asyncio.Task[Ended]] = []
            try:
                tasks += [
                    asyncio.ensure_future(
                        timed(deployment.acall(f"r{i:03d} request", timeout_s=deadline_s))
                    )
                    for i in range(requests)
                ]
                replicas, held = await poll(
                    lambda: model_replicas(deployment, "executor"),
                    lambda rs: sum(r.in_flight + r.queued for r in rs.values()) == 2 * requests,
                    limit_s=deadline_s,
                )
                if not held:
                    raise RuntimeError(f"the steps never all reached the executors: {replicas}")
                (lost_replica,) = [r for r in replicas.values() if r.node_id == doomed.node_id]
                removed_at = time.monotonic()
                cluster.remove_node(doomed)  # kills the node's processes: its raylet, its actors
                added.remove(doomed)
                Path(gate).touch()
                ended, lost = await settle(tasks, deadline_s + SETTLE_MARGIN_S)
                done_s = time.monotonic() - removed_at
                _, unhealthy_seen = await poll(
                    lambda: model_replicas(deployment, "executor")[lost_replica.actor_id],
                    lambda r: not r.healthy,
                    limit_s=60.0,
                )
                # Capacity comes back: a new node with the same resources.
                returned_at = time.monotonic()
                fresh = add({"chaos_exec": 1})
                healed, ok = await poll(
                    lambda: model_replicas(deployment, "executor"),
                    lambda rs: all(r.healthy for r in rs.values()),
                    limit_s=120.0,
                    every_s=0.05,
                )
                heal_s = time.monotonic() - returned_at if ok else None
                on_new_node = healed[lost_replica.actor_id].node_id == fresh.node_id
                traffic_back_s, _ = await served_by(
                    deployment,
                    "executor",
                    lost_replica.actor_id,
                    since=returned_at,
                    limit_s=cooldown_s + 60.0,
                    deadline_s=deadline_s,
                )
            finally:
                await abandon(tasks)
                await asyncio.to_thread(deployment.down)
        finally:
            for node in added:
                cluster.remove_node(node)
        calls, duplicated = backend_calls(log, "executor", "r")
    return NodeLoss(
        tally=Tally.of(requests, ended, lost),
        nodes=nodes,
        lost_held=lost_replica.in_flight + lost_replica.queued,
        backend_calls=calls,
        duplicated_calls=duplicated,
        done_s=done_s,
        unhealthy_seen=unhealthy_seen,
        heal_s=heal_s,
        healed_on_new_node=on_new_node,
        traffic_back_s=traffic_back_s,
        cooldown_s=cooldown_s,
        deadline_s=deadline_s,
    )


# -- 4. a burst of ten times capacity --------------------------------------------------------------


@dataclass(frozen=True)
class Burst:
    """``factor`` times what a model replica holds (``max_concurrency`` running plus
    ``max_queued`` waiting), sent at once. Refused requests end with OverloadedError; the
    accepted ones complete. RSS is the model actor's and the coordinator's resident memory
    (from /proc) before the burst, at its peak during it, and after."""

    tally: Tally
    capacity: int
    held_at_gate: bool
    idle_s: float
    refused: int
    refused_p50_s: float | None
    refused_p99_s: float | None
    refused_max_s: float | None
    refusal_in_replica_max_s: float | None
    accepted_p50_s: float | None
    accepted_p99_s: float | None
    service_s: float
    status_refused: int
    coordinator_refused: int
    rss_mib: dict[str, tuple[float | None, float | None, float | None]]

    def rows(self) -> list[tuple[str, Any]]:
        rows: list[tuple[str, Any]] = [
            ("replica capacity (running + queued)", self.capacity),
            ("burst", f"{self.tally.submitted} at once"),
            *self.tally.rows()[1:],
            ("refused with OverloadedError", self.refused),
            (
                "status's refused column: model replica / coordinator",
                f"{self.status_refused} / {self.coordinator_refused}",
            ),
            (
                "refusal latency p50 / p99 / max",
                "/".join(
                    ms(v) for v in (self.refused_p50_s, self.refused_p99_s, self.refused_max_s)
                ),
            ),
            ("longest refusal inside the replica (its span)", ms(self.refusal_in_replica_max_s)),
            (
                "accepted latency p50 / p99",
                f"{ms(self.accepted_p50_s)} / {ms(self.accepted_p99_s)}",
            ),
            ("one request alone (model service time)", f"{ms(self.idle_s)} ({ms(self.service_s)})"),
        ]
        for process, (before, peak, after) in self.rss_mib.items():
            figures = " / ".join("n/a" if v is None else f"{v:.0f}" for v in (before, peak, after))
            rows.append((f"{process} RSS before / peak / after (MiB)", figures))
        return rows


async def burst(
    *,
    factor: int = 10,
    max_concurrency: int = 4,
    max_queued: int = 16,
    service_s: float = 0.2,
    hold: bool = False,
    deadline_s: float = 60.0,
    name: str = "chaos-burst",
) -> Burst:
    """``factor`` times a replica's capacity at once to a single-model deployment.

    With ``hold`` the accepted calls wait at a gate until every other request has been
    refused, so exactly ``capacity`` are accepted; without it they run at ``service_s`` each
    and calls that free a slot during the burst let later requests in. The coordinator keeps
    its default ``max_in_flight`` (256): a burst larger than that is refused there too.
    """
    capacity = max_concurrency + max_queued
    requests = factor * capacity
    with workdir() as work:
        log, gate = str(work / "calls.log"), str(work / "gate")
        model = fast_model(
            "bounded",
            worker("bounded", log, service_s=service_s, gate=gate if hold else None),
            max_concurrency=max_concurrency,
            max_queued=max_queued,
        )
        topology = SingleSpec(name=name, model=model, timeout_s=deadline_s)
        deployment = await deployed(topology, name)
        tasks: list[asyncio.Task[Ended]] = []
        try:
            await deployment.acall("warm-up", timeout_s=deadline_s)
            idle = await timed(deployment.acall("alone", timeout_s=deadline_s))
            status = await asyncio.to_thread(deployment.status)
            (replica,) = status.models[0].replicas
            (coordinator,) = next(a for a in status.agents if a.role == "coordinator").replicas
            pids = {
                "model actor": int(
                    (await asyncio.to_thread(actor_record, replica.actor_id))["Pid"]
                ),
                "coordinator": int(coordinator.pid or 0),
            }
            before = {process: rss_mib(pid) for process, pid in pids.items()}
            with RssSampler(pids) as sampler:
                tasks += [
                    asyncio.ensure_future(
                        timed(deployment.acall(f"r{i:03d}", timeout_s=deadline_s))
                    )
                    for i in range(requests)
                ]
                if hold:

                    def refusals() -> int:
                        return sum(
                            1
                            for t in tasks
                            if t.done() and t.result().error_type == "OverloadedError"
                        )

                    give_up = time.monotonic() + deadline_s
                    while refusals() < requests - capacity and time.monotonic() < give_up:
                        await asyncio.sleep(0.02)
                    Path(gate).touch()
                ended, lost = await settle(tasks, deadline_s + SETTLE_MARGIN_S)
            after = {process: rss_mib(pid) for process, pid in pids.items()}
            status = await asyncio.to_thread(deployment.status)
            (replica,) = status.models[0].replicas
            (coordinator,) = next(a for a in status.agents if a.role == "coordinator").replicas
        finally:
            await abandon(tasks)
            await asyncio.to_thread(deployment.down)
    refused = [e.elapsed_s for e in ended if e.error_type == "OverloadedError"]
    accepted = [e.elapsed_s for e in ended if e.error is None]
    in_replica = [
        span.latency_ms / 1000
        for e in ended
        if e.error_type == "OverloadedError"
        for span in getattr(e.error, "trace", ())
        if span.agent == "bounded" and span.error_type == "OverloadedError"
    ]
    return Burst(
        tally=Tally.of(requests, ended, lost),
        capacity=capacity,
        held_at_gate=hold,
        idle_s=idle.elapsed_s,
        refused=len(refused),
        refused_p50_s=percentile(refused, 50),
        refused_p99_s=percentile(refused, 99),
        refused_max_s=max(refused, default=None),
        refusal_in_replica_max_s=max(in_replica, default=None),
        accepted_p50_s=percentile(accepted, 50),
        accepted_p99_s=percentile(accepted, 99),
        service_s=service_s,
        status_refused=replica.refused,
        coordinator_refused=coordinator.refused,
        rss_mib={p: (before[p], sampler.peak.get(p), after[p]) for p in pids},
    )


# -- a cluster of our own (for the benchmark; the tests use the session's) -------------------------


@contextlib.contextmanager
def local_cluster(head_cpus: int = 2) -> Iterator[Any]:
    """A one-node ``ray.cluster_utils.Cluster`` on 127.0.0.1, connected; scenarios add nodes.

    Set ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` before Ray is imported, as tests/conftest.py
    does, so that added nodes stay on loopback.
    """
    from ray.cluster_utils import Cluster  # noqa: PLC0415

    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            **LOOPBACK,
            "num_cpus": head_cpus,
            "include_dashboard": False,
            "_system_config": {"metrics_report_interval_ms": 1000},
        },
    )
    ray.init(address=cluster.address, _node_ip_address="127.0.0.1", namespace="cantata-chaos")
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


# -- keys, leaks and what a process printed --------------------------------------------------------


def canary_key() -> str:
    """A fresh API key that cannot occur anywhere by chance."""
    return f"sk-canary-{os.urandom(16).hex()}"


@contextlib.contextmanager
def keyed_node(cluster: Any, var: str, key: str, resource: str) -> Iterator[Any]:
    """A node started with ``var=key`` in its environment (as ``ray start`` under an exported
    variable), declaring ``resource``; the driver holds the variable too, while it lasts."""
    before = os.environ.get(var)
    os.environ[var] = key
    try:
        node = cluster.add_node(**LOOPBACK, num_cpus=1, resources={resource: 100})
        try:
            yield node
        finally:
            cluster.remove_node(node)
    finally:
        if before is None:
            os.environ.pop(var, None)
        else:
            os.environ[var] = before


@contextlib.contextmanager
def captured_output(path: Path, level: str = "debug") -> Iterator[None]:
    """Everything this process writes to stdout and stderr goes to ``path`` meanwhile: the
    file descriptors (C code, child processes), Python's streams (Ray's forwarding of actors'
    log lines), and structlog, configured at ``level`` on the captured stderr."""
    from cantata.agents import LogConfig, configure_logging  # noqa: PLC0415

    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    saved = os.dup(1), os.dup(2)
    streams = sys.stdout, sys.stderr
    stream = open(path, "a", buffering=1, encoding="utf-8", errors="replace")  # noqa: SIM115
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.stdout = sys.stderr = stream
    configure_logging(LogConfig(level=level))  # type: ignore[arg-type]
    try:
        yield
    finally:
        stream.flush()
        sys.stdout, sys.stderr = streams
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for descriptor in (*saved, fd):
            os.close(descriptor)
        stream.close()
        # structlog as it was before: other tests in this process capture its output.
        structlog.reset_defaults()


def session_dir() -> Path:
    """The connected cluster's Ray session directory (its logs are under ``logs/``)."""
    return Path(ray._private.worker._global_node.get_session_dir_path())


def scrape_metrics() -> dict[str, str]:
    """The Prometheus text of every alive node's metrics endpoint, by URL."""
    import httpx  # noqa: PLC0415

    pages = {}
    for node in ray.nodes():  # type: ignore[no-untyped-call]
        if not node["Alive"]:
            continue
        url = f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
        with contextlib.suppress(httpx.HTTPError):
            pages[url] = httpx.get(url, timeout=10, trust_env=False).text
    return pages


CONTROL = "python-httpx/"
"""Part of the User-Agent header the HTTP backend sends: servers that quote the request's
headers quote it beside the key, unscrubbed, so finding it shows that an audited place does
receive what servers answer (the audit is not looking where nothing could ever be)."""


@dataclass
class LeakAudit:
    """Counts occurrences of ``key`` in everything a scenario produced, by where it looked,
    and of :data:`CONTROL`, which travels the same paths unscrubbed."""

    key: str
    since: float = field(default_factory=time.time)
    checked: Counter[str] = field(default_factory=Counter)
    found: Counter[str] = field(default_factory=Counter)
    controls: Counter[str] = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)

    def text(self, source: str, text: str) -> None:
        self.checked[source] += 1
        self.found[source] += text.count(self.key)
        self.controls[source] += text.count(CONTROL)

    def error(self, exc: BaseException) -> None:
        """An exception's text: ``str``, ``repr``, the formatted traceback (causes and
        context included), and its spans."""
        import traceback  # noqa: PLC0415

        self.text("exception text", str(exc))
        self.text("exception text", repr(exc))
        self.text("exception text", "".join(traceback.format_exception(exc)))
        spans = [*getattr(exc, "trace", ()), getattr(exc, "span", None)]
        for span in spans:
            if span is not None:
                self.text("traces (spans)", span.model_dump_json())

    def result(self, result: RunResult) -> None:
        self.text("results", result.model_dump_json(exclude={"trace"}))
        for span in result.trace:
            self.text("traces (spans)", span.model_dump_json())

    def ended(self, ended: Ended) -> None:
        if ended.error is not None:
            self.error(ended.error)
        if ended.result is not None:
            self.result(ended.result)

    def files(self, source: str, root: Path) -> None:
        """Every file under ``root`` modified since the audit began."""
        wanted, control = self.key.encode(), CONTROL.encode()
        for path in sorted(root.rglob("*")):
            with contextlib.suppress(OSError):
                if path.is_file() and not path.is_symlink() and path.stat().st_mtime >= self.since:
                    data = path.read_bytes()
                    self.checked[source] += 1
                    self.found[source] += data.count(wanted)
                    self.controls[source] += data.count(control)

    def metrics(self, model: str, limit_s: float = 120.0) -> None:
        """Every node's metrics, once the series of ``model`` have been reported (a node added
        a moment ago starts its metrics agent asynchronously; if its series never show within
        ``limit_s``, what could be scraped is audited and a note says so)."""
        give_up = time.monotonic() + limit_s
        pages = scrape_metrics()
        while not any(f'model="{model}"' in page for page in pages.values()):
            if time.monotonic() > give_up:
                self.notes.append(f"metrics: no series of {model} within {limit_s:g} s")
                break
            time.sleep(0.5)
            pages = scrape_metrics()
        for page in pages.values():
            self.text("metrics (Prometheus)", page)

    def spans_exported(self, receiver: Any) -> None:
        spans = receiver.spans
        if not spans:
            self.notes.append("the OTLP receiver got no spans")
        for span in spans:
            self.text("OTLP spans exported", repr(span))

    @property
    def leaks(self) -> int:
        return sum(self.found.values())

    def rows(self) -> list[tuple[str, Any]]:
        return [
            (
                f"{source}: {self.checked[source]} checked",
                f"key {self.found[source]}, control {self.controls[source]}",
            )
            for source in sorted(self.checked)
        ]


# -- the loopback OpenAI-compatible server, scripted -----------------------------------------------


def chat(text: str, model: str = "served-model", **usage: Any) -> dict[str, Any]:
    """An OpenAI chat completion body."""
    return {
        "id": "chatcmpl-chaos",
        "object": "chat.completion",
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, **usage},
    }


HTML_502 = (
    b"<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head><body>"
    b"<h1>502 Bad Gateway</h1><hr><center>nginx</center></body></html>"
)
OK = Reply(json=chat("the primary's answer"))


class FaultServer(ScriptedServer):
    """A :class:`ScriptedServer` whose script can be replaced between cases."""

    def script(self, *replies: Reply) -> int:
        """Answer the next requests with ``replies`` (dropping what is left); the requests
        received so far."""
        with self._lock:
            self._queue.clear()
            self._queue.extend(replies)
            return len(self._requests)


class ByModelServer(ScriptedServer):
    """Answers each request with the reply for the ``model`` it names (for `cantata run`,
    whose fan-out members call at once)."""

    def __init__(self, replies: dict[str, Reply]) -> None:
        super().__init__()
        self.replies = replies

    def _record_and_pop(self, request: RecordedRequest) -> Reply:
        super()._record_and_pop(request)
        return self.replies.get(request.json.get("model"), self.default)


@dataclass(frozen=True)
class FaultCase:
    """One way a server misbehaves, and what the retry policy and the topology must make of it:
    ``attempts`` requests reaching the server, and the request's ``outcome`` (``answered`` by the
    model, ``fallback`` answered, or the error type)."""

    name: str
    replies: tuple[Reply, ...]
    attempts: int
    outcome: str
    deadline_s: float = 10.0


READ_TIMEOUT_S = 2.0
"""The HTTP scenario's read timeout (httpx: the longest wait for any one read)."""


def fault_cases() -> list[FaultCase]:
    """The HTTP faults, with what the default RetryPolicy (3 attempts; 408, 409, 429 and 5xx
    retried; broken bodies and read timeouts not) and the model's fallback make of them."""
    e = {"echo_authorization": True, "echo_headers": True}
    trickled = json.dumps(chat("a slow but steady answer " * 4)).encode()
    stream = b'data: {"choices": [{"delta": {"content": "Hel"}}]}\n\ndata: {"choices": [{"del'
    return [
        FaultCase("200", (OK,), 1, "answered"),
        FaultCase(
            "429 with Retry-After: 1, then 200",
            (
                Reply(status=429, json={"error": "slow down"}, headers={"Retry-After": "1"}),
                OK,
            ),
            2,
            "answered",
        ),
        FaultCase(
            "429 twice without Retry-After, then 200",
            (Reply(status=429, json={"error": "slow down"}),) * 2 + (OK,),
            3,
            "answered",
        ),
        FaultCase(
            "429 three times", (Reply(status=429, json={"error": "slow down"}),) * 3, 3, "fallback"
        ),
        FaultCase("500, then 200", (Reply(status=500, json={"error": "oops"}), OK), 2, "answered"),
        FaultCase(
            "502, then 200", (Reply(status=502, json={"error": "bad gw"}), OK), 2, "answered"
        ),
        FaultCase(
            "503 three times", (Reply(status=503, json={"error": "busy"}),) * 3, 3, "fallback"
        ),
        FaultCase(
            "HTML 502 error page three times",
            (Reply(status=502, body=HTML_502, content_type="text/html"),) * 3,
            3,
            "fallback",
        ),
        FaultCase(
            "HTML page with status 200",
            (Reply(body=HTML_502, content_type="text/html; charset=utf-8"),),
            1,
            "fallback",
        ),
        FaultCase(
            "truncated JSON (Content-Length matches)",
            (
                Reply(
                    body=json.dumps(chat("cut short")).encode()[:60],
                    content_type="application/json",
                ),
            ),
            1,
            "fallback",
        ),
        FaultCase(
            "connection closed mid-body (Content-Length lies)",
            (Reply(json=chat("never finished"), truncate=True),),
            1,
            "fallback",
        ),
        FaultCase(
            "broken SSE stream (chunked, cut before its end)",
            (
                Reply(
                    body=stream,
                    content_type="text/event-stream",
                    chunked=True,
                    chunk_size=24,
                    truncate=True,
                ),
            ),
            1,
            "fallback",
        ),
        FaultCase(
            f"first byte after 5 s (read timeout {READ_TIMEOUT_S:g} s)",
            (Reply(json=chat("too late"), delay=5.0),),
            1,
            "fallback",
        ),
        FaultCase(
            "slow trickle, 16 B per 0.1 s, within the deadline",
            (Reply(body=trickled, content_type="application/json", chunk_size=16, trickle_s=0.1),),
            1,
            "answered",
        ),
        FaultCase(
            "slow trickle, 16 B per 0.5 s, past a 3 s deadline",
            (Reply(body=trickled, content_type="application/json", chunk_size=16, trickle_s=0.5),),
            1,
            "DeadlineExceededError",
            deadline_s=3.0,
        ),
        FaultCase(
            "400 quoting the request's headers",
            (Reply(status=400, json={"error": {"message": "bad request: {headers}"}}, **e),),
            1,
            "RequestRejectedError",
        ),
        FaultCase(
            "401 quoting the key",
            (Reply(status=401, json={"error": {"message": "invalid key {authorization}"}}, **e),),
            1,
            "RequestRejectedError",
        ),
        FaultCase(
            "500 quoting the key, three times",
            (Reply(status=500, json={"error": "upstream said {authorization}"}, **e),) * 3,
            3,
            "fallback",
        ),
        FaultCase(
            "200 with every field quoting the request's headers",
            (
                Reply(
                    json={
                        **chat("echo: {authorization} | {headers}", model="{authorization}"),
                        "id": "{authorization}",
                        "system_fingerprint": "{headers}",
                    },
                    headers={"X-Echo": "{authorization}"},
                    **e,
                ),
            ),
            1,
            "answered",
        ),
    ]


@dataclass(frozen=True)
class FaultOutcome:
    """What one :class:`FaultCase` did: server requests, the outcome, time against the deadline,
    whether the fallback answered and whether the primary's breaker was open afterwards."""

    case: FaultCase
    attempts: int
    outcome: str
    elapsed_s: float
    fallback_calls: int
    breaker_open: bool


@dataclass(frozen=True)
class BreakerRun:
    """Calls to a model whose server always answers 503, with ``after_failures`` 3: the server
    requests each call made (0 once the breaker is open), the calls refused with
    CircuitOpenError without reaching it, and how many the fallback answered."""

    requests_per_call: tuple[int, ...]
    circuit_open: int
    fallback_answers: int
    calls: int


@dataclass(frozen=True)
class HttpFaults:
    """Every :func:`fault_cases` case against a Ray-hosted OpenAI-compatible model with a
    fallback, then the breaker run, with the key audit of all of it."""

    cases: tuple[FaultOutcome, ...]
    breaker: BreakerRun
    audit: LeakAudit
    key_sent: bool
    tally: Tally

    def rows(self) -> list[tuple[str, Any]]:
        rows: list[tuple[str, Any]] = []
        for c in self.cases:
            rows.append(
                (
                    c.case.name,
                    f"{c.attempts} attempt(s), {c.outcome}, {sec(c.elapsed_s)} of"
                    f" {c.case.deadline_s:g} s, fallback {'yes' if c.fallback_calls else 'no'},"
                    f" breaker {'open' if c.breaker_open else 'closed'}",
                )
            )
        b = self.breaker
        rows.append(
            (
                "always 503, breaker after 3 failures",
                f"server requests per call {list(b.requests_per_call)}; {b.circuit_open} of"
                f" {b.calls} refused by the open breaker; fallback answered {b.fallback_answers}",
            )
        )
        t = self.tally
        rows.append(
            (
                "requests: answered / failed typed / untyped / lost",
                f"{t.completed} / {t.failed_total - t.untyped} / {t.untyped} / {t.lost}",
            )
        )
        rows.append(("key leaks (everywhere)", self.audit.leaks))
        return rows


def remote_model(
    name: str, url: str, var: str, resource: str, *, retry: Any = None, **fields: Any
) -> ModelSpec:
    """An OpenAI-compatible model on Ray, its key from ``var``, pinned to ``resource``."""
    from cantata.agents import OpenAIConfig  # noqa: PLC0415
    from cantata.agents.backends import RetryPolicy, Timeout  # noqa: PLC0415

    return ModelSpec(
        name=name,
        backend=OpenAIConfig(
            base_url=url,
            model=f"{name}-model",
            api_key_env=var,
            timeout=Timeout(read=READ_TIMEOUT_S),
            retry=retry or RetryPolicy(),
        ),
        resources=Resources(num_cpus=0.1, custom={resource: 1}),
        **fields,
    )


def fresh_sets(models: dict[str, Any], cooldown: Cooldown | None = None) -> dict[str, Any]:
    """New replica sets over the same actors: breakers closed, as in a new calling process."""
    from cantata.cluster._replicas import Replica, ReplicaSet  # noqa: PLC0415

    sets = {}
    for name, current in models.items():
        spec = (
            current.spec
            if cooldown is None
            else current.spec.model_copy(update={"cooldown": cooldown})
        )
        sets[name] = ReplicaSet(spec, [Replica(r.handle, r.index) for r in current.replicas])
    return sets


@contextlib.asynccontextmanager
async def started(topology: Any, **runtime: Any) -> Any:
    """The topology's actors on Ray (one replica each), stopped at the end."""
    from cantata.cluster import RayRuntime  # noqa: PLC0415
    from cantata.topologies import Code  # noqa: PLC0415

    ray_runtime = RayRuntime(**runtime)
    models = await ray_runtime.start(topology, Code())
    try:
        yield models
    finally:
        await ray_runtime.stop(models)


@contextlib.contextmanager
def otlp_receiver(audit: LeakAudit) -> Iterator[Any]:
    """An OTLP/HTTP receiver on loopback (None, with a note, without the ``otel`` extra)."""
    from cantata.cluster import otel_available  # noqa: PLC0415

    if not otel_available():
        audit.notes.append("OTLP export not checked: the otel extra is not installed")
        yield None
        return
    from tests.support.otlp_receiver import OtlpReceiver  # noqa: PLC0415

    with OtlpReceiver() as receiver:
        yield receiver


def observability(receiver: Any, topology: str) -> Any:
    from cantata.cluster import Observability, OtlpConfig  # noqa: PLC0415

    otlp = None if receiver is None else OtlpConfig(endpoint=receiver.endpoint)
    return Observability(topology=topology, otlp=otlp)


async def http_faults(cluster: Any, *, var: str = "CANTATA_CHAOS_KEY") -> HttpFaults:
    """Every fault case against ``remote`` (on a node holding the key in ``var``), whose
    fallback ``spare`` is another server; each case with closed breakers. Then the breaker
    run. The driver's output, Ray's session logs, exported spans and the metrics are
    audited for the key with every result and error."""
    from cantata.agents import LogConfig  # noqa: PLC0415
    from cantata.topologies import answer  # noqa: PLC0415

    key = canary_key()
    audit = LeakAudit(key)
    outcomes: list[FaultOutcome] = []
    ends: list[Ended] = []
    with (
        workdir() as work,
        keyed_node(cluster, var, key, "chaos_keyed"),
        FaultServer() as primary,
        ScriptedServer(
            Reply(json=chat("spare answer, key {authorization}"), echo_authorization=True)
        ) as spare_server,
        otlp_receiver(audit) as receiver,
    ):
        spare = remote_model("spare", spare_server.url, var, "chaos_keyed")
        remote = remote_model("remote", primary.url, var, "chaos_keyed", fallback=spare)
        topology = SingleSpec(name="chaos-http", model=remote, timeout_s=60)
        seen = observability(receiver, topology.name)
        with captured_output(work / "driver.txt"):
            async with started(
                topology, log_config=LogConfig(level="debug"), observability=seen
            ) as models:
                telemetry = seen.telemetry("driver")
                for case in fault_cases():
                    before = primary.script(*case.replies)
                    spare_before = len(spare_server.requests)
                    sets = fresh_sets(models.models)
                    ended = await bounded(
                        answer(
                            topology,
                            case.name,
                            sets,
                            deadline=time.time() + case.deadline_s,
                            telemetry=telemetry,
                        ),
                        case.deadline_s,
                    )
                    ends.append(ended)
                    audit.ended(ended)
                    outcomes.append(
                        FaultOutcome(
                            case=case,
                            attempts=len(primary.requests) - before,
                            outcome=_outcome(ended, "remote", "spare"),
                            elapsed_s=ended.elapsed_s,
                            fallback_calls=len(spare_server.requests) - spare_before,
                            breaker_open=sets["remote"].replicas[0].cooling_until
                            > time.monotonic(),
                        )
                    )
                breaker = await _breaker_run(
                    topology, models.models, primary, audit, telemetry, ends
                )
                telemetry.flush()
        audit.text("driver stdout and stderr", (work / "driver.txt").read_text(errors="replace"))
        if receiver is not None:
            audit.spans_exported(receiver)
        requests = primary.requests + spare_server.requests
        audit.metrics("remote")
    audit.files("Ray session logs", session_dir() / "logs")
    key_sent = bool(requests) and all(
        r.headers.get("authorization") == f"Bearer {key}" for r in requests
    )
    return HttpFaults(
        cases=tuple(outcomes),
        breaker=breaker,
        audit=audit,
        key_sent=key_sent,
        tally=tally_of(ends),
    )


def _outcome(ended: Ended, model: str, fallback: str) -> str:
    if ended.result is None:
        return ended.error_type or "?"
    answered = [s.agent for s in ended.result.trace if s.model is not None and s.status == "ok"]
    return "fallback" if answered and answered[-1] == fallback else "answered"


async def _breaker_run(
    topology: Any,
    models: dict[str, Any],
    primary: FaultServer,
    audit: LeakAudit,
    telemetry: Any,
    ends: list[Ended],
) -> BreakerRun:
    from cantata.topologies import answer  # noqa: PLC0415

    calls = 6
    primary.script(*(Reply(status=503, json={"error": "busy"}),) * 9)
    sets = fresh_sets(models, Cooldown(after_failures=3, cooldown_s=60, max_cooldown_s=60))
    per_call, circuit_open, fallback_answers = [], 0, 0
    for number in range(calls):
        before = len(primary.requests)
        ended = await bounded(
            answer(
                topology, f"call {number}", sets, deadline=time.time() + 10, telemetry=telemetry
            ),
            10,
        )
        ends.append(ended)
        audit.ended(ended)
        per_call.append(len(primary.requests) - before)
        trace = ended.result.trace if ended.result is not None else ()
        circuit_open += any(s.error_type == "CircuitOpenError" for s in trace)
        fallback_answers += _outcome(ended, "remote", "spare") == "fallback"
    return BreakerRun(tuple(per_call), circuit_open, fallback_answers, calls)


# -- 5. a canary key through every error path and every response field -----------------------------


def canary_cases() -> list[tuple[str, tuple[Reply, ...], str]]:
    """Server scripts that quote the request's Authorization header (the key) back, each
    through a different path, and the error type each must end in (``answered``: none)."""
    e = {"echo_authorization": True, "echo_headers": True}
    quoting = "key {authorization}; headers {headers}"
    cut = b'{"model": "m", "choices": [{"message": {"content": "echo {authorization}'
    sse = b'data: {"choices": [{"delta": {"content": "{authorization}"}}]}\\n\\ndata: {"cho'
    html = b"<html><body><h1>Error</h1><p>You sent {authorization} with {headers}</p>"
    fields = {
        **chat(f"echo: {quoting}", model="{authorization}"),
        "id": "{authorization}",
        "system_fingerprint": "{headers}",
    }
    fields["choices"][0]["finish_reason"] = "{authorization}"
    echo_headers = {"X-Echo": "{authorization}", "Retry-After": "{authorization}"}
    return [
        (
            "200: every field and header quotes the key",
            (Reply(json=fields, headers={"X-Echo": "{authorization}"}, **e),),
            "answered",
        ),
        (
            "200: usage quotes the key",
            (Reply(json=chat("fine", prompt_tokens="{authorization}"), **e),),
            "MalformedResponseError",
        ),
        (
            "200: an error object quoting the key, no choices",
            (Reply(json={"error": {"message": quoting}}, **e),),
            "MalformedResponseError",
        ),
        (
            "400 JSON quoting the headers",
            (Reply(status=400, json={"error": {"message": quoting}}, **e),),
            "RequestRejectedError",
        ),
        (
            "401 HTML quoting the key",
            (Reply(status=401, body=html, content_type="text/html", **e),),
            "RequestRejectedError",
        ),
        (
            "404 text quoting the key",
            (Reply(status=404, body=b"no model for {authorization}", **e),),
            "RequestRejectedError",
        ),
        (
            "429 x3 quoting the key, in Retry-After too",
            (Reply(status=429, json={"error": quoting}, headers=echo_headers, **e),) * 3,
            "RateLimitedError",
        ),
        (
            "500 x3 quoting the key",
            (Reply(status=500, json={"error": {"message": quoting}}, **e),) * 3,
            "ServerError",
        ),
        (
            "503 x3 HTML quoting the headers",
            (Reply(status=503, body=html, content_type="text/html", **e),) * 3,
            "ServerError",
        ),
        (
            "200 HTML quoting the key",
            (Reply(body=html, content_type="text/html", **e),),
            "MalformedResponseError",
        ),
        (
            "truncated JSON ending in the key",
            (Reply(body=cut, content_type="application/json", **e),),
            "MalformedResponseError",
        ),
        (
            "connection closed mid-body quoting the key",
            (Reply(json=fields, truncate=True, **e),),
            "MalformedResponseError",
        ),
        (
            "broken SSE stream quoting the key",
            (
                Reply(
                    body=sse,
                    content_type="text/event-stream",
                    chunked=True,
                    chunk_size=20,
                    truncate=True,
                    **e,
                ),
            ),
            "MalformedResponseError",
        ),
    ]


def canary_structured_cases() -> list[tuple[str, tuple[Reply, ...], str]]:
    """Plans (structured output) quoting the key: not JSON, and JSON against the schema."""
    e = {"echo_authorization": True, "echo_headers": True}
    return [
        (
            "plan: text quoting the key, not JSON",
            (Reply(json=chat("{authorization}"), **e),),
            "PlanValidationError",
        ),
        (
            "plan: JSON whose steps quote the key",
            (Reply(json=chat('{"steps": "{authorization}"}'), **e),),
            "PlanValidationError",
        ),
        (
            "plan: a step naming the key as its executor",
            (
                Reply(
                    json=chat(
                        '{"steps": [{"id": "s1", "executor": "{authorization}",'
                        ' "prompt": "{headers}", "depends_on": []}]}'
                    ),
                    **e,
                ),
            ),
            "PlanValidationError",
        ),
    ]


@dataclass(frozen=True)
class CanaryRun:
    """A canary key pushed through every path: each case's outcome alone and in a fan-out
    (where a member's error becomes part of the answer), the structured cases through a
    planner, a deadline cut mid-trickle, and optionally ``cantata run`` in a subprocess.
    ``echoed`` counts the server replies that quoted the key back."""

    outcomes: tuple[tuple[str, str, str, str], ...]  # case, expected, alone, in the fan-out
    audit: LeakAudit
    key_sent: bool
    echoed: int
    cli_exit: int | None
    tally: Tally

    def rows(self) -> list[tuple[str, Any]]:
        rows: list[tuple[str, Any]] = [
            (name, alone if not fanned else f"{alone}; in a fan-out: {fanned}")
            for name, _, alone, fanned in self.outcomes
        ]
        t = self.tally
        rows.append(
            (
                "requests: answered / failed typed / untyped / lost",
                f"{t.completed} / {t.failed_total - t.untyped} / {t.untyped} / {t.lost}",
            )
        )
        rows.append(("server replies quoting the key", self.echoed))
        if self.cli_exit is not None:
            rows.append(("cantata run --json --trace (exit code)", self.cli_exit))
        rows.extend(self.audit.rows())
        rows.append(("key occurrences, total", self.audit.leaks))
        return rows


async def canary(
    cluster: Any, *, var: str = "CANTATA_CANARY_KEY", cli: bool = True, cli_timeout_s: float = 300
) -> CanaryRun:
    """Every case of :func:`canary_cases` through a single model and through a fan-out (with
    a steady second member, quorum 1), the plan cases through a planner, and a trickle cut by
    its deadline; all on Ray, the key read from ``var`` on a node of its own. With ``cli``,
    ``cantata run --json --trace --log-level debug`` on a fan-out of three echoing members, in a
    subprocess with its own embedded Ray. Audits every result, error and trace, the driver's
    output, Ray's session logs, the spans exported over OTLP, the metrics, and the
    subprocess's stdout, stderr and Ray session logs."""
    from cantata.agents import LogConfig  # noqa: PLC0415
    from cantata.agents.backends import RetryPolicy  # noqa: PLC0415
    from cantata.topologies import answer  # noqa: PLC0415

    key = canary_key()
    audit = LeakAudit(key)
    outcomes: list[tuple[str, str, str, str]] = []
    ends: list[Ended] = []
    quick = RetryPolicy(backoff_base=0.01, max_retry_after=0.1)
    with (
        workdir() as work,
        keyed_node(cluster, var, key, "chaos_canary"),
        FaultServer() as server,
        otlp_receiver(audit) as receiver,
    ):
        remote = remote_model("canary", server.url, var, "chaos_canary", retry=quick)
        steady = fast_model("steady", worker("steady", str(work / "calls.log"), service_s=0.0))
        plan = PlannerExecutorSpec(
            name="canary-plan", planner=remote, executors={"work": steady}, repair_attempts=0
        )
        alone = SingleSpec(name="canary-single", model=remote)
        fanned = FanoutSpec(name="canary-fanout", members=[remote, steady], quorum=1)
        seen = observability(receiver, plan.name)
        with captured_output(work / "driver.txt"):
            async with started(
                plan, log_config=LogConfig(level="debug"), observability=seen
            ) as models:
                telemetry = seen.telemetry("driver")

                async def run(topology: Any, replies: tuple[Reply, ...], deadline_s: float) -> str:
                    server.script(*replies)
                    ended = await bounded(
                        answer(
                            topology,
                            "canary",
                            fresh_sets(models.models),
                            deadline=time.time() + deadline_s,
                            telemetry=telemetry,
                        ),
                        deadline_s,
                    )
                    ends.append(ended)
                    audit.ended(ended)
                    return ended.error_type or "answered"

                for name, replies, expected in canary_cases():
                    outcomes.append(
                        (
                            name,
                            expected,
                            await run(alone, replies, 10),
                            await run(fanned, replies, 10),
                        )
                    )
                for name, replies, expected in canary_structured_cases():
                    outcomes.append((name, expected, await run(plan, replies, 10), ""))
                trickle = Reply(
                    json=chat("{authorization} " * 40),
                    chunk_size=16,
                    trickle_s=0.5,
                    echo_authorization=True,
                )
                outcomes.append(
                    (
                        "trickle quoting the key, cut by a 2 s deadline",
                        "DeadlineExceededError",
                        await run(alone, (trickle,), 2.0),
                        "",
                    )
                )
                telemetry.flush()
        audit.text("driver stdout and stderr", (work / "driver.txt").read_text(errors="replace"))
        if receiver is not None:
            audit.spans_exported(receiver)
        audit.metrics("canary")
        requests = server.requests
        cli_exit = _canary_cli(audit, work, var, key, cli_timeout_s) if cli else None
    audit.files("Ray session logs", session_dir() / "logs")
    key_sent = bool(requests) and all(
        r.headers.get("authorization") == f"Bearer {key}" for r in requests
    )
    return CanaryRun(
        outcomes=tuple(outcomes),
        audit=audit,
        key_sent=key_sent,
        echoed=len(requests),
        cli_exit=cli_exit,
        tally=tally_of(ends),
    )


def _ray_sessions() -> set[Path]:
    """The session directories of Ray instances started with the default temp directory."""
    root = Path(os.environ.get("RAY_TMPDIR") or tempfile.gettempdir()) / "ray"
    return set(root.glob("session_2*"))


def _canary_cli(audit: LeakAudit, work: Path, var: str, key: str, timeout_s: float) -> int:
    """``cantata run --json --trace --log-level debug`` of a fan-out of echoing members, the
    key in its environment: audits its stdout, stderr and its Ray's session logs."""
    import subprocess  # noqa: PLC0415

    (fields, *_), (usage, *_) = canary_cases()[0][1], canary_cases()[1][1]
    errors = Reply(
        status=500,
        json={"error": {"message": "upstream said {authorization}"}},
        echo_authorization=True,
    )
    with ByModelServer({"fields": fields, "usage": usage, "errors": errors}) as server:
        members = "".join(
            f"  - name: {name}\n    backend: {{type: openai, base_url: '{server.url}',"
            f" model: {name}, api_key_env: {var},"
            " retry: {max_attempts: 2, backoff_base: 0.01}}\n"
            "    resources: {num_cpus: 0.1}\n"
            for name in ("fields", "usage", "errors")
        )
        topology = work / "canary.yaml"
        topology.write_text(f"pattern: fanout\nname: canary-cli\nquorum: 1\nmembers:\n{members}")
        cantata = Path(sys.executable).with_name("cantata")
        environment = {
            k: v
            for k, v in os.environ.items()
            if k not in {"RAY_ADDRESS", "RAY_COLOR_PREFIX", "FORCE_COLOR", "PY_COLORS"}
        } | {var: key}
        before = _ray_sessions()
        done = subprocess.run(
            [
                str(cantata),
                "run",
                str(topology),
                "--input",
                "canary",
                "--json",
                "--trace",
                "--log-level",
                "debug",
            ],
            capture_output=True,
            text=True,
            env=environment,
            timeout=timeout_s,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        sent = server.requests
    audit.text("cantata run: stdout", done.stdout)
    audit.text("cantata run: stderr", done.stderr)
    for session in _ray_sessions() - before:
        audit.files("cantata run: its Ray's session logs", session)
    if not sent or any(r.headers.get("authorization") != f"Bearer {key}" for r in sent):
        audit.notes.append("cantata run did not send the key to every member's server")
    if done.returncode != 0:
        tail = f"{done.stdout[-500:]}\n{done.stderr[-1500:]}".replace(key, "<the canary key>")
        audit.notes.append(f"cantata run exited {done.returncode}: {tail}")
    return done.returncode
