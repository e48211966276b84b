"""Role messages: what routers, planners, supervisors, voters and judges decide.

They are typed like every other message (frozen, strict, a ``kind``), and they are how untrusted
model output enters the system: a plan, an assignment or a verdict is parsed from the model's
schema-constrained JSON into these types and checked against allow-lists before anything acts
on it. Nothing in them is ever evaluated or used to pick code to run.

The requests (:class:`PlanRequest`, :class:`TallyRequest`, ...) are what a pattern sends a role
agent through :meth:`~cantata.agents.Agent.handle`. They are envelopes: they carry the request's
trace id, deadline and budget, and ``parent_span_id`` is the span the role's work is recorded
under.

The messages a model writes are also the one definition of what it may write: the JSON schema
sent with the request is derived from them (:func:`~cantata.agents.output_format`), so their
bounds are the model's. The string bounds keep a small model (SmolLM2-135M) inside its token
limits: decoding cannot run past ``max_tokens`` in the middle of a string.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, NonNegativeFloat, model_validator

from ._messages import Envelope, Frozen

__all__ = [
    "AnswerScore",
    "AssignRequest",
    "Assignment",
    "Assignments",
    "Ballot",
    "BallotGroup",
    "Choice",
    "Classification",
    "Decision",
    "JudgeScore",
    "LabelScores",
    "MemberReply",
    "Plan",
    "PlanRequest",
    "PlanStep",
    "Review",
    "ReviewRequest",
    "RoleRequest",
    "Route",
    "RouteRequest",
    "ScoreRequest",
    "StepResult",
    "SynthesisRequest",
    "TallyRequest",
]

# Characters: what one request may carry to a role agent (the same bound as a Task's text).
_MAX_TEXT = 200_000
_MAX_FEEDBACK = 300  # a Review's feedback, which is what an AssignRequest passes back


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


class Classification(Frozen):
    """A model classifier's answer: one label, and how sure it is.

    The labels are only known at run time: narrow ``label`` to them with
    :func:`~cantata.agents.narrow` and :func:`~cantata.agents.one_of`.
    """

    kind: Literal["classification"] = "classification"
    label: str = Field(min_length=1, max_length=64)
    confidence: float = Field(ge=0.0, le=1.0)


class Choice(Frozen):
    """A voter's pick among fixed choices (see :func:`~cantata.agents.choice_type`)."""

    kind: Literal["choice"] = "choice"
    choice: str = Field(min_length=1, max_length=200)


class JudgeScore(Frozen):
    """A judge's score for one answer, from 0 up to its scale (narrow ``score`` to bound it)."""

    kind: Literal["judge_score"] = "judge_score"
    score: int = Field(ge=0)


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
    prompt: str = Field(min_length=1, max_length=400)
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
    task: str = Field(min_length=1, max_length=400)


class Assignments(Frozen):
    """A supervisor's round of tasks: at least one (narrow it to bound how many, and to whom)."""

    kind: Literal["assignments"] = "assignments"
    assignments: tuple[Assignment, ...] = Field(min_length=1)


class Review(Frozen):
    """A supervisor's verdict on a round of work."""

    kind: Literal["review"] = "review"
    approved: bool
    feedback: str = Field(default="", max_length=_MAX_FEEDBACK)
    answer: str = Field(default="", max_length=600)


class RoleRequest(Envelope):
    """Base of the requests a pattern sends a role agent.

    ``parent_span_id`` is required: it is the pattern's step the role's model calls hang under.
    """

    parent_span_id: str = Field(min_length=1, max_length=64)


class PlanRequest(RoleRequest):
    """Ask a planner for a validated :class:`Plan` for ``request``."""

    kind: Literal["plan_request"] = "plan_request"
    request: str = Field(max_length=_MAX_TEXT)


class SynthesisRequest(RoleRequest):
    """Ask a planner for the final answer to ``request`` from its steps' results.

    The reply is a :class:`~cantata.agents.TaskReply` holding the answer's text.
    """

    kind: Literal["synthesis_request"] = "synthesis_request"
    request: str = Field(max_length=_MAX_TEXT)
    results: tuple[StepResult, ...]


class AssignRequest(RoleRequest):
    """Ask a supervisor for a round of :class:`Assignments`, with the last round's feedback."""

    kind: Literal["assign_request"] = "assign_request"
    request: str = Field(max_length=_MAX_TEXT)
    feedback: str = Field(default="", max_length=_MAX_FEEDBACK)


class ReviewRequest(RoleRequest):
    """Ask a supervisor to :class:`Review` the round's ``results`` for ``request``."""

    kind: Literal["review_request"] = "review_request"
    request: str = Field(max_length=_MAX_TEXT)
    results: str = Field(max_length=_MAX_TEXT)


class BallotGroup(Frozen):
    """Ballots judged to say the same: their indices, and the answer that stands for them."""

    kind: Literal["ballot_group"] = "ballot_group"
    indices: tuple[int, ...] = Field(min_length=1)
    representative: str = Field(max_length=_MAX_TEXT)


class TallyRequest(RoleRequest):
    """Ask a voter for the :class:`Decision` on ``ballots`` grouped as ``groups``."""

    kind: Literal["tally_request"] = "tally_request"
    ballots: tuple[Ballot, ...]
    groups: tuple[BallotGroup, ...]

    @model_validator(mode="after")
    def _indices_name_ballots(self) -> TallyRequest:
        # A voter indexes ``ballots`` with these; an index out of range would crash it.
        count = len(self.ballots)
        stray = sorted({i for g in self.groups for i in g.indices if not 0 <= i < count})
        if stray:
            raise ValueError(f"group indices {stray} name no ballot (there are {count})")
        return self


class ScoreRequest(RoleRequest):
    """Ask a judge for the :class:`AnswerScore` of ``answer`` to ``question``."""

    kind: Literal["score_request"] = "score_request"
    question: str = Field(max_length=_MAX_TEXT)
    answer: str = Field(max_length=_MAX_TEXT)


class AnswerScore(Frozen):
    """A judge's score for one answer, scaled to 0..1 by convention (finite, never NaN)."""

    kind: Literal["answer_score"] = "answer_score"
    score: float = Field(allow_inf_nan=False)


class RouteRequest(RoleRequest):
    """Ask a router's classifier for the :class:`LabelScores` of ``text``."""

    kind: Literal["route_request"] = "route_request"
    text: str = Field(max_length=_MAX_TEXT)


class LabelScores(Frozen):
    """A classifier's score for every route label (the router picks the :class:`Route`)."""

    kind: Literal["label_scores"] = "label_scores"
    scores: dict[str, float] = Field(min_length=1)
