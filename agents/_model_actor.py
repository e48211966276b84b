"""The model actor: one replica of one model, owning its backend.

:class:`ModelActor` is a plain async class. The runtime hosts it: in-process for tests, or as a
Ray actor (``cantata.cluster``), which subclasses it only to say which actor and node it is. It
validates every request on arrival, enforces deadline and budget, times the backend call, parses
structured output, prices the call and stamps the normalized :class:`ModelReply` with the model's
name and version and the actor and node that served it.

To change what a model does around its backend (a cache, a guard, prompt rewriting), subclass
``ModelActor`` and override :meth:`complete`; see ``examples/custom_model_actor.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Iterator
from typing import Literal, TypeVar

import structlog
from pydantic import Field

from ._errors import (
    BackendError,
    BudgetExhaustedError,
    CantataError,
    DeadlineExceededError,
    InvalidMessageError,
)
from ._logging import bound
from ._messages import (
    EmbedReply,
    EmbedRequest,
    Envelope,
    Frozen,
    ModelReply,
    ModelRequest,
    Span,
    Usage,
    accept,
)
from ._model_spec import ModelSpec
from ._structured import parse_structured
from .backends import Completion, EmbeddingBackend, ModelBackend

__all__ = ["Health", "Identity", "ModelActor"]

log = structlog.get_logger("cantata.model")

T = TypeVar("T")
M = TypeVar("M", bound=Envelope)


class Identity(Frozen):
    """Where a replica runs. Empty outside Ray."""

    actor_id: str | None = None
    node_id: str | None = None


class Health(Frozen):
    """A replica's health report and counters."""

    model: str
    version: str
    kind: Literal["chat", "embedding"]
    actor_id: str | None
    node_id: str | None
    healthy: bool
    in_flight: int
    served: int
    failed: int
    rejected: int = Field(
        default=0, description="Requests refused before the backend: invalid, late, over budget."
    )
    detail: str = ""


class ModelActor:
    """Hosts one model replica. Construct with a :class:`ModelSpec`; call :meth:`start` once."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = accept(spec, ModelSpec)
        self.backend = self.spec.build_backend()
        self.in_flight = 0
        self.served = 0
        self.failed = 0
        self.rejected = 0
        self._started = False
        self._start_error: str = ""
        self._start_lock = asyncio.Lock()

    def identity(self) -> Identity:
        """Which actor and node this replica is; runtimes override it."""
        return Identity()

    @property
    def kind(self) -> Literal["chat", "embedding"]:
        """``"embedding"`` for embedding backends, else ``"chat"``."""
        return "embedding" if isinstance(self.backend, EmbeddingBackend) else "chat"

    async def start(self) -> Health:
        """Load the backend (weights, connections) and report health."""
        await self._ensure_started()
        return await self.health()

    async def _ensure_started(self) -> None:
        # Also reached after a runtime restarted this actor (a lost node, say): the new process
        # loads its backend on first use instead of reporting itself unloaded forever.
        if self._started:
            return
        async with self._start_lock:  # concurrent first calls load the model once
            if self._started:
                return
            try:
                await self.backend.start()
            except BaseException as exc:
                error = _typed(exc, self.spec.name)
                self._start_error = str(error)
                if error is exc:
                    raise
                raise error from None
            self._start_error = ""
            self._started = True

    async def health(self) -> Health:
        """Counters and whether the backend is loaded (loading it if it is not yet)."""
        with contextlib.suppress(CantataError):  # a failed load is reported in ``detail``
            await self._ensure_started()
        where = self.identity()
        return Health(
            model=self.spec.name,
            version=self.spec.version,
            kind=self.kind,
            actor_id=where.actor_id,
            node_id=where.node_id,
            healthy=self._started and not self._start_error,
            in_flight=self.in_flight,
            served=self.served,
            failed=self.failed,
            rejected=self.rejected,
            detail=self._start_error,
        )

    async def close(self) -> None:
        """Release the backend."""
        await self.backend.aclose()
        self._started = False

    def _admit(self, message: object, expected: type[M]) -> M:
        """Validate on arrival and check deadline and budget; count what is turned away."""
        try:
            return self._check(accept(message, expected))
        except CantataError:
            self.rejected += 1
            raise

    def _check(self, message: M) -> M:
        if message.deadline is not None and time.time() >= message.deadline:
            raise DeadlineExceededError(f"{self.spec.name}: the deadline passed before the call")
        if message.budget.exhausted:
            raise BudgetExhaustedError(
                f"{self.spec.name}: no budget left (tokens={message.budget.tokens},"
                f" cost_usd={message.budget.cost_usd})"
            )
        return message

    @contextlib.contextmanager
    def _serving(self, request: Envelope) -> Iterator[None]:
        """Bind the request to log lines, count it in flight, then as served or failed.

        Errors leave as Cantata's typed errors: anything else a backend raises is wrapped in a
        :class:`BackendError`, so no failure reaches the caller untyped.
        """
        with bound(trace_id=request.trace_id, agent=self.spec.name, model=self.spec.name):
            self.in_flight += 1
            try:
                yield
            except BaseException as exc:
                self.failed += 1
                error = _typed(exc, self.spec.name)
                log.warning("model call failed", error=str(error), kind=type(error).__name__)
                if error is exc:
                    raise
                # Not chained: a foreign exception may hold request details (headers, keys).
                raise error from None
            else:
                self.served += 1
            finally:
                self.in_flight -= 1

    async def complete(self, request: ModelRequest) -> ModelReply:
        """Answer one chat request with a normalized, stamped reply."""
        request = self._admit(request, ModelRequest)
        if not isinstance(self.backend, ModelBackend):
            raise InvalidMessageError(f"{self.spec.name} is an embedding model; send embed()")
        await self._ensure_started()
        with self._serving(request):
            start = time.time()
            completion = await self._with_deadline(self.backend.complete(request), request)
            structured = None
            if request.response_format is not None:
                structured = parse_structured(
                    completion.text, request.response_format, model=self.spec.name
                )
            reply = self._reply(request, completion, structured, start, time.time())
            log.debug(
                "model call",
                latency_ms=round(reply.latency_ms, 1),
                input_tokens=reply.usage.input_tokens,
                output_tokens=reply.usage.output_tokens,
            )
            return reply

    def _reply(
        self,
        request: ModelRequest,
        completion: Completion,
        structured: object,
        start: float,
        end: float,
    ) -> ModelReply:
        where = self.identity()
        model = completion.model or self.spec.name
        latency_ms = (end - start) * 1000
        usage = completion.usage
        span = Span(
            parent_id=request.parent_span_id,
            trace_id=request.trace_id,
            agent=self.spec.name,
            model=model,
            model_version=self.spec.version,
            actor_id=where.actor_id,
            node_id=where.node_id,
            start=start,
            end=end,
            latency_ms=latency_ms,
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
        )
        cost = self.spec.pricing.cost(usage.input_tokens, usage.output_tokens)
        return ModelReply.model_validate(
            {
                "trace_id": request.trace_id,
                "parent_span_id": span.span_id,
                "deadline": request.deadline,
                "budget": request.budget.spend(usage.total_tokens, cost),
                "request_id": request.id,
                "text": completion.text,
                "structured": structured,
                "model": model,
                "model_version": self.spec.version,
                "usage": usage,
                "cost_usd": cost,
                "latency_ms": latency_ms,
                "finish_reason": completion.finish_reason,
                "span": span,
            }
        )

    async def embed(self, request: EmbedRequest) -> EmbedReply:
        """Embed the request's texts."""
        request = self._admit(request, EmbedRequest)
        if not isinstance(self.backend, EmbeddingBackend):
            raise InvalidMessageError(f"{self.spec.name} is a chat model; send complete()")
        await self._ensure_started()
        with self._serving(request):
            start = time.time()
            result = await self._with_deadline(
                self.backend.embed(
                    request.texts, input_type=request.input_type, deadline=request.deadline
                ),
                request,
            )
            end = time.time()
            where = self.identity()
            model = result.model or self.spec.name
            usage = Usage(input_tokens=result.input_tokens)
            span = Span(
                parent_id=request.parent_span_id,
                trace_id=request.trace_id,
                agent=self.spec.name,
                model=model,
                model_version=self.spec.version,
                actor_id=where.actor_id,
                node_id=where.node_id,
                start=start,
                end=end,
                latency_ms=(end - start) * 1000,
                input_tokens=usage.input_tokens,
            )
            return EmbedReply(
                trace_id=request.trace_id,
                parent_span_id=span.span_id,
                deadline=request.deadline,
                budget=request.budget.spend(usage.total_tokens, 0.0),
                request_id=request.id,
                vectors=result.vectors,
                model=model,
                model_version=self.spec.version,
                usage=usage,
                latency_ms=span.latency_ms,
                span=span,
            )

    async def _with_deadline(self, call: Awaitable[T], message: Envelope) -> T:
        left = message.remaining_s()
        if left is None:
            return await call
        try:
            return await asyncio.wait_for(call, timeout=max(left, 0.0))
        except TimeoutError:
            raise DeadlineExceededError(
                f"{self.spec.name}: the deadline passed during the call"
            ) from None


def _typed(exc: BaseException, model: str) -> BaseException:
    """Cantata errors and cancellation pass through; anything else becomes a BackendError."""
    if isinstance(exc, CantataError | asyncio.CancelledError | KeyboardInterrupt):
        return exc
    return BackendError(f"{model}: backend raised {type(exc).__name__}: {exc}", model=model)
