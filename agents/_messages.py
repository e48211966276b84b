"""Typed messages: what agents and model actors send each other.

Every message is a frozen pydantic model with ``extra="forbid"`` and a ``kind`` literal that
discriminates it on the wire. Every message carries the :class:`Envelope` fields: its own id, the
request's trace id, the span it was sent from, a deadline and the remaining budget.

Objects can be built without validation (``model_construct``) or forged and pickled across Ray
actors, so receivers call :func:`accept` (or validate through :data:`MESSAGE_ADAPTER`), which
validates again on arrival: ``revalidate_instances="always"`` makes pydantic re-check instances
instead of trusting them.
"""

from __future__ import annotations

import random
import time
from typing import Annotated, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    NonNegativeFloat,
    NonNegativeInt,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from ._errors import InvalidMessageError

__all__ = [
    "MESSAGE_ADAPTER",
    "Budget",
    "ChatMessage",
    "EmbedReply",
    "EmbedRequest",
    "Envelope",
    "FinishReason",
    "Frozen",
    "JsonSchemaFormat",
    "Message",
    "ModelReply",
    "ModelRequest",
    "Span",
    "Usage",
    "accept",
    "new_id",
]


def new_id() -> str:
    """A fresh random 128-bit id as 32 hex characters (the trace and span id format).

    Ids tell requests and spans apart; they are not secrets, so they come from ``random``
    (as OpenTelemetry's own id generator does), not from a system call per id as ``uuid4``.
    Python reseeds ``random`` in a forked child, so processes do not repeat each other's ids.
    """
    return f"{random.getrandbits(128):032x}"


_QUOTE_CHARS = 300


def excerpt(text: str, limit: int = _QUOTE_CHARS) -> str:
    """``text`` cut to ``limit`` characters, saying how much was left out: for quoting model
    output (or a message that embeds it) in an error, a log line or a repair prompt.

    Public as ``cantata.agents.excerpt``. It lives here, with ``accept``, because every other
    module that quotes untrusted text imports this one.
    """
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text) - limit} more characters)"


class Frozen(BaseModel):
    """Base of every Cantata data model: immutable, strict about fields, re-validated on arrival."""

    model_config = ConfigDict(frozen=True, extra="forbid", revalidate_instances="always")


class Budget(Frozen):
    """What a request may still spend. ``None`` means unlimited."""

    tokens: NonNegativeInt | None = None
    cost_usd: NonNegativeFloat | None = None

    def spend(self, tokens: int, cost_usd: float) -> Budget:
        """The budget left after spending ``tokens`` and ``cost_usd`` (never below zero)."""
        return Budget(
            tokens=None if self.tokens is None else max(0, self.tokens - tokens),
            cost_usd=None if self.cost_usd is None else max(0.0, self.cost_usd - cost_usd),
        )

    @property
    def exhausted(self) -> bool:
        """True when either limit has reached zero."""
        return self.tokens == 0 or self.cost_usd == 0.0


class Envelope(Frozen):
    """The fields every message carries."""

    id: str = Field(default_factory=new_id, min_length=1, max_length=64)
    trace_id: str = Field(default_factory=new_id, min_length=1, max_length=64)
    parent_span_id: str | None = Field(default=None, max_length=64)
    deadline: float | None = Field(
        default=None, description="Absolute deadline, epoch seconds; None means no deadline."
    )
    budget: Budget = Field(default_factory=Budget)

    def remaining_s(self) -> float | None:
        """Seconds left before the deadline (negative once passed), or None without one."""
        return None if self.deadline is None else self.deadline - time.time()


class ChatMessage(Frozen):
    """One turn of a chat prompt."""

    role: Literal["system", "user", "assistant"]
    content: str


class JsonSchemaFormat(Frozen):
    """Ask for output matching ``json_schema``, by constrained decoding where supported."""

    name: str = Field(default="output", pattern=r"^[A-Za-z0-9_-]{1,64}$")
    json_schema: dict[str, JsonValue]


class Usage(Frozen):
    """Tokens a model call consumed."""

    input_tokens: NonNegativeInt = 0
    output_tokens: NonNegativeInt = 0

    @property
    def total_tokens(self) -> int:
        """Input plus output tokens."""
        return self.input_tokens + self.output_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
        )


FinishReason = Literal["stop", "length", "content_filter", "tool_calls", "other"]


class Span(Frozen):
    """One timed step of a request: a model call or a role agent's step.

    Model fields are empty for role-agent steps; ``actor_id`` and ``node_id`` name the Ray actor
    and node that did the work (empty when it ran in-process without Ray). ``cost_usd`` is what
    the call cost by the model's token pricing; ``error_type`` names the Cantata error class of a
    failed span (``error`` holds its message).
    """

    span_id: str = Field(default_factory=new_id)
    parent_id: str | None = None
    trace_id: str
    agent: str
    model: str | None = None
    model_version: str | None = None
    actor_id: str | None = None
    node_id: str | None = None
    start: float
    end: float
    latency_ms: NonNegativeFloat
    input_tokens: NonNegativeInt = 0
    output_tokens: NonNegativeInt = 0
    cost_usd: NonNegativeFloat = 0.0
    status: Literal["ok", "error"] = "ok"
    error: str | None = None
    error_type: str | None = None

    @model_validator(mode="after")
    def _ends_after_start(self) -> Span:
        if self.end < self.start:
            raise ValueError("span end is before its start")
        return self


class ModelRequest(Envelope):
    """A prompt for one model."""

    kind: Literal["model_request"] = "model_request"
    messages: tuple[ChatMessage, ...] = Field(min_length=1)
    max_tokens: int = Field(default=256, ge=1, le=32768)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    stop: tuple[str, ...] = ()
    seed: int | None = None
    response_format: JsonSchemaFormat | None = None

    @classmethod
    def from_prompt(
        cls, prompt: str, *, system: str | None = None, **fields: object
    ) -> ModelRequest:
        """A one-turn request: an optional system message, then ``prompt`` as the user turn."""
        turns = [ChatMessage(role="system", content=system)] if system else []
        turns.append(ChatMessage(role="user", content=prompt))
        return cls.model_validate({"messages": tuple(turns), **fields})


class ModelReply(Envelope):
    """Any backend's answer, normalized: the same shape from llama.cpp, HTTP or a function."""

    kind: Literal["model_reply"] = "model_reply"
    request_id: str
    text: str
    structured: JsonValue = Field(
        default=None, description="The parsed JSON when the request asked for structured output."
    )
    model: str
    model_version: str
    usage: Usage
    cost_usd: NonNegativeFloat = 0.0
    latency_ms: NonNegativeFloat
    finish_reason: FinishReason
    span: Span


class EmbedRequest(Envelope):
    """Texts to embed. ``input_type`` matters to models trained with query/passage prefixes."""

    kind: Literal["embed_request"] = "embed_request"
    texts: tuple[str, ...] = Field(min_length=1)
    input_type: Literal["query", "passage"] = "query"


class EmbedReply(Envelope):
    """One vector per input text, in order."""

    kind: Literal["embed_reply"] = "embed_reply"
    request_id: str
    vectors: tuple[tuple[float, ...], ...]
    model: str
    model_version: str
    usage: Usage
    latency_ms: NonNegativeFloat
    span: Span


Message = Annotated[
    ModelRequest | ModelReply | EmbedRequest | EmbedReply,
    Field(discriminator="kind"),
]
"""Every message kind, discriminated by ``kind``. Role messages join this union."""

MESSAGE_ADAPTER: TypeAdapter[Message] = TypeAdapter(Message)
"""The one adapter for the wire: ``MESSAGE_ADAPTER.validate_json(data)`` / ``dump_json(msg)``."""

M = TypeVar("M", bound=BaseModel)


def accept(message: object, expected: type[M]) -> M:
    """Validate ``message`` on arrival as ``expected``, whatever it claims to be.

    Accepts an instance (re-validated: forged or ``model_construct``-ed objects are caught), or a
    dict or JSON string from the wire. Raises :class:`InvalidMessageError` naming every problem.
    """
    try:
        if isinstance(message, str | bytes):
            return expected.model_validate_json(message)
        if isinstance(message, BaseModel) and not isinstance(message, expected):
            raise InvalidMessageError(
                f"expected a {expected.__name__}, got a {type(message).__name__}"
            )
        return expected.model_validate(message)
    except ValidationError as exc:
        raise InvalidMessageError(
            f"invalid {expected.__name__}: " + "; ".join(problems := _problems(exc)),
            errors=problems,
        ) from None


_LISTED = 10  # problems named in an InvalidMessageError; the rest are counted
_PROBLEM_CHARS = 200


def _problems(exc: ValidationError) -> list[str]:
    """At most ten of ``exc``'s problems, each cut short: the message is untrusted, and a
    location can hold its keys (of any length) and an error can come per item of a long list."""
    errors = exc.errors(include_url=False, include_input=False, include_context=False)
    problems = [
        excerpt(
            f"{'.'.join(str(part) for part in err['loc']) or '<root>'}: {err['msg']}",
            _PROBLEM_CHARS,
        )
        for err in errors[:_LISTED]
    ]
    if len(errors) > _LISTED:
        problems.append(f"and {len(errors) - _LISTED} more")
    return problems
