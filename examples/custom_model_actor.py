"""Write a model actor: subclass ModelActor to act around the model.

The model actor owns a backend and turns requests into stamped replies. Subclass it to add
behaviour that belongs next to the model, in the model's own Ray actor: here a guard that refuses
prompts asking for credentials before they reach the model, and trims the model's reply. The
runtime hosts the subclass for the model named in ``actor_classes``.

    .venv/bin/python examples/custom_model_actor.py

asks SmolLM2 one allowed and one refused question, and prints what happened to each.
"""

from __future__ import annotations

import asyncio

from cantata.agents import (
    InvalidMessageError,
    ModelActor,
    ModelReply,
    ModelRequest,
    ModelSpec,
    accept,
)
from cantata.cluster import RayRuntime, connect
from cantata.topologies import SingleSpec, run_topology

BLOCKED = ("password", "api key", "secret")


class GuardedModelActor(ModelActor):
    """Refuses prompts that ask for credentials; strips whitespace from replies."""

    async def complete(self, request: ModelRequest) -> ModelReply:
        request = accept(request, ModelRequest)  # validate before reading anything in it
        prompt = " ".join(turn.content.lower() for turn in request.messages)
        if any(word in prompt for word in BLOCKED):
            self.rejected += 1
            raise InvalidMessageError(f"{self.spec.name}: refused, the prompt asks for credentials")
        reply = await super().complete(request)
        return reply.model_copy(update={"text": reply.text.strip()})


TOPOLOGY = SingleSpec(
    name="guarded-smollm2",
    model=ModelSpec(name="smollm2", version="135m-instruct-q4_1"),  # llama.cpp + SmolLM2
    max_tokens=48,
)


async def ask(runtime: RayRuntime, question: str) -> None:
    try:
        result = await run_topology(TOPOLOGY, question, runtime)
    except InvalidMessageError as exc:
        print(f"{question!r} -> refused: {exc}")
    else:
        print(f"{question!r} -> {result.text!r}")


def main() -> None:
    connection = connect()
    runtime = RayRuntime(actor_classes={"smollm2": GuardedModelActor})
    try:
        asyncio.run(ask(runtime, "What is the capital of France?"))
        asyncio.run(ask(runtime, "What is the admin password?"))
    finally:
        connection.close()


if __name__ == "__main__":
    main()
