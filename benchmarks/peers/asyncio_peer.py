"""The floor: W1-W4 as plain coroutines in one event loop, no framework between the calls.

A model is an async function; W2 gathers the three voters and counts the votes; W3 awaits the
plan, gathers its four steps and awaits the synthesis. Whatever a framework adds on top of this
(messages, routing, state, actor hops) is what compare.py's "x floor" column shows.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from .common import (
    EXECUTOR,
    PLANNER,
    VOTERS,
    ZERO,
    Ask,
    ServedPeer,
    Topology,
    majority,
    plan_steps,
    synthesis_prompt,
)


async def single(question: str = "q") -> str:
    return await ZERO(question)


async def vote(question: str = "q") -> str:
    replies = await asyncio.gather(*(model(question) for model in VOTERS.values()))
    return majority(replies)


async def plan_and_execute(question: str = "q") -> str:
    steps = plan_steps(await PLANNER(question, structured=True))
    results = await asyncio.gather(*(EXECUTOR(step) for step in steps))
    return await PLANNER(synthesis_prompt(question, results))


class PlainAsyncio(ServedPeer):
    label = "plain asyncio"

    @asynccontextmanager
    async def serve(self, topology: Topology) -> AsyncIterator[Ask]:
        # Nothing to start: the models are functions in this loop.
        yield {"single": single, "vote": vote, "plan": plan_and_execute}[topology]
