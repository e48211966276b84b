"""The small interface topologies use to reach models, and an in-process implementation.

A topology never imports Ray. It asks a :class:`Runtime` to start its models and gets back a
:class:`ModelHandle` per model; ``cantata.cluster.RayRuntime`` implements both with Ray actors,
:class:`InProcessRuntime` hosts :class:`~cantata.agents.ModelActor` objects in this process (fast
tests, notebooks, the function backend).
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from cantata.agents import (
    EmbedReply,
    EmbedRequest,
    Health,
    ModelActor,
    ModelReply,
    ModelRequest,
    ModelSpec,
    Task,
)

from ._code import Code
from ._result import RunResult
from ._spec import TopologySpec

__all__ = [
    "AgentHandle",
    "InProcessRuntime",
    "LocalModelHandle",
    "ModelHandle",
    "Runtime",
    "Started",
]


class ModelHandle(abc.ABC):
    """A way to call one started model, wherever it runs."""

    spec: ModelSpec

    @property
    def name(self) -> str:
        """The model's name in its topology."""
        return self.spec.name

    @abc.abstractmethod
    async def complete(self, request: ModelRequest) -> ModelReply:
        """Send a chat request; raises Cantata's typed errors."""

    @abc.abstractmethod
    async def embed(self, request: EmbedRequest) -> EmbedReply:
        """Send an embedding request; raises Cantata's typed errors."""

    @abc.abstractmethod
    async def health(self) -> Health:
        """The replica's health report."""


class AgentHandle(abc.ABC):
    """A way to reach a node of a topology hosted as an actor of its own."""

    name: str

    @abc.abstractmethod
    async def run(self, task: Task) -> RunResult:
        """Run the node on ``task``, continuing its trace, deadline and budget."""


@dataclass
class Started:
    """What a runtime started for one topology: its models, and its nodes hosted as actors."""

    models: dict[str, ModelHandle]
    agents: dict[str, AgentHandle] = field(default_factory=dict)


class Runtime(abc.ABC):
    """Starts and stops the models (and hosted nodes) a topology needs."""

    async def start(self, spec: TopologySpec, code: Code) -> Started:
        """Start everything ``spec`` needs; hosted nodes run inline unless a runtime hosts them."""
        return Started(models=await self.start_models(spec.models()))

    async def stop(self, started: Started) -> None:
        """Stop what :meth:`start` started."""
        await self.stop_models(list(started.models.values()))

    @abc.abstractmethod
    async def start_models(self, specs: Sequence[ModelSpec]) -> dict[str, ModelHandle]:
        """Start every model, or none: on failure, what started is stopped before raising."""

    @abc.abstractmethod
    async def stop_models(self, handles: Sequence[ModelHandle]) -> None:
        """Stop the given models and free their reservations."""


class LocalModelHandle(ModelHandle):
    """Calls a :class:`~cantata.agents.ModelActor` in this process."""

    def __init__(self, actor: ModelActor) -> None:
        self.actor = actor
        self.spec = actor.spec

    async def complete(self, request: ModelRequest) -> ModelReply:
        return await self.actor.complete(request)

    async def embed(self, request: EmbedRequest) -> EmbedReply:
        return await self.actor.embed(request)

    async def health(self) -> Health:
        return await self.actor.health()


class InProcessRuntime(Runtime):
    """Hosts every model in this process and event loop. Reservations are not enforced, and
    nodes that ask for an actor of their own run inline."""

    async def start(self, spec: TopologySpec, code: Code) -> Started:
        return Started(models=await self._start(spec.models(), code.actor_classes))

    async def start_models(self, specs: Sequence[ModelSpec]) -> dict[str, ModelHandle]:
        return await self._start(specs, {})

    async def _start(
        self, specs: Sequence[ModelSpec], classes: Mapping[str, type[ModelActor]]
    ) -> dict[str, ModelHandle]:
        handles: dict[str, ModelHandle] = {}
        try:
            for spec in specs:
                actor = classes.get(spec.name, ModelActor)(spec)
                await actor.start()
                handles[spec.name] = LocalModelHandle(actor)
        except BaseException:
            await self.stop_models(list(handles.values()))
            raise
        return handles

    async def stop_models(self, handles: Sequence[ModelHandle]) -> None:
        for handle in handles:
            if isinstance(handle, LocalModelHandle):
                await handle.actor.close()
