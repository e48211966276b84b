"""How agents are composed: topology specs (Python or YAML), the patterns, and running them.

Topologies reach models only through the :class:`Runtime` interface, so the same spec runs
in-process (:class:`InProcessRuntime`) or on Ray (``cantata.cluster.RayRuntime``).
"""

from ._context import RequestContext
from ._outcome import Outcome
from ._prompt import PromptTemplate
from ._result import RunResult
from ._run import answer, run_topology
from ._runtime import InProcessRuntime, LocalModelHandle, ModelHandle, Runtime
from ._spec import SingleSpec, TopologySpec, load_topology, parse_topology

__all__ = [
    "InProcessRuntime",
    "LocalModelHandle",
    "ModelHandle",
    "Outcome",
    "PromptTemplate",
    "RequestContext",
    "RunResult",
    "Runtime",
    "SingleSpec",
    "TopologySpec",
    "answer",
    "load_topology",
    "parse_topology",
    "run_topology",
]
