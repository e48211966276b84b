"""A node removed while a planner-executor deployment serves 20 requests; capacity returns."""

from __future__ import annotations

import pytest

from tests.chaos.scenarios import node_loss

pytestmark = [pytest.mark.chaos, pytest.mark.ray]


async def test_a_lost_node_ends_every_request_and_the_deployment_heals(ray_cluster):
    figures = await node_loss(ray_cluster.cluster, requests=20, cooldown_s=2.0)
    tally = figures.tally
    # Every request ended in a result or a typed error; none was lost.
    assert tally.lost == 0
    assert tally.untyped == 0
    assert tally.completed + tally.failed_total == 20
    assert figures.lost_held > 0  # the removal did hit calls in flight
    # While the node was gone status said so; once a node with its resources joined, the
    # replica restarted there, every replica was healthy, and it served again.
    assert figures.unhealthy_seen
    assert figures.heal_s is not None
    assert figures.healed_on_new_node
    assert figures.traffic_back_s is not None
