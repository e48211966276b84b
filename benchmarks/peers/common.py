"""What every peer in compare.py shares: the simulated models, the vote, the timing harness.

The models are those of workloads.py (async sleeps, no inference): a 0 ms model (W1); voters of
20, 35 and 50 ms that all reply "yes" (W2, W4); a 30 ms planner whose plan is four independent
steps for a 20 ms executor, and who answers "synthesis" when asked without a format (W3). The
harness measures the way workloads.py's ``sequential`` and ``concurrent`` do, so the Cantata
peers (which call those functions) and the others time the same thing.
"""

from __future__ import annotations

import asyncio
import gc
import json
import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import ClassVar, Literal

# Requests answered before a measured window: connections, actors and code paths warm up.
WARMUP = 20

Topology = Literal["single", "vote", "plan"]
Ask = Callable[[], Awaitable[str]]  # sends the workload's one question, returns the final answer

# The planner's plan, in the shape of workloads.py's: four steps with no dependencies.
PLAN = json.dumps(
    {
        "steps": [
            {"id": f"s{n}", "executor": "work", "prompt": "x", "depends_on": []}
            for n in (1, 2, 3, 4)
        ]
    }
)


@dataclass(frozen=True)
class Sleeper:
    """A model that takes ``seconds`` and replies ``reply``. Picklable, so Ray actors host it."""

    seconds: float
    reply: str = "yes"

    async def __call__(self, prompt: str, *, structured: bool = False) -> str:
        await asyncio.sleep(self.seconds)
        return self.reply


@dataclass(frozen=True)
class Planner:
    """The W3 planner: a plan when asked for structured output, else the synthesis."""

    seconds: float = 0.030

    async def __call__(self, prompt: str, *, structured: bool = False) -> str:
        await asyncio.sleep(self.seconds)
        return PLAN if structured else "synthesis"


Model = Sleeper | Planner

ZERO = Sleeper(0.0)
VOTERS: dict[str, Model] = {"m20": Sleeper(0.020), "m35": Sleeper(0.035), "m50": Sleeper(0.050)}
PLANNER = Planner()
EXECUTOR = Sleeper(0.020)

# What each topology must answer; checked on the warm-up requests (never timed).
EXPECTED: dict[Topology, str] = {"single": "yes", "vote": "yes", "plan": "synthesis"}


class NoMajorityError(RuntimeError):
    """The voters split with no reply backed by more than half of them."""


def majority(replies: Sequence[str]) -> str:
    """The reply more than half of ``replies`` agree on (a real count, in every peer)."""
    reply, votes = Counter(replies).most_common(1)[0]
    if votes * 2 <= len(replies):
        raise NoMajorityError(f"no majority in {list(replies)}")
    return reply


def plan_steps(plan: str) -> list[str]:
    """The prompts of a plan's steps, parsed from the planner's JSON reply."""
    return [step["prompt"] for step in json.loads(plan)["steps"]]


def synthesis_prompt(question: str, results: Sequence[str]) -> str:
    """What the planner is asked after the steps: the question and every step's result."""
    return "\n".join([question, *results])


def _check(reply: str, expected: str) -> None:
    if reply != expected:
        raise RuntimeError(f"expected {expected!r}, got {reply!r}")


async def sequential(ask: Ask, count: int, expected: str) -> list[float]:
    """Seconds per request, ``count`` requests one after another (workloads.sequential)."""
    for _ in range(min(WARMUP, count)):
        _check(await ask(), expected)
    gc.collect()  # see workloads.concurrent: a full collection must not land by chance
    latencies: list[float] = []
    for _ in range(count):
        start = time.perf_counter()
        await ask()
        latencies.append(time.perf_counter() - start)
    return latencies


async def concurrent(
    ask: Ask, count: int, in_flight: int, expected: str
) -> tuple[float, list[float]]:
    """Requests per second and each request's seconds, ``in_flight`` at a time
    (workloads.concurrent with ``warmup=WARMUP`` and ``latencies``)."""
    gate = asyncio.Semaphore(in_flight)

    async def one() -> str:
        async with gate:
            return await ask()

    async def timed(into: list[float]) -> None:
        async with gate:
            # From entering flight, not from creation: the queue behind the gate is ours.
            start = time.perf_counter()
            await ask()
            into.append(time.perf_counter() - start)

    for reply in await asyncio.gather(*(one() for _ in range(WARMUP))):
        _check(reply, expected)
    gc.collect()
    latencies: list[float] = []
    start = time.perf_counter()
    await asyncio.gather(*(timed(latencies) for _ in range(count)))
    return count / (time.perf_counter() - start), latencies


class Peer(ABC):
    """One system under comparison: W1-W4 with its models started for each and stopped after."""

    label: ClassVar[str]

    @abstractmethod
    async def w1(self, count: int) -> list[float]:
        """Seconds per request of the 0 ms model, sequential."""

    @abstractmethod
    async def w2(self, count: int) -> list[float]:
        """Seconds per request of fan-out to the three voters and the vote, sequential."""

    @abstractmethod
    async def w3(self, count: int) -> list[float]:
        """Seconds per request of plan, four parallel steps and synthesis, sequential."""

    @abstractmethod
    async def w4(self, count: int, in_flight: int) -> tuple[float, list[float]]:
        """W2 with ``in_flight`` requests at a time: requests per second, seconds per request."""


class ServedPeer(Peer):
    """A peer whose topologies answer through :meth:`serve`, timed by this module's harness."""

    @abstractmethod
    def serve(self, topology: Topology) -> AbstractAsyncContextManager[Ask]:
        """Start ``topology``'s models and orchestration; yield a way to ask it; stop them."""

    async def w1(self, count: int) -> list[float]:
        async with self.serve("single") as ask:
            return await sequential(ask, count, EXPECTED["single"])

    async def w2(self, count: int) -> list[float]:
        async with self.serve("vote") as ask:
            return await sequential(ask, count, EXPECTED["vote"])

    async def w3(self, count: int) -> list[float]:
        async with self.serve("plan") as ask:
            return await sequential(ask, count, EXPECTED["plan"])

    async def w4(self, count: int, in_flight: int) -> tuple[float, list[float]]:
        async with self.serve("vote") as ask:
            return await concurrent(ask, count, in_flight, EXPECTED["vote"])
