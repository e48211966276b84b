"""OpenAI-compatible chat completions over httpx: vLLM, llama.cpp's server, Ollama, OpenAI, LiteLLM.

Structured output is asked for in the dialect the server speaks (``structured_output``):

- ``"json_schema"``: OpenAI's ``{"type": "json_schema", "json_schema": {...}}`` (OpenAI, vLLM,
  Ollama, llama.cpp's C++ server).
- ``"json_object"``: ``{"type": "json_object", "schema": {...}}`` (llama-cpp-python's server).
- ``"prompt"``: no server-side constraint; the schema goes into the system prompt and the hosting
  actor validates the reply.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import SecretStr

from .._errors import MalformedResponseError
from .._messages import FinishReason, ModelRequest, Usage
from ._base import Completion, ModelBackend
from ._http_client import JsonPoster
from ._http_config import Limits, RetryPolicy, Timeout

__all__ = ["OpenAIChatBackend", "StructuredOutputDialect"]

StructuredOutputDialect = Literal["json_schema", "json_object", "prompt"]

_FINISH_REASONS: dict[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "content_filter": "content_filter",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "eos": "stop",
}


class OpenAIChatBackend(ModelBackend):
    """Chat completions from any server that speaks OpenAI's ``/v1/chat/completions``.

    The key is ``api_key``, or else the environment variable ``api_key_env`` of this process;
    when that variable is missing, :meth:`start` and every call raise a
    :class:`~cantata.agents.BackendError` naming it.
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
        structured_output: StructuredOutputDialect = "json_schema",
        headers: dict[str, str] | None = None,
        api_key_env: str | None = None,
    ) -> None:
        secret = SecretStr(api_key) if isinstance(api_key, str) else api_key
        self.model = model
        self.structured_output = structured_output
        self.supports_structured_output = structured_output != "prompt"
        self._poster = JsonPoster(
            base_url,
            api_key=secret,
            model=model,
            timeout=timeout or Timeout(),
            limits=limits or Limits(),
            retry=retry or RetryPolicy(),
            api_key_env=api_key_env,
            headers=headers,
        )

    def __repr__(self) -> str:
        return f"OpenAIChatBackend(base_url={self._poster.base_url!r}, model={self.model!r})"

    def payload(self, request: ModelRequest) -> dict[str, Any]:
        """The JSON body sent for ``request``."""
        messages = [{"role": m.role, "content": m.content} for m in request.messages]
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
        }
        if request.stop:
            body["stop"] = list(request.stop)
        if request.seed is not None:
            body["seed"] = request.seed
        fmt = request.response_format
        if fmt is not None:
            if self.structured_output == "json_schema":
                body["response_format"] = {
                    "type": "json_schema",
                    "json_schema": {"name": fmt.name, "schema": fmt.json_schema, "strict": True},
                }
            elif self.structured_output == "json_object":
                body["response_format"] = {"type": "json_object", "schema": fmt.json_schema}
            else:
                instruction = "Answer with JSON only, matching this JSON schema: " + json.dumps(
                    fmt.json_schema
                )
                body["messages"] = [{"role": "system", "content": instruction}, *messages]
        return body

    async def complete(self, request: ModelRequest) -> Completion:
        data = await self._poster.post(
            "/chat/completions", self.payload(request), deadline=request.deadline
        )
        return self._completion(data)

    def _completion(self, data: Any) -> Completion:
        try:
            choice = data["choices"][0]
            text = choice["message"]["content"] or ""
            reason = choice.get("finish_reason") or "stop"
            usage = data.get("usage") or {}
            return Completion(
                text=text,
                usage=Usage(
                    input_tokens=int(usage.get("prompt_tokens") or 0),
                    output_tokens=int(usage.get("completion_tokens") or 0),
                ),
                finish_reason=_FINISH_REASONS.get(str(reason), "other"),
                model=str(data.get("model") or self.model),
            )
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
            raise MalformedResponseError(
                f"{self._poster.base_url}/chat/completions answered JSON without a completion"
                f" ({type(exc).__name__}: {exc})",
                model=self.model,
            ) from None

    async def start(self) -> None:
        """Fail at once, naming it, when the key's environment variable is missing here."""
        self._poster.check_key()

    async def aclose(self) -> None:
        await self._poster.aclose()
