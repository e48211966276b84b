"""A canary API key through every error path and response field: it appears nowhere."""

from __future__ import annotations

import pytest

from tests.chaos.scenarios import canary

pytestmark = [pytest.mark.chaos, pytest.mark.ray]


async def test_a_canary_key_never_appears_in_output_logs_traces_metrics_or_errors(ray_cluster):
    figures = await canary(ray_cluster.cluster, cli=True)
    audit = figures.audit
    assert (figures.tally.lost, figures.tally.untyped) == (0, 0)
    assert figures.key_sent  # the servers did get the key, and quoted it back
    assert figures.echoed > 0
    for name, expected, alone, fanned in figures.outcomes:
        assert alone == expected, name
        assert fanned in ("", "answered"), name  # a quorum of one: the steady member answers
    # Exported spans and the CLI were checked. A node added a moment ago may be slow to export
    # metrics on a loaded machine: then what could be scraped was checked, with a note.
    assert [note for note in audit.notes if not note.startswith("metrics:")] == []
    assert figures.cli_exit == 0
    assert audit.leaks == 0, audit.rows()
    # The places that carry what servers answer did carry the control that travels with the
    # key, so the audit looked where a leaked key would have been.
    for source in ("results", "exception text", "traces (spans)", "Ray session logs"):
        assert audit.controls[source] > 0, source
