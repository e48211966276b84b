"""Loading evaluation datasets: every bad line is named, with why; sizes are bounded."""

from __future__ import annotations

import json

import pytest

from cantata.agents import FunctionConfig, ModelSpec, TopologySpecError
from cantata.topologies import (
    DatasetError,
    EmbeddingClassifier,
    Label,
    RouterSpec,
    SingleSpec,
    check_dataset,
    load_dataset,
    parse_dataset,
)
from cantata.topologies import _eval_dataset as module


def lines(*rows: object) -> list[str]:
    return [row if isinstance(row, str) else json.dumps(row) for row in rows]


def test_a_valid_dataset_keeps_file_line_numbers_and_skips_blank_lines():
    dataset = parse_dataset(
        lines({"input": "hi", "label": "general"}, "", "   ", {"input": "2+2?", "expected": "4"}),
        source="d.jsonl",
    )

    assert dataset.source == "d.jsonl"
    assert [e.line for e in dataset.examples] == [1, 4]
    assert dataset.examples[0].label == "general"
    assert dataset.examples[0].expected is None
    assert dataset.examples[1].expected == "4"
    assert len(dataset) == 2


def test_a_whitespace_only_input_is_a_valid_request():
    (example,) = parse_dataset(lines({"input": "   ", "label": "general"})).examples
    assert example.input == "   "


@pytest.mark.parametrize(
    ("row", "problem"),
    [
        ('{"input": "hi", "label": ', "line 2: not JSON"),
        ('["hi", "general"]', "line 2: must be a JSON object, not list"),
        ({"label": "general"}, "line 2: input: Field required"),
        ({"input": "hi"}, "line 2: needs 'label' (the right route) or 'expected'"),
        ({"input": "hi", "lable": "general"}, "line 2: lable: Extra inputs are not permitted"),
        ({"input": 3, "label": "general"}, "line 2: input: Input should be a valid string"),
        ({"input": "hi", "label": ""}, "line 2: label: String should have at least 1 character"),
        ({"input": "hi", "label": "x", "line": 9}, "line 2: 'line' is not a dataset field"),
        ({"input": "x" * 32_001, "label": "a"}, "line 2: input: String should have at most"),
    ],
)
def test_a_bad_line_is_named_with_the_reason(row, problem):
    with pytest.raises(DatasetError) as caught:
        parse_dataset(lines({"input": "ok", "label": "a"}, row), source="d.jsonl")

    assert str(caught.value).startswith("d.jsonl has invalid lines:")
    assert problem in str(caught.value)
    assert len(caught.value.problems) == 1


def test_every_bad_line_is_collected_but_only_the_first_twenty_are_printed():
    rows = lines(*(["not json"] * 25))
    with pytest.raises(DatasetError) as caught:
        parse_dataset(rows)

    assert len(caught.value.problems) == 25
    assert "line 20: not JSON" in str(caught.value)
    assert "line 21" not in str(caught.value)
    assert "… and 5 more" in str(caught.value)


def test_an_empty_dataset_is_an_error():
    with pytest.raises(DatasetError, match="has no examples"):
        parse_dataset(["", "  "], source="empty.jsonl")


def test_a_dataset_error_is_a_topology_spec_error():
    # So the CLI reports it like an invalid topology file: exit code 2.
    assert issubclass(DatasetError, TopologySpecError)


def test_load_dataset_reads_a_file(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"input": "hi", "label": "general"}\n', encoding="utf-8")
    assert load_dataset(path).examples[0].input == "hi"


def test_a_missing_file_is_a_dataset_error(tmp_path):
    with pytest.raises(DatasetError, match="cannot read"):
        load_dataset(tmp_path / "nope.jsonl")


def test_a_file_that_is_not_utf8_names_the_line(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"input": "ok", "label": "a"}\n{"input": "caf\xe9", "label": "a"}\n')
    with pytest.raises(DatasetError, match="line 2 is not UTF-8"):
        load_dataset(path)


def test_a_file_over_the_size_limit_is_refused_before_reading(tmp_path, monkeypatch):
    path = tmp_path / "big.jsonl"
    path.write_text('{"input": "hi", "label": "general"}\n' * 10, encoding="utf-8")
    monkeypatch.setattr(module, "MAX_DATASET_BYTES", 100)
    with pytest.raises(DatasetError, match="datasets are limited to 100 bytes"):
        load_dataset(path)


def test_more_examples_than_the_limit_are_refused(monkeypatch):
    monkeypatch.setattr(module, "MAX_EXAMPLES", 3)
    with pytest.raises(DatasetError, match="more than 3 examples"):
        parse_dataset(lines(*([{"input": "x", "label": "a"}] * 4)))


# ------------------------------------------------------------------- fitting the topology


def model(name: str) -> ModelSpec:
    return ModelSpec(name=name, backend=FunctionConfig(fn=lambda _request: "ok"))


ROUTER = RouterSpec(
    name="r",
    classifier=EmbeddingClassifier(
        model=model("e"),
        labels={"billing": Label(description="money"), "account": Label(description="login")},
    ),
    routes={"billing": model("b"), "general": model("g")},
    default="general",
)


def test_a_router_dataset_may_use_routes_and_labels_without_routes():
    dataset = parse_dataset(
        lines(
            {"input": "a", "label": "billing"},
            {"input": "b", "label": "general"},
            {"input": "c", "label": "account"},  # a label with no route: it can only default
        )
    )
    check_dataset(ROUTER, dataset)


def test_a_router_dataset_needs_known_labels_on_every_line():
    dataset = parse_dataset(
        lines(
            {"input": "a", "label": "billing"},
            {"input": "b", "expected": "an answer"},
            {"input": "c", "label": "refunds"},
        ),
        source="r.jsonl",
    )
    with pytest.raises(DatasetError) as caught:
        check_dataset(ROUTER, dataset)

    message = str(caught.value)
    assert message.startswith("r.jsonl does not fit topology 'r':")
    assert "line 2: a router's examples need 'label'" in message
    assert "line 3: label 'refunds' is not one of ['account', 'billing', 'general']" in message


def test_other_topologies_need_expected_answers():
    spec = SingleSpec(name="s", model=model("m"))
    dataset = parse_dataset(lines({"input": "a", "expected": "x"}, {"input": "b", "label": "y"}))
    with pytest.raises(DatasetError, match="line 2: a single topology's examples need 'expected'"):
        check_dataset(spec, dataset)
