"""A Ray-hosted OpenAI-compatible model against a loopback server that misbehaves."""

from __future__ import annotations

import pytest

from tests.chaos.scenarios import http_faults

pytestmark = [pytest.mark.chaos, pytest.mark.ray]


async def test_each_fault_gets_the_attempts_the_policy_allows_and_the_fallback(ray_cluster):
    figures = await http_faults(ray_cluster.cluster)
    assert (figures.tally.lost, figures.tally.untyped) == (0, 0)
    for case in figures.cases:
        expected = case.case
        assert (case.attempts, case.outcome) == (expected.attempts, expected.outcome), expected.name
        assert case.fallback_calls == (1 if expected.outcome == "fallback" else 0), expected.name
        assert not case.breaker_open, expected.name  # one failure does not open it
    # Three calls of three attempts each open the breaker; the next three never reach the
    # server, and the fallback answers all six.
    assert figures.breaker.requests_per_call == (3, 3, 3, 0, 0, 0)
    assert figures.breaker.circuit_open == 3
    assert figures.breaker.fallback_answers == 6
    assert figures.key_sent
    assert figures.audit.leaks == 0, figures.audit.rows()
