"""The user classes a topology runs with: model-actor classes, role replacements, agents.

:func:`~cantata.topologies.load_code` turns a topology's import paths into a :class:`Code`.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import ModuleType

from cantata.agents import Agent, ModelActor

__all__ = ["Code"]


@dataclass(frozen=True)
class Code:
    """The user classes a topology runs with.

    ``actor_classes`` maps a model's name to the :class:`~cantata.agents.ModelActor` subclass
    hosting it; ``roles`` maps a built-in role class to its replacement; ``agents`` maps an
    :class:`~cantata.topologies.AgentSpec`'s import path to its :class:`~cantata.agents.Agent`.
    """

    actor_classes: Mapping[str, type[ModelActor]] = field(default_factory=dict)
    roles: Mapping[type, type] = field(default_factory=dict)
    agents: Mapping[str, type[Agent]] = field(default_factory=dict)

    def modules(self) -> list[ModuleType]:
        """The modules the classes come from (to ship them to other processes)."""
        classes: list[type] = [*self.actor_classes.values(), *self.roles.values()]
        classes += self.agents.values()
        names = {cls.__module__ for cls in classes}
        return [sys.modules[name] for name in sorted(names) if name in sys.modules]

    def merged(self, other: Code) -> Code:
        """This code, with ``other``'s entries taking precedence."""
        return Code(
            actor_classes={**self.actor_classes, **other.actor_classes},
            roles={**self.roles, **other.roles},
            agents={**self.agents, **other.agents},
        )
