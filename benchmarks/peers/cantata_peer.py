"""Cantata in-process and on Ray, through workloads.py's own topologies and timing functions.

The specs W1-W3 and ``sequential``/``concurrent`` are workloads.py's, imported, so compare.py
measures exactly what workloads.py does; W4 asks ``concurrent`` for the same warm-up as the
other peers and for each request's latency. On Ray, the connection is compare.py's
(``connect(num_cpus=4)``, as in workloads.py).
"""

from __future__ import annotations

import workloads

from cantata.cluster import RayRuntime
from cantata.topologies import InProcessRuntime, Runtime

from .common import WARMUP, Peer


class Cantata(Peer):
    """One runtime for every workload, as ``workloads.run_all`` uses one."""

    label = "Cantata in-process"

    def __init__(self) -> None:
        self.runtime = self.make_runtime()

    def make_runtime(self) -> Runtime:
        return InProcessRuntime()

    async def w1(self, count: int) -> list[float]:
        return await workloads.sequential(workloads.W1, self.runtime, count)

    async def w2(self, count: int) -> list[float]:
        return await workloads.sequential(workloads.W2, self.runtime, count)

    async def w3(self, count: int) -> list[float]:
        return await workloads.sequential(workloads.W3, self.runtime, count)

    async def w4(self, count: int, in_flight: int) -> tuple[float, list[float]]:
        latencies: list[float] = []
        throughput = await workloads.concurrent(
            workloads.W2, self.runtime, count, in_flight, warmup=WARMUP, latencies=latencies
        )
        return throughput, latencies


class CantataOnRay(Cantata):
    label = "Cantata on Ray"

    def make_runtime(self) -> Runtime:
        return RayRuntime()
