"""Workloads W1-W4 from shared/DESIGN.md, on simulated models (async sleeps, no inference).

Prints each workload's figure and its ratio to the ideal, for the in-process runtime and for Ray
(an embedded local Ray; one actor per model). Run:

    .venv/bin/python benchmarks/workloads.py [--only inprocess|ray] [--scale 0.2]

``--scale`` shrinks the request counts for a quick look. Figures depend on the machine; compare
runs on the same machine only. Nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import time
from collections.abc import Awaitable, Callable

from cantata.agents import (
    FunctionConfig,
    LogConfig,
    ModelRequest,
    ModelSpec,
    Resources,
    configure_logging,
)
from cantata.cluster import RayRuntime, connect
from cantata.topologies import (
    InProcessRuntime,
    PlannerExecutorSpec,
    Runtime,
    SingleSpec,
    TopologySpec,
    VoteSpec,
    answer,
)


def sleeper(seconds: float, reply: str = "yes") -> Callable[[ModelRequest], Awaitable[str]]:
    async def model(request: ModelRequest) -> str:
        await asyncio.sleep(seconds)
        return reply

    return model


async def planner(request: ModelRequest) -> str:
    await asyncio.sleep(0.030)
    if request.response_format is None:
        return "synthesis"
    steps = [
        {"id": f"s{n}", "executor": "work", "prompt": "x", "depends_on": []} for n in (1, 2, 3, 4)
    ]
    return json.dumps({"steps": steps})


def model(name: str, fn: Callable[[ModelRequest], Awaitable[str]]) -> ModelSpec:
    return ModelSpec(
        name=name,
        backend=FunctionConfig(fn=fn),
        resources=Resources(num_cpus=0.1),
        max_concurrency=256,
    )


W1 = SingleSpec(name="w1", model=model("zero", sleeper(0.0)))
W2 = VoteSpec(
    name="w2",
    members=[
        model("m20", sleeper(0.020)),
        model("m35", sleeper(0.035)),
        model("m50", sleeper(0.050)),
    ],
    quorum=3,
)
W3 = PlannerExecutorSpec(
    name="w3", planner=model("planner", planner), executors={"work": model("exec", sleeper(0.020))},
    max_steps=4,
)  # fmt: skip


async def sequential(spec: TopologySpec, runtime: Runtime, count: int) -> list[float]:
    handles = await runtime.start_models(spec.models())
    try:
        for _ in range(min(20, count)):  # warm up connections and code paths
            await answer(spec, "q", handles)
        gc.collect()  # see concurrent()
        latencies = []
        for _ in range(count):
            start = time.perf_counter()
            await answer(spec, "q", handles)
            latencies.append(time.perf_counter() - start)
        return latencies
    finally:
        await runtime.stop_models(list(handles.values()))


async def concurrent(
    spec: TopologySpec,
    runtime: Runtime,
    count: int,
    in_flight: int,
    *,
    warmup: int = 0,
    latencies: list[float] | None = None,
) -> float:
    """Requests per second for ``count`` requests, ``in_flight`` at a time.

    ``warmup`` requests (as many in flight) run first, unmeasured. ``latencies``, when given,
    receives each measured request's seconds from entering flight to its answer (compare.py
    reports their p90); without it the window times nothing per request.
    """
    handles = await runtime.start_models(spec.models())
    try:
        gate = asyncio.Semaphore(in_flight)

        async def one() -> None:
            async with gate:
                await answer(spec, "q", handles)

        async def timed(into: list[float]) -> None:
            async with gate:
                start = time.perf_counter()
                await answer(spec, "q", handles)
                into.append(time.perf_counter() - start)

        if warmup:  # through the same gate, so code paths and connections warm up as measured
            await asyncio.gather(*(one() for _ in range(warmup)))
        # Every window starts from a full collection. One of the driver's ~115k objects takes
        # 50-70 ms here; whether the interpreter's heuristic happens to start one inside a
        # one-second window depends on what ran before (imports, earlier workloads), not on
        # the workload, and it moved W4 by 5-7% between otherwise equal runs. Collections
        # the workload itself causes are still measured.
        gc.collect()
        start = time.perf_counter()
        if latencies is None:
            await asyncio.gather(*(one() for _ in range(count)))
        else:
            await asyncio.gather(*(timed(latencies) for _ in range(count)))
        return count / (time.perf_counter() - start)
    finally:
        await runtime.stop_models(list(handles.values()))


async def run_all(runtime: Runtime, label: str, scale: float) -> None:
    w1 = await sequential(W1, runtime, int(2000 * scale))
    print(f"{label:10} W1 per-request overhead   {statistics.median(w1) * 1000:7.2f} ms (median)")
    w2 = await sequential(W2, runtime, int(200 * scale))
    print(
        f"{label:10} W2 fan-out 3 + vote       {statistics.median(w2) / 0.050:7.3f} x ideal 50 ms"
    )
    w3 = await sequential(W3, runtime, int(200 * scale))
    print(
        f"{label:10} W3 planner-executor       {statistics.median(w3) / 0.080:7.3f} x ideal 80 ms"
    )
    w4 = await concurrent(W2, runtime, int(1000 * scale), 64)
    print(f"{label:10} W4 W2 with 64 in flight   {w4 / 1280:7.3f} x ideal 1280 req/s ({w4:.0f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["inprocess", "ray"])
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the request counts")
    args = parser.parse_args()
    configure_logging(LogConfig(level="warning"))  # debug lines would be measured too
    if args.only != "ray":
        asyncio.run(run_all(InProcessRuntime(), "in-process", args.scale))
    if args.only != "inprocess":
        connection = connect(num_cpus=4)
        try:
            asyncio.run(run_all(RayRuntime(), "ray", args.scale))
        finally:
            connection.close()


if __name__ == "__main__":
    main()
