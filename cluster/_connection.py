"""Connect to Ray: an embedded local instance on 127.0.0.1, or an existing cluster.

With no address (and no ``RAY_ADDRESS``) Cantata starts an embedded Ray bound to loopback, with
Ray's default token authentication, no dashboard, and a declared number of logical CPUs. With an
address (``host:port``, ``auto`` or ``ray://host:port``) it joins that cluster instead.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass

import ray

from cantata.agents import RuntimeFailure

__all__ = ["RayConnection", "connect"]

NAMESPACE = "cantata"


@dataclass(frozen=True)
class RayConnection:
    """What :func:`connect` did: ``embedded`` is True when it started a local Ray itself."""

    address: str | None
    embedded: bool

    def close(self) -> None:
        """Shut Ray down in this process (an embedded Ray stops with it)."""
        ray.shutdown()


def connect(address: str | None = None, *, num_cpus: float | None = None) -> RayConnection:
    """Connect this process to Ray, starting an embedded local instance when no address is given.

    ``num_cpus`` sets the embedded instance's logical CPUs (default: the machine's cores); it is
    ignored when joining a cluster, whose nodes declare their own.
    """
    address = address or os.environ.get("RAY_ADDRESS") or None
    if ray.is_initialized():
        return RayConnection(address=address, embedded=False)
    with warnings.catch_warnings():
        # Ray warns about its own deprecated internals on import paths we do not control.
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            if address:
                ray.init(
                    address=address,
                    namespace=NAMESPACE,
                    logging_level=logging.WARNING,
                    log_to_driver=True,
                )
                return RayConnection(address=address, embedded=False)
            ray.init(
                # "local" forces a new instance: with no address, Ray would join the last
                # cluster that `ray start` left running on this machine.
                address="local",
                _node_ip_address="127.0.0.1",
                num_cpus=int(num_cpus) if num_cpus is not None else os.cpu_count(),
                include_dashboard=False,
                namespace=NAMESPACE,
                logging_level=logging.WARNING,
                log_to_driver=True,
            )
        except ConnectionError as exc:
            raise RuntimeFailure(f"cannot connect to Ray at {address!r}: {exc}") from None
    return RayConnection(address=None, embedded=True)
