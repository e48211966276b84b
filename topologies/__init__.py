"""How agents are composed: topology specs (Python or YAML), the patterns, and running them.

Topologies reach models only through the :class:`Runtime` interface, so the same spec runs
in-process (:class:`InProcessRuntime`) or on Ray (``cantata.cluster.RayRuntime``). Role agents
(:class:`EmbeddingRouter`, :class:`ModelRouter`, :class:`Planner`, :class:`Supervisor`,
:class:`Voter`, :class:`Judge`) are :class:`~cantata.agents.Agent` subclasses: a pattern sends
one a typed request (``TallyRequest``, ``PlanRequest``, ...) and gets a typed reply, and its
handlers call documented methods (``Voter.decide``, ``Planner.plan``, ...) for subclasses to
override.
:func:`run_evaluation` and :func:`build_report` grade a topology on a labelled dataset
(``cantata eval``).
"""

from ._call_options import CallOptions
from ._code import Code
from ._code_loading import load_code
from ._context import RequestContext
from ._eval_compare import Comparison, Delta, GateResult, Gates, check_gates, compare, load_gates
from ._eval_dataset import Dataset, DatasetError, Example, load_dataset, parse_dataset
from ._eval_metrics import (
    ConfusionMatrix,
    LatencyStats,
    ThresholdFit,
    percentile,
)
from ._eval_report import (
    DEFAULT_SIMILARITY_THRESHOLD,
    AnswerReport,
    CostReport,
    EnsembleReport,
    EvalReport,
    FailureReport,
    Mistake,
    ModelReport,
    RoutingReport,
    build_report,
)
from ._evaluation import (
    DEFAULT_CONCURRENCY,
    CaseResult,
    ModelCall,
    check_dataset,
    default_embedder,
    evaluate,
    run_evaluation,
)
from ._grouping import AnswerGroup, cosine, normalize
from ._outcome import Outcome
from ._plan import validate_plan
from ._planner import Planner
from ._prompt import PromptTemplate
from ._result import RunResult
from ._router import EmbeddingRouter, ModelRouter
from ._run import answer, answer_task, run_topology
from ._runtime import (
    AgentHandle,
    InProcessRuntime,
    ModelHandle,
    Runtime,
    Started,
)
from ._spec import (
    AgentSpec,
    ConsensusSpec,
    Coordinator,
    DeploymentBudget,
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
    hosted_nodes,
    load_topology,
    parse_topology,
)
from ._supervisor import Supervisor
from ._vote import Voter
from ._weighted import Judge

__all__ = [
    "DEFAULT_CONCURRENCY",
    "DEFAULT_SIMILARITY_THRESHOLD",
    "AgentHandle",
    "AgentSpec",
    "AnswerGroup",
    "AnswerReport",
    "CallOptions",
    "CaseResult",
    "Code",
    "Comparison",
    "ConfusionMatrix",
    "ConsensusSpec",
    "Coordinator",
    "CostReport",
    "Dataset",
    "DatasetError",
    "Delta",
    "DeploymentBudget",
    "EmbeddingClassifier",
    "EmbeddingRouter",
    "EnsembleReport",
    "EvalReport",
    "Example",
    "FailureReport",
    "FanoutSpec",
    "GateResult",
    "Gates",
    "Grouping",
    "InProcessRuntime",
    "Judge",
    "JudgeSpec",
    "Label",
    "LatencyStats",
    "Member",
    "Mistake",
    "ModelCall",
    "ModelClassifier",
    "ModelHandle",
    "ModelReport",
    "ModelRouter",
    "Outcome",
    "ParallelSpec",
    "PipelineSpec",
    "Placement",
    "Planner",
    "PlannerExecutorSpec",
    "PromptTemplate",
    "RequestContext",
    "RouterSpec",
    "RoutingReport",
    "RunResult",
    "Runtime",
    "SingleSpec",
    "Stage",
    "Started",
    "Supervisor",
    "SupervisorWorkerSpec",
    "ThresholdFit",
    "TopologySpec",
    "VoteSpec",
    "Voter",
    "WeightedEnsembleSpec",
    "WeightedMember",
    "WorkerRole",
    "answer",
    "answer_task",
    "build_report",
    "check_dataset",
    "check_gates",
    "compare",
    "cosine",
    "default_embedder",
    "evaluate",
    "hosted_nodes",
    "load_code",
    "load_dataset",
    "load_gates",
    "load_topology",
    "normalize",
    "parse_dataset",
    "parse_topology",
    "percentile",
    "run_evaluation",
    "run_topology",
    "validate_plan",
]
