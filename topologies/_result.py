"""What running a topology returns: the answer, its cost and the trace of every step."""

from __future__ import annotations

from typing import Any

from pydantic import Field, JsonValue, NonNegativeFloat

from cantata.agents import Frozen, Span, Usage

__all__ = ["RunResult"]


class RunResult(Frozen):
    """The result contract of ``cantata run --json``; fields are only ever added."""

    topology: str
    pattern: str
    trace_id: str
    text: str
    structured: JsonValue = None
    usage: Usage
    cost_usd: NonNegativeFloat = 0.0
    latency_ms: NonNegativeFloat
    trace: tuple[Span, ...] = Field(description="The root span first, then in start order.")

    def to_json_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the ``--json`` output)."""
        return self.model_dump(mode="json")
