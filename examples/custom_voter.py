"""Write a role agent: a voter where any one member can veto.

Role agents (Voter, Judge, Planner, Supervisor, EmbeddingRouter, ModelRouter) are typed agents.
Subclass one and hand the subclass to ``run_topology(..., roles={Voter: YourVoter})``; every
pattern that votes (vote, consensus, weighted_ensemble) then uses it.

Here three SmolLM2-135M-Instruct members decide whether a refund can be approved automatically,
their output constrained to "approve" or "escalate-to-human". A plain majority would approve
with two of three; the VetoVoter escalates as soon as any member asks for a human, the
cautious rule for money.

    .venv/bin/python examples/custom_voter.py "I was charged twice, refund one payment please."

prints each member's ballot and the decision.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence

from cantata.agents import Ballot, Decision, ModelSpec, Resources, XLlamaCppConfig
from cantata.cluster import RayRuntime, connect
from cantata.topologies import (
    AnswerGroup,
    PromptTemplate,
    Voter,
    VoteSpec,
    normalize,
    run_topology,
)

VETO = "escalate-to-human"


class VetoVoter(Voter):
    """A majority vote, except that one ballot for ``escalate-to-human`` decides."""

    def decide(self, ballots: Sequence[Ballot], groups: Sequence[AnswerGroup]) -> Decision:
        decision = super().decide(ballots, groups)
        vetoes = [b for b in ballots if normalize(b.answer) == VETO]
        if not vetoes:
            return decision
        return decision.model_copy(update={"winner": VETO, "agreement": len(vetoes) / len(ballots)})


def member(name: str, seed: int) -> ModelSpec:
    return ModelSpec(
        name=name,
        version="135m-instruct-q4_1",
        backend=XLlamaCppConfig(seed=seed),
        resources=Resources(num_cpus=0.25),
    )


TOPOLOGY = VoteSpec(
    name="refund-vote",
    members=[member(f"judge-{n}", n) for n in (1, 2, 3)],
    choices=("approve", VETO),
    prompt=PromptTemplate(
        system="Can this refund request be approved automatically? Duplicate charges can be."
    ),
    temperature=0.8,
    max_tokens=32,
)


def main() -> None:
    request = " ".join(sys.argv[1:]) or "I was charged twice, refund one payment please."
    connection = connect()
    try:
        result = asyncio.run(
            run_topology(TOPOLOGY, request, RayRuntime(), roles={Voter: VetoVoter})
        )
    finally:
        connection.close()
    if result.decision is None:  # a vote always decides; this guards the type
        raise SystemExit("no decision")
    for ballot in result.decision.ballots:
        print(f"{ballot.member}: {ballot.answer}")
    print(f"decision: {result.decision.winner} (agreement {result.decision.agreement:.2f})")


if __name__ == "__main__":
    main()
