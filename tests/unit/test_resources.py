"""Typed reservations and their translation into Ray's terms."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from cantata.agents import Resources, UnschedulableError
from cantata.agents._resources import parse_bytes
from cantata.cluster import actor_options, check_feasible, placement_bundle


def test_defaults_reserve_one_cpu():
    assert Resources().demand() == {"CPU": 1.0}
    assert actor_options(Resources()) == {"num_cpus": 1.0, "num_gpus": 0.0}


def test_every_field_maps_to_ray_options_and_a_bundle():
    resources = Resources(
        num_cpus=2,
        num_gpus=0.5,
        memory="1GiB",
        custom={"big_model": 1},
        accelerator_type="H100",
    )
    assert actor_options(resources) == {
        "num_cpus": 2.0,
        "num_gpus": 0.5,
        "memory": 2**30,
        "resources": {"big_model": 1.0},
        "accelerator_type": "H100",
    }
    assert placement_bundle(resources) == {
        "CPU": 2.0,
        "GPU": 0.5,
        "memory": float(2**30),
        "accelerator_type:H100": 0.001,
        "big_model": 1.0,
    }


@pytest.mark.parametrize(
    ("text", "value"),
    [("512MiB", 512 * 2**20), ("2GB", 2 * 10**9), ("1.5GiB", int(1.5 * 2**30)), ("100", 100)],
)
def test_sizes(text, value):
    assert parse_bytes(text) == value


@pytest.mark.parametrize(
    "fields",
    [
        {"num_gpus": 1.5},
        {"num_cpus": -1},
        {"memory": "lots"},
        {"custom": {"GPU": 1}},
        {"accelerator_type": "H100"},
        {"cpus": 1},
    ],
)
def test_invalid_reservations_are_refused(fields):
    with pytest.raises(ValidationError):
        Resources.model_validate(fields)


NODES = [{"CPU": 2.0, "memory": 8e9}, {"CPU": 1.0, "GPU": 1.0, "big_model": 1.0}]


def test_feasible_when_one_node_holds_everything():
    check_feasible("m", Resources(num_cpus=1, num_gpus=1, custom={"big_model": 1}), NODES)


def test_infeasible_names_the_missing_resource_and_the_largest_node():
    with pytest.raises(UnschedulableError) as caught:
        check_feasible("huge", Resources(num_gpus=4), NODES)
    assert caught.value.missing == {"GPU": 4.0}
    assert "largest node has 1" in str(caught.value)
    assert "'huge'" in str(caught.value)


def test_resources_spread_over_nodes_do_not_add_up():
    with pytest.raises(UnschedulableError) as caught:
        check_feasible("m", Resources(num_cpus=2, num_gpus=1), NODES)
    assert caught.value.missing == {"CPU": 2.0}


def test_no_alive_nodes_is_unschedulable():
    with pytest.raises(UnschedulableError):
        check_feasible("m", Resources(), [])
