"""What a pattern hands back to the runner, before usage and trace are added."""

from __future__ import annotations

from pydantic import JsonValue

from cantata.agents import Decision, Frozen, MemberReply, Plan, Route, StepResult

__all__ = ["Outcome"]


class Outcome(Frozen):
    """A pattern's answer, and what the pattern decided on the way."""

    text: str
    structured: JsonValue = None
    route: Route | None = None
    decision: Decision | None = None
    plan: Plan | None = None
    steps: tuple[StepResult, ...] | None = None
    rounds: int | None = None
    replies: tuple[MemberReply, ...] | None = None
