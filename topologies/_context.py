"""Per-request state a topology threads through its steps: trace, deadline, budget, spans."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from cantata.agents import (
    Budget,
    BudgetExhaustedError,
    EmbedReply,
    EmbedRequest,
    JsonSchemaFormat,
    ModelReply,
    ModelRequest,
    Span,
    Usage,
    new_id,
)

from ._prompt import PromptTemplate
from ._runtime import ModelHandle

__all__ = ["RequestContext"]


@dataclass
class RequestContext:
    """One request through a topology. Collects every span; tracks what the budget has left."""

    handles: dict[str, ModelHandle]
    trace_id: str = field(default_factory=new_id)
    deadline: float | None = None
    budget: Budget = field(default_factory=Budget)
    spans: list[Span] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    cost_usd: float = 0.0

    @contextmanager
    def step(self, agent: str, parent_id: str | None) -> Iterator[str]:
        """Time a role agent's step as a span; yields the span id for its children."""
        span_id = new_id()
        start = time.time()
        status, error = "ok", None
        try:
            yield span_id
        except BaseException as exc:
            status, error = "error", f"{type(exc).__name__}: {exc}"
            raise
        finally:
            end = time.time()
            self.spans.append(
                Span(
                    span_id=span_id,
                    parent_id=parent_id,
                    trace_id=self.trace_id,
                    agent=agent,
                    start=start,
                    end=end,
                    latency_ms=(end - start) * 1000,
                    status=status,
                    error=error,
                )
            )

    async def ask(
        self,
        model: str,
        text: str,
        *,
        prompt: PromptTemplate,
        parent_id: str,
        max_tokens: int = 256,
        temperature: float = 0.0,
        response_format: JsonSchemaFormat | None = None,
    ) -> ModelReply:
        """Send ``text`` through ``prompt`` to ``model``; record its span and spend its cost."""
        if self.budget.exhausted:
            raise BudgetExhaustedError(f"no budget left before calling {model}")
        request = ModelRequest(
            trace_id=self.trace_id,
            parent_span_id=parent_id,
            deadline=self.deadline,
            budget=self.budget,
            messages=prompt.render(text),
            max_tokens=max_tokens,
            temperature=temperature,
            response_format=response_format,
        )
        reply = await self.handles[model].complete(request)
        self.spans.append(reply.span)
        self.usage += reply.usage
        self.cost_usd += reply.cost_usd
        self.budget = self.budget.spend(reply.usage.total_tokens, reply.cost_usd)
        return reply

    async def embed(
        self, model: str, texts: tuple[str, ...], *, parent_id: str, input_type: str = "query"
    ) -> EmbedReply:
        """Embed ``texts`` with ``model``; record its span."""
        request = EmbedRequest(
            trace_id=self.trace_id,
            parent_span_id=parent_id,
            deadline=self.deadline,
            budget=self.budget,
            texts=texts,
            input_type="passage" if input_type == "passage" else "query",
        )
        reply = await self.handles[model].embed(request)
        self.spans.append(reply.span)
        self.usage += reply.usage
        return reply
