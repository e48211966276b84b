"""The ``weighted_ensemble`` pattern, and the :class:`Judge` role that scores answers."""

from __future__ import annotations

from collections.abc import Sequence

from cantata.agents import Ballot, JsonSchemaFormat, StructuredOutputError, TopologySpecError

from ._context import RequestContext, gather_all
from ._dispatch import register
from ._grouping import group_answers
from ._outcome import Outcome
from ._prompt import PromptTemplate
from ._spec import JudgeSpec, WeightedEnsembleSpec, member_name
from ._vote import Voter, ballots_from

__all__ = ["Judge", "run_weighted_ensemble"]


class Judge:
    """Scores an answer with a judge model whose output is constrained to ``{"score": 0..scale}``.

    Returns the score divided by the scale (0 to 1). Subclass and override :meth:`score` to
    judge differently; the model's reply is parsed and range-checked, never trusted.
    """

    def __init__(self, spec: JudgeSpec) -> None:
        self.spec = spec
        self.schema = JsonSchemaFormat(
            name="score",
            json_schema={
                "type": "object",
                "properties": {"score": {"type": "integer", "minimum": 0, "maximum": spec.scale}},
                "required": ["score"],
                "additionalProperties": False,
            },
        )
        self.prompt = PromptTemplate(
            system=spec.instructions.replace("{scale}", str(spec.scale))
            + ' Reply with JSON: {"score": <integer>}.',
            user="Question: {original}\n\nAnswer: {input}",
        )

    async def score(self, question: str, answer: str, ctx: RequestContext, parent_id: str) -> float:
        """The answer's score in [0, 1]."""
        reply = await ctx.ask(
            self.spec.model.name,
            answer,
            prompt=self.prompt,
            parent_id=parent_id,
            max_tokens=16,
            response_format=self.schema,
            values={"original": question},
        )
        # The actor checked the reply against the schema: an object with an integer score.
        structured = reply.structured
        score = structured.get("score") if isinstance(structured, dict) else None
        if not isinstance(score, int):
            raise StructuredOutputError(
                "the judge's reply has no integer score", text=reply.text, model=reply.model
            )
        return score / self.spec.scale


async def _scores(
    spec: WeightedEnsembleSpec,
    question: str,
    ballots: Sequence[Ballot],
    ctx: RequestContext,
    parent_id: str,
) -> list[float]:
    if spec.scorer is not None:
        return [float(spec.scorer(question, ballot.answer)) for ballot in ballots]
    if spec.judge is None:  # the spec's validator makes this unreachable
        raise TopologySpecError(f"'{spec.name}' has neither a judge nor a scorer")
    judge = ctx.role(Judge)(spec.judge)
    return await gather_all(
        judge.score(question, ballot.answer, ctx, parent_id) for ballot in ballots
    )


@register(WeightedEnsembleSpec)
async def run_weighted_ensemble(
    spec: WeightedEnsembleSpec, text: str, ctx: RequestContext, parent_id: str
) -> Outcome:
    """Every member answers; score x weight per answer, pooled per group; the top group wins."""
    members = [weighted.member for weighted in spec.members]
    replies = await ctx.gather(
        members,
        text,
        prompt=spec.prompt,
        parent_id=parent_id,
        needed=spec.needed(),
        max_tokens=spec.max_tokens,
        temperature=spec.temperature,
        timeout_s=spec.member_timeout_s,
    )
    weights = {member_name(w.member): w.weight for w in spec.members}
    ballots = ballots_from(replies, [weights[reply.member] for reply in replies])
    with ctx.step("evaluator", parent_id) as step_id:
        scores = await _scores(spec, text, ballots, ctx, step_id)
        scored = [
            ballot.model_copy(update={"score": score * ballot.weight})
            for ballot, score in zip(ballots, scores, strict=True)
        ]
        groups = await group_answers([b.answer for b in scored], spec.grouping, ctx, step_id)
        decision = ctx.role(Voter)().decide(scored, groups)
    ctx.telemetry.decided(spec.name, spec.pattern, decision)
    return Outcome(text=decision.winner, decision=decision, replies=replies)
