"""structlog set-up for the driver and for every actor process.

Logs go to stderr (stdout stays free for ``--json`` results), as readable console lines or JSON.
Each actor calls :func:`configure_logging` with the driver's :class:`LogConfig`, and binds the
trace id, agent and model around every call with :func:`bound`, so every line carries them.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from typing import Literal

import structlog
from pydantic import Field

from ._messages import Frozen
from ._secrets import scrub

__all__ = ["LogConfig", "bound", "configure_logging"]

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
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[config.level]),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )


@contextlib.contextmanager
def bound(**fields: str | None) -> Iterator[None]:
    """Bind ``fields`` (trace_id, agent, model…) to every log line inside the block."""
    with structlog.contextvars.bound_contextvars(
        **{key: value for key, value in fields.items() if value is not None}
    ):
        yield
