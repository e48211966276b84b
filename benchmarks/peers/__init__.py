"""The systems compare.py runs W1-W4 on, one module each, loaded only when asked for.

Importing a peer imports its framework, so a missing optional package (the ``bench`` extra)
fails only that peer's :func:`load`, with :class:`MissingPackageError` naming it.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass

from .common import Peer


@dataclass(frozen=True)
class System:
    module: str  # in this package
    cls: str
    package: str | None = None  # the distribution it needs beyond Cantata's own dependencies
    imports: str | None = None  # ... and the module that distribution provides
    ray: bool = False  # needs compare.py's Ray connection


# The floor first; compare.py rotates this order from one repeat to the next.
SYSTEMS: dict[str, System] = {
    "asyncio": System("asyncio_peer", "PlainAsyncio"),
    "ray": System("ray_peer", "RawRay", ray=True),
    "autogen": System("autogen_peer", "AutogenCore", "autogen-core", "autogen_core"),
    "langgraph": System("langgraph_peer", "LangGraph", "langgraph", "langgraph"),
    "cantata": System("cantata_peer", "Cantata"),
    "cantata-ray": System("cantata_peer", "CantataOnRay", ray=True),
}

FLOOR = "asyncio"


class MissingPackageError(ImportError):
    """A peer's framework is not installed."""


def load(name: str) -> Peer:
    """A new peer of the system ``name`` (a key of :data:`SYSTEMS`)."""
    system = SYSTEMS[name]
    if system.imports is not None and importlib.util.find_spec(system.imports) is None:
        raise MissingPackageError(system.package)
    module = importlib.import_module(f".{system.module}", __name__)
    peer: Peer = getattr(module, system.cls)()
    return peer
