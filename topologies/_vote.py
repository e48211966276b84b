"""The ``vote`` pattern, and the :class:`Voter` role agent that tallies ballots.

The pattern sends the voter a :class:`~cantata.agents.TallyRequest` and gets a
:class:`~cantata.agents.Decision`; the voter's handler calls :meth:`Voter.decide`, which is
what a subclass overrides.
"""

from __future__ import annotations

from collections.abc import Sequence

from cantata.agents import Ballot, BallotGroup, Decision, MemberReply, TallyRequest, handles

from ._context import RequestContext
from ._fanout import ask_members
from ._grouping import AnswerGroup, group_answers
from ._outcome import Outcome
from ._role import Role, reply_as, role_request
from ._spec import VoteSpec

__all__ = ["Voter", "ballots_from", "run_vote", "tally"]


def ballots_from(
    replies: Sequence[MemberReply], weights: Sequence[float] | None = None
) -> list[Ballot]:
    """One ballot per member that answered (failed members do not vote)."""
    weights = weights or [1.0] * len(replies)
    return [
        Ballot(member=reply.member, answer=reply.text or "", weight=weight)
        for reply, weight in zip(replies, weights, strict=True)
        if reply.ok
    ]


class Voter(Role):
    """Tallies ballots over answer groups. Subclass to change how votes count.

    Each group's votes are the sum of its ballots' ``score`` (when scored) or ``weight``. The
    group with the most votes wins; a tie goes to the group that holds the earliest ballot, so
    the result never depends on timing. ``agreement`` is the winner's share of all votes.
    """

    def votes(self, ballot: Ballot) -> float:
        """What one ballot counts for."""
        return ballot.score if ballot.score is not None else ballot.weight

    def decide(self, ballots: Sequence[Ballot], groups: Sequence[AnswerGroup]) -> Decision:
        """The decision for ``ballots`` grouped as ``groups`` (indices into ``ballots``)."""
        tally: dict[str, float] = {}
        for group in groups:
            votes = sum(self.votes(ballots[i]) for i in group.indices)
            tally[group.representative] = tally.get(group.representative, 0.0) + votes
        total = sum(tally.values())
        # dicts keep insertion order, and groups come in order of their first ballot.
        winner = max(tally, key=lambda answer: tally[answer]) if tally else ""
        return Decision(
            winner=winner,
            tally=tally,
            agreement=tally.get(winner, 0.0) / total if total else 0.0,
            ballots=tuple(ballots),
        )

    @handles
    async def on_tally(self, request: TallyRequest, ctx: RequestContext) -> Decision:
        """The decision for the request's ballots and groups (see :meth:`decide`)."""
        groups = [AnswerGroup(g.indices, g.representative) for g in request.groups]
        return self.decide(request.ballots, groups)


async def tally(
    ballots: Sequence[Ballot], groups: Sequence[AnswerGroup], ctx: RequestContext, parent_id: str
) -> Decision:
    """Send the request's voter (``ctx.role(Voter)``) the ballots to tally; its decision."""
    voter = ctx.role(Voter)()
    request = role_request(
        TallyRequest,
        ctx,
        parent_id,
        ballots=tuple(ballots),
        groups=tuple(
            BallotGroup(indices=g.indices, representative=g.representative) for g in groups
        ),
    )
    return reply_as(Decision, await voter.handle(request, ctx), voter)


async def run_vote(spec: VoteSpec, text: str, ctx: RequestContext, parent_id: str) -> Outcome:
    """Members answer in parallel; the largest group of equal answers wins."""
    replies = await ask_members(spec, text, ctx, parent_id)
    ballots = ballots_from(replies)
    with ctx.step("voter", parent_id) as voter_id:
        groups = await group_answers([b.answer for b in ballots], spec.grouping, ctx, voter_id)
        decision = await tally(ballots, groups, ctx, voter_id)
    ctx.telemetry.decided(spec.name, spec.pattern, decision)
    return Outcome(text=decision.winner, decision=decision, replies=replies)
