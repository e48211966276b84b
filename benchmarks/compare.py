"""W1-W4 of shared/DESIGN.md side by side: plain asyncio, raw Ray actors, autogen-core, LangGraph,
Cantata in-process and Cantata on Ray, in one run on simulated models (async sleeps).

Each repeat runs every system's W1-W4 (the order of systems rotates from repeat to repeat), so
the machine's slow phases hit all of them alike; the table gives per workload and system the
median over repeats of: W1 the median overhead per request, W2/W3 the median latency, W4 the
throughput; the p90 latency (W4: of each request at 64 in flight); the ratio to the ideal; and
the ratio to plain asyncio's figure in the same run (the floor). Run:

    .venv/bin/python benchmarks/compare.py [--repeats N] [--scale F] [--only asyncio,ray] [--json P]

Peers come from the ``bench`` extra (``pip install -e '.[bench]'``); a missing one is skipped
with a line saying so. Ray is started once on 127.0.0.1 (``connect(num_cpus=4)``, as in
workloads.py) for both raw Ray and Cantata on Ray. Nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path

from peers import FLOOR, SYSTEMS, MissingPackageError, load
from peers.common import Peer
from rich.console import Console
from rich.table import Table

from cantata.agents import LogConfig, configure_logging
from cantata.cluster import connect

WORKLOADS = {
    "W1": "one 0 ms model, sequential: overhead per request",
    "W2": "fan-out to 20/35/50 ms + majority vote, sequential",
    "W3": "planner 30 ms -> 4 parallel steps of 20 ms -> synthesis 30 ms",
    "W4": "W2 with 64 requests in flight: throughput",
}
COUNTS = {"W1": 2000, "W2": 200, "W3": 200, "W4": 1000}
IN_FLIGHT = 64
# W1-W3 in ms per request, W4 in requests per second (64 in flight / 50 ms). W1's ideal is 0 ms,
# so it has no ratio to the ideal: its figure is the overhead itself.
IDEAL = {"W1": 0.0, "W2": 50.0, "W3": 80.0, "W4": IN_FLIGHT / 0.050}
# A repeat of all six systems takes about 3.6 minutes on the 2-core development machine:
# three make a run of about eleven (10 min 56 s on 2026-11-25) and a median that drops one outlier.
DEFAULT_REPEATS = 3


@dataclass(frozen=True)
class Sample:
    """One workload on one system in one repeat."""

    value: float  # W1-W3: median latency in ms; W4: requests per second
    p90_ms: float


@dataclass(frozen=True)
class Row:
    """One workload on one system: medians over the repeats."""

    workload: str
    system: str
    label: str
    unit: str  # of value, low and high
    value: float
    low: float
    high: float
    p90_ms: float
    x_ideal: float | None
    x_floor: float | None
    samples: list[Sample]


def p90(values: list[float]) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=10, method="inclusive")[-1]


def latency_sample(latencies: list[float]) -> Sample:
    ms = [seconds * 1000 for seconds in latencies]
    return Sample(statistics.median(ms), p90(ms))


async def measure(peer: Peer, scale: float) -> dict[str, Sample]:
    """One repeat of W1-W4 on ``peer``."""

    def count(workload: str) -> int:
        return max(1, int(COUNTS[workload] * scale))

    samples = {
        "W1": latency_sample(await peer.w1(count("W1"))),
        "W2": latency_sample(await peer.w2(count("W2"))),
        "W3": latency_sample(await peer.w3(count("W3"))),
    }
    throughput, latencies = await peer.w4(count("W4"), IN_FLIGHT)
    samples["W4"] = Sample(throughput, latency_sample(latencies).p90_ms)
    return samples


async def run(
    peers: dict[str, Peer], repeats: int, scale: float
) -> dict[str, dict[str, list[Sample]]]:
    """Every peer's samples, per system and workload, ``repeats`` of each."""
    samples: dict[str, dict[str, list[Sample]]] = {
        name: {workload: [] for workload in WORKLOADS} for name in peers
    }
    names = list(peers)
    for repeat in range(repeats):
        # Rotated, so that no system always runs first or always right after a Ray one.
        order = names[repeat % len(names) :] + names[: repeat % len(names)]
        for name in order:
            start = time.monotonic()
            for workload, sample in (await measure(peers[name], scale)).items():
                samples[name][workload].append(sample)
            took = time.monotonic() - start
            print(f"repeat {repeat + 1}/{repeats} {name:12} {took:6.1f} s", file=sys.stderr)
            # Killed actors exit in the background; let them go before the next system starts.
            await asyncio.sleep(1.0)
    return samples


def rows(samples: dict[str, dict[str, list[Sample]]], labels: dict[str, str]) -> list[Row]:
    table: list[Row] = []
    for workload in WORKLOADS:
        floor = None
        if FLOOR in samples:
            floor = statistics.median(s.value for s in samples[FLOOR][workload])
        for name, by_workload in samples.items():
            runs = by_workload[workload]
            values = [s.value for s in runs]
            value = statistics.median(values)
            ideal = IDEAL[workload]
            table.append(
                Row(
                    workload=workload,
                    system=name,
                    label=labels[name],
                    unit="req/s" if workload == "W4" else "ms",
                    value=value,
                    low=min(values),
                    high=max(values),
                    p90_ms=statistics.median(s.p90_ms for s in runs),
                    x_ideal=value / ideal if ideal else None,
                    x_floor=value / floor if floor else None,
                    samples=runs,
                )
            )
    return table


def figure(workload: str, value: float) -> str:
    if workload == "W4":
        return f"{value:.0f} req/s"
    if workload == "W1":
        return f"{value:.3f} ms"
    return f"{value:.1f} ms"


def ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def show(table: list[Row], title: str) -> None:
    """One table, one block of rows per workload."""
    rich_table = Table(title=title, title_justify="left")
    for n, name in enumerate(
        ["workload", "system", "median", "range", "p90 latency", "x ideal", "x floor"]
    ):
        rich_table.add_column(name, justify="left" if n < 2 else "right")
    for n, row in enumerate(table):
        rich_table.add_row(
            row.workload,
            row.label,
            figure(row.workload, row.value),
            f"{figure(row.workload, row.low)} - {figure(row.workload, row.high)}",
            f"{row.p90_ms:.{3 if row.workload == 'W1' else 1}f} ms",
            ratio(row.x_ideal),
            ratio(row.x_floor),
            end_section=n + 1 == len(table) or table[n + 1].workload != row.workload,
        )
    Console(width=140).print(rich_table)


def labels_of(names: list[str], peers: dict[str, Peer]) -> dict[str, str]:
    labels = {}
    for name in names:
        package = SYSTEMS[name].package
        label = peers[name].label
        if package is not None:
            label = f"{label} {version(package)}"  # load() found it installed
        labels[name] = label
    return labels


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument(
        "--repeats", type=int, default=DEFAULT_REPEATS, help="runs of every system's W1-W4"
    )
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the request counts")
    parser.add_argument(
        "--only", help=f"comma-separated systems, of: {', '.join(SYSTEMS)} (default: all)"
    )
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    names = list(SYSTEMS) if args.only is None else args.only.split(",")
    if unknown := [name for name in names if name not in SYSTEMS]:
        parser.error(f"unknown system(s) {', '.join(unknown)}; choose from {', '.join(SYSTEMS)}")
    configure_logging(LogConfig(level="warning"))  # debug lines would be measured too

    peers: dict[str, Peer] = {}
    for name in names:
        try:
            peers[name] = load(name)
        except MissingPackageError as missing:
            print(
                f"{name}: {missing} is not installed, skipped; "
                "`pip install -e '.[bench]'` installs the peer frameworks"
            )
    if not peers:
        return

    started = time.monotonic()
    connection = connect(num_cpus=4) if any(SYSTEMS[n].ray for n in peers) else None
    try:
        samples = asyncio.run(run(peers, args.repeats, args.scale))
    finally:
        if connection is not None:
            connection.close()
    took = time.monotonic() - started

    table = rows(samples, labels_of(list(peers), peers))
    show(
        table,
        f"W1-W4, median of {args.repeats} repeat(s), scale {args.scale:g}, run took {took:.0f} s",
    )
    if args.json is not None:
        report = {
            "repeats": args.repeats,
            "scale": args.scale,
            "seconds": took,
            "counts": {w: max(1, int(c * args.scale)) for w, c in COUNTS.items()},
            "ideal": IDEAL,
            "floor": FLOOR if FLOOR in peers else None,
            "rows": [asdict(row) for row in table],
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
