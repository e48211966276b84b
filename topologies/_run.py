"""Run a topology spec on a runtime: start its models, answer, stop them."""

from __future__ import annotations

import time
from collections.abc import Mapping

from cantata.agents import Budget, CantataError, Identity, Span, Task, Telemetry, new_id

from ._code import Code
from ._context import RequestContext, until
from ._patterns import PATTERNS
from ._result import RunResult
from ._runtime import AgentHandle, ModelHandle, Runtime
from ._spec import TopologySpec

__all__ = ["answer", "answer_task", "run_topology"]


async def answer(
    spec: TopologySpec,
    text: str,
    handles: Mapping[str, ModelHandle],
    *,
    trace_id: str | None = None,
    deadline: float | None = None,
    roles: Mapping[type, type] | None = None,
    telemetry: Telemetry | None = None,
    cost_limit_usd: float | None = None,
    where: Identity | None = None,
    agents: Mapping[str, AgentHandle] | None = None,
    code: Code | None = None,
) -> RunResult:
    """Answer one request with models that are already started.

    ``deadline`` (epoch seconds) ends the request with
    :class:`~cantata.agents.DeadlineExceededError`, cancelling what it still has in flight; the
    topology's ``timeout_s`` applies too. ``roles`` replaces role agents with subclasses, e.g.
    ``{Voter: VetoVoter}``. ``telemetry``
    receives this request's steps, routes and decisions. ``cost_limit_usd`` caps what the
    request may spend (a deployment passes what its budget has left). ``where`` names the actor
    and node running the steps, for their spans. ``agents`` reach the nested topologies hosted
    as actors of their own (see :class:`Runtime.start`); ``code`` holds the user classes the
    topology names (see :func:`load_code`).

    A failed request raises its typed error with ``trace`` set to every span it finished,
    so what it did and spent stays on record.
    """
    task = Task(
        trace_id=trace_id or new_id(),
        deadline=deadline,
        text=text,
        budget=Budget(cost_usd=cost_limit_usd),
    )
    return await answer_task(
        spec,
        task,
        handles,
        roles=roles,
        telemetry=telemetry,
        where=where,
        agents=agents,
        code=code,
    )


async def answer_task(
    spec: TopologySpec,
    task: Task,
    handles: Mapping[str, ModelHandle],
    *,
    roles: Mapping[type, type] | None = None,
    telemetry: Telemetry | None = None,
    where: Identity | None = None,
    agents: Mapping[str, AgentHandle] | None = None,
    code: Code | None = None,
) -> RunResult:
    """Answer ``task`` with ``spec``, continuing the task's trace, deadline and budget.

    The topology's root span is parented to ``task.parent_span_id``: a nested topology hosted
    on an actor of its own joins its parent's trace this way. The topology's own ``timeout_s``
    and ``max_tokens_budget`` apply on top of what the task carries.
    """
    deadline = task.deadline
    if spec.timeout_s is not None:
        own = time.time() + spec.timeout_s
        deadline = own if deadline is None else min(deadline, own)
    budget = task.budget
    if spec.max_tokens_budget is not None:
        tokens = spec.max_tokens_budget
        budget = budget.model_copy(
            update={"tokens": tokens if budget.tokens is None else min(tokens, budget.tokens)}
        )
    ctx = RequestContext(
        handles=dict(handles),
        patterns=PATTERNS,
        agents=dict(agents or {}),
        code=code or Code(),
        roles=dict(roles or {}),
        trace_id=task.trace_id,
        deadline=deadline,
        budget=budget,
        telemetry=telemetry or Telemetry(),
        where=where or Identity(),
    )
    start = time.time()
    root_id = ""
    try:
        with ctx.step(spec.name, task.parent_span_id) as root_id:
            async with until(deadline, f"'{spec.name}'"):
                outcome = await PATTERNS[type(spec)](spec, task.text, ctx, root_id)
    except CantataError as exc:
        exc.trace = _ordered(ctx.spans, root_id)
        ctx.telemetry.request_ended(
            spec.name, spec.pattern, latency_s=time.time() - start, error_type=type(exc).__name__
        )
        raise
    latency_ms = (time.time() - start) * 1000
    ctx.telemetry.request_ended(
        spec.name, spec.pattern, latency_s=latency_ms / 1000, error_type=None
    )
    return RunResult(
        topology=spec.name,
        pattern=spec.pattern,
        trace_id=ctx.trace_id,
        text=outcome.text,
        structured=outcome.structured,
        usage=ctx.usage,
        cost_usd=ctx.cost_usd,
        latency_ms=latency_ms,
        trace=_ordered(ctx.spans, root_id),
        route=outcome.route,
        decision=outcome.decision,
        plan=outcome.plan,
        steps=outcome.steps,
        rounds=outcome.rounds,
        replies=outcome.replies,
    )


def _ordered(spans: list[Span], root_id: str) -> tuple[Span, ...]:
    root = [s for s in spans if s.span_id == root_id]
    rest = sorted((s for s in spans if s.span_id != root_id), key=lambda s: s.start)
    return (*root, *rest)


async def run_topology(
    spec: TopologySpec,
    text: str,
    runtime: Runtime,
    *,
    trace_id: str | None = None,
    roles: Mapping[type, type] | None = None,
    telemetry: Telemetry | None = None,
    where: Identity | None = None,
    code: Code | None = None,
) -> RunResult:
    """Start the topology on ``runtime``, answer ``text``, and stop it again.

    The top level runs here; nested topologies with ``host: {actor: true}`` run on actors of
    their own where the runtime hosts them (Ray). ``code`` (see :func:`load_code`) supplies
    custom model-actor classes, role replacements and agents; ``roles`` adds replacements.
    """
    code = code or Code()
    started = await runtime.start(spec, code)
    try:
        return await answer(
            spec,
            text,
            started.models,
            trace_id=trace_id,
            roles=roles,
            telemetry=telemetry,
            where=where,
            agents=started.agents,
            code=code,
        )
    finally:
        await runtime.stop(started)
