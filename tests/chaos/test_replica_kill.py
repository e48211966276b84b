"""A model replica killed with SIGKILL while 64 requests are in flight through a fan-out."""

from __future__ import annotations

import pytest

from tests.chaos.scenarios import replica_kill

pytestmark = [pytest.mark.chaos, pytest.mark.ray]


async def test_a_replica_killed_mid_flight_loses_no_request(ray_cluster):
    figures = await replica_kill(requests=64, cooldown_s=2.0, name="chaos-kill-test")
    assert figures.tally.lost == 0
    assert figures.tally.untyped == 0
    # The killed replica's calls went to the other replica: every request was answered.
    assert figures.tally.completed == 64
    assert figures.killed_held > 0
    # Exactly the calls the killed replica was running reached a backend twice.
    assert figures.duplicated_calls == figures.killed_held
    assert figures.backend_calls == 64 + figures.killed_held
    # Ray restarted it once, and traffic came back to it after its breaker's cooldown.
    assert figures.restarts == 1
    assert figures.restart_s is not None
    assert figures.traffic_back_s is not None
