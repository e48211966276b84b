"""The ``agent`` pattern: a user's :class:`~cantata.agents.Agent` as a node of a topology.

The node's agent gets the node's input as a :class:`~cantata.agents.Task` and a
:class:`MemberContext` through which it reaches the node's members by name; the members' spans
are children of the agent's current step, and their usage, cost and budget are the request's.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from pydantic import BaseModel, ValidationError

from cantata.agents import (
    Agent,
    AgentContext,
    Budget,
    JsonSchemaFormat,
    ModelSpec,
    StructuredOutputError,
    Task,
    TaskReply,
    TopologyError,
    output_format,
)

from ._call_options import CallOptions
from ._context import RequestContext
from ._outcome import Outcome
from ._prompt import PromptTemplate
from ._spec import AgentSpec

__all__ = ["MemberContext", "output_schema", "run_agent"]


def output_schema(output: type[BaseModel]) -> JsonSchemaFormat:
    """The structured output a model must produce to be read as ``output``.

    The same strict schema the role agents ask for (:func:`~cantata.agents.output_format`),
    named after the type.
    """
    return output_format(output, name=re.sub(r"[^A-Za-z0-9_-]", "_", output.__name__)[:64])


class MemberContext(AgentContext):
    """An agent's way to its node's members, inside one request."""

    def __init__(self, spec: AgentSpec, ctx: RequestContext, parent_id: str) -> None:
        self.spec = spec
        self.ctx = ctx
        self._parent: ContextVar[str] = ContextVar(f"cantata-agent-{spec.name}", default=parent_id)

    @property
    def trace_id(self) -> str:
        return self.ctx.trace_id

    @property
    def deadline(self) -> float | None:
        return self.ctx.deadline

    @property
    def budget(self) -> Budget:
        return self.ctx.budget

    @contextmanager
    def step(self, name: str) -> Iterator[str]:
        with self.ctx.step(f"{self.spec.name}:{name}", self._parent.get()) as step_id:
            token = self._parent.set(step_id)
            try:
                yield step_id
            finally:
                self._parent.reset(token)

    async def ask(
        self,
        member: str,
        text: str,
        *,
        system: str | None = None,
        output: type[BaseModel] | None = None,
        max_tokens: int = 256,
        temperature: float = 0.0,
        timeout_s: float | None = None,
    ) -> TaskReply:
        if member not in self.spec.members:
            raise TopologyError(
                f"agent '{self.spec.name}' has no member '{member}'"
                f" (members: {', '.join(sorted(self.spec.members)) or 'none'})"
            )
        target = self.spec.members[member]
        if isinstance(target, ModelSpec):
            options = CallOptions(
                prompt=PromptTemplate(system=system),
                max_tokens=max_tokens,
                temperature=temperature,
                timeout_s=timeout_s,
                output=None if output is None else output_schema(output),
            )
            reply = await self.ctx.ask(target.name, text, options, parent_id=self._parent.get())
            structured = reply.structured
            if output is not None:
                try:
                    structured = output.model_validate(reply.structured).model_dump(mode="json")
                except ValidationError as exc:
                    raise StructuredOutputError(
                        f"{target.name}'s reply is not a valid {output.__name__}:"
                        f" {exc.error_count()} problem(s)",
                        text=reply.text[:2000],
                        model=target.name,
                    ) from None
            return TaskReply(trace_id=self.trace_id, text=reply.text, structured=structured)
        options = CallOptions(max_tokens=max_tokens, temperature=temperature, timeout_s=timeout_s)
        outcome = await self.ctx.call_member(target, text, options, parent_id=self._parent.get())
        return TaskReply(trace_id=self.trace_id, text=outcome.text, structured=outcome.structured)


async def run_agent(spec: AgentSpec, text: str, ctx: RequestContext, parent_id: str) -> Outcome:
    """Hand the node's input to its agent as a task; its reply is the node's answer."""
    agent_class = ctx.code.agents.get(spec.agent)
    if agent_class is None:
        raise TopologyError(
            f"agent '{spec.name}' names {spec.agent}, which was not loaded: load the topology's"
            " code (cantata.topologies.load_code) and pass it to the runtime"
        )
    agent: Agent = agent_class(**spec.settings)
    task = Task(
        trace_id=ctx.trace_id,
        parent_span_id=parent_id,
        deadline=ctx.deadline,
        budget=ctx.budget,
        text=text,
    )
    reply = await agent.handle(task, MemberContext(spec, ctx, parent_id))
    if not isinstance(reply, TaskReply):
        raise TopologyError(
            f"agent '{spec.name}' ({agent_class.__name__}) answered a task with a"
            f" {type(reply).__name__}; a node's agent must reply with a TaskReply"
        )
    return Outcome(text=reply.text, structured=reply.structured)
