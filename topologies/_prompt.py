"""Prompt templates: a system message and a user message with ``{input}`` filled in."""

from __future__ import annotations

from cantata.agents import ChatMessage, Frozen

__all__ = ["PromptTemplate"]


class PromptTemplate(Frozen):
    """``{input}`` in ``user`` (and ``system``) is replaced by the request text.

    Only ``{input}`` is substituted; other braces, such as JSON examples, are left as written.
    """

    system: str | None = None
    user: str = "{input}"

    def render(self, text: str) -> tuple[ChatMessage, ...]:
        """The chat turns for ``text``."""
        turns = []
        if self.system:
            turns.append(ChatMessage(role="system", content=self.system.replace("{input}", text)))
        turns.append(ChatMessage(role="user", content=self.user.replace("{input}", text)))
        return tuple(turns)
