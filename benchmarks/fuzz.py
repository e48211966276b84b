"""Fuzzing figures: the inputs the fuzz tests draw, fed many at a time and timed.

For every target in ``tests/support/strategies.py`` (``accept`` and ``model_validate`` on every
message type, the wire round trips, ``parse_structured``, ``validate_plan``, ``Planner.plan``,
``Supervisor.assign`` and the two topologies in process) it prints how many inputs it ran,
how they ended (valid, a typed error the target promises, or anything else: that must be 0),
the median and slowest time per input, and the largest error message. Run:

    .venv/bin/python benchmarks/fuzz.py [--examples 2000] [--only validate_plan] [--json]

"Other" counts untyped exceptions, valid results that break their promises (an undeclared
executor, a message that changed on the wire) and typed errors longer than the tests allow.
The slowest inputs are timed again, each alone after a full collection: a single slow run is
often this machine, or a collection of everything the run allocated, not the input; "slowest
again" is the slowest of the five slowest inputs, each the fastest of three runs.

The inputs are derandomized: the same on every run. Times are per input, without drawing it;
they depend on the machine. Nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import gc
import heapq
import json
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.support

from hypothesis import HealthCheck, Phase, given, settings

from cantata.agents import LogConfig, configure_logging
from tests.support.strategies import PROFILE, TARGETS, Outcome, Target, feed, warm_up

_KEPT = 5  # slowest inputs timed again


def describe(value: Any) -> str:
    """A short description of an input (never its whole text)."""
    if isinstance(value, tuple):
        return ", ".join(describe(part) for part in value if not isinstance(part, type))
    if isinstance(value, str) and len(value) <= 16:
        return repr(value)
    if isinstance(value, str | bytes | list | dict):
        return f"{type(value).__name__} of {len(value)}"
    return type(value).__name__


def measure(target: Target, examples: int) -> tuple[list[Outcome], list[tuple[float, int, Any]]]:
    """``examples`` inputs fed to ``target``: each one's outcome, and the slowest inputs."""
    outcomes: list[Outcome] = []
    slowest: list[tuple[float, int, Any]] = []  # a min-heap of (seconds, index, input)

    # The benchmark only measures: the health checks guard tests' generation, not this.
    @settings(
        PROFILE,
        max_examples=examples,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(target.inputs)
    def run(value: Any) -> None:
        outcome = feed(target, value)
        entry = (outcome.seconds, len(outcomes), value)
        outcomes.append(outcome)
        if len(slowest) < _KEPT:
            heapq.heappush(slowest, entry)
        elif entry[0] > slowest[0][0]:
            heapq.heapreplace(slowest, entry)

    gc.collect()  # each target starts from a full collection (see workloads.py)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # hypothesis's notes on how it draws
        run()
    return outcomes, sorted(slowest, reverse=True)


def again(target: Target, value: Any) -> float:
    """The fastest of three runs of ``value`` alone, each after a full collection."""
    times = []
    for _ in range(3):
        gc.collect()
        times.append(feed(target, value).seconds)
    return min(times)


def summarize(
    target: Target, outcomes: list[Outcome], slowest: list[tuple[float, int, Any]]
) -> dict[str, Any]:
    times = [o.seconds for o in outcomes]
    others = [o for o in outcomes if o.kind == "other"]
    retimed = [(again(target, value), value) for _, _, value in slowest]
    worst_again, worst_value = max(retimed, key=lambda pair: pair[0])
    return {
        "target": target.name,
        "examples": len(outcomes),
        "valid": sum(o.kind == "valid" for o in outcomes),
        "typed_error": sum(o.kind == "typed" for o in outcomes),
        "other": len(others),
        "median_ms": statistics.median(times) * 1000,
        "slowest_ms": slowest[0][0] * 1000,
        "slowest_input": describe(slowest[0][2]),
        "slowest_again_ms": worst_again * 1000,
        "slowest_again_input": describe(worst_value),
        "largest_error_chars": max(
            (o.error_chars for o in outcomes if o.kind == "typed"), default=0
        ),
        "first_other": None
        if not others
        else f"{type(others[0].error).__name__}: {others[0].error}"[:300],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=2000, help="inputs per target")
    parser.add_argument("--only", help="run the targets whose name contains this")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()

    targets = [t for t in TARGETS if args.only is None or args.only in t.name]
    # Model actors log each refused answer as a warning; those lines would be measured too.
    configure_logging(LogConfig(level="error"))
    warm_up()
    rows = []
    start = time.perf_counter()
    for target in targets:
        outcomes, slowest = measure(target, args.examples)
        rows.append(summarize(target, outcomes, slowest))
        if not args.json:
            print(f"  {target.name}: {len(outcomes)} inputs", file=sys.stderr)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{args.examples} examples per target, {time.perf_counter() - start:.0f} s in all\n")
    print(
        "| target | examples | valid | typed error | other | median | slowest"
        " | slowest again | largest error |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print(
            f"| {row['target']} | {row['examples']} | {row['valid']} | {row['typed_error']}"
            f" | {row['other']} | {row['median_ms']:.2f} ms | {row['slowest_ms']:.1f} ms"
            f" ({row['slowest_input']}) | {row['slowest_again_ms']:.1f} ms"
            f" ({row['slowest_again_input']}) | {row['largest_error_chars']} chars |"
        )
    for row in rows:
        if row["first_other"]:
            print(f"\n{row['target']}: {row['other']} other, the first: {row['first_other']}")


if __name__ == "__main__":
    main()
