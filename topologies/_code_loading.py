"""Import the user code a topology names: ``module:Class`` or ``file.py:Class`` paths.

Code is imported once, where the topology is loaded, and checked: a path that does not import,
or a class that does not subclass what its place needs, is a
:class:`~cantata.agents.TopologySpecError` naming both. The classes then travel with the
topology (in a :class:`~cantata.topologies.Code`) to wherever it runs.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

from cantata.agents import Agent, ModelActor, TopologySpecError

from ._code import Code
from ._planner import Planner
from ._router import EmbeddingRouter, ModelRouter
from ._spec import AgentSpec, TopologySpec
from ._supervisor import Supervisor
from ._vote import Voter
from ._weighted import Judge

__all__ = ["import_object", "load_code", "role_classes"]


def role_classes() -> dict[str, type]:
    """The built-in role classes a topology may replace, by name."""
    return {
        cls.__name__: cls
        for cls in (EmbeddingRouter, Judge, ModelRouter, Planner, Supervisor, Voter)
    }


@contextmanager
def _searching(base_dir: Path | None) -> Iterator[None]:
    if base_dir is None:
        yield
        return
    folder = str(base_dir.resolve())
    sys.path.insert(0, folder)
    try:
        yield
    finally:
        if folder in sys.path:
            sys.path.remove(folder)


def _load_file(path: Path) -> ModuleType:
    name = f"cantata_user_code.{path.stem}_{abs(hash(str(path.resolve()))):x}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def import_object(path: str, base_dir: Path | None = None) -> object:
    """The object an import path names; a :class:`TopologySpecError` when it cannot be had."""
    where, _, attribute = path.partition(":")
    if not where or not attribute:
        raise TopologySpecError(f"'{path}' is not an import path (module:Class or file.py:Class)")
    try:
        if where.endswith(".py"):
            file = Path(where) if base_dir is None else base_dir / where
            if not file.is_file():
                raise TopologySpecError(f"'{path}': no file {file}")
            module = _load_file(file)
        else:
            with _searching(base_dir):
                module = importlib.import_module(where)
    except TopologySpecError:
        raise
    except Exception as exc:  # the user's module failed: say so, with its own error
        raise TopologySpecError(
            f"'{path}' does not import: {type(exc).__name__}: {exc}"[:500]
        ) from None
    found: object = module
    for part in attribute.split("."):
        if not hasattr(found, part):
            raise TopologySpecError(f"'{path}': {where} has no attribute '{attribute}'")
        found = getattr(found, part)
    return found


def _subclass(path: str, base: type, base_dir: Path | None, place: str) -> type:
    found = import_object(path, base_dir)
    if not (isinstance(found, type) and issubclass(found, base)):
        raise TopologySpecError(f"{place}: '{path}' is not a subclass of {base.__name__}")
    return found


def load_code(spec: TopologySpec, base_dir: Path | None = None) -> Code:
    """Import every class ``spec`` names, relative to ``base_dir`` (the topology's folder)."""
    models = {model.name for model in spec.models()}
    actor_classes: dict[str, type[ModelActor]] = {}
    for model, path in spec.actor_classes.items():
        if model not in models:
            raise TopologySpecError(
                f"actor_classes names '{model}', which is not a model of '{spec.name}'"
                f" (models: {', '.join(sorted(models))})"
            )
        actor_classes[model] = _subclass(path, ModelActor, base_dir, f"actor_classes.{model}")
    builtin = role_classes()
    roles: dict[type, type] = {}
    for role, path in spec.roles.items():
        if role not in builtin:
            raise TopologySpecError(
                f"roles names '{role}', which is not a role (roles: {', '.join(sorted(builtin))})"
            )
        roles[builtin[role]] = _subclass(path, builtin[role], base_dir, f"roles.{role}")
    agents: dict[str, type[Agent]] = {}
    for node in spec.nodes():
        if isinstance(node, AgentSpec) and node.agent not in agents:
            agents[node.agent] = _subclass(node.agent, Agent, base_dir, f"{node.name}.agent")
    return Code(actor_classes=actor_classes, roles=roles, agents=agents)
