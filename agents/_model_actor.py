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
import os
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import Literal, TypeVar

import structlog
from pydantic import Field

from ._errors import (
    BackendError,
    BudgetExhaustedError,
    CantataError,
    DeadlineExceededError,
    InvalidMessageError,
    OverloadedError,
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
    excerpt,
    new_id,
)
from ._model_spec import ModelSpec
from ._secrets import scrub
from ._structured import parse_structured
from ._telemetry import RefusalReason, Telemetry
from .backends import Completion, EmbeddingBackend, ModelBackend

__all__ = ["Health", "Identity", "ModelActor"]

log = structlog.get_logger("cantata.model")

T = TypeVar("T")
M = TypeVar("M", bound=Envelope)

MAX_ERROR_CHARS = 500
"""How much of an error's message a span keeps: errors may quote untrusted server text."""


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
    queued: int = Field(default=0, description="Calls waiting for a concurrency slot.")
    served: int
    failed: int
    pid: int | None = Field(default=None, description="The hosting process.")
    rejected: int = Field(
        default=0,
        description="Requests refused before the backend: invalid, late, over budget, or"
        " beyond the replica's queue.",
    )
    batched: int = Field(
        default=0,
        description="Requests that arrived together with others in one runtime call (on Ray:"
        " calls made in the same event-loop turn share one actor call).",
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
        self.queued = 0
        self.telemetry: Telemetry = Telemetry()
        self._slots = asyncio.Semaphore(self.spec.max_concurrency)
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
            queued=self.queued,
            served=self.served,
            failed=self.failed,
            rejected=self.rejected,
            pid=os.getpid(),
            detail=self._start_error,
        )

    async def close(self) -> None:
        """Release the backend and send what telemetry has buffered."""
        try:
            await self.backend.aclose()
        finally:
            self._started = False
            self.telemetry.flush()

    def _admit(self, message: object, expected: type[M]) -> M:
        """Validate on arrival and check deadline and budget; count what is turned away."""
        try:
            return self._check(accept(message, expected))
        except CantataError as exc:
            self.rejected += 1
            reason: RefusalReason = (
                "budget"
                if isinstance(exc, BudgetExhaustedError)
                else "deadline"
                if isinstance(exc, DeadlineExceededError)
                else "invalid"
            )
            self.telemetry.refused(self.spec.name, reason, model=self.spec.name)
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

    @contextlib.asynccontextmanager
    async def _serving(self, request: Envelope) -> AsyncIterator[_Call]:
        """Bind the request to log lines, wait for a free slot, count the call, time it.

        Errors leave as Cantata's typed errors: anything else a backend raises is wrapped in a
        :class:`BackendError`, so no failure reaches the caller untyped. A failed call still
        ends in an error span, reported to telemetry and attached to the error as ``span``.
        """
        call = _Call(span_id=new_id(), start=time.time())
        spec = self.spec
        with bound(
            trace_id=request.trace_id,
            span_id=call.span_id,
            agent=spec.name,
            model=spec.name,
            version=spec.version,
        ):
            try:
                await self._acquire_slot(request)
                self.in_flight += 1
                self._report_load()
                call.start = time.time()
                try:
                    yield call
                finally:
                    self.in_flight -= 1
                    self._slots.release()
                    self._report_load()
            except BaseException as exc:
                error = _typed(exc, spec.name)
                if isinstance(error, OverloadedError):
                    self.rejected += 1  # refused before it ran, like a late or invalid call
                else:
                    self.failed += 1
                if isinstance(error, CantataError):
                    span = self._span(request, call, time.time(), error=error)
                    error.span = span  # the caller's trace keeps the failed call
                    self.telemetry.span_ended(span)
                # A refusal of a full replica is counted (metrics, status), not logged as a
                # failure: a burst would otherwise log a warning per refused call.
                log_failure = log.debug if isinstance(error, OverloadedError) else log.warning
                log_failure("model call failed", error=str(error), kind=type(error).__name__)
                if error is exc:
                    raise
                # Not chained: a foreign exception may hold request details (headers, keys).
                raise error from None
            self.served += 1

    async def _acquire_slot(self, request: Envelope) -> None:
        # Calls beyond max_concurrency wait here rather than in Ray's queue, so the actor can
        # count them, and a call whose deadline passes while it waits fails instead of running.
        if not self._slots.locked():
            await self._slots.acquire()  # free now: no wait, nothing queued to report
            return
        if self.queued >= self.spec.max_queued:
            # Refused at once: a burst beyond what the replica can hold must not grow memory
            # or the latency of the calls it already accepted.
            self.telemetry.refused(self.spec.name, "overload", model=self.spec.name)
            raise OverloadedError(
                f"{self.spec.name}: {self.in_flight} calls running and {self.queued} waiting,"
                f" the most this replica holds (max_queued={self.spec.max_queued}); retry later",
                limit=self.spec.max_queued,
            )
        self.queued += 1
        self._report_load()
        try:
            await self._with_deadline(self._slots.acquire(), request, waiting=True)
        finally:
            self.queued -= 1

    def _report_load(self) -> None:
        self.telemetry.model_load(
            self.spec.name, self.spec.version, in_flight=self.in_flight, queued=self.queued
        )

    def _span(
        self,
        request: Envelope,
        call: _Call,
        end: float,
        *,
        model: str | None = None,
        usage: Usage | None = None,
        cost_usd: float = 0.0,
        error: CantataError | None = None,
    ) -> Span:
        where = self.identity()
        usage = usage or Usage()
        return Span(
            span_id=call.span_id,
            parent_id=request.parent_span_id,
            trace_id=request.trace_id,
            agent=self.spec.name,
            model=model or self.spec.name,
            model_version=self.spec.version,
            actor_id=where.actor_id,
            node_id=where.node_id,
            start=call.start,
            end=max(end, call.start),
            latency_ms=max(end - call.start, 0.0) * 1000,
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cost_usd=cost_usd,
            status="ok" if error is None else "error",
            error=None if error is None else str(error)[:MAX_ERROR_CHARS],
            error_type=None if error is None else type(error).__name__,
        )

    async def complete(self, request: ModelRequest) -> ModelReply:
        """Answer one chat request with a normalized, stamped reply."""
        request = self._admit(request, ModelRequest)
        if not isinstance(self.backend, ModelBackend):
            raise InvalidMessageError(f"{self.spec.name} is an embedding model; send embed()")
        await self._ensure_started()
        async with self._serving(request) as call:
            completion = await self._with_deadline(self.backend.complete(request), request)
            structured = None
            if request.response_format is not None:
                structured = parse_structured(
                    completion.text, request.response_format, model=self.spec.name
                )
            reply = self._reply(request, completion, structured, call, time.time())
            self.telemetry.span_ended(reply.span)
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
        call: _Call,
        end: float,
    ) -> ModelReply:
        model = completion.model or self.spec.name
        usage = completion.usage
        cost = self.spec.pricing.cost(usage.input_tokens, usage.output_tokens)
        span = self._span(request, call, end, model=model, usage=usage, cost_usd=cost)
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
                "latency_ms": span.latency_ms,
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
        async with self._serving(request) as call:
            result = await self._with_deadline(
                self.backend.embed(
                    request.texts, input_type=request.input_type, deadline=request.deadline
                ),
                request,
            )
            usage = Usage(input_tokens=result.input_tokens)
            span = self._span(request, call, time.time(), model=result.model, usage=usage)
            self.telemetry.span_ended(span)
            return EmbedReply(
                trace_id=request.trace_id,
                parent_span_id=span.span_id,
                deadline=request.deadline,
                budget=request.budget.spend(usage.total_tokens, 0.0),
                request_id=request.id,
                vectors=result.vectors,
                model=result.model or self.spec.name,
                model_version=self.spec.version,
                usage=usage,
                latency_ms=span.latency_ms,
                span=span,
            )

    async def _with_deadline(
        self, call: Awaitable[T], message: Envelope, *, waiting: bool = False
    ) -> T:
        left = message.remaining_s()
        if left is None:
            return await call
        try:
            return await asyncio.wait_for(call, timeout=max(left, 0.0))
        except TimeoutError:
            where = "while it waited for a free slot" if waiting else "during the call"
            raise DeadlineExceededError(f"{self.spec.name}: the deadline passed {where}") from None


@dataclass
class _Call:
    """One call's span id and start, fixed before it runs so its log lines can name the span."""

    span_id: str
    start: float


def _typed(exc: BaseException, model: str) -> BaseException:
    """Cantata errors and cancellation pass through; anything else becomes a BackendError."""
    if isinstance(exc, CantataError | asyncio.CancelledError | KeyboardInterrupt):
        return exc
    # Bounded and scrubbed: a backend's exception may quote what a server or a model said.
    detail = excerpt(scrub(str(exc)), MAX_ERROR_CHARS)
    return BackendError(f"{model}: backend raised {type(exc).__name__}: {detail}", model=model)
