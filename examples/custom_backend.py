"""Write a model backend: one class, one async method.

A backend turns a ModelRequest into a Completion. Here the "model" is a keyword rule set that
labels support messages, the kind of cheap first stage teams put in front of an LLM. Cantata
hosts it like any model: in its own Ray actor, with its own reservation (a tenth of a CPU), and
stamps its replies with model name, version, tokens, latency, actor and node.

    .venv/bin/python examples/custom_backend.py "I was charged twice, I want my money back"

prints the label ("refund") and the Ray actor that served it.
"""

from __future__ import annotations

import asyncio
import sys
from typing import ClassVar

from cantata.agents import CustomConfig, ModelRequest, ModelSpec, Resources, Usage
from cantata.agents.backends import Completion, ModelBackend
from cantata.cluster import RayRuntime, connect
from cantata.topologies import SingleSpec, run_topology


class KeywordTriage(ModelBackend):
    """Labels a message by the first rule whose keywords it contains; "other" if none."""

    RULES: ClassVar[dict[str, tuple[str, ...]]] = {
        "refund": ("refund", "money back", "charged twice", "chargeback"),
        "shipping": ("delivery", "shipped", "tracking", "parcel"),
        "account": ("password", "log in", "login", "2fa"),
    }

    async def complete(self, request: ModelRequest) -> Completion:
        text = request.messages[-1].content.lower()
        label = next(
            (name for name, words in self.RULES.items() if any(w in text for w in words)),
            "other",
        )
        return Completion(
            text=label,
            usage=Usage(input_tokens=len(text.split()), output_tokens=1),
            model="keyword-triage",
        )


def build_backend(resources: Resources) -> KeywordTriage:
    """Called inside the model's actor; ``resources`` is its reservation."""
    return KeywordTriage()


TOPOLOGY = SingleSpec(
    name="triage-rules",
    model=ModelSpec(
        name="triage",
        version="rules-1",
        backend=CustomConfig(factory=build_backend),
        resources=Resources(num_cpus=0.1),
    ),
)


def main() -> None:
    message = " ".join(sys.argv[1:]) or "I was charged twice, I want my money back"
    connection = connect()
    try:
        result = asyncio.run(run_topology(TOPOLOGY, message, RayRuntime()))
    finally:
        connection.close()
    span = result.trace[-1]
    print(f"label: {result.text}")
    print(f"served by {span.model} v{span.model_version} in actor {span.actor_id}")


if __name__ == "__main__":
    main()
