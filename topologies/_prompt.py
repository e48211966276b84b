"""Prompt templates: a system message and a user message with placeholders filled in."""

from __future__ import annotations

import re

from cantata.agents import ChatMessage, Frozen

__all__ = ["PromptTemplate"]


class PromptTemplate(Frozen):
    """``{input}`` (and any other named value the pattern passes) is replaced in both messages.

    Patterns pass ``{input}`` (the text for this step) and where it applies ``{original}`` (the
    request as the user sent it). Other braces, such as JSON examples, are left as written.
    """

    system: str | None = None
    user: str = "{input}"

    def render(self, text: str, **values: str) -> tuple[ChatMessage, ...]:
        """The chat turns for ``text``."""
        values = {"input": text, **values}
        turns = []
        if self.system:
            turns.append(ChatMessage(role="system", content=_fill(self.system, values)))
        turns.append(ChatMessage(role="user", content=_fill(self.user, values)))
        return tuple(turns)


_PLACEHOLDER = re.compile(r"\{(\w+)\}")


def _fill(template: str, values: dict[str, str]) -> str:
    # One pass over the template: text filled in (a model's output, say) is never filled again.
    return _PLACEHOLDER.sub(lambda match: values.get(match.group(1), match.group(0)), template)
