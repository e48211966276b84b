"""User code named in topology files: imported once, checked, refused with a clear error."""

from __future__ import annotations

from pathlib import Path

import pytest

from cantata.agents import ModelActor, TopologySpecError
from cantata.topologies import Voter, load_code, load_topology, parse_topology

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def vote(**fields) -> dict:
    member = {"name": "m", "backend": {"type": "function", "fn": str}}
    return {"pattern": "vote", "name": "v", "members": [member], **fields}


def test_the_example_names_a_model_actor_and_a_voter_that_load():
    spec = load_topology(EXAMPLES / "custom_code.yaml")
    code = load_code(spec, EXAMPLES)
    assert issubclass(code.actor_classes["judge-1"], ModelActor)
    assert code.actor_classes["judge-1"].__name__ == "GuardedModelActor"
    assert issubclass(code.roles[Voter], Voter)
    assert code.roles[Voter].__name__ == "VetoVoter"


def test_an_agent_node_loads_its_agent_class():
    spec = load_topology(EXAMPLES / "critic_review.yaml")
    code = load_code(spec, EXAMPLES)
    assert code.agents["critic.py:Critic"].__name__ == "Critic"


GUARD = "custom_model_actor.py:GuardedModelActor"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"roles": {"Voter": "no_such_module_here:Thing"}}, "does not import"),
        ({"roles": {"Voter": "missing.py:Thing"}}, "no file"),
        ({"roles": {"Voter": "custom_voter.py:Nope"}}, "has no attribute 'Nope'"),
        ({"roles": {"Voter": GUARD}}, "not a subclass of Voter"),
        ({"roles": {"Juror": "custom_voter.py:VetoVoter"}}, "not a role"),
        ({"actor_classes": {"m": "custom_voter.py:VetoVoter"}}, "not a subclass of ModelActor"),
        ({"actor_classes": {"x": GUARD}}, "not a model"),
    ],
)
def test_bad_code_is_refused_naming_the_path(fields, message):
    spec = parse_topology(vote(**fields))
    with pytest.raises(TopologySpecError, match=message):
        load_code(spec, EXAMPLES)


def test_a_path_that_is_not_an_import_path_is_an_invalid_topology():
    with pytest.raises(TopologySpecError, match=r"roles\.Voter"):
        parse_topology(vote(roles={"Voter": "rm -rf /"}))
