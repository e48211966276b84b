"""A run's trace as a tree for the terminal (``--trace``).

:func:`trace_tree` is pure: it turns a :class:`RunResult` into a ``rich.tree.Tree`` and prints
nothing, so the CLI chooses the stream (stdout after the answer, stderr under ``--json``) and
tests render it with ``Console(record=True)``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from rich.text import Text
from rich.tree import Tree

from cantata.agents import Span
from cantata.topologies import RunResult

__all__ = ["span_tree", "trace_tree"]

_SHORT_ID = 8  # enough to tell a cluster's nodes apart; the full ids are in --json
_SEPARATOR = " · "


def trace_tree(result: RunResult) -> Tree:
    """The spans of ``result`` as a tree, linked by ``parent_id``.

    The root span comes first; every span's children follow in start order. A span whose parent
    is not in the trace (or whose links loop) hangs from the root, so no span is ever dropped.
    Each node shows the agent, ``model@version`` for model calls, the short node id where known,
    latency, tokens in/out and cost where the step spent any (every model call shows them), and
    its status: errors in red with their error type.
    """
    return span_tree(result.trace, empty=f"{result.topology}: no spans recorded")


def span_tree(trace: Sequence[Span], *, empty: str = "no spans recorded") -> Tree:
    """Spans as a tree, as :func:`trace_tree` draws them (a failed request's trace, say)."""
    spans = tuple(trace)
    if not spans:
        return Tree(Text(empty, style="dim"))
    # RunResult promises the root first; choose a parentless span anyway if the order broke.
    root = next((i for i, span in enumerate(spans) if span.parent_id is None), 0)
    first_index: dict[str, int] = {}
    for i, span in enumerate(spans):
        first_index.setdefault(span.span_id, i)
    children: dict[int, list[int]] = defaultdict(list)
    for i, span in enumerate(spans):
        if i == root:
            continue
        parent = first_index.get(span.parent_id or "", root)
        children[root if parent == i else parent].append(i)
    for siblings in children.values():
        siblings.sort(key=lambda i: (spans[i].start, i))

    tree = Tree(_label(spans[root]))
    placed = {root}
    _grow(tree, root, spans, children, placed)
    # Spans in a parent loop are reachable from nowhere: hang them from the root as well.
    for i in range(len(spans)):
        if i not in placed:
            placed.add(i)
            _grow(tree.add(_label(spans[i])), i, spans, children, placed)
    return tree


def _grow(
    node: Tree,
    index: int,
    spans: tuple[Span, ...],
    children: dict[int, list[int]],
    placed: set[int],
) -> None:
    # Iterative, so a deep (or hostile) trace cannot exhaust the recursion limit.
    pending = [(node, index)]
    while pending:
        parent_node, parent = pending.pop()
        for child in children.get(parent, ()):
            if child in placed:
                continue
            placed.add(child)
            pending.append((parent_node.add(_label(spans[child])), child))


def _label(span: Span) -> Text:
    # Text pieces, not markup: agent names, models and error messages are user data and may
    # contain square brackets.
    label = Text()
    label.append(span.agent, style="bold")
    parts: list[Text] = []
    if span.model:
        parts.append(Text(f"{span.model}@{span.model_version or '?'}", style="cyan"))
    if span.node_id:
        parts.append(Text(f"node {span.node_id[:_SHORT_ID]}", style="dim"))
    parts.append(Text(f"{span.latency_ms:.0f} ms"))
    if span.model or span.input_tokens or span.output_tokens or span.cost_usd:
        parts.append(Text(f"{span.input_tokens} in / {span.output_tokens} out"))
        parts.append(Text(f"${span.cost_usd:.6f}"))
    if span.status == "error":
        parts.append(Text(f"error {span.error_type or 'unknown'}", style="bold red"))
    else:
        parts.append(Text("ok", style="green"))
    for part in parts:
        label.append(_SEPARATOR, style="dim")
        label.append_text(part)
    if span.status == "error" and span.error:
        label.append(f": {span.error}", style="red")
    return label
