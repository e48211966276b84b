"""Labelled datasets for ``cantata eval``: JSON Lines, one request per line.

Each line is a JSON object with ``input`` (the request text) and ``label`` (the route a router
should take) and/or ``expected`` (the answer a topology should give); ``id`` is optional. Blank
lines are skipped. Every string is untrusted and bounded; every problem names its line.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from pydantic import Field, PositiveInt, ValidationError, model_validator

from cantata.agents import Frozen, TopologySpecError

__all__ = [
    "MAX_DATASET_BYTES",
    "MAX_EXAMPLES",
    "Dataset",
    "DatasetError",
    "Example",
    "load_dataset",
    "parse_dataset",
]

MAX_DATASET_BYTES = 64 * 2**20
MAX_EXAMPLES = 100_000
MAX_INPUT_CHARS = 32_000
MAX_LABEL_CHARS = 200
MAX_EXPECTED_CHARS = 8_000
# Enough to fix a file in one pass without flooding the terminal with a broken one.
_MAX_PROBLEMS = 20


class DatasetError(TopologySpecError):
    """A dataset file is missing, too large, or has invalid lines (``.problems``, by line)."""

    def __init__(self, message: str, *, problems: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.problems = problems


class Example(Frozen):
    """One labelled request: its 1-based ``line`` in the file, the input, and what is right."""

    line: PositiveInt
    input: str = Field(max_length=MAX_INPUT_CHARS)
    label: str | None = Field(default=None, min_length=1, max_length=MAX_LABEL_CHARS)
    expected: str | None = Field(default=None, max_length=MAX_EXPECTED_CHARS)
    id: str | None = Field(default=None, max_length=MAX_LABEL_CHARS)

    @model_validator(mode="after")
    def _has_truth(self) -> Example:
        if self.label is None and self.expected is None:
            raise ValueError("needs 'label' (the right route) or 'expected' (the right answer)")
        return self


class Dataset(Frozen):
    """A validated dataset: where it came from and its examples in file order."""

    source: str
    examples: tuple[Example, ...] = Field(min_length=1)

    def __len__(self) -> int:
        return len(self.examples)


def _line_problems(number: int, text: str) -> tuple[Example | None, list[str]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, [f"line {number}: not JSON ({exc.msg} at column {exc.colno})"]
    if not isinstance(data, dict):
        return None, [f"line {number}: must be a JSON object, not {type(data).__name__}"]
    if "line" in data:
        return None, [f"line {number}: 'line' is not a dataset field"]
    try:
        return Example.model_validate({**data, "line": number}), []
    except ValidationError as exc:
        problems = []
        for error in exc.errors(include_url=False, include_input=False):
            where = ".".join(str(part) for part in error["loc"])
            # Pydantic's "Value error, ..." prefix says nothing the reader needs.
            message = error["msg"].removeprefix("Value error, ")
            problems.append(f"line {number}: {where + ': ' if where else ''}{message}")
        return None, problems


def parse_dataset(lines: Iterable[str], *, source: str = "<dataset>") -> Dataset:
    """Validate JSON Lines text (an iterable of lines); raise :class:`DatasetError` if invalid."""
    examples: list[Example] = []
    problems: list[str] = []
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        if len(examples) >= MAX_EXAMPLES:
            raise DatasetError(f"{source} has more than {MAX_EXAMPLES} examples")
        example, found = _line_problems(number, text)
        problems.extend(found)
        if example is not None:
            examples.append(example)
    if problems:
        shown = problems[:_MAX_PROBLEMS]
        more = len(problems) - len(shown)
        listing = "\n".join(f"  {p}" for p in shown) + (f"\n  … and {more} more" if more else "")
        raise DatasetError(f"{source} has invalid lines:\n{listing}", problems=tuple(problems))
    if not examples:
        raise DatasetError(f"{source} has no examples")
    return Dataset(source=source, examples=tuple(examples))


def load_dataset(path: str | Path) -> Dataset:
    """Read and validate a JSON Lines dataset file (at most ``MAX_DATASET_BYTES``)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_DATASET_BYTES:
            raise DatasetError(
                f"{path} is {size} bytes; datasets are limited to {MAX_DATASET_BYTES} bytes"
            )
        raw = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DatasetError(f"{path}: line {line} is not UTF-8") from None
    return parse_dataset(text.splitlines(), source=str(path))
