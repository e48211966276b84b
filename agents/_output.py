"""Typed model output: the message type is the one definition, the JSON schema is derived.

What a role asks a model for (a plan, assignments, a review, a label, a choice, a score) is a
typed message in :mod:`._roles`. :func:`output_format` derives from it the strict JSON schema
sent with the request (constrained decoding by llama.cpp grammars, OpenAI ``json_schema``), as
pydantic-ai derives its output schema from its output type, and :func:`parse_output` reads the
reply back into the type. Field bounds, enums and ranges are written once, on the message, so
what the model is allowed to write and what is accepted from it cannot drift apart.

Values known only at run time (worker names, labels, executor types) narrow a message with
:func:`narrow` and :func:`one_of`: the narrowed type is a subclass with ``Literal`` fields, so
it is still the message, and its schema carries the names as an ``enum``.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal, Protocol, TypeVar

from pydantic import BaseModel, JsonValue, ValidationError, create_model

from ._errors import StructuredOutputError
from ._messages import JsonSchemaFormat
from ._roles import Choice

__all__ = [
    "StructuredReply",
    "choice_output",
    "choice_type",
    "narrow",
    "one_of",
    "output_format",
    "parse_output",
]

M = TypeVar("M", bound=BaseModel)

# A StructuredOutputError's message stays short however wrong the reply is: it is logged,
# put on spans and sent back to planners for repair.
_MAX_PROBLEMS = 3
_MAX_PROBLEM_CHARS = 160

# Keywords that describe a schema to people, not constrain it: they only cost prompt tokens.
_NOISE = frozenset({"title", "default"})
# Keywords whose value is one subschema, or a list of them.
_SUBSCHEMA = frozenset({"items", "additionalProperties", "not", "contains"})
_SUBSCHEMAS = frozenset({"anyOf", "oneOf", "allOf", "prefixItems"})


class StructuredReply(Protocol):
    """What :func:`parse_output` reads: a reply's text and its parsed JSON.

    A :class:`~cantata.agents.ModelReply` is one; so is anything else with these fields.
    """

    @property
    def text(self) -> str:
        """The model's text, kept on the error when the JSON does not fit the type."""

    @property
    def structured(self) -> JsonValue:
        """The JSON value parsed from the text."""


def one_of(values: Iterable[str]) -> Any:
    """``Literal[*values]``: the type whose only values are these (in this order, deduplicated).

    For names known only at run time; its schema is an ``enum`` (a ``const`` for one value).
    """
    unique = tuple(dict.fromkeys(values))
    if not unique:
        raise ValueError("one_of needs at least one value")
    return Literal.__getitem__(unique)


def narrow(message_type: type[M], /, **fields: Any) -> type[M]:
    """A subclass of ``message_type`` with the given fields redefined, every one required.

    Each keyword names an existing field and gives its new annotation, usually
    :func:`one_of` names or an ``Annotated[..., Field(...)]`` with tighter bounds; the other
    fields keep their definitions. Instances of the result are instances of ``message_type``.
    """
    unknown = sorted(set(fields) - set(message_type.model_fields))
    if unknown:
        raise TypeError(f"{message_type.__name__} has no field(s) {', '.join(unknown)}")
    definitions: dict[str, Any] = {name: (annotation, ...) for name, annotation in fields.items()}
    return create_model(message_type.__name__, __base__=message_type, **definitions)


def output_format(message_type: type[BaseModel], *, name: str) -> JsonSchemaFormat:
    """The strict JSON schema of ``message_type`` as a structured-output request named ``name``.

    Strict, as OpenAI's strict mode and grammar-constrained decoding need it: every field is
    required, no object admits other properties, ``$defs`` are inlined, and ``title``,
    ``default`` and model docstrings are dropped. A ``kind`` tag (a ``const`` field) is left
    out: the model does not write it, and the type fills it in. Bounds, ``Literal`` enums and
    ranges on the fields carry over.
    """
    return _output_format(message_type, name)


@functools.lru_cache(maxsize=256)
def _output_format(message_type: type[BaseModel], name: str) -> JsonSchemaFormat:
    # Roles are built per request; deriving a schema costs milliseconds, a lookup does not.
    schema = message_type.model_json_schema()
    definitions: dict[str, Any] = schema.pop("$defs", {})
    # A model's docstring is for people reading the code; field descriptions stay.
    schema.pop("description", None)
    for definition in definitions.values():
        definition.pop("description", None)
    return JsonSchemaFormat(name=name, json_schema=_strict(schema, definitions, ()))


def parse_output(message_type: type[M], reply: StructuredReply) -> M:
    """``reply.structured`` validated into ``message_type``.

    Raises :class:`~cantata.agents.StructuredOutputError` (with the reply's text, and a short
    message naming at most a few problems, never the values) when it does not fit.
    """
    model = str(getattr(reply, "model", ""))
    who = f"{model}'s" if model else "the"
    if reply.structured is None:
        raise StructuredOutputError(
            f"{who} reply has no structured output for {message_type.__name__}",
            text=reply.text,
            model=model,
        )
    try:
        return message_type.model_validate(reply.structured)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False, include_context=False)
        problems = [
            _clip(f"{'.'.join(str(part) for part in error['loc']) or '<root>'}: {error['msg']}")
            for error in errors[:_MAX_PROBLEMS]
        ]
        more = len(errors) - len(problems)
        raise StructuredOutputError(
            f"{who} reply is not a valid {message_type.__name__}: {'; '.join(problems)}"
            + (f" (and {more} more)" if more else ""),
            text=reply.text,
            model=model,
        ) from None


@functools.lru_cache(maxsize=128)
def _choice_type(choices: tuple[str, ...]) -> type[Choice]:
    return narrow(Choice, choice=one_of(choices))


def choice_type(choices: Sequence[str]) -> type[Choice]:
    """:class:`~cantata.agents.Choice` narrowed to ``choices``: read a vote's reply with it."""
    return _choice_type(tuple(choices))


def choice_output(choices: Sequence[str]) -> JsonSchemaFormat:
    """The structured output that makes a model pick one of ``choices``: ``{"choice": ...}``."""
    return output_format(choice_type(choices), name="choice")


def _clip(problem: str) -> str:
    if len(problem) <= _MAX_PROBLEM_CHARS:
        return problem
    return problem[: _MAX_PROBLEM_CHARS - 3] + "..."


def _strict(
    node: Mapping[str, Any], definitions: Mapping[str, Any], seen: tuple[str, ...]
) -> dict[str, Any]:
    """``node`` with references inlined, noise dropped, and every object closed and required."""
    reference = node.get("$ref")
    if isinstance(reference, str):
        target = reference.removeprefix("#/$defs/")
        if target in seen or target not in definitions:
            # A recursive type has no finite grammar; no role message is one.
            raise TypeError(f"cannot inline the schema reference {reference!r}")
        inlined = _strict(definitions[target], definitions, (*seen, target))
        siblings = {key: value for key, value in node.items() if key != "$ref"}
        return {**inlined, **_strict(siblings, definitions, seen)}
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _NOISE:
            continue
        if key == "properties":
            out[key] = {
                field: _strict(schema, definitions, seen)
                for field, schema in value.items()
                if not (field == "kind" and "const" in schema)
            }
        elif key in _SUBSCHEMA and isinstance(value, Mapping):
            out[key] = _strict(value, definitions, seen)
        elif key in _SUBSCHEMAS:
            out[key] = [_strict(item, definitions, seen) for item in value]
        else:
            out[key] = value
    if "properties" in out:
        out["required"] = list(out["properties"])
        out["additionalProperties"] = False
    if (
        out.get("type") == "array"
        and out.get("maxItems") == 0
        and not {"items", "prefixItems"} & out.keys()
    ):
        # An empty tuple. Grammar converters (llama.cpp's) read an array without items as
        # any array at all, so say it the way they understand.
        return {"type": "array", "const": []}
    return out
