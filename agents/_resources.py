"""The typed resource reservation of one model replica.

A :class:`Resources` says what one replica needs; the cluster layer turns it into Ray actor
options or a placement-group bundle. Ray's resources are logical: a reservation does not limit
what the process uses, so backends size their threads to it (llama.cpp's ``n_threads``).
"""

from __future__ import annotations

import re

from pydantic import Field, NonNegativeFloat, field_validator, model_validator

from ._messages import Frozen

__all__ = ["Resources", "parse_bytes"]

_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")
_RESERVED_NAMES = frozenset({"CPU", "GPU", "memory", "object_store_memory"})


def parse_bytes(value: int | float | str) -> int:
    """Bytes from ``512MiB``, ``2GB``, ``1.5GiB`` or a plain number."""
    if isinstance(value, int | float):
        return int(value)
    match = _SIZE.match(value)
    if not match or match.group(2).lower() not in _UNITS:
        raise ValueError(f"not a size: {value!r} (use e.g. 512MiB, 2GB, or bytes)")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


class Resources(Frozen):
    """What one replica of a model reserves on the node that hosts it.

    ``num_gpus`` may be fractional (``0.25`` shares a GPU four ways); above 1 it must be whole.
    ``custom`` names resources that nodes declare (``{"big_model": 1}`` pins to nodes with it).
    ``accelerator_type`` asks for a GPU kind such as ``"H100"`` or ``"A10G"``.
    """

    num_cpus: NonNegativeFloat = 1.0
    num_gpus: NonNegativeFloat = 0.0
    memory: int | None = Field(default=None, ge=0, description="Bytes of logical memory.")
    custom: dict[str, NonNegativeFloat] = Field(default_factory=dict)
    accelerator_type: str | None = None

    @field_validator("memory", mode="before")
    @classmethod
    def _memory_units(cls, value: object) -> object:
        return parse_bytes(value) if isinstance(value, str) else value

    @field_validator("custom")
    @classmethod
    def _custom_names(cls, value: dict[str, float]) -> dict[str, float]:
        clash = sorted(_RESERVED_NAMES.intersection(value))
        if clash:
            raise ValueError(f"use the typed fields, not custom, for {clash}")
        return value

    @model_validator(mode="after")
    def _whole_gpus_above_one(self) -> Resources:
        if self.num_gpus > 1 and not float(self.num_gpus).is_integer():
            raise ValueError("num_gpus above 1 must be a whole number")
        if self.accelerator_type and self.num_gpus == 0:
            raise ValueError("accelerator_type needs num_gpus > 0")
        return self

    def demand(self) -> dict[str, float]:
        """Every resource asked for, by Ray's names, zero amounts left out."""
        wanted: dict[str, float] = {"CPU": self.num_cpus, "GPU": self.num_gpus}
        if self.memory:
            wanted["memory"] = float(self.memory)
        if self.accelerator_type:
            # Ray schedules accelerator types through this implicit node resource.
            wanted[f"accelerator_type:{self.accelerator_type}"] = 0.001
        wanted.update(self.custom)
        return {name: amount for name, amount in wanted.items() if amount > 0}
