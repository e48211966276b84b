"""Plans from a planner model: the JSON schema it must follow, and the checks it must pass.

The schema constrains decoding (unknown executor types cannot even be written where the backend
supports grammars); :func:`validate_plan` checks everything again, because model output is
untrusted: step ids, executor types against the allow-list, dependencies, cycles, size.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Collection
from typing import Annotated, Any, NoReturn, Union

from pydantic import Field, JsonValue, ValidationError

from cantata.agents import (
    JsonSchemaFormat,
    Plan,
    PlanStep,
    PlanValidationError,
    excerpt,
    narrow,
    one_of,
    output_format,
)

__all__ = ["plan_schema", "plan_type", "validate_plan"]


def plan_schema(executors: Collection[str], max_steps: int) -> JsonSchemaFormat:
    """The JSON schema of a plan for these executor types, derived from :func:`plan_type`.

    Step ``k`` must have id ``s<k>`` and may depend only on earlier steps, so a model decoding
    under this schema's grammar writes an acyclic plan with valid references by construction.
    Every plan is still validated, since not every backend constrains decoding.
    """
    return output_format(plan_type(executors, max_steps), name="plan")


def plan_type(executors: Collection[str], max_steps: int) -> type[Plan]:
    """:class:`~cantata.agents.Plan` narrowed to plans of 1 to ``max_steps`` steps that are
    acyclic by construction: step ``k`` is a :class:`~cantata.agents.PlanStep` with id
    ``s<k>``, one of ``executors``, and dependencies among ``s1`` to ``s<k-1>`` only.
    """
    return _plan_type(tuple(sorted(executors)), max_steps)


@functools.lru_cache(maxsize=64)
def _plan_type(executors: tuple[str, ...], max_steps: int) -> type[Plan]:
    steps = [_step_type(position, executors) for position in range(1, max_steps + 1)]
    # One fixed-length tuple per plan length (prefixItems, one schema per position): that is
    # what lets each position have its own id and its own earlier steps to depend on.
    plans = tuple(
        tuple.__class_getitem__(tuple(steps[:count])) for count in range(1, max_steps + 1)
    )
    return narrow(Plan, steps=Union.__getitem__(plans))


def _step_type(position: int, executors: tuple[str, ...]) -> type[PlanStep]:
    earlier = [f"s{n}" for n in range(1, position)]
    depends_on: Any = (
        Annotated[tuple[one_of(earlier), ...], Field(max_length=len(earlier))]  # type: ignore[misc]
        if earlier
        else tuple[()]  # the first step depends on nothing
    )
    return narrow(
        PlanStep,
        id=one_of([f"s{position}"]),
        executor=one_of(executors),
        depends_on=depends_on,
    )


_LISTED = 10  # problems named in a rejection; the rest are counted


def validate_plan(data: JsonValue, executors: Collection[str], max_steps: int) -> Plan:
    """A :class:`Plan` from untrusted JSON, or a :class:`PlanValidationError` listing problems.

    A plan longer than ``max_steps`` is refused before its steps are read, and a rejection
    names at most ten problems, each quoting at most a short excerpt of the model's text.
    """
    steps = data.get("steps") if isinstance(data, dict) else None
    if isinstance(steps, list) and len(steps) > max_steps:
        _reject([f"the plan has {len(steps)} steps; at most {max_steps} are allowed"])
    try:
        plan = Plan.model_validate(data)
    except ValidationError as exc:
        malformed = [
            excerpt(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}", 200)
            for err in exc.errors(include_url=False, include_input=False)
        ]
        raise PlanValidationError(
            "the plan is malformed: " + "; ".join(_bounded(malformed)),
            problems=_bounded(malformed),
        ) from None
    problems: list[str] = []
    if not plan.steps:
        problems.append("the plan has no steps")
    ids = [step.id for step in plan.steps]
    duplicates = sorted(i for i, count in Counter(ids).items() if count > 1)
    if duplicates:
        problems.append(f"step ids repeat: {excerpt(str(duplicates), 200)}")
    known = set(ids)
    for step in plan.steps:
        if step.executor not in executors:
            problems.append(
                f"step {step.id}: unknown executor '{excerpt(step.executor, 64)}'"
                f" (known: {', '.join(sorted(executors))})"
            )
        for dependency in step.depends_on:
            if dependency == step.id:
                problems.append(f"step {step.id} depends on itself")
            elif dependency not in known:
                problems.append(
                    f"step {step.id} depends on unknown step '{excerpt(dependency, 64)}'"
                )
    if not problems:
        cycle = _cycle(plan)
        if cycle:
            problems.append(
                "steps depend on each other in a cycle: " + excerpt(" -> ".join(cycle), 300)
            )
    if problems:
        _reject(problems)
    return plan


def _bounded(problems: list[str]) -> list[str]:
    if len(problems) <= _LISTED:
        return problems
    return [*problems[:_LISTED], f"and {len(problems) - _LISTED} more"]


def _reject(problems: list[str]) -> NoReturn:
    raise PlanValidationError(
        "the plan was rejected: " + "; ".join(_bounded(problems)), problems=_bounded(problems)
    )


def _cycle(plan: Plan) -> list[str]:
    """One dependency cycle as a list of step ids, or [] if the plan is acyclic.

    Depth first without recursion: ``validate_plan`` takes any ``max_steps``, and a chain of
    a few thousand steps would pass Python's recursion limit.
    """
    needs = {step.id: step.depends_on for step in plan.steps}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for root, root_needs in needs.items():
        if root in state:
            continue
        state[root] = 1
        path = [root]
        pending = [iter(root_needs)]  # per step on the path, the dependencies left to visit
        while pending:
            dependency = next(pending[-1], None)
            if dependency is None:
                state[path.pop()] = 2
                pending.pop()
            elif state.get(dependency) == 1:
                return [*path[path.index(dependency) :], dependency]
            elif dependency not in state:
                state[dependency] = 1
                path.append(dependency)
                pending.append(iter(needs[dependency]))
    return []
