"""Parse and check structured model output against the JSON schema the request asked for."""

from __future__ import annotations

import functools
import json

import jsonschema
from pydantic import JsonValue

from ._errors import StructuredOutputError
from ._messages import JsonSchemaFormat, excerpt

__all__ = ["MAX_STRUCTURED_CHARS", "excerpt", "parse_structured"]

MAX_STRUCTURED_CHARS = 100_000
"""The longest structured reply read. Model output is untrusted: a 10,000-step plan must fail
at once, not after parsing, validating and quoting all of it."""

MAX_STRUCTURED_DEPTH = 64
"""The deepest nesting of arrays and objects read. Role messages nest four deep; checking and
quoting JSON nested near Python's recursion limit would raise ``RecursionError`` instead."""


class _NotJSON(ValueError):
    """``NaN`` or ``Infinity``: Python's json module reads them, JSON has no such numbers."""


def _refuse_constant(name: str) -> object:
    raise _NotJSON(f"{name} is not a JSON number")


def parse_structured(text: str, fmt: JsonSchemaFormat, *, model: str) -> JsonValue:
    """The JSON value in ``text``, checked against ``fmt``; never eval'd, never trusted."""
    if len(text) > MAX_STRUCTURED_CHARS:
        raise StructuredOutputError(
            f"{model} answered {len(text)} characters for '{fmt.name}';"
            f" at most {MAX_STRUCTURED_CHARS} are read",
            text=text[:MAX_STRUCTURED_CHARS],
            model=model,
        )
    try:
        value: JsonValue = json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise StructuredOutputError(
            f"{model} did not answer with JSON for '{fmt.name}': {exc.msg} at char {exc.pos}",
            text=text,
            model=model,
        ) from None
    except _NotJSON as exc:
        raise StructuredOutputError(
            f"{model} did not answer with JSON for '{fmt.name}': {exc}", text=text, model=model
        ) from None
    except RecursionError:
        too_deep = True
    else:
        too_deep = _deeper_than(value, MAX_STRUCTURED_DEPTH)
    if too_deep:
        raise StructuredOutputError(
            f"{model} answered JSON nested too deep to read for '{fmt.name}'"
            f" (at most {MAX_STRUCTURED_DEPTH} levels are read)",
            text=text,
            model=model,
        )
    try:
        validator = _validator(json.dumps(fmt.json_schema, sort_keys=True))
    except jsonschema.SchemaError as exc:
        raise StructuredOutputError(
            f"the schema '{fmt.name}' is itself invalid: {exc.message}", text=text, model=model
        ) from None
    error = jsonschema.exceptions.best_match(validator.iter_errors(value))
    if error is not None:
        where = "/".join(str(part) for part in error.absolute_path) or "<root>"
        # jsonschema's messages quote the offending value, which may be all of the reply.
        raise StructuredOutputError(
            f"{model}'s JSON does not match '{fmt.name}' at {excerpt(where, 100)}:"
            f" {excerpt(error.message)}",
            text=text,
            model=model,
        )
    return value


@functools.lru_cache(maxsize=256)
def _validator(schema_json: str) -> jsonschema.protocols.Validator:
    # Checking a schema against its metaschema costs far more than validating a reply (tens of
    # milliseconds for a plan schema), so each distinct schema is checked and compiled once.
    schema = json.loads(schema_json)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def _deeper_than(value: JsonValue, limit: int) -> bool:
    """Whether arrays and objects in ``value`` nest more than ``limit`` deep (no recursion)."""
    stack: list[tuple[JsonValue, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        children = (
            item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        )
        if children is None:
            continue
        if depth == limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False
