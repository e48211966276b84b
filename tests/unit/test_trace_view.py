"""``--trace``: the span tree drawn from a RunResult's parent links, rendered with rich."""

from __future__ import annotations

from rich.console import Console
from rich.text import Text
from rich.tree import Tree

from cantata.agents import Span, Usage
from cantata.cluster._trace_view import trace_tree
from cantata.topologies import RunResult

T0 = 1_800_000_000.0
NODE = "a244b1c2" + "f" * 48


def span(span_id: str, parent_id: str | None, start: float, **fields) -> Span:
    return Span(
        span_id=span_id,
        parent_id=parent_id,
        trace_id="trace-1",
        start=T0 + start,
        end=T0 + start + 0.1,
        latency_ms=100.0,
        **{"agent": span_id, **fields},
    )


def result(*spans: Span) -> RunResult:
    return RunResult(
        topology="triage",
        pattern="router",
        trace_id="trace-1",
        text="answer",
        usage=Usage(input_tokens=30, output_tokens=12),
        latency_ms=300.0,
        trace=spans,
    )


def render(tree: Tree, width: int = 200) -> str:
    console = Console(record=True, width=width, color_system=None)
    console.print(tree)
    return console.export_text()


def model_span(span_id: str, parent_id: str, start: float, **fields) -> Span:
    return span(
        span_id,
        parent_id,
        start,
        model="SmolLM2-135M-Instruct.Q4_1",
        model_version="135m-instruct-q4_1",
        actor_id="actor-1",
        node_id=NODE,
        input_tokens=21,
        output_tokens=7,
        cost_usd=0.000123,
        **fields,
    )


def test_the_tree_follows_parent_links_with_children_in_start_order():
    trace = result(
        span("root", None, 0),
        span("router", "root", 0.01),
        # Recorded out of order: the later one ended first.
        model_span("billing", "root", 0.30),
        model_span("classify", "router", 0.02),
        model_span("embed", "router", 0.015),
    )
    lines = render(trace_tree(trace)).splitlines()
    names = [line.strip("│├└─ ").split(" · ")[0] for line in lines]
    assert names == ["root", "router", "embed", "classify", "billing"]
    # Nesting shows in the guides: the router's children are one level deeper.
    assert lines[0].startswith("root")
    assert lines[1].startswith("├── router")
    assert lines[2].startswith("│   ├── embed")
    assert lines[3].startswith("│   └── classify")
    assert lines[4].startswith("└── billing")


def test_a_model_node_shows_model_version_node_latency_tokens_cost_and_status():
    text = render(trace_tree(result(span("root", None, 0), model_span("smollm2", "root", 0.01))))
    model_line = text.splitlines()[1]
    assert "smollm2" in model_line
    assert "SmolLM2-135M-Instruct.Q4_1@135m-instruct-q4_1" in model_line
    assert "node a244b1c2 ·" in model_line  # short: the full id is in --json
    assert NODE not in model_line
    assert "100 ms" in model_line
    assert "21 in / 7 out" in model_line
    assert "$0.000123" in model_line
    assert model_line.rstrip().endswith("ok")
    # A role step spent no tokens: its line stays short.
    root_line = text.splitlines()[0]
    assert root_line.strip() == "root · 100 ms · ok"


def test_an_error_span_is_red_and_names_its_error_type():
    failed = model_span(
        "smollm2",
        "root",
        0.01,
        status="error",
        error="the deadline passed [after 2 s]",
        error_type="DeadlineExceededError",
    )
    tree = trace_tree(result(span("root", None, 0), failed))
    text = render(tree)
    assert "error DeadlineExceededError: the deadline passed [after 2 s]" in text
    label = tree.children[0].label
    assert isinstance(label, Text)
    red = [label.plain[part.start : part.end] for part in label.spans if "red" in str(part.style)]
    assert "error DeadlineExceededError" in red


def test_spans_whose_parent_is_missing_hang_from_the_root():
    trace = result(
        span("root", None, 0),
        span("orphan", "not-in-this-trace", 0.05),
        span("self-parent", "self-parent", 0.06),
        span("child-of-orphan", "orphan", 0.07),
    )
    lines = render(trace_tree(trace)).splitlines()
    assert lines[0].startswith("root")
    assert lines[1].startswith("├── orphan")
    assert lines[2].startswith("│   └── child-of-orphan")
    assert lines[3].startswith("└── self-parent")


def test_no_span_is_dropped_even_in_a_parent_loop():
    trace = result(
        span("root", None, 0),
        span("a", "b", 0.01),
        span("b", "a", 0.02),
    )
    text = render(trace_tree(trace))
    for name in ("root", "a", "b"):
        assert any(line.strip("│├└─ ").startswith(f"{name} ·") for line in text.splitlines())
    assert len(text.splitlines()) == 3


def test_the_root_is_the_parentless_span_even_if_not_first():
    trace = result(span("child", "root", 0.01), span("root", None, 0))
    lines = render(trace_tree(trace)).splitlines()
    assert lines[0].startswith("root")
    assert lines[1].startswith("└── child")


def test_an_empty_trace_still_renders():
    assert "no spans" in render(trace_tree(result()))


def test_agent_names_are_not_read_as_markup():
    text = render(trace_tree(result(span("[bold]root[/bold]", None, 0))))
    assert "[bold]root[/bold]" in text
