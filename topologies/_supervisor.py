"""The ``supervisor_worker`` pattern, and the :class:`Supervisor` role.

Each round the supervisor assigns tasks to named workers (typed :class:`~cantata.agents.Assignment`
objects, checked against the worker list), the workers do them in parallel, and the supervisor
reviews the results: it approves with a final answer, or sends the work back with feedback for
another round, up to ``max_rounds``.

The :class:`Supervisor` is a role agent: the pattern sends it an
:class:`~cantata.agents.AssignRequest` (reply: :class:`~cantata.agents.Assignments`) and a
:class:`~cantata.agents.ReviewRequest` (reply: :class:`~cantata.agents.Review`). Its handlers
call :meth:`Supervisor.assign` and :meth:`Supervisor.review`, which are what a subclass
overrides.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Collection
from typing import Annotated

from pydantic import Field

from cantata.agents import (
    Assignment,
    AssignmentError,
    Assignments,
    AssignRequest,
    Review,
    ReviewRequest,
    StructuredOutputError,
    excerpt,
    handles,
    narrow,
    one_of,
    output_format,
    parse_output,
)

from ._call_options import CallOptions
from ._context import RequestContext, gather_all
from ._outcome import Outcome
from ._prompt import PromptTemplate
from ._role import Role, reply_as, role_request
from ._spec import SupervisorWorkerSpec

__all__ = ["Supervisor", "assignments_type", "run_supervisor_worker"]


def assignments_type(workers: Collection[str]) -> type[Assignments]:
    """:class:`~cantata.agents.Assignments` narrowed to these workers: one to two tasks each."""
    return _assignments_type(tuple(sorted(workers)))


@functools.lru_cache(maxsize=64)
def _assignments_type(workers: tuple[str, ...]) -> type[Assignments]:
    assignment = narrow(Assignment, worker=one_of(workers))
    return narrow(
        Assignments,
        assignments=Annotated[
            tuple[assignment, ...],  # type: ignore[valid-type]
            Field(min_length=1, max_length=2 * len(workers)),
        ],
    )


class Supervisor(Role):
    """Assigns tasks and reviews results. Subclass to change its prompts or its judgement."""

    def __init__(self, spec: SupervisorWorkerSpec) -> None:
        self.spec = spec
        names = sorted(spec.workers)
        roster = "\n".join(f"- {name}: {spec.workers[name].description}" for name in names)
        self.assign_type = assignments_type(names)
        self.assign_schema = output_format(self.assign_type, name="assignments")
        self.review_schema = output_format(Review, name="review")
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
        options = CallOptions(
            prompt=self.assign_prompt,
            max_tokens=self.spec.supervisor_max_tokens,
            output=self.assign_schema,
        )
        try:
            reply = await ctx.ask(self.spec.supervisor.name, text, options, parent_id=parent_id)
        except StructuredOutputError as exc:
            # The schema admits only declared workers; say which undeclared one was named.
            if named := _undeclared_workers(exc.text, self.spec.workers):
                raise _rejected(named) from None
            raise
        assignments = list(parse_output(self.assign_type, reply).assignments)
        # The narrowed type admits only these workers; checked again in case a subclass
        # replaced ``assign_type``.
        unknown = sorted({a.worker for a in assignments} - set(self.spec.workers))
        if unknown or not assignments:
            raise _rejected(unknown)
        return assignments

    async def review(
        self, request: str, results: str, ctx: RequestContext, parent_id: str
    ) -> Review:
        """Approve with an answer, or reject with feedback."""
        options = CallOptions(
            prompt=self.review_prompt,
            max_tokens=self.spec.supervisor_max_tokens,
            output=self.review_schema,
            values={"original": request},
        )
        reply = await ctx.ask(self.spec.supervisor.name, results, options, parent_id=parent_id)
        return parse_output(Review, reply)

    @handles
    async def on_assign(self, request: AssignRequest, ctx: RequestContext) -> Assignments:
        """This round's assignments (see :meth:`assign`), under the request's parent span."""
        assignments = await self.assign(
            request.request, request.feedback, ctx, request.parent_span_id
        )
        if not assignments:  # a subclass's assign may return none; Assignments needs one
            raise _rejected([])
        return Assignments(assignments=tuple(assignments))

    @handles
    async def on_review(self, request: ReviewRequest, ctx: RequestContext) -> Review:
        """The verdict on the round's results (see :meth:`review`)."""
        return await self.review(request.request, request.results, ctx, request.parent_span_id)


def _rejected(unknown: list[str]) -> AssignmentError:
    """The error for assignments naming ``unknown`` workers (none: no assignments at all)."""
    problems = [f"unknown worker '{excerpt(name, 64)}'" for name in unknown[:10]]
    problems = problems or ["no assignments"]
    return AssignmentError(
        "the supervisor's assignments were rejected: " + "; ".join(problems), problems=problems
    )


def _undeclared_workers(text: str, workers: Collection[str]) -> list[str]:
    """The worker names in a supervisor's reply that the topology does not declare."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        return []
    entries = data.get("assignments") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        return []
    named = [e.get("worker") for e in entries if isinstance(e, dict)]
    return sorted({n for n in named if isinstance(n, str) and n not in workers})


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
                assign = role_request(
                    AssignRequest, ctx, assign_id, request=text, feedback=feedback
                )
                assignments = reply_as(
                    Assignments, await supervisor.handle(assign, ctx), supervisor
                ).assignments

            async def work(assignment: Assignment, round_id: str = round_id) -> str:
                with ctx.step(f"worker:{assignment.worker}", round_id) as worker_id:
                    outcome = await ctx.call_member(
                        spec.workers[assignment.worker].member,
                        assignment.task,
                        spec.call_options(),
                        parent_id=worker_id,
                    )
                return f"[{assignment.worker}] {assignment.task}\n{outcome.text.strip()}"

            results = "\n\n".join(await gather_all(work(a) for a in assignments))
            with ctx.step("supervisor:review", round_id) as review_id:
                check = role_request(ReviewRequest, ctx, review_id, request=text, results=results)
                review = reply_as(Review, await supervisor.handle(check, ctx), supervisor)
        if review.approved:
            return Outcome(text=review.answer or results, rounds=round_number)
        feedback = review.feedback
    # Out of rounds: the last round's work stands (``rounds`` shows the limit was reached).
    answer = review.answer or results
    return Outcome(text=answer, rounds=spec.max_rounds)
