"""Parse and check structured model output against the JSON schema the request asked for."""

from __future__ import annotations

import json

import jsonschema
from pydantic import JsonValue

from ._errors import StructuredOutputError
from ._messages import JsonSchemaFormat

__all__ = ["parse_structured"]


def parse_structured(text: str, fmt: JsonSchemaFormat, *, model: str) -> JsonValue:
    """The JSON value in ``text``, checked against ``fmt``; never eval'd, never trusted."""
    try:
        value: JsonValue = json.loads(text)
    except json.JSONDecodeError as exc:
        raise StructuredOutputError(
            f"{model} did not answer with JSON for '{fmt.name}': {exc.msg} at char {exc.pos}",
            text=text,
            model=model,
        ) from None
    try:
        jsonschema.validate(value, fmt.json_schema)
    except jsonschema.ValidationError as exc:
        where = "/".join(str(part) for part in exc.absolute_path) or "<root>"
        raise StructuredOutputError(
            f"{model}'s JSON does not match '{fmt.name}' at {where}: {exc.message}",
            text=text,
            model=model,
        ) from None
    except jsonschema.SchemaError as exc:
        raise StructuredOutputError(
            f"the schema '{fmt.name}' is itself invalid: {exc.message}", text=text, model=model
        ) from None
    return value
