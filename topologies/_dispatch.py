"""Which function runs which pattern. Patterns register here; nesting dispatches through it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from cantata.agents import TopologyError

from ._outcome import Outcome

if TYPE_CHECKING:
    from ._context import RequestContext

__all__ = ["PatternRunner", "register", "run_pattern"]

PatternRunner = Callable[[Any, str, "RequestContext", str], Awaitable[Outcome]]

_RUNNERS: dict[type, PatternRunner] = {}


def register(spec_type: type) -> Callable[[PatternRunner], PatternRunner]:
    """Make the decorated function the runner for ``spec_type``."""

    def decorate(runner: PatternRunner) -> PatternRunner:
        _RUNNERS[spec_type] = runner
        return runner

    return decorate


async def run_pattern(spec: object, text: str, ctx: RequestContext, parent_id: str) -> Outcome:
    """Run ``spec``'s pattern on ``text`` inside the step ``parent_id``."""
    runner = _RUNNERS.get(type(spec))
    if runner is None:
        raise TopologyError(f"no runner registered for {type(spec).__name__}")
    return await runner(spec, text, ctx, parent_id)
