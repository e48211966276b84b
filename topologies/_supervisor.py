"""The ``supervisor_worker`` pattern, and the :class:`Supervisor` role.

Each round the supervisor assigns tasks to named workers (typed :class:`~cantata.agents.Assignment`
objects, checked against the worker list), the workers do them in parallel, and the supervisor
reviews the results: it approves with a final answer, or sends the work back with feedback for
another round, up to ``max_rounds``.
"""

from __future__ import annotations

from pydantic import ValidationError

from cantata.agents import (
    Assignment,
    AssignmentError,
    JsonSchemaFormat,
    Review,
    StructuredOutputError,
)

from ._context import RequestContext, gather_all
from ._dispatch import register
from ._outcome import Outcome
from ._prompt import PromptTemplate
from ._spec import SupervisorWorkerSpec

__all__ = ["Supervisor", "run_supervisor_worker"]

_REVIEW = JsonSchemaFormat(
    name="review",
    json_schema={
        "type": "object",
        "properties": {
            "approved": {"type": "boolean"},
            # Bounded so a small model cannot run past its token limit mid-string.
            "feedback": {"type": "string", "maxLength": 300},
            "answer": {"type": "string", "maxLength": 600},
        },
        "required": ["approved", "feedback", "answer"],
        "additionalProperties": False,
    },
)


class Supervisor:
    """Assigns tasks and reviews results. Subclass to change its prompts or its judgement."""

    def __init__(self, spec: SupervisorWorkerSpec) -> None:
        self.spec = spec
        names = sorted(spec.workers)
        roster = "\n".join(f"- {name}: {spec.workers[name].description}" for name in names)
        self.assign_schema = JsonSchemaFormat(
            name="assignments",
            json_schema={
                "type": "object",
                "properties": {
                    "assignments": {
                        "type": "array",
                        "minItems": 1,
                        "maxItems": 2 * len(names),
                        "items": {
                            "type": "object",
                            "properties": {
                                "worker": {"type": "string", "enum": names},
                                "task": {"type": "string", "minLength": 1, "maxLength": 400},
                            },
                            "required": ["worker", "task"],
                            "additionalProperties": False,
                        },
                    }
                },
                "required": ["assignments"],
                "additionalProperties": False,
            },
        )
        self.assign_prompt = PromptTemplate(
            system=f"{spec.instructions}\nWorkers:\n{roster}\n"
            'Reply with JSON: {"assignments": [{"worker": "<name>", "task": "..."}]}.'
        )
        self.review_prompt = PromptTemplate(
            system="Review your workers' results for the user's request. Approve them with a"
            " final answer, or reject them with feedback saying what to fix."
            ' Reply with JSON: {"approved": true, "feedback": "...", "answer": "..."}.',
            user="Request: {original}\n\nResults:\n{input}",
        )

    async def assign(
        self, request: str, feedback: str, ctx: RequestContext, parent_id: str
    ) -> list[Assignment]:
        """This round's assignments; every worker named must exist."""
        text = request if not feedback else f"{request}\n\nFeedback on the last round: {feedback}"
        reply = await ctx.ask(
            self.spec.supervisor.name,
            text,
            prompt=self.assign_prompt,
            parent_id=parent_id,
            max_tokens=self.spec.supervisor_max_tokens,
            response_format=self.assign_schema,
        )
        data = reply.structured if isinstance(reply.structured, dict) else {}
        try:
            assignments = [Assignment.model_validate(a) for a in data.get("assignments", [])]  # type: ignore[union-attr]
        except ValidationError as exc:
            raise StructuredOutputError(
                f"the supervisor's assignments are malformed: {exc.error_count()} problem(s)",
                text=reply.text,
                model=reply.model,
            ) from None
        unknown = sorted({a.worker for a in assignments} - set(self.spec.workers))
        if unknown or not assignments:
            problems = [f"unknown worker '{name}'" for name in unknown] or ["no assignments"]
            raise AssignmentError(
                "the supervisor's assignments were rejected: " + "; ".join(problems),
                problems=problems,
            )
        return assignments

    async def review(
        self, request: str, results: str, ctx: RequestContext, parent_id: str
    ) -> Review:
        """Approve with an answer, or reject with feedback."""
        reply = await ctx.ask(
            self.spec.supervisor.name,
            results,
            prompt=self.review_prompt,
            parent_id=parent_id,
            max_tokens=self.spec.supervisor_max_tokens,
            response_format=_REVIEW,
            values={"original": request},
        )
        try:
            return Review.model_validate(reply.structured)
        except ValidationError:
            raise StructuredOutputError(
                "the supervisor's review is malformed", text=reply.text, model=reply.model
            ) from None


@register(SupervisorWorkerSpec)
async def run_supervisor_worker(
    spec: SupervisorWorkerSpec, text: str, ctx: RequestContext, parent_id: str
) -> Outcome:
    """Assign, work in parallel, review; repeat on rejection up to ``max_rounds``."""
    supervisor = ctx.role(Supervisor)(spec)
    feedback = ""
    results = ""
    for round_number in range(1, spec.max_rounds + 1):
        with ctx.step(f"round-{round_number}", parent_id) as round_id:
            with ctx.step("supervisor:assign", round_id) as assign_id:
                assignments = await supervisor.assign(text, feedback, ctx, assign_id)

            async def work(assignment: Assignment, round_id: str = round_id) -> str:
                with ctx.step(f"worker:{assignment.worker}", round_id) as worker_id:
                    outcome = await ctx.call_member(
                        spec.workers[assignment.worker].member,
                        assignment.task,
                        prompt=spec.prompt,
                        parent_id=worker_id,
                        max_tokens=spec.max_tokens,
                        temperature=spec.temperature,
                    )
                return f"[{assignment.worker}] {assignment.task}\n{outcome.text.strip()}"

            results = "\n\n".join(await gather_all(work(a) for a in assignments))
            with ctx.step("supervisor:review", round_id) as review_id:
                review = await supervisor.review(text, results, ctx, review_id)
        if review.approved:
            return Outcome(text=review.answer or results, rounds=round_number)
        feedback = review.feedback
    # Out of rounds: the last round's work stands (``rounds`` shows the limit was reached).
    answer = review.answer or results
    return Outcome(text=answer, rounds=spec.max_rounds)
