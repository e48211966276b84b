"""Chaos figures: the fault scenarios of tests/chaos at the sizes of issue 9, measured.

Starts a Ray cluster on 127.0.0.1 (a head node; each scenario adds the nodes it needs and
removes them again) and runs, one after the other:

- ``kill``: 64 requests in flight through a fan-out; one of a model's two replicas is killed
  with SIGKILL (``kill -9`` of its worker process) while it holds its share of them.
- ``node``: a planner-executor deployment serving 20 requests on a 3-node cluster; the node
  holding one executor replica is removed, then a node with the same resources joins.
- ``burst``: ten times what a model replica holds, at once (and fifty times, to show that
  memory does not grow with the burst).
- ``http``: an OpenAI-compatible server on loopback that answers 429, 5xx, HTML pages,
  truncated JSON, broken streams, slow trickles and its requests' headers.
- ``canary``: a canary API key through every error path and response field, then looked for in
  stdout, stderr, logs, Ray's session logs, traces, exported spans, metrics and errors.

Prints one table of figures per scenario (``--json``: one JSON object). Run:

    .venv/bin/python benchmarks/chaos.py [--only kill,node,burst,http,canary] [--json]

Actors' warnings (refusals, failed calls) reach stderr; the tables go to stdout. Times depend on
the machine; nothing here asserts. ``tests/chaos`` asserts the invariants at smaller sizes.
"""

from __future__ import annotations

import os

# Before Ray is imported: keep cluster_utils nodes on loopback instead of the outward address.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.chaos

from tests.chaos import scenarios

SCENARIOS = ("kill", "node", "burst", "http", "canary")


def table(title: str, rows: list[tuple[str, Any]]) -> str:
    """A Markdown table of figures."""
    width = max(len(name) for name, _ in rows)
    lines = [f"### {title}", "", f"| {'figure':{width}} | value |", f"| {'-' * width} | --- |"]
    lines += [f"| {name:{width}} | {value} |" for name, value in rows]
    return "\n".join(lines) + "\n"


def run(cluster: Any, which: str) -> list[tuple[str, list[tuple[str, Any]]]]:
    """The tables of one scenario, at the issue's sizes."""
    if which == "kill":
        kill = asyncio.run(scenarios.replica_kill(requests=64, service_s=0.2, cooldown_s=5.0))
        return [("64 in flight through a fan-out, one replica killed (SIGKILL)", kill.rows())]
    if which == "node":
        loss = asyncio.run(scenarios.node_loss(cluster, requests=20, cooldown_s=5.0))
        return [("a node lost under a planner-executor serving 20 requests", loss.rows())]
    if which == "burst":
        tables = []
        for factor in (10, 50):
            burst = asyncio.run(
                scenarios.burst(
                    factor=factor, max_concurrency=4, max_queued=16, service_s=0.2, hold=False
                )
            )
            tables.append((f"a burst of {factor} x capacity", burst.rows()))
        return tables
    if which == "http":
        faults = asyncio.run(scenarios.http_faults(cluster))
        return [
            ("an OpenAI-compatible server that misbehaves (default RetryPolicy)", faults.rows()),
            ("the key audit of the HTTP faults", faults.audit.rows()),
        ]
    canary = asyncio.run(scenarios.canary(cluster, cli=True))
    return [("a canary key through every path", canary.rows())]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(SCENARIOS), help="comma-separated scenarios")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(SCENARIOS))
    if unknown:
        parser.error(f"unknown scenarios {unknown}; choose from {', '.join(SCENARIOS)}")
    emit: Callable[[str], None] = print
    results: dict[str, Any] = {}
    with scenarios.local_cluster(head_cpus=2) as cluster:
        for which in chosen:
            start = time.monotonic()
            tables = run(cluster, which)
            took = time.monotonic() - start
            results[which] = {
                "took_s": round(took, 1),
                "tables": {title: {k: str(v) for k, v in rows} for title, rows in tables},
            }
            if not args.json:
                for title, rows in tables:
                    emit(table(f"{title} ({took:.0f} s)", rows))
                sys.stdout.flush()
    if args.json:
        emit(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
