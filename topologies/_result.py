"""What running a topology returns: the answer, its cost and the trace of every step."""

from __future__ import annotations

from typing import Any

from pydantic import Field, JsonValue, NonNegativeFloat

from cantata.agents import Decision, Frozen, MemberReply, Plan, Route, Span, StepResult, Usage

__all__ = ["RunResult"]

_PATTERN_FIELDS = ("route", "decision", "plan", "steps", "rounds", "replies")


class RunResult(Frozen):
    """The result contract of ``cantata run --json``; fields are only ever added.

    ``route`` (router), ``decision`` (vote, consensus, weighted ensemble), ``plan`` and
    ``steps`` (planner-executor), ``rounds`` (supervisor-worker) and ``replies`` (the parallel
    patterns) are set by the patterns that have them and left out of the JSON otherwise.
    """

    topology: str
    pattern: str
    trace_id: str
    text: str
    structured: JsonValue = None
    usage: Usage
    cost_usd: NonNegativeFloat = 0.0
    latency_ms: NonNegativeFloat
    trace: tuple[Span, ...] = Field(description="The root span first, then in start order.")
    route: Route | None = None
    decision: Decision | None = None
    plan: Plan | None = None
    steps: tuple[StepResult, ...] | None = None
    rounds: int | None = None
    replies: tuple[MemberReply, ...] | None = None

    def to_json_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the ``--json`` output), without the pattern fields left unset."""
        data = self.model_dump(mode="json")
        for name in _PATTERN_FIELDS:
            if data[name] is None:
                del data[name]
        return data
