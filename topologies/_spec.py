"""Topology specs: typed, validated data, written in Python or YAML.

A spec names its ``pattern``; that picks the spec class. Load a YAML file with
:func:`load_topology`; every problem comes back as a :class:`~cantata.agents.TopologySpecError`
that says where in the file it is.
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import Field, PositiveInt, TypeAdapter, ValidationError

from cantata.agents import Frozen, ModelSpec, TopologySpecError

from ._prompt import PromptTemplate

__all__ = ["SingleSpec", "TopologySpec", "load_topology", "parse_topology"]


class _TopologyBase(Frozen):
    name: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_.-]{0,62}$")
    description: str = ""
    timeout_s: float | None = Field(
        default=300.0, gt=0, description="Deadline for one request, seconds; null for none."
    )
    max_tokens_budget: PositiveInt | None = Field(
        default=None, description="Tokens one request may spend across every model call."
    )

    @abc.abstractmethod
    def models(self) -> tuple[ModelSpec, ...]:
        """Every model this topology starts."""


class SingleSpec(_TopologyBase):
    """One model answers the request."""

    pattern: Literal["single"] = "single"
    model: ModelSpec
    prompt: PromptTemplate = Field(default_factory=PromptTemplate)
    max_tokens: PositiveInt = 256
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)

    def models(self) -> tuple[ModelSpec, ...]:
        return (self.model,)


TopologySpec = Annotated[SingleSpec, Field(discriminator="pattern")]
"""Every pattern's spec, discriminated by ``pattern``."""

_ADAPTER: TypeAdapter[TopologySpec] = TypeAdapter(TopologySpec)


def parse_topology(data: object, *, source: str = "<topology>") -> SingleSpec:
    """Validate a topology given as a dict (parsed YAML) or a spec object."""
    try:
        return _ADAPTER.validate_python(data)
    except ValidationError as exc:
        problems = [
            f"  {'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}"
            for err in exc.errors(include_url=False, include_input=False)
        ]
        raise TopologySpecError(
            f"{source} is not a valid topology:\n" + "\n".join(problems)
        ) from None


def load_topology(path: str | Path) -> SingleSpec:
    """Read and validate a topology YAML file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise TopologySpecError(f"cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise TopologySpecError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise TopologySpecError(f"{path} must hold a mapping with a 'pattern' key")
    return parse_topology(data, source=str(path))
