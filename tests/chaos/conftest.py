"""Every chaos scenario must leave the session cluster as it found it: the same alive nodes and
the same free resources (Ray frees what a removed deployment held asynchronously)."""

from __future__ import annotations

import time

import pytest


@pytest.fixture(autouse=True)
def leaves_the_cluster_as_it_was(request):
    if "ray_cluster" not in request.fixturenames:
        yield
        return
    import ray  # noqa: PLC0415

    def state():
        alive = sorted(node["NodeID"] for node in ray.nodes() if node["Alive"])
        return alive, ray.available_resources()

    before = state()
    yield
    give_up = time.monotonic() + 60
    while state() != before and time.monotonic() < give_up:
        time.sleep(0.2)
    assert state() == before
