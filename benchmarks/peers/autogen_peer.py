"""autogen-core: one RoutedAgent per model and an orchestrating agent, on the single-threaded
runtime (``SingleThreadedAgentRuntime``, autogen-core's in-process runtime).

Each model is a ``ModelAgent`` answering a ``Prompt`` with a ``Reply``; the driver sends the
workload's ``Question`` to an orchestrator with ``runtime.send_message`` (W1: straight to the
model agent). The vote orchestrator sends the prompt to the three voters at once and counts the
replies; the planner-executor one asks the planner for a plan, sends its four steps to the
executor agent at once, then asks the planner for the synthesis. The runtime handles each
message in a task of its own, so one agent serves concurrent messages, as a Ray actor does.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial

from autogen_core import (
    AgentId,
    MessageContext,
    RoutedAgent,
    SingleThreadedAgentRuntime,
    message_handler,
)

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


@dataclass
class Prompt:
    text: str
    structured: bool = False


@dataclass
class Reply:
    text: str


@dataclass
class Question:
    text: str


@dataclass
class Answer:
    text: str


class ModelAgent(RoutedAgent):
    """One simulated model."""

    def __init__(self, model: Model) -> None:
        super().__init__("a simulated model")
        self._model = model

    @message_handler
    async def on_prompt(self, message: Prompt, ctx: MessageContext) -> Reply:
        return Reply(await self._model(message.text, structured=message.structured))


class VoteAgent(RoutedAgent):
    """Fans a question out to every voter and answers with the majority's reply."""

    def __init__(self, voters: Sequence[str]) -> None:
        super().__init__("fan-out and majority vote")
        self._voters = [AgentId(voter, "default") for voter in voters]

    @message_handler
    async def on_question(self, message: Question, ctx: MessageContext) -> Answer:
        token = ctx.cancellation_token
        replies = await asyncio.gather(
            *(
                self.send_message(Prompt(message.text), voter, cancellation_token=token)
                for voter in self._voters
            )
        )
        return Answer(majority([reply.text for reply in replies]))


class PlanExecuteAgent(RoutedAgent):
    """Asks the planner for steps, runs them on the executor in parallel, asks for a synthesis."""

    def __init__(self) -> None:
        super().__init__("planner -> executors -> synthesis")
        self._planner = AgentId("planner", "default")
        self._executor = AgentId("exec", "default")

    @message_handler
    async def on_question(self, message: Question, ctx: MessageContext) -> Answer:
        token = ctx.cancellation_token
        plan = await self.send_message(
            Prompt(message.text, structured=True), self._planner, cancellation_token=token
        )
        results = await asyncio.gather(
            *(
                self.send_message(Prompt(step), self._executor, cancellation_token=token)
                for step in plan_steps(plan.text)
            )
        )
        synthesis = await self.send_message(
            Prompt(synthesis_prompt(message.text, [result.text for result in results])),
            self._planner,
            cancellation_token=token,
        )
        return Answer(synthesis.text)


MODELS: Mapping[Topology, Mapping[str, Model]] = {
    "single": {"zero": ZERO},
    "vote": VOTERS,
    "plan": {"planner": PLANNER, "exec": EXECUTOR},
}


class AutogenCore(ServedPeer):
    label = "autogen-core"

    @asynccontextmanager
    async def serve(self, topology: Topology) -> AsyncIterator[Ask]:
        runtime = SingleThreadedAgentRuntime()
        for name, model in MODELS[topology].items():
            await ModelAgent.register(runtime, name, partial(ModelAgent, model))
        if topology == "vote":
            await VoteAgent.register(runtime, "vote", partial(VoteAgent, list(VOTERS)))
        elif topology == "plan":
            await PlanExecuteAgent.register(runtime, "plan", PlanExecuteAgent)
        runtime.start()
        try:
            # W1 asks the model agent itself; W2-W4 ask their orchestrating agent.
            single = topology == "single"
            recipient = AgentId("zero" if single else topology, "default")

            async def ask() -> str:
                message = Prompt("q") if single else Question("q")
                reply: Reply | Answer = await runtime.send_message(message, recipient)
                return reply.text

            yield ask
        finally:
            await runtime.close()
