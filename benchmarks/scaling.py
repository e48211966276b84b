"""Scaling: throughput of a latency-bound 50 ms model as its replicas go 1, 2, 4, 8, on a
simulated multi-node Ray cluster, against linear; and the memory of idle replicas and agent actors.

What it builds: a Ray cluster of ``--nodes`` nodes on this machine (``ray.cluster_utils.Cluster``,
every node on 127.0.0.1, ``--cpus-per-node`` logical CPUs each). The model is a
``FunctionConfig`` whose async function sleeps 50 ms and answers (a remote LLM API, as far as
the caller can tell: latency, no CPU); each replica reserves 0.1 CPU and takes at most
``--max-concurrency`` calls at once (default 4), so one replica can serve at most
4 / 0.05 s = 80 req/s and only more replicas serve more.

How it drives it: the path a user takes across a cluster. For each replica count the
topology (``SingleSpec``, ``placement: SPREAD``, ``--coordinators`` coordinators) is deployed
with ``cantata.cluster.deploy`` and called with ``Deployment.acall`` from this driver, so each
request goes driver -> coordinator -> model replica (a one-off ``RayRuntime`` run starts one
replica per model, so it cannot show replicas). ``replicas x max_concurrency x 2`` requests
are kept in flight: every replica full, with as many waiting in its queue. Per repeat: a full
collection, then the first ``in flight`` answers are let go by (ramp-up), and the next
``replicas x 200`` answers (about 2.5 s at the ideal rate) are timed while the callers keep
going, so the window holds neither the ramp-up nor the drain. The median over ``--repeats``.

How to read the first table (throughput):

- ``req/s``: the median repeat (``range``: the slowest and fastest); ``ideal`` = replicas x
  max_concurrency / 0.05 s.
- ``x ideal``: req/s / ideal. ``x linear``: req/s / (replicas x req/s per replica at the
  smallest count measured); the issue's target is 0.85 at 8 replicas.
- ``batched``: the share of calls, warm-up included, that arrived together with others in one
  Ray call (calls a process made in the same event-loop turn; ``cantata.cluster._batching``),
  at the coordinators (requests from this driver) and at the model replicas (the
  coordinators' model calls).
- ``nodes``: where the replicas landed (from each replica's health), by node name.

The second table (CPU) says where the time goes, from ``/proc``: CPU-seconds per second of
wall time (``cores``; medians over the windows) of this driver, the deployment's
coordinators, its model replicas (summed), its controller (which enters every request in its
cost ledger), the rest of this Ray cluster (``ray``: raylets, GCS, Ray's agents), everyone
else on the machine (``others``: other users' work), and the whole ``machine``. ``ms/req``
divides each by the throughput, and ``cluster ms/req`` sums them: what one request costs in
CPU across every process it touches. A ``machine`` column at the core count means the CPU,
not the model, bounded throughput; cores / ``cluster ms/req`` is then the ceiling.

Memory (``/proc/PID/smaps_rollup``, idle, after serving): RSS, PSS and USS (private clean +
private dirty) per process, the median over the processes of each kind: the model replicas of
the largest deployment (a ``FunctionConfig`` model: no weights; a real model adds its weights),
its coordinator(s), the agent actors of a nested topology hosted with ``host: {actor: true}``,
and a plain Ray actor for reference (what any Ray worker process costs here). Nothing is
subtracted.

Run:

    .venv/bin/python benchmarks/scaling.py 2>/dev/null
    .venv/bin/python benchmarks/scaling.py --replicas 1,2 --repeats 1 --json scaling.json

Figures depend on the machine and what else runs on it; compare runs on the same machine only.
Nothing here asserts a timing.
"""

from __future__ import annotations

import os

# Before Ray is imported: keep cluster_utils nodes on loopback, not the outward address.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
# Token authentication on every node, as `cantata cluster up` and Ray 2.60's own ray.init()
# have it. It must match the driver's: `connect()` turns it on when it finds a token (in
# ~/.ray/auth_token, say), and a driver in token mode on a cluster without it refuses the GCS's
# calls, whereupon the GCS takes the driver for dead and kills every actor it creates.
os.environ.setdefault("RAY_AUTH_MODE", "token")

import argparse
import asyncio
import gc
import json
import statistics
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import ray
from ray.cluster_utils import Cluster

from cantata.agents import (
    FunctionConfig,
    Host,
    LogConfig,
    ModelRequest,
    ModelSpec,
    Resources,
    configure_logging,
)
from cantata.cluster import Deployment, DeploymentStatus, ReplicaStatus, connect, deploy
from cantata.topologies import (
    Coordinator,
    PipelineSpec,
    Placement,
    SingleSpec,
    Stage,
)

LATENCY_S = 0.050
REQUESTS_PER_REPLICA = 200  # per timed window: about 2.5 s at 80 req/s per replica
TICKS = os.sysconf("SC_CLK_TCK")
LOG = LogConfig(level="warning")  # debug lines would be measured too


async def llm(request: ModelRequest) -> str:
    """The model: 50 ms of waiting, as a remote API's latency, and no CPU of its own."""
    await asyncio.sleep(LATENCY_S)
    return "ok"


def model(replicas: int, max_concurrency: int) -> ModelSpec:
    return ModelSpec(
        name="llm",
        backend=FunctionConfig(fn=llm),
        resources=Resources(num_cpus=0.1),
        replicas=replicas,
        max_concurrency=max_concurrency,
    )


# -- the cluster --------------------------------------------------------------------------


def start_cluster(nodes: int, cpus_per_node: int) -> tuple[Cluster, dict[str, str]]:
    """A head and ``nodes - 1`` workers on 127.0.0.1 (as tests/conftest.py builds its own);
    returns the cluster and a short name per node id."""
    loopback: dict[str, Any] = {"node_ip_address": "127.0.0.1", "object_store_memory": 100 << 20}
    cluster = Cluster(
        initialize_head=True,
        head_node_args={**loopback, "num_cpus": cpus_per_node, "include_dashboard": False},
    )
    assert cluster.head_node is not None  # initialize_head=True made it
    names = {cluster.head_node.node_id: "head"}
    for index in range(1, nodes):
        node = cluster.add_node(**loopback, num_cpus=cpus_per_node)
        names[node.node_id] = f"w{index}"
    cluster.wait_for_nodes()
    return cluster, names


# -- CPU accounting -----------------------------------------------------------------------


def cpu_of(pid: int) -> float:
    """CPU-seconds (user + system, every thread) a process has used; 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as file:
            # The command name may hold spaces: fields count from after its closing paren.
            fields = file.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def machine_busy() -> float:
    """CPU-seconds every core of the machine has spent not idle."""
    with open("/proc/stat") as file:
        values = [int(v) for v in file.readline().split()[1:]]
    idle = values[3] + values[4]  # idle, iowait
    return (sum(values[:8]) - idle) / TICKS  # guest time is already in user


GROUPS = ("driver", "coordinators", "replicas", "controller", "ray")
"""Who spends CPU: this driver, the deployment's coordinators, its model replicas, its
controller, and every other process of this cluster (raylets, GCS, Ray's agents, idle workers)."""


def children() -> dict[int, list[int]]:
    """Every process's children, from /proc."""
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as file:
                parent = int(file.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        tree.setdefault(parent, []).append(int(entry))
    return tree


def title(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as file:
            return file.read().split(b"\0", 1)[0].decode(errors="replace")
    except OSError:
        return ""


def processes(coordinators: Sequence[int], replicas: Sequence[int]) -> dict[str, list[int]]:
    """This cluster's processes by group: Cluster starts GCS and raylets from this process,
    and each raylet its workers, so the cluster is this process's descendants (others' Rays
    on the same machine are not)."""
    tree = children()
    ours: list[int] = []
    stack = [os.getpid()]
    while stack:
        for child in tree.get(stack.pop(), []):
            ours.append(child)
            stack.append(child)
    known = {*coordinators, *replicas}
    # Ray titles an actor's process after its class.
    controller = [p for p in ours if title(p).startswith("ray::DeploymentController")]
    return {
        "driver": [os.getpid()],
        "coordinators": list(coordinators),
        "replicas": list(replicas),
        "controller": controller,
        "ray": [p for p in ours if p not in known and p not in controller],
    }


@dataclass
class CpuMark:
    at: float
    cpu: dict[str, float]  # CPU-seconds used so far, per group
    machine: float


def mark(groups: dict[str, list[int]]) -> CpuMark:
    cpu = {name: sum(cpu_of(pid) for pid in pids) for name, pids in groups.items()}
    cpu["driver"] = time.process_time()  # every thread of this process, finer than ticks
    return CpuMark(at=time.perf_counter(), cpu=cpu, machine=machine_busy())


@dataclass
class Window:
    """One timed window: its throughput, and the CPU each group used, in cores."""

    requests: int
    seconds: float
    req_s: float
    cores: dict[str, float]  # per group, then "others" (the rest of the machine) and "machine"


def window_of(requests: int, start: CpuMark, end: CpuMark) -> Window:
    wall = end.at - start.at
    cores = {name: (end.cpu[name] - start.cpu[name]) / wall for name in start.cpu}
    machine = (end.machine - start.machine) / wall
    cores["others"] = max(0.0, machine - sum(cores.values()))
    cores["machine"] = machine
    return Window(requests=requests, seconds=wall, req_s=requests / wall, cores=cores)


# -- throughput ---------------------------------------------------------------------------


async def saturate(
    deployment: Deployment,
    in_flight: int,
    count: int,
    groups: dict[str, list[int]],
) -> Window:
    """``in_flight`` callers, each calling again as soon as it is answered; times ``count``
    answers after the first ``in_flight`` (the ramp-up), while the callers keep going."""
    answered = 0
    marks: list[CpuMark] = []

    async def caller() -> None:
        nonlocal answered
        while len(marks) < 2:
            await deployment.acall("q")
            answered += 1
            # Marks are taken in the loop, between answers: reading /proc costs ~1 ms.
            if answered in (in_flight, in_flight + count):
                marks.append(mark(groups))

    await asyncio.gather(*(caller() for _ in range(in_flight)))  # the rest drain, untimed
    return window_of(count, marks[0], marks[1])


async def warm(deployment: Deployment, in_flight: int, count: int) -> None:
    # Connections, the coordinator's balancer and batchers, code paths: as measured.
    gate = asyncio.Semaphore(in_flight)

    async def one() -> None:
        async with gate:
            await deployment.acall("q")

    await asyncio.gather(*(one() for _ in range(count)))


@dataclass
class Row:
    replicas: int
    in_flight: int
    ideal_req_s: float
    req_s: float = 0.0
    x_ideal: float = 0.0
    x_linear: float = 0.0
    nodes: dict[str, int] = field(default_factory=dict)
    served: list[int] = field(default_factory=list)  # per replica, warm-up included
    batched_coordinators: float = 0.0  # share of requests, warm-up included
    batched_replicas: float = 0.0
    windows: list[Window] = field(default_factory=list)
    deploy_s: float = 0.0


def replica_pids(status: DeploymentStatus) -> tuple[list[int], list[int]]:
    """Model replicas' and coordinators' process ids."""
    models = [r.pid for m in status.models for r in m.replicas if r.pid is not None]
    coordinators = [
        r.pid
        for a in status.agents
        if a.role == "coordinator"
        for r in a.replicas
        if r.pid is not None
    ]
    return models, coordinators


def measure(
    replicas: int, args: argparse.Namespace, names: dict[str, str], memory: dict[str, Any]
) -> Row:
    """Deploy ``replicas`` replicas, saturate them ``args.repeats`` times, take them down."""
    spec = SingleSpec(
        name="scaling",
        model=model(replicas, args.max_concurrency),
        placement=Placement(strategy="SPREAD"),  # replicas on different nodes where they can
        coordinator=Coordinator(replicas=args.coordinators),
        max_tokens=16,
    )
    in_flight = replicas * args.max_concurrency * 2
    row = Row(replicas, in_flight, replicas * args.max_concurrency / LATENCY_S)
    started = time.perf_counter()
    deployment = deploy(spec, f"scaling-{replicas}", log_config=LOG, detached=False)
    row.deploy_s = time.perf_counter() - started
    try:
        status = deployment.status()
        models, coordinators = replica_pids(status)
        row.nodes = dict(
            sorted(
                Counter(
                    names.get(r.node_id or "", "?") for m in status.models for r in m.replicas
                ).items()
            )
        )
        asyncio.run(warm(deployment, in_flight, in_flight * 4))
        groups = processes(coordinators, models)
        for _ in range(args.repeats):
            # Each window starts from a full collection (see workloads.py: where the
            # interpreter's own heuristic starts one would otherwise move the figure).
            gc.collect()
            window = asyncio.run(
                saturate(deployment, in_flight, replicas * REQUESTS_PER_REPLICA, groups)
            )
            row.windows.append(window)
        row.req_s = statistics.median(w.req_s for w in row.windows)
        row.x_ideal = row.req_s / row.ideal_req_s
        status = deployment.status()
        row.served = [r.served for m in status.models for r in m.replicas]
        row.batched_replicas = _share([r for m in status.models for r in m.replicas])
        row.batched_coordinators = _share(
            [r for a in status.agents if a.role == "coordinator" for r in a.replicas]
        )
        if replicas == max(args.replica_counts):
            time.sleep(2.0)  # idle: calls done, telemetry reported
            memory["model replica (no weights)"] = memory_of(models)
            memory["coordinator"] = memory_of(coordinators)
            memory["deployment controller"] = memory_of(groups["controller"])
    finally:
        deployment.down()
    return row


# -- memory -------------------------------------------------------------------------------


def smaps(pid: int) -> dict[str, float]:
    """RSS, PSS and USS (private clean + dirty) of one process, MiB."""
    kib: dict[str, int] = {}
    with open(f"/proc/{pid}/smaps_rollup") as file:
        for line in file:
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                kib[parts[0].rstrip(":")] = int(parts[1])
    return {
        "rss_mib": kib["Rss"] / 1024,
        "pss_mib": kib["Pss"] / 1024,
        "uss_mib": (kib["Private_Clean"] + kib["Private_Dirty"]) / 1024,
    }


def memory_of(pids: Iterable[int]) -> dict[str, Any]:
    """Each process's figures, and the median of each over the processes."""
    each = [smaps(pid) for pid in pids]
    median = {key: statistics.median(e[key] for e in each) for key in each[0]} if each else {}
    return {"processes": len(each), **median, "each": each}


@ray.remote(num_cpus=0.01)
class PlainActor:
    """A Ray actor that does nothing: the reference for what any actor process costs."""

    def pid(self) -> int:
        return os.getpid()


def agent_memory(replicas: int, memory: dict[str, Any]) -> None:
    """Idle agent actors: a nested topology hosted as its own actors, after a few requests."""
    team = SingleSpec(
        name="team",
        model=model(1, 4),
        host=Host(actor=True, resources=Resources(num_cpus=0.1), replicas=replicas),
    )
    spec = PipelineSpec(name="hosted", stages=[Stage(member=team)])
    deployment = deploy(spec, "scaling-agents", log_config=LOG, detached=False)
    try:
        for _ in range(4 * replicas):  # sequential calls rotate over every agent actor
            deployment.call("q")
        time.sleep(2.0)
        agents = [
            r.pid
            for a in deployment.status().agents
            if a.role == "agent"
            for r in a.replicas
            if r.pid is not None
        ]
        memory["agent actor (hosted node)"] = memory_of(agents)
    finally:
        deployment.down()
    plain = [PlainActor.remote() for _ in range(replicas)]  # type: ignore[attr-defined]
    try:
        pids = ray.get([actor.pid.remote() for actor in plain])
        time.sleep(1.0)
        memory["plain Ray actor (reference)"] = memory_of(pids)
    finally:
        for actor in plain:
            ray.kill(actor)


# -- report -------------------------------------------------------------------------------


def link(rows: list[Row]) -> None:
    """Ratio to linear: against the smallest count's throughput per replica."""
    base = min(rows, key=lambda r: r.replicas)
    per_replica = base.req_s / base.replicas
    for row in rows:
        row.x_linear = row.req_s / (row.replicas * per_replica)


def cores(row: Row, group: str) -> float:
    """The median over the row's windows of one group's CPU, in cores."""
    return statistics.median(w.cores[group] for w in row.windows)


def _share(replicas: list[ReplicaStatus]) -> float:
    served = sum(r.served for r in replicas)
    return sum(r.batched for r in replicas) / served if served else 0.0


def print_tables(rows: list[Row], memory: dict[str, Any]) -> None:
    print(
        "| replicas | in flight | req/s | range | ideal | x ideal | x linear |"
        " batched (coordinators / replicas) | nodes |"
    )
    print("| " + " | ".join(["---"] * 9) + " |")
    for row in rows:
        rates = [w.req_s for w in row.windows]
        nodes = " ".join(f"{name}:{count}" for name, count in row.nodes.items())
        print(
            f"| {row.replicas} | {row.in_flight} | {row.req_s:.0f} |"
            f" {min(rates):.0f}-{max(rates):.0f} | {row.ideal_req_s:.0f} |"
            f" {row.x_ideal:.3f} | {row.x_linear:.3f} |"
            f" {row.batched_coordinators:.0%} / {row.batched_replicas:.0%} | {nodes} |"
        )
    print()
    # CPU in cores (CPU-seconds per second) during the timed windows, then per request.
    groups = [*GROUPS, "others", "machine"]
    print(
        "| replicas | "
        + " | ".join(f"{g} cores" for g in groups)
        + " | "
        + " | ".join(f"{g} ms/req" for g in GROUPS)
        + " | cluster ms/req |"
    )
    print("| " + " | ".join(["---"] * (2 + len(groups) + len(GROUPS))) + " |")
    for row in rows:
        spent = [cores(row, g) / row.req_s * 1000 for g in GROUPS]
        print(
            f"| {row.replicas} | "
            + " | ".join(f"{cores(row, g):.2f}" for g in groups)
            + " | "
            + " | ".join(f"{ms:.2f}" for ms in spent)
            + f" | {sum(spent):.2f} |"
        )
    print()
    print("| process (idle) | count | RSS MiB | PSS MiB | USS MiB |")
    print("| --- | --- | --- | --- | --- |")
    for kind, figures in memory.items():
        if figures.get("processes"):
            print(
                f"| {kind} | {figures['processes']} | {figures['rss_mib']:.1f} |"
                f" {figures['pss_mib']:.1f} | {figures['uss_mib']:.1f} |"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", default="1,2,4,8", help="replica counts, comma-separated")
    parser.add_argument("--repeats", type=int, default=3, help="timed windows per count")
    parser.add_argument("--max-concurrency", type=int, default=4, help="calls per replica")
    parser.add_argument("--coordinators", type=int, default=1, help="the deployment's")
    parser.add_argument("--nodes", type=int, default=4, help="Ray nodes, the head included")
    parser.add_argument("--cpus-per-node", type=int, default=2, help="logical CPUs per node")
    parser.add_argument("--json", metavar="PATH", help="also write the figures to PATH")
    args = parser.parse_args()
    args.replica_counts = sorted({int(n) for n in args.replicas.split(",")})
    configure_logging(LOG)
    began = time.perf_counter()
    load = os.getloadavg()
    cluster, names = start_cluster(args.nodes, args.cpus_per_node)
    rows: list[Row] = []
    memory: dict[str, Any] = {}
    try:
        connection = connect(cluster.address)
        try:
            for replicas in args.replica_counts:
                rows.append(measure(replicas, args, names, memory))
            agent_memory(max(2, min(args.replica_counts[-1], 4)), memory)
        finally:
            connection.close()
    finally:
        cluster.shutdown()  # type: ignore[no-untyped-call]
    link(rows)
    elapsed = time.perf_counter() - began
    print(
        f"{args.nodes} nodes x {args.cpus_per_node} logical CPUs on {os.cpu_count()} cores;"
        f" model sleeps {LATENCY_S * 1000:.0f} ms, max_concurrency {args.max_concurrency},"
        f" {args.coordinators} coordinator(s); median of {args.repeats};"
        f" load average before {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    print()
    print_tables(rows, memory)
    print()
    print(
        f"took {elapsed:.0f} s; load average after {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    if args.json:
        figures = {
            "settings": {k: v for k, v in vars(args).items() if k != "json"},
            "cores": os.cpu_count(),
            "load_before": load,
            "seconds": elapsed,
            "rows": [asdict(row) for row in rows],
            "memory": memory,
        }
        with open(args.json, "w") as file:
            json.dump(figures, file, indent=2)


if __name__ == "__main__":
    main()
