"""Each model and agent actor of a deployment scales on its own, on measured load.

Every tick the autoscaler reads each autoscaled group's load from its replicas (calls in
flight plus queued, as each replica counts them: health calls never queue behind model calls),
asks the group's :class:`~cantata.agents.Autoscaling` policy how many replicas that load
wants, and acts once the wish has held for the policy's delay: up by reserving the new
replicas all at once (or recording why it could not), down by draining the newest replicas
first. Every decision is counted in metrics and kept for ``cantata status``.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from typing import Literal

import structlog

from cantata.agents import CantataError

from ._fleet import Fleet, Group
from ._metrics import record_scaling_decision, set_replica_count
from ._status import ScalingDecision

__all__ = ["Autoscaler"]

KEEP_DECISIONS = 50
log = structlog.get_logger("cantata.autoscaler")


class Autoscaler:
    """Applies every autoscaled group's policy to its fleet; call :meth:`tick` periodically."""

    def __init__(
        self,
        fleet: Fleet,
        *,
        deployment: str,
        topology: str,
        start_timeout_s: float = 120.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.fleet = fleet
        self.deployment = deployment
        self.topology = topology
        self.start_timeout_s = start_timeout_s
        self.clock = clock
        self.decisions: deque[ScalingDecision] = deque(maxlen=KEEP_DECISIONS)
        self._wish: dict[str, tuple[int, float]] = {}  # group -> (direction, since)

    async def tick(self) -> None:
        """Measure every autoscaled group once and scale the ones whose wish has held."""
        for group in list(self.fleet.groups.values()):
            if group.autoscaling is not None and group.replicas:
                await self._consider(group)
        self.publish()

    def publish(self) -> None:
        """Report every group's replica count to metrics."""
        for group in self.fleet.groups.values():
            set_replica_count(
                deployment=self.deployment,
                topology=self.topology,
                target=group.name,
                kind=group.kind,
                count=len(group.replicas),
            )

    async def _consider(self, group: Group) -> None:
        policy = group.autoscaling
        assert policy is not None
        active = [r for r in group.replicas if not r.draining]
        loads = await asyncio.gather(*(self.fleet.load_of(r) for r in active))
        load = float(sum(loads))
        current = len(active)
        wanted = policy.wanted(load)
        direction = (wanted > current) - (wanted < current)
        now = self.clock()
        if direction == 0:
            self._wish.pop(group.name, None)
            return
        held_direction, since = self._wish.get(group.name, (direction, now))
        if held_direction != direction:
            since = now
        self._wish[group.name] = (direction, since)
        delay = policy.upscale_delay_s if direction > 0 else policy.downscale_delay_s
        if now - since < delay:
            return
        self._wish.pop(group.name, None)
        await self._scale(group, load, current, wanted)

    async def _scale(self, group: Group, load: float, current: int, wanted: int) -> None:
        direction = "up" if wanted > current else "down"
        outcome: Literal["scaled", "refused"] = "scaled"
        detail = ""
        try:
            _, after = await self.fleet.scale(group.name, wanted, self.start_timeout_s)
        except CantataError as exc:
            after, outcome = current, "refused"
            detail = f"{type(exc).__name__}: {exc}"[:500]
            log.warning("autoscaling refused", target=group.name, wanted=wanted, error=str(exc))
        else:
            log.info("autoscaled", target=group.name, before=current, after=after, load=load)
        decision = ScalingDecision(
            at=time.time(),
            target=group.name,
            kind=group.kind,
            load=load,
            replicas_before=current,
            replicas_after=after,
            outcome=outcome,
            detail=detail,
        )
        self.decisions.append(decision)
        record_scaling_decision(
            deployment=self.deployment,
            topology=self.topology,
            target=group.name,
            kind=group.kind,
            direction=direction,
            outcome=decision.outcome,
        )
