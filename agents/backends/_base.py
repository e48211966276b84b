"""The interface every model backend implements, and what it returns.

A backend turns one :class:`~cantata.agents.ModelRequest` into one :class:`Completion`. It knows
nothing of actors, traces or cost: the :class:`~cantata.agents.ModelActor` that hosts it times the
call, parses structured output and stamps the normalized :class:`~cantata.agents.ModelReply`.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator

from pydantic import Field

from .._messages import FinishReason, Frozen, ModelRequest, Usage

__all__ = ["Completion", "EmbeddingBackend", "Embeddings", "ModelBackend"]


class Completion(Frozen):
    """What a backend produced for one request, before the actor normalizes it."""

    text: str
    usage: Usage = Field(default_factory=Usage)
    finish_reason: FinishReason = "stop"
    model: str | None = Field(default=None, description="The model name the server reported.")


class ModelBackend(abc.ABC):
    """Completes chat requests. Subclass it to add a backend; see ``examples/custom_backend.py``.

    Implementations must be safe to call concurrently from one event loop (serialize internally
    if the engine is not), raise :class:`~cantata.agents.BackendError` subclasses, and honour
    ``request.response_format`` when they can constrain decoding (``supports_structured_output``).
    """

    #: True when the backend constrains decoding to the requested JSON schema.
    supports_structured_output: bool = False

    async def start(self) -> None:
        """Load weights or open connections. Called once by the hosting actor before traffic."""
        return

    @abc.abstractmethod
    async def complete(self, request: ModelRequest) -> Completion:
        """Answer one request."""

    async def stream(self, request: ModelRequest) -> AsyncIterator[str]:
        """Yield the answer in pieces. The default yields the whole completion once."""
        completion = await self.complete(request)
        yield completion.text

    async def aclose(self) -> None:
        """Release what :meth:`start` took. Safe to call twice."""
        return


class Embeddings(Frozen):
    """Vectors for a batch of texts, in input order."""

    vectors: tuple[tuple[float, ...], ...]
    input_tokens: int = 0
    model: str | None = None


class EmbeddingBackend(abc.ABC):
    """Embeds texts. Hosted by a :class:`~cantata.agents.ModelActor` like a chat backend."""

    async def start(self) -> None:
        """Load the model. Called once by the hosting actor before traffic."""
        return

    @abc.abstractmethod
    async def embed(
        self, texts: tuple[str, ...], *, input_type: str = "query", deadline: float | None = None
    ) -> Embeddings:
        """Embed ``texts``; ``input_type`` is ``"query"`` or ``"passage"``."""

    async def aclose(self) -> None:
        """Release what :meth:`start` took. Safe to call twice."""
        return
