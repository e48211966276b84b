"""Connect to Ray: an embedded local instance on 127.0.0.1, or an existing cluster.

With no address (and no ``RAY_ADDRESS``) Cantata starts an embedded Ray bound to loopback, with
Ray's default token authentication, no dashboard, and a declared number of logical CPUs. With an
address (``host:port``, ``auto`` or ``ray://host:port``) it joins that cluster instead.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from dataclasses import dataclass
from typing import Any

import ray
from ray._private import ray_constants
from ray._private.authentication.authentication_token_setup import (
    maybe_enable_token_auth_if_token_available,
)

from cantata.agents import Identity, LogConfig, RuntimeFailure

from ._heap import settle_heap

__all__ = ["RayConnection", "connect", "current_identity"]

NAMESPACE = "cantata"
LOG_FLUSH_GRACE_S = 0.5


@dataclass(frozen=True)
class RayConnection:
    """What :func:`connect` did: ``embedded`` is True when it started a local Ray itself."""

    address: str | None
    embedded: bool

    def close(self) -> None:
        """Shut Ray down in this process (an embedded Ray stops with it)."""
        if self.embedded:
            # Actors' log lines reach the driver through Ray's log monitor, which polls their
            # files; give it a moment so the last lines are not lost with the instance.
            time.sleep(LOG_FLUSH_GRACE_S)
        ray.shutdown()


def connect(
    address: str | None = None,
    *,
    num_cpus: int | None = None,
    log_config: LogConfig | None = None,
    runtime_env: dict[str, Any] | None = None,
) -> RayConnection:
    """Connect this process to Ray, starting an embedded local instance when no address is given.

    ``num_cpus`` sets the embedded instance's logical CPUs (default: the machine's cores); it is
    ignored when joining a cluster, whose nodes declare their own. With a JSON ``log_config``,
    Ray's own lines are JSON too and actors' forwarded lines lose Ray's ``(name pid=…)`` prefix,
    so stderr stays one JSON object per line. ``runtime_env`` is this job's Ray runtime
    environment; every actor it creates, deployments included, inherits it (this is how a wheel
    of Cantata reaches workers that do not have it: ``{"py_modules": ["cantata-….whl"]}``).

    Once connected, the objects this process holds (imports, Ray's own state) are frozen out of
    the garbage collector's full collections (``gc.freeze``; see :mod:`._heap`): they live as
    long as the process, and walking them stalled every request in flight for 50-70 ms.
    """
    connection = _connect(address, num_cpus, log_config, runtime_env)
    settle_heap()
    return connection


def _connect(
    address: str | None,
    num_cpus: int | None,
    log_config: LogConfig | None,
    runtime_env: dict[str, Any] | None,
) -> RayConnection:
    ray_logging = None
    if log_config is not None and log_config.format == "json":
        ray_logging = ray.LoggingConfig(encoding="JSON", log_level="WARNING")
    address = address or os.environ.get("RAY_ADDRESS") or None
    if ray.is_initialized():
        return RayConnection(address=address, embedded=False)
    with warnings.catch_warnings():
        # Ray warns about its own deprecated internals on import paths we do not control.
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            if address:
                _prepare_to_join(address)
                if address.startswith("ray://"):
                    # Ray Client: the driver runs on the cluster's client server, not here.
                    ray.init(
                        address=address,
                        namespace=NAMESPACE,
                        logging_level=logging.WARNING,
                        runtime_env=runtime_env,
                    )
                    return RayConnection(address=address, embedded=False)
                ray.init(
                    address=address,
                    namespace=NAMESPACE,
                    logging_level=logging.WARNING,
                    log_to_driver=True,
                    logging_config=ray_logging,
                    runtime_env=runtime_env,
                    _node_ip_address=_loopback_host(address),
                )
                return RayConnection(address=address, embedded=False)
            _keep_on_loopback()
            ray.init(
                # "local" forces a new instance: with no address, Ray would join the last
                # cluster that `ray start` left running on this machine.
                address="local",
                _node_ip_address="127.0.0.1",
                num_cpus=num_cpus if num_cpus is not None else os.cpu_count(),
                include_dashboard=False,
                namespace=NAMESPACE,
                logging_level=logging.WARNING,
                log_to_driver=True,
                logging_config=ray_logging,
                runtime_env=runtime_env,
            )
        except ConnectionError as exc:
            raise RuntimeFailure(f"cannot connect to Ray at {address!r}: {exc}") from None
    return RayConnection(address=None, embedded=True)


def _loopback_host(address: str) -> str | None:
    """The address's host if it is on loopback (127.0.0.0/8), else None.

    A driver joining a cluster on loopback must say which loopback address its node has: the
    cluster may be on 127.0.0.2, and Ray would otherwise guess the machine's outward address.
    """
    host = address.removeprefix("ray://").rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return "127.0.0.1"
    return host if host.startswith("127.") else None


def _is_loopback(address: str) -> bool:
    return _loopback_host(address) is not None


def _keep_on_loopback() -> None:
    # Ray rewrites "127.0.0.1" and "localhost" to this machine's outward address unless this
    # switch is off; it is read at call time, so turning it off here keeps traffic on loopback.
    ray_constants.ENABLE_RAY_CLUSTER = False
    os.environ[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR] = "0"  # for processes Ray starts


def _prepare_to_join(address: str) -> None:
    if _is_loopback(address):
        _keep_on_loopback()
    # Joining a cluster, Ray only sends its token when RAY_AUTH_MODE says so; set it when a
    # token is available (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token) and the
    # user has not chosen a mode.
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


def current_identity() -> Identity:
    """The Ray actor (None on a driver) and node this process is; needs a connected Ray."""
    context = ray.get_runtime_context()
    return Identity(actor_id=context.get_actor_id(), node_id=context.get_node_id())
