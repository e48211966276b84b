"""How agents are composed: topology specs (Python or YAML), the patterns, and running them.

Topologies reach models only through the :class:`Runtime` interface, so the same spec runs
in-process (:class:`InProcessRuntime`) or on Ray (``cantata.cluster.RayRuntime``). Role agents
(:class:`EmbeddingRouter`, :class:`ModelRouter`, :class:`Planner`, :class:`Supervisor`,
:class:`Voter`, :class:`Judge`) are plain classes with documented methods to subclass.
"""

from ._context import RequestContext
from ._dispatch import PatternRunner, register, run_pattern
from ._grouping import AnswerGroup, cosine, group_answers, normalize
from ._outcome import Outcome
from ._plan import plan_schema, validate_plan
from ._planner import Planner
from ._prompt import PromptTemplate
from ._result import RunResult
from ._router import EmbeddingRouter, ModelRouter
from ._run import answer, run_topology
from ._runtime import InProcessRuntime, LocalModelHandle, ModelHandle, Runtime
from ._spec import (
    ConsensusSpec,
    EmbeddingClassifier,
    FanoutSpec,
    Grouping,
    JudgeSpec,
    Label,
    Member,
    ModelClassifier,
    ParallelSpec,
    PipelineSpec,
    Placement,
    PlannerExecutorSpec,
    RouterSpec,
    SingleSpec,
    Stage,
    SupervisorWorkerSpec,
    TopologySpec,
    VoteSpec,
    WeightedEnsembleSpec,
    WeightedMember,
    WorkerRole,
    load_topology,
    member_name,
    parse_topology,
)
from ._supervisor import Supervisor
from ._vote import Voter
from ._weighted import Judge

__all__ = [
    "AnswerGroup",
    "ConsensusSpec",
    "EmbeddingClassifier",
    "EmbeddingRouter",
    "FanoutSpec",
    "Grouping",
    "InProcessRuntime",
    "Judge",
    "JudgeSpec",
    "Label",
    "LocalModelHandle",
    "Member",
    "ModelClassifier",
    "ModelHandle",
    "ModelRouter",
    "Outcome",
    "ParallelSpec",
    "PatternRunner",
    "PipelineSpec",
    "Placement",
    "Planner",
    "PlannerExecutorSpec",
    "PromptTemplate",
    "RequestContext",
    "RouterSpec",
    "RunResult",
    "Runtime",
    "SingleSpec",
    "Stage",
    "Supervisor",
    "SupervisorWorkerSpec",
    "TopologySpec",
    "VoteSpec",
    "Voter",
    "WeightedEnsembleSpec",
    "WeightedMember",
    "WorkerRole",
    "answer",
    "cosine",
    "group_answers",
    "load_topology",
    "member_name",
    "normalize",
    "parse_topology",
    "plan_schema",
    "register",
    "run_pattern",
    "run_topology",
    "validate_plan",
]
