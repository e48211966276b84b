"""Plans from a planner model: the JSON schema it must follow, and the checks it must pass.

The schema constrains decoding (unknown executor types cannot even be written where the backend
supports grammars); :func:`validate_plan` checks everything again, because model output is
untrusted: step ids, executor types against the allow-list, dependencies, cycles, size.
"""

from __future__ import annotations

from collections.abc import Collection

from pydantic import JsonValue, ValidationError

from cantata.agents import JsonSchemaFormat, Plan, PlanValidationError

__all__ = ["plan_schema", "validate_plan"]


def plan_schema(executors: Collection[str], max_steps: int) -> JsonSchemaFormat:
    """The JSON schema of a plan for these executor types.

    Step ``k`` must have id ``s<k>`` and may depend only on earlier steps, so a model decoding
    under this schema's grammar writes an acyclic plan with valid references by construction.
    Every plan is still validated, since not every backend constrains decoding.
    """

    def step(position: int) -> dict[str, JsonValue]:
        earlier: list[JsonValue] = [f"s{n}" for n in range(1, position)]
        depends_on: dict[str, JsonValue] = {"const": []}  # the first step depends on nothing
        if earlier:
            depends_on = {
                "type": "array",
                "items": {"type": "string", "enum": earlier},
                "maxItems": len(earlier),
            }
        return {
            "type": "object",
            "properties": {
                "id": {"type": "string", "const": f"s{position}"},
                "executor": {"type": "string", "enum": list(sorted(executors))},
                "prompt": {"type": "string", "minLength": 1, "maxLength": 400},
                "depends_on": depends_on,
            },
            "required": ["id", "executor", "prompt", "depends_on"],
            "additionalProperties": False,
        }

    plans: list[JsonValue] = [
        {
            "type": "array",
            "prefixItems": [step(n) for n in range(1, count + 1)],
            "items": False,
            "minItems": count,
            "maxItems": count,
        }
        for count in range(1, max_steps + 1)
    ]
    return JsonSchemaFormat(
        name="plan",
        json_schema={
            "type": "object",
            "properties": {"steps": {"anyOf": plans}},
            "required": ["steps"],
            "additionalProperties": False,
        },
    )


def validate_plan(data: JsonValue, executors: Collection[str], max_steps: int) -> Plan:
    """A :class:`Plan` from untrusted JSON, or a :class:`PlanValidationError` listing problems."""
    try:
        plan = Plan.model_validate(data)
    except ValidationError as exc:
        malformed = [
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}"
            for err in exc.errors(include_url=False, include_input=False)
        ]
        raise PlanValidationError(
            "the plan is malformed: " + "; ".join(malformed), problems=malformed
        ) from None
    problems: list[str] = []
    if not plan.steps:
        problems.append("the plan has no steps")
    if len(plan.steps) > max_steps:
        problems.append(f"the plan has {len(plan.steps)} steps; at most {max_steps} are allowed")
    ids = [step.id for step in plan.steps]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        problems.append(f"step ids repeat: {duplicates}")
    for step in plan.steps:
        if step.executor not in executors:
            problems.append(
                f"step {step.id}: unknown executor '{step.executor}'"
                f" (known: {', '.join(sorted(executors))})"
            )
        for dependency in step.depends_on:
            if dependency == step.id:
                problems.append(f"step {step.id} depends on itself")
            elif dependency not in ids:
                problems.append(f"step {step.id} depends on unknown step '{dependency}'")
    if not problems:
        cycle = _cycle(plan)
        if cycle:
            problems.append("steps depend on each other in a cycle: " + " -> ".join(cycle))
    if problems:
        raise PlanValidationError(
            "the plan was rejected: " + "; ".join(problems), problems=problems
        )
    return plan


def _cycle(plan: Plan) -> list[str]:
    """One dependency cycle as a list of step ids, or [] if the plan is acyclic."""
    needs = {step.id: step.depends_on for step in plan.steps}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(step_id: str) -> list[str]:
        state[step_id] = 1
        path.append(step_id)
        for dependency in needs[step_id]:
            if state.get(dependency) == 1:
                return [*path[path.index(dependency) :], dependency]
            if dependency not in state and (found := visit(dependency)):
                return found
        path.pop()
        state[step_id] = 2
        return []

    for step_id in needs:
        if step_id not in state and (found := visit(step_id)):
            return found
    return []
