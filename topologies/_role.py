"""The base of the role agents, and how a pattern sends one a request.

A role agent (router, planner, supervisor, voter, judge) is an :class:`~cantata.agents.Agent`:
a pattern sends it a typed request (:class:`~cantata.agents.RoleRequest`) through
:meth:`Role.handle` and gets a typed reply. Its handlers receive the pattern's
:class:`RequestContext` and call the role's public methods, so a subclass that overrides a
method (``Voter.decide``, ``Planner.plan``, ...) changes what the handler answers.
"""

from __future__ import annotations

from typing import Any, TypeVar, cast

from pydantic import BaseModel

from cantata.agents import Agent, AgentContext, RoleRequest, TopologyError, accept

from ._context import RequestContext

__all__ = ["Role", "reply_as", "role_request"]

Q = TypeVar("Q", bound=RoleRequest)
M = TypeVar("M", bound=BaseModel)


class Role(Agent):
    """An agent whose handlers take the pattern's :class:`RequestContext` as their context."""

    async def handle(self, message: object, ctx: AgentContext | RequestContext) -> BaseModel:
        """Run ``message``'s handler with ``ctx``; an unknown type is refused.

        Roles take requests only from the patterns in their own process, built (and so
        validated) by :func:`role_request`; such an instance is not validated a second time.
        A dict or JSON is validated as :meth:`Agent.handle` does.
        """
        # Agent.handle only hands ctx on to the handler, and role handlers are annotated with
        # the context they use, so widening it here is the one place the types need help.
        agent_ctx = cast(AgentContext, ctx)
        if isinstance(message, RoleRequest):
            return await self._dispatch(message, self._type_of(message), agent_ctx)
        return await super().handle(message, agent_ctx)


def role_request(cls: type[Q], ctx: RequestContext, parent_id: str, **fields: Any) -> Q:
    """A ``cls`` request carrying ``ctx``'s trace, deadline and budget, sent from ``parent_id``.

    Raises :class:`~cantata.agents.InvalidMessageError` when ``fields`` break its bounds.
    """
    envelope = {
        "trace_id": ctx.trace_id,
        "parent_span_id": parent_id,
        "deadline": ctx.deadline,
        "budget": ctx.budget,
    }
    return accept({**envelope, **fields}, cls)


def reply_as(expected: type[M], reply: BaseModel, role: object) -> M:
    """``reply`` as ``expected``; a role whose handler answered something else is an error."""
    if not isinstance(reply, expected):
        raise TopologyError(
            f"{type(role).__name__} answered with a {type(reply).__name__},"
            f" not a {expected.__name__}"
        )
    return reply
