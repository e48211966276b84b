"""What a deployment spent: token cost per model, version and route, and reserved capacity.

A deployment's controller keeps one :class:`CostLedger`. Every finished request (answered or
failed) is recorded from its trace, whose model spans carry tokens and token cost; every
replica's reservation is recorded from the moment it starts until it is retired, and costs its
model's ``pricing.per_hour`` for that time whether it serves or idles. Requests are kept in
one-minute buckets for a week, so "what did the last hour cost, and who spent it" is a sum over
at most a few thousand small records.

Ray's metrics carry the same figures as counters for Prometheus; the ledger exists because
``cantata cost`` and budgets must answer from the deployment itself, with no Prometheus.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

from pydantic import NonNegativeFloat, NonNegativeInt

from cantata.agents import Frozen, Span

__all__ = ["CostBy", "CostLedger", "CostReport", "CostRow", "LedgerEntry"]

CostBy = Literal["model", "route", "version"]
LedgerEntry = tuple[list[Span], str | None, bool]
"""One request as a coordinator reports it: its spans, the route it took, whether it failed."""

BUCKET_S = 60
RETAIN_S = 7 * 24 * 3600
NO_ROUTE = "-"
RESERVED = "(reserved capacity)"
"""The row that holds reservation cost when costs are broken down by route."""


class CostRow(Frozen):
    """Requests, calls, tokens and cost of one model, version or route (or of everything)."""

    key: str
    requests: NonNegativeInt = 0
    calls: NonNegativeInt = 0
    input_tokens: NonNegativeInt = 0
    output_tokens: NonNegativeInt = 0
    token_cost_usd: NonNegativeFloat = 0.0
    reservation_cost_usd: NonNegativeFloat = 0.0

    @property
    def total_usd(self) -> float:
        """Token cost plus reservation cost."""
        return self.token_cost_usd + self.reservation_cost_usd


class CostReport(Frozen):
    """What ``cantata cost`` prints: one row per key, and the total, which they add up to.

    ``requests`` in a row counts the requests that used that model (or version, or route);
    in ``total`` it counts every request once. ``refused`` counts requests the budget turned
    away, ``failed`` those that ran and failed (their spending is in the rows).
    """

    deployment: str
    by: CostBy
    since: float
    until: float
    rows: tuple[CostRow, ...]
    total: CostRow
    refused: NonNegativeInt = 0
    failed: NonNegativeInt = 0

    def to_json_dict(self) -> dict[str, object]:
        """JSON-ready, with each row's ``total_usd``."""
        data = self.model_dump(mode="json")
        for row, dumped in zip(
            (*self.rows, self.total), (*data["rows"], data["total"]), strict=True
        ):
            dumped["total_usd"] = row.total_usd
        return data


@dataclass
class _Tally:
    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    token_cost_usd: float = 0.0


@dataclass
class _Minute:
    requests: int = 0
    failed: int = 0
    refused: int = 0
    token_cost_usd: float = 0.0


@dataclass
class _Reservation:
    model: str
    version: str
    per_hour: float
    start: float
    end: float | None = None

    def cost(self, since: float, until: float) -> float:
        overlap = min(self.end if self.end is not None else until, until) - max(self.start, since)
        return self.per_hour * max(overlap, 0.0) / 3600


# (model, version, route)
_Key = tuple[str, str, str]
_BREAKDOWNS: tuple[CostBy, ...] = ("model", "route", "version")


class CostLedger:
    """A deployment's spending, per minute, per model, version and route."""

    def __init__(self, deployment: str, *, clock: Callable[[], float] = time.time) -> None:
        self.deployment = deployment
        self.clock = clock
        self.started = clock()
        self._tallies: dict[int, dict[_Key, _Tally]] = defaultdict(dict)
        # Requests per row, counted once per request and breakdown: a request that calls
        # three models under one route is one request of that route, not three.
        self._requests: dict[int, dict[tuple[CostBy, str], int]] = defaultdict(dict)
        self._minutes: dict[int, _Minute] = defaultdict(_Minute)
        self._reservations: dict[int, _Reservation] = {}

    def _bucket(self, at: float) -> int:
        return int(at // BUCKET_S)

    def record(self, spans: Iterable[Span], *, route: str | None, failed: bool = False) -> None:
        """One finished request: its model spans' tokens and cost, under its route."""
        now = self.clock()
        bucket = self._bucket(now)
        tallies = self._tallies[bucket]
        minute = self._minutes[bucket]
        minute.requests += 1
        minute.failed += int(failed)
        rows: set[tuple[CostBy, str]] = set()
        for span in spans:
            if span.model is None:
                continue
            key = (span.agent, span.model_version or "", route or NO_ROUTE)
            tally = tallies.setdefault(key, _Tally())
            tally.calls += 1
            tally.input_tokens += span.input_tokens
            tally.output_tokens += span.output_tokens
            tally.token_cost_usd += span.cost_usd
            minute.token_cost_usd += span.cost_usd
            rows.update((by, _row_key(by, *key)) for by in _BREAKDOWNS)
        requests = self._requests[bucket]
        for row in rows:
            requests[row] = requests.get(row, 0) + 1
        self._prune(now)

    def refused(self) -> None:
        """A request the budget turned away."""
        self._minutes[self._bucket(self.clock())].refused += 1

    def reserve(self, replica: int, model: str, version: str, per_hour: float) -> None:
        """Replica ``replica`` of ``model`` holds its reservation from now on."""
        self._reservations[replica] = _Reservation(model, version, per_hour, self.clock())

    def release(self, replica: int) -> None:
        """Replica ``replica`` gave its reservation back."""
        reservation = self._reservations.get(replica)
        if reservation is not None and reservation.end is None:
            reservation.end = self.clock()

    def held(self) -> set[int]:
        """The replicas whose reservations are held now."""
        return {index for index, r in self._reservations.items() if r.end is None}

    def token_spend(self, since: float) -> float:
        """Token cost of the requests recorded since ``since`` (whole minutes)."""
        first = self._bucket(since)
        return sum(m.token_cost_usd for b, m in self._minutes.items() if b >= first)

    def mean_request_cost(self, since: float) -> float:
        """The average token cost of a request recorded since ``since``; 0 without any."""
        first = self._bucket(since)
        minutes = [m for b, m in self._minutes.items() if b >= first]
        requests = sum(m.requests for m in minutes)
        return sum(m.token_cost_usd for m in minutes) / requests if requests else 0.0

    def reservation_rate(self) -> dict[tuple[str, str], float]:
        """What the replicas held now cost per hour, per (model, version)."""
        rates: dict[tuple[str, str], float] = defaultdict(float)
        for reservation in self._reservations.values():
            if reservation.end is None:
                rates[(reservation.model, reservation.version)] += reservation.per_hour
        return dict(rates)

    def report(self, *, since: float | None = None, by: CostBy = "model") -> CostReport:
        """Spending since ``since`` (default: since the deployment started), broken down ``by``.

        Requests are kept in whole minutes, so ``since`` reaches back to the start of its minute.
        """
        until = self.clock()
        since = max(since if since is not None else self.started, until - RETAIN_S, self.started)
        first = self._bucket(since)
        rows: dict[str, _Tally] = defaultdict(_Tally)
        requests: dict[str, int] = defaultdict(int)
        reserved: dict[str, float] = defaultdict(float)
        for bucket, counts in self._requests.items():
            if bucket >= first:
                for (breakdown, key), count in counts.items():
                    if breakdown == by:
                        requests[key] += count
        for bucket, tallies in self._tallies.items():
            if bucket < first:
                continue
            for (model, version, route), tally in tallies.items():
                row = rows[_row_key(by, model, version, route)]
                row.calls += tally.calls
                row.input_tokens += tally.input_tokens
                row.output_tokens += tally.output_tokens
                row.token_cost_usd += tally.token_cost_usd
        for reservation in self._reservations.values():
            cost = reservation.cost(since, until)
            if cost > 0:
                key = (
                    RESERVED
                    if by == "route"
                    else _row_key(by, reservation.model, reservation.version, "")
                )
                reserved[key] += cost
        minutes = [m for b, m in self._minutes.items() if b >= first]
        built = [
            CostRow(
                key=key,
                requests=requests.get(key, 0),
                calls=rows[key].calls,
                input_tokens=rows[key].input_tokens,
                output_tokens=rows[key].output_tokens,
                token_cost_usd=rows[key].token_cost_usd,
                reservation_cost_usd=reserved.get(key, 0.0),
            )
            for key in sorted(set(rows) | set(reserved))
        ]
        built.sort(key=lambda row: (-row.total_usd, row.key))
        total = CostRow(
            key="total",
            requests=sum(m.requests for m in minutes),
            calls=sum(row.calls for row in built),
            input_tokens=sum(row.input_tokens for row in built),
            output_tokens=sum(row.output_tokens for row in built),
            token_cost_usd=sum(row.token_cost_usd for row in built),
            reservation_cost_usd=sum(row.reservation_cost_usd for row in built),
        )
        return CostReport(
            deployment=self.deployment,
            by=by,
            since=since,
            until=until,
            rows=tuple(built),
            total=total,
            refused=sum(m.refused for m in minutes),
            failed=sum(m.failed for m in minutes),
        )

    def _prune(self, now: float) -> None:
        oldest = self._bucket(now - RETAIN_S)
        for bucket in [b for b in self._minutes if b < oldest]:
            self._minutes.pop(bucket, None)
            self._tallies.pop(bucket, None)
            self._requests.pop(bucket, None)
        for replica in [
            r
            for r, res in self._reservations.items()
            if res.end is not None and res.end < now - RETAIN_S
        ]:
            del self._reservations[replica]


def _row_key(by: CostBy, model: str, version: str, route: str) -> str:
    if by == "model":
        return model
    if by == "version":
        return f"{model}@{version}"
    return route
