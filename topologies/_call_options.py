"""How one member is asked: the prompt, sampling settings, time limit and output format.

Patterns and role agents pass one :class:`CallOptions` to
:meth:`~cantata.topologies.RequestContext.ask`, ``call_member`` and ``gather`` instead of the
same half-dozen keyword arguments each; a spec's :class:`Generation` settings give the
defaults (``spec.call_options()``), and :func:`dataclasses.replace` changes one of them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from cantata.agents import JsonSchemaFormat

from ._prompt import PromptTemplate

__all__ = ["CallOptions"]


@dataclass(frozen=True, slots=True)
class CallOptions:
    """How a model (or a nested topology) is asked.

    ``prompt`` wraps the text for a model; ``values`` fill its other placeholders (such as
    ``{original}``). ``output`` constrains a model's reply to a JSON schema. ``timeout_s``
    bounds this call on top of the request's deadline. A nested topology applies its own
    prompts and formats, so only ``timeout_s`` and the text reach it.
    """

    prompt: PromptTemplate = field(default_factory=PromptTemplate)
    max_tokens: int = 256
    temperature: float = 0.0
    timeout_s: float | None = None
    values: Mapping[str, str] = field(default_factory=dict)
    output: JsonSchemaFormat | None = None
