"""Every pattern, and the function that runs it: the one place a pattern is added.

A pattern is a spec class in ``_spec.py`` (a member of the :data:`TopologySpec` union, with its
``pattern`` literal for YAML) and a runner ``(spec, text, ctx, parent_id) -> Outcome`` in a
module of its own. The table below joins them; the request context runs nested topologies
through it. The set is closed on purpose: a spec outside the union could not be read from a
topology file. A user's own logic joins a topology as an ``agent`` node (:class:`AgentSpec`),
which needs no new pattern.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from ._agent_node import run_agent
from ._consensus import run_consensus
from ._context import PatternRunner
from ._fanout import run_fanout
from ._pipeline import run_pipeline
from ._planner import run_planner_executor
from ._router import run_router
from ._single import run_single
from ._spec import (
    AgentSpec,
    ConsensusSpec,
    FanoutSpec,
    PipelineSpec,
    PlannerExecutorSpec,
    RouterSpec,
    SingleSpec,
    SupervisorWorkerSpec,
    VoteSpec,
    WeightedEnsembleSpec,
)
from ._supervisor import run_supervisor_worker
from ._vote import run_vote
from ._weighted import run_weighted_ensemble

__all__ = ["PATTERNS"]

PATTERNS: Mapping[type, PatternRunner] = MappingProxyType(
    {
        SingleSpec: run_single,
        PipelineSpec: run_pipeline,
        RouterSpec: run_router,
        FanoutSpec: run_fanout,
        VoteSpec: run_vote,
        ConsensusSpec: run_consensus,
        WeightedEnsembleSpec: run_weighted_ensemble,
        PlannerExecutorSpec: run_planner_executor,
        SupervisorWorkerSpec: run_supervisor_worker,
        AgentSpec: run_agent,
    }
)
