"""Role messages: what routers, planners, supervisors, voters and judges decide.

They are typed like every other message (frozen, strict, a ``kind``), and they are how untrusted
model output enters the system: a plan, an assignment or a verdict is parsed from the model's
schema-constrained JSON into these types and checked against allow-lists before anything acts
on it. Nothing in them is ever evaluated or used to pick code to run.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, NonNegativeFloat

from ._messages import Frozen

__all__ = [
    "Assignment",
    "Ballot",
    "Decision",
    "MemberReply",
    "Plan",
    "PlanStep",
    "Review",
    "Route",
    "StepResult",
]


class Route(Frozen):
    """A router's choice: the label, how sure it is, where it sent the request, every score."""

    kind: Literal["route"] = "route"
    label: str
    confidence: float
    target: str
    scores: dict[str, float]
    defaulted: bool = Field(
        default=False, description="True when no label fit or confidence was below threshold."
    )


class MemberReply(Frozen):
    """One member's answer in a fan-out, or why it has none."""

    kind: Literal["member_reply"] = "member_reply"
    member: str
    text: str | None = None
    error: str | None = None
    latency_ms: NonNegativeFloat = 0.0

    @property
    def ok(self) -> bool:
        """True when the member answered."""
        return self.error is None


class Ballot(Frozen):
    """One member's vote: its answer, weight, and (for weighted ensembles) its score."""

    kind: Literal["ballot"] = "ballot"
    member: str
    answer: str
    weight: float = 1.0
    score: float | None = None


class Decision(Frozen):
    """What a vote, ensemble or consensus decided.

    ``tally`` maps each distinct answer (its group's representative) to its votes or pooled
    score; ``agreement`` is the winner's share of the total; ``escalated`` says whether the
    strong model answered instead.
    """

    kind: Literal["decision"] = "decision"
    winner: str
    tally: dict[str, float]
    agreement: float
    escalated: bool = False
    ballots: tuple[Ballot, ...] = ()


class PlanStep(Frozen):
    """One step of a plan: which executor type runs it, its prompt, the steps it needs first."""

    id: str = Field(pattern=r"^[A-Za-z0-9_-]{1,32}$")
    executor: str
    prompt: str = Field(min_length=1, max_length=4000)
    depends_on: tuple[str, ...] = ()


class Plan(Frozen):
    """A validated plan: step ids unique, executors known, dependencies acyclic."""

    kind: Literal["plan"] = "plan"
    steps: tuple[PlanStep, ...]


class StepResult(Frozen):
    """What one plan step produced."""

    kind: Literal["step_result"] = "step_result"
    step_id: str
    executor: str
    text: str


class Assignment(Frozen):
    """A supervisor's task for one named worker."""

    kind: Literal["assignment"] = "assignment"
    worker: str
    task: str = Field(min_length=1, max_length=4000)


class Review(Frozen):
    """A supervisor's verdict on a round of work."""

    kind: Literal["review"] = "review"
    approved: bool
    feedback: str = ""
    answer: str = ""
