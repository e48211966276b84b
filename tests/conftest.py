"""Shared fixtures. Ray starts once per session, as a multi-node cluster on 127.0.0.1.

The cluster has a head (2 CPUs), a "GPU" node (1 CPU, 1 logical GPU, custom resource
``big_model``) and a CPU node (1 CPU). Ray's GPUs are logical, so reservations and placement are
tested for real without a GPU; tests that need a physical GPU skip without one.
"""

from __future__ import annotations

import os

# Before Ray is imported: keep cluster_utils nodes on loopback instead of the outward address.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import signal
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest


def pytest_configure(config: pytest.Config) -> None:
    # A run stopped by SIGTERM (a CI timeout, say) unwinds as Ctrl-C does: every fixture's
    # teardown runs, so the Ray clusters and `ray start` nodes the tests started are stopped.
    signal.signal(signal.SIGTERM, _interrupt)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@dataclass(frozen=True)
class ClusterNodes:
    """Node ids of the session cluster, by role."""

    head: str
    gpu: str
    cpu: str
    cluster: Any  # the ray.cluster_utils.Cluster, for tests that add or remove nodes


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[ClusterNodes]:
    """A three-node Ray cluster in this machine, connected for the whole session."""
    import ray  # noqa: PLC0415 - only sessions that use Ray pay for importing it
    from ray.cluster_utils import Cluster  # noqa: PLC0415

    loopback = {"node_ip_address": "127.0.0.1", "object_store_memory": 100 * 2**20}
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            **loopback,
            "num_cpus": 2,
            "include_dashboard": False,
            # Actors report metrics every second instead of ten, so metric tests wait less.
            "_system_config": {"metrics_report_interval_ms": 1000},
        },
    )
    gpu = cluster.add_node(**loopback, num_cpus=1, num_gpus=1, resources={"big_model": 1})
    cpu = cluster.add_node(**loopback, num_cpus=1)
    ray.init(address=cluster.address, _node_ip_address="127.0.0.1", namespace="cantata-tests")
    try:
        yield ClusterNodes(
            head=cluster.head_node.node_id, gpu=gpu.node_id, cpu=cpu.node_id, cluster=cluster
        )
    finally:
        ray.shutdown()
        cluster.shutdown()
