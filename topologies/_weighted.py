"""The ``weighted_ensemble`` pattern, and the :class:`Judge` role agent that scores answers.

The pattern sends the judge a :class:`~cantata.agents.ScoreRequest` per answer and gets an
:class:`~cantata.agents.AnswerScore`; the judge's handler calls :meth:`Judge.score`, which is
what a subclass overrides. The scored ballots are tallied by the request's voter.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import replace
from typing import Literal

from cantata.agents import (
    AnswerScore,
    Ballot,
    JudgeScore,
    ScoreRequest,
    TopologySpecError,
    handles,
    narrow,
    output_format,
    parse_output,
)

from ._call_options import CallOptions
from ._context import RequestContext, gather_all
from ._grouping import group_answers
from ._outcome import Outcome
from ._prompt import PromptTemplate
from ._role import Role, reply_as, role_request
from ._spec import JudgeSpec, WeightedEnsembleSpec, member_name
from ._vote import ballots_from, tally

__all__ = ["Judge", "judge_score_type", "run_weighted_ensemble"]


@functools.lru_cache(maxsize=64)
def judge_score_type(scale: int) -> type[JudgeScore]:
    """:class:`~cantata.agents.JudgeScore` narrowed to scores from 0 to ``scale``.

    The scores are an enum, not a range: llama.cpp's grammar from a JSON schema ignores
    ``minimum`` and ``maximum``, and a judge allowed any integer once wrote 100000000000.
    """
    scores = Literal.__getitem__(tuple(range(scale + 1)))
    return narrow(JudgeScore, score=scores)


class Judge(Role):
    """Scores an answer with a judge model whose output is constrained to ``{"score": 0..scale}``.

    Returns the score divided by the scale (0 to 1). Subclass and override :meth:`score` to
    judge differently; the model's reply is parsed and range-checked, never trusted.
    """

    def __init__(self, spec: JudgeSpec) -> None:
        self.spec = spec
        self.output_type = judge_score_type(spec.scale)
        self.schema = output_format(self.output_type, name="score")
        self.prompt = PromptTemplate(
            system=spec.instructions.replace("{scale}", str(spec.scale))
            + ' Reply with JSON: {"score": <integer>}.',
            user="Question: {original}\n\nAnswer: {input}",
        )
        self.options = CallOptions(prompt=self.prompt, max_tokens=16, output=self.schema)

    async def score(self, question: str, answer: str, ctx: RequestContext, parent_id: str) -> float:
        """The answer's score in [0, 1]."""
        options = replace(self.options, values={"original": question})
        reply = await ctx.ask(self.spec.model.name, answer, options, parent_id=parent_id)
        return parse_output(self.output_type, reply).score / self.spec.scale

    @handles
    async def on_score(self, request: ScoreRequest, ctx: RequestContext) -> AnswerScore:
        """The request's answer scored (see :meth:`score`), under its parent span."""
        score = await self.score(request.question, request.answer, ctx, request.parent_span_id)
        return AnswerScore(score=score)


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

    async def score(answer: str) -> float:
        request = role_request(ScoreRequest, ctx, parent_id, question=question, answer=answer)
        return reply_as(AnswerScore, await judge.handle(request, ctx), judge).score

    return await gather_all(score(ballot.answer) for ballot in ballots)


async def run_weighted_ensemble(
    spec: WeightedEnsembleSpec, text: str, ctx: RequestContext, parent_id: str
) -> Outcome:
    """Every member answers; score x weight per answer, pooled per group; the top group wins."""
    members = [weighted.member for weighted in spec.members]
    replies = await ctx.gather(
        members,
        text,
        spec.call_options(timeout_s=spec.member_timeout_s),
        parent_id=parent_id,
        needed=spec.needed(),
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
        decision = await tally(scored, groups, ctx, step_id)
    ctx.telemetry.decided(spec.name, spec.pattern, decision)
    return Outcome(text=decision.winner, decision=decision, replies=replies)
