"""The ``single`` pattern: one model answers."""

from __future__ import annotations

from ._context import RequestContext
from ._dispatch import register
from ._outcome import Outcome
from ._spec import SingleSpec

__all__ = ["run_single"]


@register(SingleSpec)
async def run_single(spec: SingleSpec, text: str, ctx: RequestContext, parent_id: str) -> Outcome:
    """Ask the one model; its reply is the answer."""
    reply = await ctx.ask(
        spec.model.name,
        text,
        prompt=spec.prompt,
        parent_id=parent_id,
        max_tokens=spec.max_tokens,
        temperature=spec.temperature,
    )
    return Outcome(text=reply.text, structured=reply.structured)
