"""Group answers that say the same thing: exactly (after normalization) or by meaning.

Used by votes, consensus and weighted ensembles. Groups keep the order in which their first
member answered, which is what makes tie-breaking deterministic.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

from ._context import RequestContext
from ._spec import Grouping

__all__ = ["AnswerGroup", "cosine", "group_answers", "normalize"]

_PUNCT_EDGES = re.compile(r"^[\W_]+|[\W_]+$")
_SPACES = re.compile(r"\s+")


def normalize(answer: str) -> str:
    """Case-folded, accents composed, outer punctuation and repeated spaces removed."""
    text = unicodedata.normalize("NFKC", answer).casefold().strip()
    return _SPACES.sub(" ", _PUNCT_EDGES.sub("", text))


@dataclass(frozen=True)
class AnswerGroup:
    """Answers judged the same: their indices, and the one that stands for them."""

    indices: tuple[int, ...]
    representative: str


async def group_answers(
    answers: Sequence[str], grouping: Grouping, ctx: RequestContext, parent_id: str
) -> list[AnswerGroup]:
    """Group ``answers`` per ``grouping``; the first group holds the first answer."""
    if grouping.mode == "exact" or grouping.embedder is None or len(answers) < 2:
        return _exact(answers)
    reply = await ctx.embed(grouping.embedder.name, tuple(answers), parent_id=parent_id)
    return _semantic(answers, reply.vectors, grouping.threshold)


def _exact(answers: Sequence[str]) -> list[AnswerGroup]:
    keyed: dict[str, list[int]] = {}
    for index, answer in enumerate(answers):
        keyed.setdefault(normalize(answer), []).append(index)
    return [
        AnswerGroup(indices=tuple(indices), representative=answers[indices[0]].strip())
        for indices in keyed.values()
    ]


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    """Cosine similarity of two vectors (0 when either is all zeros)."""
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    norm = (sum(x * x for x in a) * sum(y * y for y in b)) ** 0.5
    return dot / norm if norm else 0.0


def _semantic(
    answers: Sequence[str], vectors: Sequence[Sequence[float]], threshold: float
) -> list[AnswerGroup]:
    n = len(answers)
    sim = [[cosine(vectors[i], vectors[j]) for j in range(n)] for i in range(n)]
    groups: list[list[int]] = []
    for index in range(n):
        # Join the first group this answer is close to on average; otherwise start one.
        for group in groups:
            if sum(sim[index][j] for j in group) / len(group) >= threshold:
                group.append(index)
                break
        else:
            groups.append([index])
    result = []
    for group in groups:
        # The most central answer (closest on average to the rest) speaks for the group.
        central = max(group, key=lambda i: (sum(sim[i][j] for j in group), -i))
        result.append(AnswerGroup(indices=tuple(group), representative=answers[central].strip()))
    return result
