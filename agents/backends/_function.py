"""A backend that calls a Python function: the test double, and a home for rule-based agents.

Like httpx's ``MockTransport``: it ships with the package so tests and rule-based members of a
topology need no model. The function takes the :class:`~cantata.agents.ModelRequest` and returns
a string or a :class:`Completion`; it may be sync or async. Sync functions run in a worker thread
so a slow one does not block the actor's event loop.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable

from .._messages import ModelRequest, Usage
from ._base import Completion, ModelBackend

__all__ = ["FunctionBackend", "ReplyFunction"]

ReplyFunction = Callable[[ModelRequest], "str | Completion | Awaitable[str | Completion]"]


class FunctionBackend(ModelBackend):
    """Answers with ``fn(request)``. Token counts default to whitespace-separated words."""

    supports_structured_output = True  # the function decides; the actor still validates

    def __init__(self, fn: ReplyFunction, *, name: str = "function") -> None:
        self.fn = fn
        self.name = name

    async def complete(self, request: ModelRequest) -> Completion:
        if inspect.iscoroutinefunction(self.fn):
            result = await self.fn(request)
        else:
            result = await asyncio.to_thread(self.fn, request)
            if inspect.isawaitable(result):
                result = await result
        if isinstance(result, Completion):
            return result
        if not isinstance(result, str):
            raise TypeError(f"{self.name}: the function returned {type(result).__name__}, not str")
        prompt_words = sum(len(m.content.split()) for m in request.messages)
        return Completion(
            text=result,
            usage=Usage(input_tokens=prompt_words, output_tokens=len(result.split())),
            model=self.name,
        )
