"""What a pattern hands back to the runner, before usage and trace are added."""

from __future__ import annotations

from pydantic import JsonValue

from cantata.agents import Frozen

__all__ = ["Outcome"]


class Outcome(Frozen):
    """A pattern's answer. Patterns with routes, votes or plans extend it."""

    text: str
    structured: JsonValue = None
