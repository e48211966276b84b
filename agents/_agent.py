"""The agent base class: typed messages in, typed replies out, models reached through a context.

An :class:`Agent` receives messages (pydantic models carrying the request's trace id, parent
span, deadline and budget). Each message is validated on arrival and handed to the method
marked with :func:`handles` for its type; the method returns a typed reply. An agent calls
models and other agents only through its :class:`AgentContext`, so the same agent runs inline
(in its parent's process) or as a Ray actor of its own, and its spans, usage, cost, deadline
and budget are kept either way.

    class Critic(Agent):
        @handles
        async def review(self, task: Task, ctx: AgentContext) -> TaskReply:
            draft = await ctx.ask("writer", task.text)
            verdict = await ctx.ask("critic", draft.text, output=Verdict)
            ...

Nothing here imports Ray: agents are testable in-process, and Ray actors are one way of
hosting them.
"""

from __future__ import annotations

import abc
import inspect
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from typing import Any, ClassVar, Literal, TypeVar, get_type_hints

from pydantic import BaseModel, Field, JsonValue

from ._errors import InvalidMessageError
from ._messages import Budget, Envelope, accept

__all__ = ["Agent", "AgentContext", "Task", "TaskReply", "handles"]

_MAX_TEXT = 200_000  # characters; bounds what one message may carry between agents

H = TypeVar("H", bound=Callable[..., Awaitable[Any]])


class Task(Envelope):
    """Work for an agent or a member: the text to act on, and named values for its prompts."""

    kind: Literal["task"] = "task"
    text: str = Field(max_length=_MAX_TEXT)
    values: dict[str, str] = Field(default_factory=dict)


class TaskReply(Envelope):
    """What an agent or member answered: text, and structured output when it was asked for."""

    kind: Literal["task_reply"] = "task_reply"
    text: str = Field(max_length=_MAX_TEXT)
    structured: JsonValue = None


class AgentContext(abc.ABC):
    """What an agent may use while it handles one message.

    ``ask`` reaches a member by name: a model (one call, its span and cost recorded) or another
    agent or topology (inline or on its own actor). ``step`` times a part of the agent's work as
    a span. The request's trace id, deadline and budget are the context's; an agent never
    builds them itself.
    """

    @property
    @abc.abstractmethod
    def trace_id(self) -> str:
        """The request's trace id."""

    @property
    @abc.abstractmethod
    def deadline(self) -> float | None:
        """The request's absolute deadline (epoch seconds), or None."""

    @property
    @abc.abstractmethod
    def budget(self) -> Budget:
        """What the request may still spend."""

    @abc.abstractmethod
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
        """Ask the member called ``member`` about ``text``.

        A model member gets ``system`` (when given) and ``text`` as its prompt; with ``output``,
        its reply is constrained to that type's JSON schema and ``structured`` holds the
        validated data. A topology or agent member gets ``text`` as its task.
        """

    @abc.abstractmethod
    def step(self, name: str) -> AbstractContextManager[str]:
        """Time a part of the agent's work as a span; model calls inside become its children."""


def handles(method: H) -> H:
    """Mark an agent method as the handler of the message type its first parameter names."""
    method.__cantata_handler__ = True  # type: ignore[attr-defined]
    return method


class Agent:
    """Base of every agent: routers, planners, supervisors, voters, judges, and users' own.

    Subclass it and mark handlers with :func:`handles`::

        @handles
        async def on_task(self, task: Task, ctx: AgentContext) -> TaskReply: ...

    The message type is read from the annotation of the handler's first parameter; a subclass
    inherits its parents' handlers and may replace them. :meth:`handle` validates a message on
    arrival (a dict or JSON from the wire, or an instance that crossed a process boundary
    unvalidated) and dispatches it.
    """

    _handlers: ClassVar[dict[type[BaseModel], str]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        found: dict[type[BaseModel], str] = {}
        for base in reversed(cls.__mro__[1:]):
            found.update(getattr(base, "_handlers", {}))
        for name, member in vars(cls).items():
            if getattr(member, "__cantata_handler__", False):
                found[_message_type(cls, name, member)] = name
        cls._handlers = found

    @classmethod
    def message_types(cls) -> tuple[type[BaseModel], ...]:
        """The message types this agent handles."""
        return tuple(cls._handlers)

    async def handle(self, message: object, ctx: AgentContext) -> BaseModel:
        """Validate ``message`` and run its handler; an unknown message type is refused."""
        message_type = self._type_of(message)
        return await self._dispatch(accept(message, message_type), message_type, ctx)

    async def _dispatch(
        self, message: BaseModel, message_type: type[BaseModel], ctx: AgentContext
    ) -> BaseModel:
        handler = getattr(self, self._handlers[message_type])
        reply = await handler(message, ctx)
        if not isinstance(reply, BaseModel):
            raise InvalidMessageError(
                f"{type(self).__name__}.{self._handlers[message_type]} returned a"
                f" {type(reply).__name__}, not a typed message"
            )
        return reply

    def _type_of(self, message: object) -> type[BaseModel]:
        if isinstance(message, BaseModel):
            for candidate in type(message).__mro__:
                if candidate in self._handlers:
                    return candidate
        elif isinstance(message, dict):
            kind = message.get("kind")
            for candidate in self._handlers:
                field = candidate.model_fields.get("kind")
                if field is not None and field.default == kind:
                    return candidate
        accepted = ", ".join(sorted(t.__name__ for t in self._handlers)) or "nothing"
        raise InvalidMessageError(
            f"{type(self).__name__} cannot handle a {type(message).__name__}"
            f" (it handles: {accepted})"
        )


def _message_type(cls: type, name: str, method: Any) -> type[BaseModel]:
    parameters = list(inspect.signature(method).parameters.values())[1:]  # after self
    if not parameters:
        raise TypeError(f"{cls.__name__}.{name}: a handler takes the message as its argument")
    hints = get_type_hints(method, globalns=vars(inspect.getmodule(cls)))
    message_type = hints.get(parameters[0].name)
    if not (isinstance(message_type, type) and issubclass(message_type, BaseModel)):
        raise TypeError(
            f"{cls.__name__}.{name}: annotate the handler's first parameter with the pydantic"
            " message type it handles"
        )
    return message_type
