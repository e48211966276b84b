"""Waiting for something that happens elsewhere (another process, Ray's bookkeeping), bounded,
and models held by a test until it lets them answer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from cantata.agents import ModelRequest

__all__ = ["held_until", "until"]


def until(predicate: Callable[[], bool], limit_s: float = 60.0) -> bool:
    """Poll ``predicate`` until it holds or ``limit_s`` pass; its last value. The limit only
    keeps a broken test from hanging: tests assert the outcome, never how long it took."""
    give_up = time.monotonic() + limit_s
    while not predicate() and time.monotonic() < give_up:
        time.sleep(0.1)
    return predicate()


def held_until(release: Path) -> Callable[[ModelRequest], Awaitable[str]]:
    """A function model whose calls answer once the file ``release`` exists (a test creates
    it), so a test can hold calls in flight for as long as it needs, on any node."""

    async def answer(request: ModelRequest) -> str:
        for _ in range(12000):  # at most 10 minutes: the test releases it long before
            if release.exists():
                return "finished: " + request.messages[-1].content
            await asyncio.sleep(0.05)
        return "never released"

    return answer
