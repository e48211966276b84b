"""The Grafana dashboard queries only series Cantata exports, by labels those series carry.

A static check of ``docs/grafana/cantata.json`` against :data:`cantata.cluster.SERIES` and the
tag keys declared in ``cantata.cluster._metrics``: renaming a metric or a label without updating
the dashboard fails here, and so does a series table in ``docs/monitoring.md`` that no longer
matches the definitions. (tests/ray/test_observability.py checks what a real Ray exports.)
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from cantata.cluster import SERIES
from cantata.cluster._metrics import _DEFINITIONS

DOCS = Path(__file__).resolve().parents[2] / "docs"
DASHBOARD = DOCS / "grafana" / "cantata.json"
GUIDE = DOCS / "monitoring.md"

METRIC = re.compile(r"\bray_cantata_[a-z_]+")
SELECTOR = re.compile(r"\b(ray_cantata_[a-z_]+)\s*\{([^}]*)\}")
MATCHER = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)")
GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"')
LABEL_VALUES = re.compile(r"label_values\(\s*(ray_cantata_[a-z_]+)[^,]*,\s*([A-Za-z_]\w*)\s*\)")
# Labels Ray's metrics agent adds to every series it exports.
RAY_LABELS = frozenset({"NodeAddress", "WorkerId", "SessionName", "Component", "Version"})
GUIDE_ROW = re.compile(r"^\| (`ray_cantata_[^|]*) \| (\w+) \| ([^|]*) \| ([^|]*) \|$", re.MULTILINE)
UNITS = frozenset({"s", "reqps", "currencyUSD", "percentunit", "short"})


def _definition(series: str) -> str:
    """The metric (a key of ``_DEFINITIONS``) that Prometheus series ``series`` comes from."""
    owners = [name for name in _DEFINITIONS if series.startswith(f"ray_{name}")]
    return max(owners, key=len)


def _labels(series: str) -> frozenset[str]:
    """The labels ``series`` may be queried by: its tag keys, Ray's own, ``le`` for buckets."""
    kind, _, tags = _DEFINITIONS[_definition(series)]
    bucket = {"le"} if kind == "histogram" and series.endswith("_bucket") else set()
    return frozenset(tags) | RAY_LABELS | bucket


def problems(expr: str) -> list[str]:
    """What is wrong with one PromQL expression against Cantata's series; empty when nothing."""
    names = set(METRIC.findall(expr))
    found = [f"unknown series {name}" for name in sorted(names - set(SERIES))]
    known = names & set(SERIES)
    for name, body in SELECTOR.findall(expr):
        if name not in known:
            continue
        for label in MATCHER.findall(QUOTED.sub('""', body)):
            if label not in _labels(name):
                found.append(f"{name} has no label {label!r}")
    # A grouping label must be one that every series the expression reads carries; the
    # le of histogram_quantile comes from its _bucket series.
    buckets = {name for name in known if name.endswith("_bucket")}
    for clause in GROUPING.findall(expr):
        for label in filter(None, (part.strip() for part in clause.split(","))):
            lacking = sorted(
                name
                for name in known
                if label not in _labels(name) and not (label == "le" and buckets)
            )
            if lacking:
                found.append(f"grouping by {label!r}, which {', '.join(lacking)} lack")
    return found


def _dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def _panels() -> list[dict[str, Any]]:
    return _dashboard()["panels"]


def _exprs() -> list[tuple[str, str]]:
    return [(panel["title"], target["expr"]) for panel in _panels() for target in panel["targets"]]


def test_the_dashboard_is_a_grafana_dashboard_with_unique_panel_ids_and_titles():
    dashboard = _dashboard()
    assert dashboard["title"]
    assert dashboard["uid"]
    assert isinstance(dashboard["schemaVersion"], int)
    assert dashboard["schemaVersion"] >= 36
    panels = dashboard["panels"]
    assert panels
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    titles = [panel["title"] for panel in panels]
    assert all(titles)
    assert len(titles) == len(set(titles))
    for panel in panels:
        assert {"h", "w", "x", "y"} <= panel["gridPos"].keys(), panel["title"]
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]
        assert panel["fieldConfig"]["defaults"]["unit"] in UNITS, panel["title"]


def test_every_panel_has_targets_with_a_query_a_legend_and_the_datasource_variable():
    names = {variable["name"] for variable in _dashboard()["templating"]["list"]}
    assert {"datasource", "deployment", "model"} <= names
    for panel in _panels():
        assert panel["targets"], f"{panel['title']} has no target"
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
            assert "legendFormat" in target, panel["title"]
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]


@pytest.mark.parametrize(("title", "expr"), _exprs())
def test_every_query_reads_cantata_series_by_their_own_labels(title: str, expr: str):
    assert METRIC.search(expr), f"{title}: reads no Cantata series"
    assert problems(expr) == [], title


@pytest.mark.parametrize(("title", "expr"), _exprs())
def test_every_query_is_filtered_by_the_deployment_variable(title: str, expr: str):
    selectors = SELECTOR.findall(expr)
    assert len(selectors) == len(METRIC.findall(expr)), f"{title}: a series without a matcher"
    for name, body in selectors:
        assert 'deployment=~"$deployment"' in body, f"{title}: {name} is not filtered"


def test_the_template_variables_read_cantata_series_by_their_labels():
    queries = [
        variable.get("definition") or variable["query"]
        for variable in _dashboard()["templating"]["list"]
        if variable["type"] == "query"
    ]
    assert queries
    for query in queries:
        series, label = LABEL_VALUES.search(query).groups()
        assert series in SERIES, query
        assert label in _labels(series), query
        assert problems(query) == [], query


def test_every_cantata_metric_has_a_panel():
    used = {_definition(name) for _, expr in _exprs() for name in METRIC.findall(expr)}
    assert set(_DEFINITIONS) - used == set()


@pytest.mark.parametrize(
    ("expr", "problem"),
    [
        # a renamed metric
        ('sum(rate(ray_cantata_model_call_total{deployment=~"$deployment"}[5m]))', "unknown"),
        # the metric's name without Ray's _total
        ('sum(rate(ray_cantata_requests{deployment=~"$deployment"}[5m]))', "unknown"),
        # a label the metric does not carry
        ('sum(rate(ray_cantata_requests_total{model="m"}[5m]))', "no label 'model'"),
        ("sum by (route) (rate(ray_cantata_route_decisions_total[5m]))", "grouping by 'route'"),
        # le is a label of the buckets only
        ("sum by (le) (ray_cantata_model_latency_seconds_count)", "grouping by 'le'"),
    ],
)
def test_the_check_catches_renamed_metrics_and_unknown_labels(expr: str, problem: str):
    assert any(problem in found for found in problems(expr))


def test_the_monitoring_guide_lists_every_series_as_defined():
    documented = {
        tuple(re.findall(r"`([^`]+)`", series)): (kind, tuple(labels.split(", ")), meaning)
        for series, kind, labels, meaning in GUIDE_ROW.findall(GUIDE.read_text(encoding="utf-8"))
    }
    defined = {
        tuple(series for series in SERIES if _definition(series) == name): (kind, tags, meaning)
        for name, (kind, meaning, tags) in _DEFINITIONS.items()
    }
    assert documented == defined
