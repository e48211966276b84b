"""Run a topology spec on a runtime: start its models, answer, stop them."""

from __future__ import annotations

import time
from collections.abc import Mapping

from cantata.agents import Budget, CantataError, Identity, Span, Telemetry, new_id

# Each pattern module registers its runner with _dispatch when imported.
from . import (  # noqa: F401
    _consensus,
    _fanout,
    _pipeline,
    _planner,
    _router,
    _single,
    _supervisor,
    _vote,
    _weighted,
)
from ._context import RequestContext
from ._dispatch import run_pattern
from ._result import RunResult
from ._runtime import ModelHandle, Runtime
from ._spec import TopologySpec

__all__ = ["answer", "run_topology"]


async def answer(
    spec: TopologySpec,
    text: str,
    handles: Mapping[str, ModelHandle],
    *,
    trace_id: str | None = None,
    roles: Mapping[type, type] | None = None,
    telemetry: Telemetry | None = None,
    cost_limit_usd: float | None = None,
    where: Identity | None = None,
) -> RunResult:
    """Answer one request with models that are already started.

    ``roles`` replaces role agents with subclasses, e.g. ``{Voter: VetoVoter}``. ``telemetry``
    receives this request's steps, routes and decisions. ``cost_limit_usd`` caps what the
    request may spend (a deployment passes what its budget has left). ``where`` names the actor
    and node running the steps, for their spans.

    A failed request raises its typed error with ``trace`` set to every span it finished,
    so what it did and spent stays on record.
    """
    ctx = RequestContext(
        handles=dict(handles),
        roles=dict(roles or {}),
        trace_id=trace_id or new_id(),
        deadline=None if spec.timeout_s is None else time.time() + spec.timeout_s,
        budget=Budget(tokens=spec.max_tokens_budget, cost_usd=cost_limit_usd),
        telemetry=telemetry or Telemetry(),
        where=where or Identity(),
    )
    start = time.time()
    root_id = ""
    try:
        with ctx.step(spec.name, None) as root_id:
            outcome = await run_pattern(spec, text, ctx, root_id)
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
) -> RunResult:
    """Start the topology's models on ``runtime``, answer ``text``, and stop them again."""
    handles = await runtime.start_models(spec.models())
    try:
        return await answer(
            spec, text, handles, trace_id=trace_id, roles=roles, telemetry=telemetry, where=where
        )
    finally:
        await runtime.stop_models(list(handles.values()))
