"""Timeouts, connection limits and the retry policy for HTTP backends, with named defaults."""

from __future__ import annotations

import random

from pydantic import Field, PositiveFloat, PositiveInt

from .._messages import Frozen

__all__ = ["Limits", "RetryPolicy", "Timeout"]

RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})


class Timeout(Frozen):
    """Seconds for each phase of one HTTP attempt. ``read`` bounds the wait for the model."""

    connect: PositiveFloat = 5.0
    read: PositiveFloat = 120.0
    write: PositiveFloat = 10.0
    pool: PositiveFloat = 10.0


class Limits(Frozen):
    """Connection pool limits of one backend's client."""

    max_connections: PositiveInt = 32
    max_keepalive_connections: PositiveInt = 16
    keepalive_expiry: PositiveFloat = 30.0


class RetryPolicy(Frozen):
    """When and how long to wait before trying again. This is the only retry layer.

    Retried: connection failures (the request never reached the server) and statuses 408, 409,
    429, 500, 502, 503, 504. Not retried: other 4xx, read timeouts and broken bodies, since the
    server may have run (and billed) the generation already. ``Retry-After`` is honoured up to
    ``max_retry_after``; otherwise the wait is full-jitter exponential backoff.
    """

    max_attempts: PositiveInt = 3
    backoff_base: PositiveFloat = 0.25
    backoff_max: PositiveFloat = 8.0
    max_retry_after: PositiveFloat = 60.0
    statuses: frozenset[int] = Field(default=RETRY_STATUSES)

    def backoff(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_retry_after)
        ceiling = min(self.backoff_max, self.backoff_base * 2 ** (attempt - 1))
        return random.uniform(0.0, ceiling)  # full jitter: spreads retrying clients apart
