"""The ``planner_executor`` pattern, and the :class:`Planner` role.

The planner writes a :class:`~cantata.agents.Plan` with schema-constrained output; the plan is
validated (and sent back once for repair if it fails); steps run on the executors of their type
as soon as the steps they depend on are done, so independent steps run in parallel; the planner
then synthesizes the answer from the step results.

The :class:`Planner` is a role agent: the pattern sends it a :class:`~cantata.agents.PlanRequest`
(reply: the :class:`~cantata.agents.Plan`) and a :class:`~cantata.agents.SynthesisRequest`
(reply: a :class:`~cantata.agents.TaskReply` with the answer). Its handlers call
:meth:`Planner.plan` and :meth:`Planner.synthesize`, which are what a subclass overrides.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace

from cantata.agents import (
    Plan,
    PlanRequest,
    PlanStep,
    PlanValidationError,
    StepResult,
    StructuredOutputError,
    SynthesisRequest,
    TaskReply,
    excerpt,
    handles,
)

from ._call_options import CallOptions
from ._context import RequestContext, gather_all
from ._outcome import Outcome
from ._plan import plan_schema, validate_plan
from ._prompt import PromptTemplate
from ._role import Role, reply_as, role_request
from ._spec import PlannerExecutorSpec

__all__ = ["Planner", "run_planner_executor"]


class Planner(Role):
    """Writes and repairs plans, and synthesizes the answer. Subclass to change its prompts."""

    def __init__(self, spec: PlannerExecutorSpec) -> None:
        self.spec = spec
        self.schema = plan_schema(spec.executors, spec.max_steps)
        executors = ", ".join(sorted(spec.executors))
        self.prompt = PromptTemplate(
            system=(
                f"{spec.instructions}\nExecutor types: {executors}. At most {spec.max_steps}"
                " steps, numbered s1, s2, ... A step may only depend on earlier steps. Reply with"
                ' JSON: {"steps": [{"id": "s1", "executor": "<type>", "prompt": "...",'
                ' "depends_on": []}]}.'
            )
        )
        self.plan_options = CallOptions(
            prompt=self.prompt, max_tokens=spec.plan_max_tokens, output=self.schema
        )

    async def plan(self, request: str, ctx: RequestContext, parent_id: str) -> Plan:
        """A validated plan; one that fails validation is sent back with its problems."""
        text = request
        for attempt in range(self.spec.repair_attempts + 1):
            try:
                try:
                    reply = await ctx.ask(
                        self.spec.planner.name, text, self.plan_options, parent_id=parent_id
                    )
                except StructuredOutputError as exc:
                    raise self._explain(exc) from None
                return validate_plan(reply.structured, self.spec.executors, self.spec.max_steps)
            except PlanValidationError as exc:
                if attempt == self.spec.repair_attempts:
                    raise
                text = (
                    f"{request}\n\nYour previous plan was rejected: {excerpt(str(exc), 1000)}\n"
                    "Write a corrected plan."
                )
        raise PlanValidationError("unreachable: the repair loop always returns or raises")

    def _explain(self, exc: StructuredOutputError) -> PlanValidationError:
        """What is wrong with a plan that failed its schema, in the plan's own terms.

        A schema's verdict on a plan is often just "not valid under any of the given schemas";
        validating the same JSON as a plan names the unknown executor or the cycle instead.
        """
        try:
            data = json.loads(exc.text)
        except (ValueError, RecursionError):
            data = None
        if data is not None:
            try:
                validate_plan(data, self.spec.executors, self.spec.max_steps)
            except PlanValidationError as named:
                return named
        return PlanValidationError(
            f"the planner did not produce a valid plan: {exc}", problems=[str(exc)]
        )

    async def synthesize(
        self, request: str, results: list[StepResult], ctx: RequestContext, parent_id: str
    ) -> str:
        """The final answer from the step results."""
        listing = "\n".join(f"[{r.step_id}] {r.text.strip()}" for r in results)
        options = replace(
            self.spec.call_options(), prompt=self.spec.synthesis, values={"original": request}
        )
        reply = await ctx.ask(self.spec.planner.name, listing, options, parent_id=parent_id)
        return reply.text

    @handles
    async def on_plan(self, request: PlanRequest, ctx: RequestContext) -> Plan:
        """A validated plan for the request (see :meth:`plan`), under its parent span."""
        return await self.plan(request.request, ctx, request.parent_span_id)

    @handles
    async def on_synthesis(self, request: SynthesisRequest, ctx: RequestContext) -> TaskReply:
        """The final answer from the request's results (see :meth:`synthesize`)."""
        answer = await self.synthesize(
            request.request, list(request.results), ctx, request.parent_span_id
        )
        return TaskReply(
            trace_id=request.trace_id, parent_span_id=request.parent_span_id, text=answer
        )


async def _execute(
    spec: PlannerExecutorSpec, plan: Plan, ctx: RequestContext, parent_id: str
) -> list[StepResult]:
    done: dict[str, asyncio.Future[StepResult]] = {}
    loop = asyncio.get_running_loop()
    for step in plan.steps:
        done[step.id] = loop.create_future()

    async def run(step: PlanStep) -> StepResult:
        inputs = [await done[dependency] for dependency in step.depends_on]
        text = step.prompt
        if inputs:
            text += "\n\nResults you can use:\n" + "\n".join(
                f"[{r.step_id}] {r.text.strip()}" for r in inputs
            )
        with ctx.step(f"step:{step.id}:{step.executor}", parent_id) as step_id:
            outcome = await ctx.call_member(
                spec.executors[step.executor], text, spec.call_options(), parent_id=step_id
            )
        result = StepResult(step_id=step.id, executor=step.executor, text=outcome.text)
        done[step.id].set_result(result)
        return result

    return await gather_all(run(step) for step in plan.steps)


async def run_planner_executor(
    spec: PlannerExecutorSpec, text: str, ctx: RequestContext, parent_id: str
) -> Outcome:
    """Plan, execute the steps on their executors, synthesize."""
    planner = ctx.role(Planner)(spec)
    with ctx.step("planner:plan", parent_id) as planner_id:
        request = role_request(PlanRequest, ctx, planner_id, request=text)
        plan = reply_as(Plan, await planner.handle(request, ctx), planner)
    with ctx.step("executors", parent_id) as executors_id:
        results = await _execute(spec, plan, ctx, executors_id)
    with ctx.step("planner:synthesize", parent_id) as synthesis_id:
        synthesis = role_request(
            SynthesisRequest, ctx, synthesis_id, request=text, results=tuple(results)
        )
        answer = reply_as(TaskReply, await planner.handle(synthesis, ctx), planner)
    return Outcome(text=answer.text, plan=plan, steps=tuple(results))
