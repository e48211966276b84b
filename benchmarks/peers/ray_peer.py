"""Raw Ray actors: one async actor per model, the driver coordinating with ``.remote()`` calls.

What a Ray user writes without a framework: each model is an async actor (``max_concurrency``
256, so its event loop serves every call at once; 0.1 CPU, the reservation the Cantata specs
ask for) and the driver awaits the calls' ObjectRefs. W2 gathers three calls and counts the
votes in the driver; W3 calls the planner, gathers four calls to the executor actor and calls
the planner again. Every model call is one driver -> actor round trip, as on Cantata's Ray path.
Needs the Ray connection compare.py opens.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import ray

from .common import (
    EXECUTOR,
    PLANNER,
    VOTERS,
    ZERO,
    Ask,
    Model,
    ServedPeer,
    Topology,
    majority,
    plan_steps,
    synthesis_prompt,
)


class ModelActor:
    """Hosts one simulated model; Ray runs ``generate`` on the actor's own event loop."""

    def __init__(self, model: Model) -> None:
        self._model = model

    async def generate(self, prompt: str, structured: bool = False) -> str:
        return await self._model(prompt, structured=structured)


RemoteModel = ray.remote(ModelActor)

MODELS: Mapping[Topology, Mapping[str, Model]] = {
    "single": {"zero": ZERO},
    "vote": VOTERS,
    "plan": {"planner": PLANNER, "exec": EXECUTOR},
}


def asker(topology: Topology, actors: Mapping[str, Any]) -> Ask:
    """The driver's side of ``topology``: awaits the actors' replies and combines them."""

    async def single(question: str = "q") -> str:
        reply: str = await actors["zero"].generate.remote(question)
        return reply

    async def vote(question: str = "q") -> str:
        replies = await asyncio.gather(*(actors[name].generate.remote(question) for name in VOTERS))
        return majority(replies)

    async def plan_and_execute(question: str = "q") -> str:
        planner, executor = actors["planner"], actors["exec"]
        steps = plan_steps(await planner.generate.remote(question, True))
        results = await asyncio.gather(*(executor.generate.remote(step) for step in steps))
        synthesis: str = await planner.generate.remote(synthesis_prompt(question, results))
        return synthesis

    return {"single": single, "vote": vote, "plan": plan_and_execute}[topology]


class RawRay(ServedPeer):
    label = "raw Ray actors"

    @asynccontextmanager
    async def serve(self, topology: Topology) -> AsyncIterator[Ask]:
        actors: dict[str, Any] = {
            name: RemoteModel.options(num_cpus=0.1, max_concurrency=256).remote(model)
            for name, model in MODELS[topology].items()
        }
        try:
            # Started before the warm-up, as Cantata's start_models waits for its actors.
            await asyncio.gather(*(actor.__ray_ready__.remote() for actor in actors.values()))
            yield asker(topology, actors)
        finally:
            for actor in actors.values():
                ray.kill(actor)
