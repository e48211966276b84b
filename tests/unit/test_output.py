"""Typed output: each role's JSON schema is derived from its message, and agrees with it."""

from __future__ import annotations

import json
import time
from typing import Any

import jsonschema
import pytest
from pydantic import BaseModel, Field, ValidationError

from cantata.agents import (
    Assignment,
    Choice,
    Classification,
    JsonSchemaFormat,
    JudgeScore,
    ModelReply,
    Plan,
    PlanStep,
    Review,
    Span,
    StructuredOutputError,
    Usage,
    choice_output,
    choice_type,
    narrow,
    one_of,
    output_format,
    parse_output,
)
from cantata.topologies._plan import plan_schema, plan_type
from cantata.topologies._router import classification_type
from cantata.topologies._supervisor import assignments_type
from cantata.topologies._weighted import judge_score_type

WORKERS = ["checker", "writer"]
LABELS = ["refund", "shipping", "other"]
EXECUTORS = {"llm", "web"}


def a_reply(structured: Any, text: str | None = None) -> ModelReply:
    now = time.time()
    return ModelReply(
        request_id="r1",
        text=json.dumps(structured) if text is None else text,
        structured=structured,
        model="m",
        model_version="1",
        usage=Usage(),
        latency_ms=1.0,
        finish_reason="stop",
        span=Span(trace_id="t", agent="m", start=now, end=now, latency_ms=0.0),
    )


def role_outputs() -> dict[str, tuple[type[BaseModel], JsonSchemaFormat]]:
    """Every role's output type and the schema its requests carry."""
    assignments = assignments_type(WORKERS)
    classification = classification_type(LABELS)
    score = judge_score_type(10)
    choice = choice_type(["yes", "no"])
    plan = plan_type(EXECUTORS, 3)
    return {
        "assignments": (assignments, output_format(assignments, name="assignments")),
        "review": (Review, output_format(Review, name="review")),
        "route": (classification, output_format(classification, name="route")),
        "score": (score, output_format(score, name="score")),
        "choice": (choice, choice_output(["yes", "no"])),
        "plan": (plan, plan_schema(EXECUTORS, 3)),
    }


def step(n: int, *depends_on: int, executor: str = "llm", prompt: str = "do it") -> dict[str, Any]:
    return {
        "id": f"s{n}",
        "executor": executor,
        "prompt": prompt,
        "depends_on": [f"s{d}" for d in depends_on],
    }


# Per role: values the message type and its schema must both accept, and both reject.
SAMPLES: dict[str, tuple[list[Any], list[Any]]] = {
    "assignments": (
        [
            {"assignments": [{"worker": "writer", "task": "draft it"}]},
            {"assignments": [{"worker": "checker", "task": "x" * 400}] * 4},
        ],
        [
            {"assignments": []},
            {"assignments": [{"worker": "intern", "task": "coffee"}]},
            {"assignments": [{"worker": "writer", "task": "x" * 401}]},
            {"assignments": [{"worker": "writer", "task": ""}]},
            {"assignments": [{"worker": "writer", "task": "t"}] * 5},
            {"assignments": [{"worker": "writer", "task": "t", "priority": 1}]},
        ],
    ),
    "review": (
        [
            {"approved": True, "feedback": "", "answer": "a" * 600},
            {"approved": False, "feedback": "f" * 300, "answer": ""},
        ],
        [
            {"approved": True, "feedback": "", "answer": "a" * 601},
            {"approved": False, "feedback": "f" * 301, "answer": ""},
            {"approved": "maybe", "feedback": "", "answer": ""},
            {"approved": True, "feedback": "", "answer": "", "mood": "happy"},
        ],
    ),
    "route": (
        [{"label": "refund", "confidence": 0.9}, {"label": "other", "confidence": 1}],
        [
            {"label": "nope", "confidence": 0.5},
            {"label": "refund", "confidence": 7},
            {"label": "refund", "confidence": -0.1},
        ],
    ),
    "score": (
        [{"score": 0}, {"score": 10}],
        [{"score": 11}, {"score": -1}, {"score": "ten"}],
    ),
    "choice": (
        [{"choice": "yes"}, {"choice": "no"}],
        [{"choice": "maybe"}, {}],
    ),
    "plan": (
        [
            {"steps": [step(1)]},
            {"steps": [step(1, executor="web"), step(2), step(3, 1, 2, prompt="p" * 400)]},
        ],
        [
            {"steps": []},
            {"steps": [step(1), step(2), step(3), step(4)]},
            {"steps": [step(1, executor="shell")]},
            {"steps": [step(1, prompt="p" * 401)]},
            {"steps": [step(1, 2), step(2)]},  # a forward reference
            {"steps": [step(1), step(2, 2)]},  # a step depending on itself
            {"steps": [step(2)]},  # ids are numbered from s1
        ],
    ),
}


def valid_under_type(message_type: type[BaseModel], value: Any) -> bool:
    try:
        message_type.model_validate(value)
    except ValidationError:
        return False
    return True


def valid_under_schema(fmt: JsonSchemaFormat, value: Any) -> bool:
    return jsonschema.Draft202012Validator(fmt.json_schema).is_valid(value)


def subschemas(node: Any) -> list[dict[str, Any]]:
    """Every schema object inside ``node`` (property names are not schemas)."""
    if isinstance(node, list):
        return [found for item in node for found in subschemas(item)]
    if not isinstance(node, dict):
        return []
    found = [node]
    for key, value in node.items():
        if key == "properties":
            found += [s for schema in value.values() for s in subschemas(schema)]
        elif key not in ("enum", "const"):
            found += subschemas(value)
    return found


# ------------------------------------------------------------------ agreement per role


@pytest.mark.parametrize("role", sorted(SAMPLES))
def test_each_role_schema_agrees_with_its_message_type(role):
    message_type, fmt = role_outputs()[role]
    jsonschema.Draft202012Validator.check_schema(fmt.json_schema)
    good, bad = SAMPLES[role]
    for value in good:
        assert valid_under_type(message_type, value), value
        assert valid_under_schema(fmt, value), value
    for value in bad:
        assert not valid_under_type(message_type, value), value
        assert not valid_under_schema(fmt, value), value


@pytest.mark.parametrize("role", sorted(SAMPLES))
def test_each_role_schema_is_strict(role):
    _, fmt = role_outputs()[role]
    assert "$defs" not in fmt.json_schema
    for schema in subschemas(fmt.json_schema):
        assert not {"$ref", "title", "default"} & schema.keys(), schema
        if "properties" in schema:
            assert schema["required"] == list(schema["properties"])
            assert schema["additionalProperties"] is False
            assert "kind" not in schema["properties"]


@pytest.mark.parametrize("role", sorted(SAMPLES))
def test_parse_output_rejects_what_the_schema_rejects(role):
    message_type, _ = role_outputs()[role]
    good, bad = SAMPLES[role]
    for value in good:
        assert isinstance(parse_output(message_type, a_reply(value)), message_type)
    for value in bad:
        with pytest.raises(StructuredOutputError) as caught:
            parse_output(message_type, a_reply(value))
        assert caught.value.text == json.dumps(value)
        assert caught.value.model == "m"


# ------------------------------------------------------------------ bounds carry over


def test_the_message_bounds_are_the_schema_bounds():
    review = output_format(Review, name="review").json_schema["properties"]
    assert isinstance(review, dict)
    assert review["feedback"] == {"type": "string", "maxLength": 300}
    assert review["answer"] == {"type": "string", "maxLength": 600}

    assignments = output_format(assignments_type(WORKERS), name="assignments").json_schema
    listing = assignments["properties"]["assignments"]  # type: ignore[call-overload,index]
    assert listing["minItems"] == 1
    assert listing["maxItems"] == 2 * len(WORKERS)
    assert listing["items"]["properties"] == {
        "worker": {"type": "string", "enum": WORKERS},
        "task": {"type": "string", "minLength": 1, "maxLength": 400},
    }
    task = Assignment.model_fields["task"].metadata
    assert {type(m).__name__: m for m in task}["MaxLen"].max_length == 400


def test_ranges_and_enums_carry_over():
    route = output_format(classification_type(LABELS), name="route").json_schema["properties"]
    assert route == {
        "label": {"type": "string", "enum": LABELS},
        "confidence": {"type": "number", "minimum": 0.0, "maximum": 1.0},
    }
    score = output_format(judge_score_type(4), name="score").json_schema["properties"]
    assert score == {"score": {"type": "integer", "enum": [0, 1, 2, 3, 4]}}
    choice = choice_output(["b", "a", "b"]).json_schema
    assert choice == {
        "type": "object",
        "properties": {"choice": {"type": "string", "enum": ["b", "a"]}},
        "required": ["choice"],
        "additionalProperties": False,
    }


def test_the_unnarrowed_messages_keep_their_own_bounds():
    assert output_format(Classification, name="route").json_schema["properties"] == {
        "label": {"type": "string", "minLength": 1, "maxLength": 64},
        "confidence": {"type": "number", "minimum": 0.0, "maximum": 1.0},
    }
    assert output_format(JudgeScore, name="score").json_schema["properties"] == {
        "score": {"type": "integer", "minimum": 0}
    }


def test_field_descriptions_stay_and_model_docstrings_go():
    class Answer(BaseModel):
        """Written for people reading the code."""

        text: str = "x"

    class Described(BaseModel):
        """Also for people."""

        answer: Answer = Field(description="The answer to give.")

    schema = output_format(Described, name="described").json_schema
    assert "description" not in schema
    assert schema["properties"] == {
        "answer": {
            "type": "object",
            "description": "The answer to give.",
            "properties": {"text": {"type": "string"}},
            "required": ["text"],
            "additionalProperties": False,
        }
    }


# ------------------------------------------------------------------ plans


def test_the_plan_schema_writes_acyclic_plans_by_construction():
    fmt = plan_schema(EXECUTORS, 3)
    plans = fmt.json_schema["properties"]["steps"]["anyOf"]  # type: ignore[call-overload,index]
    assert [len(p["prefixItems"]) for p in plans] == [1, 2, 3]
    longest = plans[-1]["prefixItems"]
    assert [s["properties"]["id"] for s in longest] == [
        {"type": "string", "const": f"s{n}"} for n in (1, 2, 3)
    ]
    # The first step depends on nothing, said so that llama.cpp's grammar can only write [].
    assert longest[0]["properties"]["depends_on"] == {"type": "array", "const": []}
    assert longest[2]["properties"]["depends_on"]["items"]["enum"] == ["s1", "s2"]
    assert longest[2]["properties"]["executor"]["enum"] == ["llm", "web"]
    assert longest[2]["properties"]["prompt"]["maxLength"] == 400


def test_a_parsed_plan_is_a_plan_of_plan_steps():
    value = {"steps": [step(1), step(2, 1, executor="web")]}
    plan = parse_output(plan_type(EXECUTORS, 2), a_reply(value))
    assert isinstance(plan, Plan)
    assert all(isinstance(s, PlanStep) for s in plan.steps)
    assert plan.steps[1].depends_on == ("s1",)
    assert plan.kind == "plan"


def test_the_plan_schema_is_a_llama_cpp_grammar():
    gbnf = pytest.importorskip("llama_cpp.llama_grammar").json_schema_to_gbnf
    grammar = gbnf(json.dumps(plan_schema(EXECUTORS, 2).json_schema))
    assert '"\\"s2\\""' in grammar
    assert '::= "[]"' in grammar  # the first step's dependencies


# ------------------------------------------------------------------ the API itself


def test_parse_output_errors_are_bounded_and_name_no_values():
    value = {"assignments": [{"worker": "intern", "task": "s" * 5000}] * 50}
    with pytest.raises(StructuredOutputError) as caught:
        parse_output(assignments_type(WORKERS), a_reply(value))
    message = str(caught.value)
    assert len(message) < 700
    assert "sss" not in message
    assert "more" in message


def test_parse_output_needs_structured_output():
    with pytest.raises(StructuredOutputError, match="no structured output"):
        parse_output(Review, a_reply(None, text="I approve."))


def test_narrow_keeps_the_message_type_and_its_other_fields():
    narrowed = narrow(Assignment, worker=one_of(["writer"]))
    assignment = narrowed.model_validate({"worker": "writer", "task": "t"})
    assert isinstance(assignment, Assignment)
    assert assignment.kind == "assignment"
    with pytest.raises(ValidationError):
        narrowed.model_validate({"worker": "writer", "task": "t" * 401})
    with pytest.raises(TypeError, match="no field"):
        narrow(Assignment, owner=str)


def test_one_of_needs_values_and_keeps_their_order():
    with pytest.raises(ValueError, match="at least one"):
        one_of([])
    assert choice_type(["b", "a"]).model_validate({"choice": "a"}).choice == "a"
    assert issubclass(choice_type(["b", "a"]), Choice)
    assert choice_type(["b", "a"]) is choice_type(("b", "a"))


def test_a_recursive_type_has_no_output_format():
    class Node(BaseModel):
        children: list[Node]

    with pytest.raises(TypeError, match="cannot inline"):
        output_format(Node, name="tree")
