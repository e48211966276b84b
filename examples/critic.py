"""Write an agent from scratch: a critic that reviews a writer's draft and asks for one revision.

``Critic`` is a :class:`cantata.agents.Agent`. It handles the node's ``Task``: the ``writer``
member drafts an answer, the ``critic`` member reviews it (its reply constrained to the
``Verdict`` type below, so it can only approve or name one problem), and when the critic
objects the writer revises once with that feedback. The agent reaches its models only through
its context, so the same class runs inline or on an actor of its own
(``host: {actor: true}``), and every call keeps its span, cost, deadline and budget.

    .venv/bin/cantata run examples/critic_review.yaml --json \\
      --input "What is the capital of France?"

prints the final text; the trace shows ``critic-review:draft``, ``critic-review:review`` and,
when the critic asked for one, ``critic-review:revise``, each with its model call.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from cantata.agents import Agent, AgentContext, Task, TaskReply, handles


class Verdict(BaseModel):
    """What the critic may say: approve, or name the one problem to fix."""

    approved: bool
    problem: str = Field(max_length=160)


class Critic(Agent):
    """Drafts with ``writer``, reviews with ``critic``, revises once if the critic objects.

    ``max_words`` is a rule the critic's model need not judge: a draft longer than that is
    sent back whatever the model said.
    """

    def __init__(self, max_words: int = 40) -> None:
        self.max_words = max_words

    @handles
    async def review(self, task: Task, ctx: AgentContext) -> TaskReply:
        with ctx.step("draft"):
            draft = await ctx.ask(
                "writer", task.text, system="Answer in one short sentence.", max_tokens=64
            )
        with ctx.step("review"):
            verdict = await self.verdict(task.text, draft.text, ctx)
        if verdict.approved:
            return TaskReply(trace_id=task.trace_id, text=draft.text.strip())
        with ctx.step("revise"):
            revised = await ctx.ask(
                "writer",
                f"{task.text}\n\nYour draft: {draft.text.strip()}\n"
                f"A reviewer said: {verdict.problem}\nWrite the improved sentence only.",
                system="Answer in one short sentence.",
                max_tokens=64,
            )
        return TaskReply(trace_id=task.trace_id, text=revised.text.strip())

    async def verdict(self, request: str, draft: str, ctx: AgentContext) -> Verdict:
        """The critic model's verdict, overruled when the draft breaks the length rule."""
        words = len(draft.split())
        if words > self.max_words:
            return Verdict(approved=False, problem=f"Use at most {self.max_words} words.")
        reply = await ctx.ask(
            "critic",
            f"Request: {request}\nDraft: {draft}",
            system="You review drafts. Approve a draft that answers the request; otherwise"
            " name its main problem in a few words.",
            output=Verdict,
            max_tokens=96,
        )
        return Verdict.model_validate(reply.structured)
