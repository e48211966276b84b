"""A burst of ten times what a replica holds: the rest refused at once, typed; none lost."""

from __future__ import annotations

import pytest

from tests.chaos.scenarios import burst

pytestmark = [pytest.mark.chaos, pytest.mark.ray]


async def test_a_burst_beyond_capacity_is_refused_typed_and_the_accepted_complete(ray_cluster):
    # The accepted calls wait at a gate until every other request has been refused, so the
    # replica holds exactly its capacity: 2 running and 8 queued.
    figures = await burst(factor=10, max_concurrency=2, max_queued=8, hold=True)
    assert figures.capacity == 10
    assert figures.tally.lost == 0
    assert figures.tally.untyped == 0
    assert figures.tally.completed == 10
    assert figures.tally.failed == {"OverloadedError": 90}
    assert figures.status_refused == 90  # what `cantata status` shows
