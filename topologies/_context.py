"""Per-request state a topology threads through its steps: trace, deadline, budget, spans.

Role agents and patterns reach models only through :class:`RequestContext`: ``ask`` for one
model call, ``call_member`` for a member that may be a model or a nested topology, and
``gather`` for the parallel branches of fan-outs, votes and ensembles (per-member deadline,
quorum, every failure reported, nothing hung). How a member is asked is one
:class:`~cantata.topologies.CallOptions`.

The context runs a nested topology through the pattern table it is given (``patterns``, see
``_patterns.py``) rather than importing the patterns, which import it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, NoReturn, TypeVar

import structlog

from cantata.agents import (
    BackendError,
    Budget,
    BudgetExhaustedError,
    CantataError,
    CircuitOpenError,
    DeadlineExceededError,
    EmbedReply,
    EmbedRequest,
    Identity,
    MemberReply,
    ModelReply,
    ModelRequest,
    ModelSpec,
    OverloadedError,
    QuorumNotReachedError,
    RequestRejectedError,
    Span,
    StructuredOutputError,
    Task,
    Telemetry,
    TopologyError,
    Usage,
    bound,
    choice_output,
    choice_type,
    counts_against_replica,
    new_id,
    parse_output,
)

from ._call_options import CallOptions
from ._code import Code
from ._outcome import Outcome
from ._runtime import AgentHandle, ModelHandle
from ._spec import Member, member_name

__all__ = ["DEADLINE_GRACE_S", "PatternRunner", "RequestContext", "gather_all", "until"]

log = structlog.get_logger("cantata.topology")

R = TypeVar("R")
T = TypeVar("T")

PatternRunner = Callable[[Any, str, "RequestContext", str], Awaitable[Outcome]]
"""Runs one pattern: ``(spec, text, ctx, parent_id) -> Outcome``."""


DEADLINE_GRACE_S = 0.1
"""How long past a deadline a topology waits before cancelling what it has in flight.

The model actors end their calls at the deadline themselves, and their errors carry the
failed calls' spans; the grace lets those arrive first. An actor that cannot answer (hung,
or lost with its node) is cancelled this long after the deadline.
"""


@asynccontextmanager
async def until(deadline: float | None, what: str) -> AsyncIterator[None]:
    """Run the body until ``deadline`` (epoch seconds); then cancel it, and with it every call
    it has in flight, and raise :class:`DeadlineExceededError`."""
    if deadline is None:
        yield
        return
    try:
        async with asyncio.timeout(max(deadline - time.time(), 0.0) + DEADLINE_GRACE_S):
            yield
    except TimeoutError:
        raise DeadlineExceededError(f"{what}: the request's deadline passed") from None


def _model_failed(error: CantataError) -> bool:
    """Whether a model call failed for the model's reasons, so another model may answer it:
    not for the request's (rejected as wrong, late, over budget)."""
    if isinstance(error, CircuitOpenError | OverloadedError) or counts_against_replica(error):
        return True
    return isinstance(error, BackendError) and not isinstance(error, RequestRejectedError)


async def gather_all(calls: Iterable[Awaitable[T]]) -> list[T]:
    """Run ``calls`` at once; if one fails, cancel the rest, wait for them, and re-raise.

    Unlike plain ``asyncio.gather``, no sibling keeps calling models (and spending the budget,
    and holding replicas) for a request that has already failed.
    """
    tasks = [asyncio.ensure_future(call) for call in calls]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


@dataclass
class RequestContext:
    """One request through a topology. Collects every span; tracks what the budget has left.

    ``telemetry`` receives the spans of the steps run here (model actors report their own
    calls), and the routes and decisions the patterns make. ``where`` is the actor and node
    running the steps, stamped on their spans (empty outside Ray). ``patterns`` runs each
    nested topology by its spec's type. ``agents`` reach the nested topologies hosted as actors
    of their own; ``code`` holds the user classes the topology names.
    """

    handles: dict[str, ModelHandle]
    patterns: Mapping[type, PatternRunner] = field(default_factory=dict)
    agents: dict[str, AgentHandle] = field(default_factory=dict)
    code: Code = field(default_factory=Code)
    trace_id: str = field(default_factory=new_id)
    deadline: float | None = None
    budget: Budget = field(default_factory=Budget)
    spans: list[Span] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    cost_usd: float = 0.0
    roles: Mapping[type, type] = field(default_factory=dict)
    telemetry: Telemetry = field(default_factory=Telemetry)
    where: Identity = field(default_factory=Identity)
    reserved_tokens: int = 0  # what the model calls in flight may still write

    def role(self, cls: type[R]) -> type[R]:
        """The class to use for role ``cls``: the caller's replacement, or ``cls`` itself."""
        chosen = self.roles.get(cls) or self.code.roles.get(cls, cls)
        if not (isinstance(chosen, type) and issubclass(chosen, cls)):
            raise TopologyError(f"the replacement for {cls.__name__} must subclass it")
        return chosen

    @contextmanager
    def step(self, agent: str, parent_id: str | None) -> Iterator[str]:
        """Time a role agent's step as a span; yields the span id for its children."""
        span_id = new_id()
        start = time.time()
        error: BaseException | None = None
        try:
            with bound(trace_id=self.trace_id, span_id=span_id, agent=agent):
                yield span_id
        except BaseException as exc:
            error = exc
            raise
        finally:
            end = time.time()
            span = Span(
                span_id=span_id,
                parent_id=parent_id,
                trace_id=self.trace_id,
                agent=agent,
                actor_id=self.where.actor_id,
                node_id=self.where.node_id,
                start=start,
                end=end,
                latency_ms=(end - start) * 1000,
                status="ok" if error is None else "error",
                # Bounded: an error may quote untrusted model or server text.
                error=None if error is None else f"{type(error).__name__}: {error}"[:500],
                error_type=None if error is None else type(error).__name__,
            )
            self.spans.append(span)
            self.telemetry.span_ended(span)

    def _deadline(self, timeout_s: float | None) -> float | None:
        if timeout_s is None:
            return self.deadline
        member_deadline = time.time() + timeout_s
        return member_deadline if self.deadline is None else min(self.deadline, member_deadline)

    async def ask(
        self, model: str, text: str, options: CallOptions, *, parent_id: str
    ) -> ModelReply:
        """Send ``text`` through ``options.prompt`` to ``model``; record its span and spend.

        A call the model failed for its own reasons goes to the model's ``fallback`` (and
        its fallback's, in turn); every attempt keeps its span.
        """
        try:
            return await self._ask(model, text, options, parent_id=parent_id)
        except CantataError as exc:
            fallback = self._fallback(model, exc)
            if fallback is None:
                raise
            return await self.ask(fallback, text, options, parent_id=parent_id)

    def _fallback(self, model: str, error: CantataError) -> str | None:
        """The model to ask instead of ``model`` after ``error``, if any."""
        spec = self.handles[model].spec.fallback
        if spec is None or spec.name not in self.handles or not _model_failed(error):
            return None
        log.warning(
            "model failed; asking its fallback",
            model=model,
            fallback=spec.name,
            kind=type(error).__name__,
        )
        return spec.name

    async def _ask(
        self, model: str, text: str, options: CallOptions, *, parent_id: str
    ) -> ModelReply:
        if self.budget.exhausted:
            self._refuse(
                BudgetExhaustedError(f"no budget left before calling {model}"), model, parent_id
            )
        deadline = self._deadline(options.timeout_s)
        if deadline is not None and time.time() >= deadline:
            self._refuse(
                DeadlineExceededError(f"the deadline passed before calling {model}"),
                model,
                parent_id,
            )
        max_tokens = options.max_tokens
        budget = self.budget
        if budget.tokens is not None:
            # Calls in flight hold the tokens they may still write: members of a fan-out
            # share what is left instead of each being allowed all of it.
            available = budget.tokens - self.reserved_tokens
            if available <= 0:
                refusal = BudgetExhaustedError(
                    f"no token budget left for {model}: the {budget.tokens} tokens left are"
                    " held by calls in flight"
                )
                self._refuse(refusal, model, parent_id)
            max_tokens = min(max_tokens, available)
            budget = budget.model_copy(update={"tokens": available})
        request = ModelRequest(
            trace_id=self.trace_id,
            parent_span_id=parent_id,
            deadline=deadline,
            budget=budget,
            messages=options.prompt.render(text, **options.values),
            max_tokens=max_tokens,
            temperature=options.temperature,
            response_format=options.output,
        )
        held = max_tokens if budget.tokens is not None else 0
        self.reserved_tokens += held
        start = time.time()
        try:
            reply = await self.handles[model].complete(request)
        except (CantataError, asyncio.CancelledError) as exc:
            self._keep_failed_span(exc, model, parent_id, start)
            raise
        finally:
            self.reserved_tokens -= held
        self.spans.append(reply.span)
        self.usage += reply.usage
        self.cost_usd += reply.cost_usd
        self.budget = self.budget.spend(reply.usage.total_tokens, reply.cost_usd)
        return reply

    async def embed(
        self, model: str, texts: tuple[str, ...], *, parent_id: str, input_type: str = "query"
    ) -> EmbedReply:
        """Embed ``texts`` with ``model`` (or its fallback, as :meth:`ask`); record its span."""
        try:
            return await self._embed(model, texts, parent_id=parent_id, input_type=input_type)
        except CantataError as exc:
            fallback = self._fallback(model, exc)
            if fallback is None:
                raise
            return await self.embed(fallback, texts, parent_id=parent_id, input_type=input_type)

    async def _embed(
        self, model: str, texts: tuple[str, ...], *, parent_id: str, input_type: str
    ) -> EmbedReply:
        request = EmbedRequest(
            trace_id=self.trace_id,
            parent_span_id=parent_id,
            deadline=self.deadline,
            budget=self.budget,
            texts=texts,
            input_type="passage" if input_type == "passage" else "query",
        )
        start = time.time()
        try:
            reply = await self.handles[model].embed(request)
        except (CantataError, asyncio.CancelledError) as exc:
            self._keep_failed_span(exc, model, parent_id, start)
            raise
        self.spans.append(reply.span)
        self.usage += reply.usage
        return reply

    def _refuse(self, error: CantataError, model: str, parent_id: str) -> NoReturn:
        """Refuse a model call before it is sent; the refusal is in the trace all the same."""
        self._keep_failed_span(error, model, parent_id, time.time())
        raise error

    def _keep_failed_span(
        self,
        error: CantataError | asyncio.CancelledError,
        model: str,
        parent_id: str,
        start: float,
    ) -> None:
        """Every failed or cancelled model call leaves a span in the trace, with its error."""
        # The model actor attaches its failed call's span to the error it raises.
        span = getattr(error, "span", None)
        if isinstance(span, Span) and span.trace_id == self.trace_id:
            self.spans.append(span)
            return
        # No actor span: the actor died or was unreachable, refused the call before it began,
        # the call was refused here, or it was cancelled (the request's deadline passed, a
        # sibling failed, the caller left). It is recorded as this process saw it, and
        # reported from here, since no actor will.
        if isinstance(error, asyncio.CancelledError):
            message = "CancelledError: the request stopped waiting for this call"
        else:
            message = f"{type(error).__name__}: {error}"
        end = time.time()
        span = Span(
            parent_id=parent_id,
            trace_id=self.trace_id,
            agent=model,
            model=model,
            actor_id=getattr(error, "actor_id", None) or None,
            start=start,
            end=end,
            latency_ms=(end - start) * 1000,
            status="error",
            error=message[:500],
            error_type=type(error).__name__,
        )
        self.spans.append(span)
        self.telemetry.span_ended(span)

    async def call_member(
        self, member: Member, text: str, options: CallOptions, *, parent_id: str
    ) -> Outcome:
        """Ask a member: a model (through ``options``), or a nested topology (given ``text``).

        A nested topology runs in a step span of its own, applies its own prompts, and is
        bounded by ``options.timeout_s``.
        """
        if isinstance(member, ModelSpec):
            reply = await self.ask(member.name, text, options, parent_id=parent_id)
            return Outcome(text=reply.text, structured=reply.structured)
        timeout_s = options.timeout_s
        if member.host.actor and member.name in self.agents:
            return await self._call_hosted(self.agents[member.name], text, parent_id, timeout_s)
        runner = self.patterns.get(type(member))
        if runner is None:
            raise TopologyError(
                f"no pattern runs a {type(member).__name__} in this context"
                " (answer_task's contexts run every built-in pattern)"
            )
        with self.step(member.name, parent_id) as step_id:
            call = runner(member, text, self, step_id)
            if timeout_s is None:
                return await call
            try:
                return await asyncio.wait_for(call, timeout_s)
            except TimeoutError:
                raise DeadlineExceededError(
                    f"member '{member.name}' did not answer within {timeout_s:g}s"
                ) from None

    async def _call_hosted(
        self, agent: AgentHandle, text: str, parent_id: str, timeout_s: float | None
    ) -> Outcome:
        """Send a nested topology hosted on its own actor its task; keep what it spent and did.

        Its root span is its step in this trace (parented here), whichever node it ran on.
        """
        budget = self.budget
        if budget.tokens is not None:  # not what model calls in flight here already hold
            budget = budget.model_copy(
                update={"tokens": max(0, budget.tokens - self.reserved_tokens)}
            )
        task = Task(
            trace_id=self.trace_id,
            parent_span_id=parent_id,
            deadline=self._deadline(timeout_s),
            budget=budget,
            text=text,
        )
        try:
            result = await agent.run(task)
        except CantataError as exc:
            self.spans.extend(s for s in exc.trace if isinstance(s, Span))
            raise
        self.spans.extend(result.trace)
        self.usage += result.usage
        self.cost_usd += result.cost_usd
        self.budget = self.budget.spend(result.usage.total_tokens, result.cost_usd)
        return Outcome(text=result.text, structured=result.structured)

    async def gather(
        self,
        members: Sequence[Member],
        text: str,
        options: CallOptions,
        *,
        parent_id: str,
        needed: int,
        choices: Sequence[str] = (),
    ) -> tuple[MemberReply, ...]:
        """Ask every member at once; return every reply or failure, in member order.

        Each member has ``options.timeout_s`` (and the request's deadline); a slow or failing
        member becomes a reply with ``error`` set. Raises :class:`QuorumNotReachedError` when
        fewer than ``needed`` members answered. With ``choices``, model members must answer
        ``{"choice": <one of them>}`` (constrained decoding where the backend can), and the
        choice is their answer.
        """
        if choices:
            options = replace(options, output=choice_output(choices))

        async def one(member: Member) -> MemberReply:
            name = member_name(member)
            start = time.time()
            try:
                outcome = await self.call_member(member, text, options, parent_id=parent_id)
            except CantataError as exc:
                return MemberReply(
                    member=name,
                    error=f"{type(exc).__name__}: {exc}",
                    latency_ms=(time.time() - start) * 1000,
                )
            answer = outcome.text
            if choices and outcome.structured is not None:
                try:
                    answer = parse_output(choice_type(choices), outcome).choice
                except StructuredOutputError as exc:
                    return MemberReply(
                        member=name,
                        error=f"{type(exc).__name__}: {exc}",
                        latency_ms=(time.time() - start) * 1000,
                    )
            return MemberReply(member=name, text=answer, latency_ms=(time.time() - start) * 1000)

        replies = tuple(await gather_all(one(member) for member in members))
        answered = sum(1 for reply in replies if reply.ok)
        if answered < needed:
            failures = {reply.member: reply.error or "" for reply in replies if not reply.ok}
            raise QuorumNotReachedError(
                f"{answered} of {len(replies)} members answered; {needed} needed"
                f" (failed: {', '.join(sorted(failures))})",
                failures=failures,
            )
        return replies
