"""The ``fanout`` pattern: every member answers at once; every reply comes back."""

from __future__ import annotations

from cantata.agents import MemberReply

from ._context import RequestContext
from ._outcome import Outcome
from ._spec import FanoutSpec, ParallelSpec

__all__ = ["ask_members", "run_fanout"]


async def ask_members(
    spec: ParallelSpec, text: str, ctx: RequestContext, parent_id: str
) -> tuple[MemberReply, ...]:
    """Every member's reply under the spec's prompt, deadline, quorum and choices."""
    return await ctx.gather(
        spec.members,
        text,
        spec.call_options(timeout_s=spec.member_timeout_s),
        parent_id=parent_id,
        needed=spec.needed(),
        choices=spec.choices,
    )


async def run_fanout(spec: FanoutSpec, text: str, ctx: RequestContext, parent_id: str) -> Outcome:
    """Ask all members in parallel; the text lists each answer (or failure) under its member."""
    replies = await ask_members(spec, text, ctx, parent_id)
    lines = [
        f"[{r.member}] {r.text.strip()}"
        if r.text is not None
        else f"[{r.member}] failed: {r.error}"
        for r in replies
    ]
    return Outcome(text="\n".join(lines), replies=replies)
