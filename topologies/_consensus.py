"""The ``consensus`` pattern: agree enough, or escalate to a stronger model."""

from __future__ import annotations

from ._context import RequestContext
from ._fanout import ask_members
from ._grouping import group_answers
from ._outcome import Outcome
from ._spec import ConsensusSpec
from ._vote import ballots_from, tally

__all__ = ["run_consensus"]


async def run_consensus(
    spec: ConsensusSpec, text: str, ctx: RequestContext, parent_id: str
) -> Outcome:
    """Members answer; if the largest group's share reaches the threshold it wins.

    The share counts every member, answered or not: a member that failed did not agree.
    Otherwise ``escalate_to`` answers the request and ``decision.escalated`` is true.
    """
    replies = await ask_members(spec, text, ctx, parent_id)
    ballots = ballots_from(replies)
    with ctx.step("consensus", parent_id) as step_id:
        groups = await group_answers([b.answer for b in ballots], spec.grouping, ctx, step_id)
        decision = await tally(ballots, groups, ctx, step_id)
        share = decision.tally.get(decision.winner, 0.0) / len(replies)
        decision = decision.model_copy(update={"agreement": share})
        if share >= spec.threshold:
            ctx.telemetry.decided(spec.name, spec.pattern, decision)
            return Outcome(text=decision.winner, decision=decision, replies=replies)
        escalated = await ctx.call_member(
            spec.escalate_to, text, spec.call_options(), parent_id=step_id
        )
    decision = decision.model_copy(update={"winner": escalated.text, "escalated": True})
    ctx.telemetry.decided(spec.name, spec.pattern, decision)
    return Outcome(text=escalated.text, decision=decision, replies=replies)
