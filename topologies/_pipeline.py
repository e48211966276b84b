"""The ``pipeline`` pattern: each stage's output is the next stage's input."""

from __future__ import annotations

from dataclasses import replace

from ._context import RequestContext
from ._outcome import Outcome
from ._spec import PipelineSpec, member_name

__all__ = ["run_pipeline"]


async def run_pipeline(
    spec: PipelineSpec, text: str, ctx: RequestContext, parent_id: str
) -> Outcome:
    """Run the stages in order; ``{original}`` in a stage's prompt is the request itself."""
    current = Outcome(text=text)
    for index, stage in enumerate(spec.stages):
        with ctx.step(f"stage-{index + 1}:{member_name(stage.member)}", parent_id) as step_id:
            options = replace(stage.call_options(), values={"original": text})
            current = await ctx.call_member(stage.member, current.text, options, parent_id=step_id)
    return current
