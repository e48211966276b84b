"""Write an executor: a calculator the planner can hand arithmetic to.

An executor is any member: a model, a topology, or, as here, a backend of your own. The
calculator reads the arithmetic in its step's prompt and evaluates it with a small parser over
Python's AST (numbers and + - * / ** only); it never calls eval, so a plan written by a model
cannot make it run code. SmolLM2-135M-Instruct plans, in a `planner_executor` topology whose
executor types are "calculator" and "writer"; the plan is schema-constrained to those types.

    .venv/bin/python examples/custom_executor.py "What is 17 * 23 + 4?"

prints the plan's steps with each step's result, then the synthesized answer.
"""

from __future__ import annotations

import ast
import asyncio
import operator
import re
import sys
from collections.abc import Callable

from cantata.agents import (
    CustomConfig,
    ModelRequest,
    ModelSpec,
    Resources,
    Usage,
    XLlamaCppConfig,
)
from cantata.agents.backends import Completion, ModelBackend
from cantata.cluster import RayRuntime, connect
from cantata.topologies import PlannerExecutorSpec, PromptTemplate, run_topology

_OPERATORS: dict[type, Callable[[float, float], float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Pow: operator.pow,
}
_EXPRESSION = re.compile(r"[\d.\s()+\-*/]*\d[\d.\s()+\-*/]*")


def evaluate(node: ast.AST) -> float:
    """The value of a parsed arithmetic expression; anything else is refused."""
    if isinstance(node, ast.Expression):
        return evaluate(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
        return float(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -evaluate(node.operand)
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        right = evaluate(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > 64:
            raise ValueError("exponent too large")
        return _OPERATORS[type(node.op)](evaluate(node.left), right)
    raise ValueError(f"not arithmetic: {ast.dump(node)[:40]}")


class Calculator(ModelBackend):
    """Evaluates the longest arithmetic expression in the prompt."""

    async def complete(self, request: ModelRequest) -> Completion:
        prompt = request.messages[-1].content
        candidates = sorted(_EXPRESSION.findall(prompt), key=len, reverse=True)
        for candidate in candidates:
            try:
                value = evaluate(ast.parse(candidate.strip(), mode="eval"))
            except (SyntaxError, ValueError, ZeroDivisionError):
                continue
            text = f"{candidate.strip()} = {value:g}"
            break
        else:
            text = "no arithmetic found in the task"
        return Completion(text=text, usage=Usage(output_tokens=1), model="calculator")


def smollm2(name: str) -> ModelSpec:
    return ModelSpec(
        name=name,
        version="135m-instruct-q4_1",
        backend=XLlamaCppConfig(),
        resources=Resources(num_cpus=0.25),
    )


TOPOLOGY = PlannerExecutorSpec(
    name="plan-with-calculator",
    planner=smollm2("planner"),
    executors={
        "calculator": ModelSpec(
            name="calculator",
            backend=CustomConfig(factory=lambda resources: Calculator()),
            resources=Resources(num_cpus=0.1),
        ),
        "writer": smollm2("writer"),
    },
    instructions=(
        "Break the request into steps. Give arithmetic to the calculator, written as a plain"
        " expression like 12 * 3 + 4; give writing to the writer."
    ),
    prompt=PromptTemplate(system="Do the task in one sentence."),
    max_steps=2,
    plan_max_tokens=200,
    max_tokens=48,
)


def main() -> None:
    request = " ".join(sys.argv[1:]) or "What is 17 * 23 + 4?"
    connection = connect()
    try:
        result = asyncio.run(run_topology(TOPOLOGY, request, RayRuntime()))
    finally:
        connection.close()
    for step in result.steps or ():
        print(f"{step.step_id} [{step.executor}] -> {step.text.strip()}")
    print(f"answer: {result.text.strip()}")


if __name__ == "__main__":
    main()
