"""LangGraph: one compiled ``StateGraph`` per topology, each request one ``ainvoke``.

W1 is START -> model -> END. W2 has one node per voter, all three branching from START so they
run in the same superstep, joined into a vote node that waits for all of them; their replies
meet in a list channel with an ``operator.add`` reducer. W3 is a plan node whose conditional
edge returns one ``Send`` per step of the plan (the map-reduce pattern of LangGraph's docs), an
execute node run once per step in parallel, and a synthesis node after them. No checkpointer:
nothing persists between requests, as in the other peers.
"""

from __future__ import annotations

import operator
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any, TypedDict

from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Send

from .common import (
    EXECUTOR,
    PLANNER,
    VOTERS,
    ZERO,
    Ask,
    Model,
    ServedPeer,
    Topology,
    majority,
    plan_steps,
    synthesis_prompt,
)


class SingleState(TypedDict, total=False):
    question: str
    answer: str


class VoteState(TypedDict, total=False):
    question: str
    replies: Annotated[list[str], operator.add]  # one reply appended per voter branch
    answer: str


class PlanState(TypedDict, total=False):
    question: str
    steps: list[str]
    results: Annotated[list[str], operator.add]  # one result appended per executed step
    answer: str


class StepState(TypedDict):
    prompt: str


async def model_node(state: SingleState) -> SingleState:
    return {"answer": await ZERO(state["question"])}


def voter_node(model: Model) -> Callable[[VoteState], Awaitable[VoteState]]:
    async def node(state: VoteState) -> VoteState:
        return {"replies": [await model(state["question"])]}

    return node


async def vote_node(state: VoteState) -> VoteState:
    return {"answer": majority(state["replies"])}


async def plan_node(state: PlanState) -> PlanState:
    return {"steps": plan_steps(await PLANNER(state["question"], structured=True))}


def dispatch(state: PlanState) -> list[Send]:
    return [Send("execute", {"prompt": step}) for step in state["steps"]]


async def execute_node(state: StepState) -> PlanState:
    return {"results": [await EXECUTOR(state["prompt"])]}


async def synthesize_node(state: PlanState) -> PlanState:
    return {"answer": await PLANNER(synthesis_prompt(state["question"], state["results"]))}


def build(topology: Topology) -> CompiledStateGraph[Any, Any, Any, Any]:
    """The compiled graph of ``topology``."""
    if topology == "single":
        single = StateGraph(SingleState)
        single.add_node("model", model_node)
        single.add_edge(START, "model")
        single.add_edge("model", END)
        return single.compile()
    if topology == "vote":
        vote = StateGraph(VoteState)
        for name, model in VOTERS.items():
            vote.add_node(name, voter_node(model))
            vote.add_edge(START, name)
        vote.add_node("vote", vote_node)
        vote.add_edge(list(VOTERS), "vote")  # waits for every voter
        vote.add_edge("vote", END)
        return vote.compile()
    plan = StateGraph(PlanState)
    plan.add_node("plan", plan_node)
    plan.add_node("execute", execute_node)
    plan.add_node("synthesize", synthesize_node)
    plan.add_edge(START, "plan")
    plan.add_conditional_edges("plan", dispatch, ["execute"])
    plan.add_edge("execute", "synthesize")
    plan.add_edge("synthesize", END)
    return plan.compile()


class LangGraph(ServedPeer):
    label = "LangGraph"

    @asynccontextmanager
    async def serve(self, topology: Topology) -> AsyncIterator[Ask]:
        graph = build(topology)

        async def ask() -> str:
            state = await graph.ainvoke({"question": "q"})
            return str(state["answer"])

        yield ask
