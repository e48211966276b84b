"""structlog set-up for the driver and for every actor process.

Logs go to stderr (stdout stays free for ``--json`` results), as readable console lines or JSON.
Each actor calls :func:`configure_logging` with the driver's :class:`LogConfig`, and binds the
trace id, agent and model around every call with :func:`bound`, so every line carries them.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from contextvars import ContextVar, Token
from types import MappingProxyType, TracebackType
from typing import Literal

import structlog
from pydantic import Field

from ._messages import Frozen
from ._secrets import scrub

__all__ = ["LogConfig", "bound", "configure_logging", "merge_log_fields"]

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


class LogConfig(Frozen):
    """How to log: renderer and minimum level. Travels to actors with their specs."""

    format: Literal["console", "json"] = "console"
    level: Literal["debug", "info", "warning", "error"] = Field(default="warning")


def configure_logging(config: LogConfig | None = None) -> None:
    """Configure structlog for this process: stderr, the chosen renderer and level."""
    config = config or LogConfig()
    format_line: structlog.typing.Processor
    if config.format == "json":
        format_line = structlog.processors.JSONRenderer()
    else:
        format_line = structlog.dev.ConsoleRenderer(colors=False)

    def renderer(
        logger: structlog.typing.WrappedLogger, name: str, event: structlog.typing.EventDict
    ) -> str:
        # Fields may hold text from a server or a model; no configured key is ever printed.
        return scrub(str(format_line(logger, name, event)))

    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            merge_log_fields,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[config.level]),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )


_BOUND: ContextVar[Mapping[str, str]] = ContextVar(
    "cantata_log_fields", default=MappingProxyType({})
)


class bound:
    """Bind ``fields`` (trace_id, agent, model…) to every log line inside the block.

    Every model call and step binds its ids, so this is on the request path: one context
    variable holding a dict costs a fraction of structlog's ``bound_contextvars``, which makes
    a context variable per key and rebuilds the context on every log line.
    """

    __slots__ = ("_fields", "_token")

    def __init__(self, **fields: str | None) -> None:
        self._fields = fields
        self._token: Token[Mapping[str, str]] | None = None

    def __enter__(self) -> None:
        fields = {key: value for key, value in self._fields.items() if value is not None}
        self._token = _BOUND.set({**_BOUND.get(), **fields})

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._token is not None:
            _BOUND.reset(self._token)


def merge_log_fields(
    logger: structlog.typing.WrappedLogger, name: str, event: structlog.typing.EventDict
) -> structlog.typing.EventDict:
    """A structlog processor adding the fields :func:`bound` holds to a log line.

    :func:`configure_logging` installs it; add it to your own structlog configuration (next
    to ``structlog.contextvars.merge_contextvars``) if you configure structlog yourself.
    """
    fields = _BOUND.get()
    return {**fields, **event} if fields else event
