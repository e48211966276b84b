"""The ``single`` pattern: one model answers."""

from __future__ import annotations

from ._context import RequestContext
from ._outcome import Outcome
from ._spec import SingleSpec

__all__ = ["run_single"]


async def run_single(spec: SingleSpec, text: str, ctx: RequestContext, parent_id: str) -> Outcome:
    """Ask the one model; its reply is the answer."""
    reply = await ctx.ask(spec.model.name, text, spec.call_options(), parent_id=parent_id)
    return Outcome(text=reply.text, structured=reply.structured)
