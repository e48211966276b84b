"""``cantata deploy | status | call | scale | down`` against a real ``ray start`` cluster."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.model

ROOT = Path(__file__).resolve().parents[2]
CANTATA = Path(sys.executable).with_name("cantata")


def cantata(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.run(
        [str(CANTATA), *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
        env=env, check=False,
    )  # fmt: skip


def available(address: str) -> dict[str, float]:
    """The cluster's available resources, read by a separate driver."""
    code = (
        "import json, ray\n"
        f"ray.init(address={address!r}, logging_level='ERROR',"
        f" _node_ip_address={address.split(':', maxsplit=1)[0]!r})\n"
        "print(json.dumps({k: v for k, v in ray.available_resources().items()"
        " if not k.startswith('node:') and k != 'object_store_memory'}))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_AUTH_MODE"] = "token"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    resources: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return resources


def json_of(done: subprocess.CompletedProcess[str]) -> Any:
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    return json.loads(done.stdout)


def priced_copy(example: Path, into: Path) -> Path:
    """``example`` with a price on every model: per token, and per hour of each replica."""
    data = yaml.safe_load(example.read_text(encoding="utf-8"))

    def price(node: Any) -> None:
        if isinstance(node, dict):
            if "backend" in node and "name" in node:
                node["pricing"] = {"input_per_mtok": 100, "output_per_mtok": 200, "per_hour": 3.6}
            for value in node.values():
                price(value)
        elif isinstance(node, list):
            for value in node:
                price(value)

    price(data)
    path = into / example.name
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_deploy_status_call_cost_scale_down_the_router_example(cli_cluster, tmp_path):
    before = available(cli_cluster)
    router = priced_copy(ROOT / "examples" / "router.yaml", tmp_path)
    deployed = json_of(
        cantata("deploy", str(router), "--name", "triage", "--address", cli_cluster,
                "--alert-usd-per-hour", "1", "--json")
    )  # fmt: skip
    try:
        status = json_of(cantata("status", "triage", "--address", cli_cluster, "--json"))
        (deployment,) = status["deployments"]
        assert deployment["name"] == "triage"
        assert deployment["topology"] == deployed["deployments"][0]["topology"]
        models = {m["name"]: m for m in deployment["models"]}
        assert set(models) == {"e5", "billing-agent", "shipping-agent", "general-agent"}
        for model in models.values():
            (replica,) = model["replicas"]
            assert replica["healthy"], replica
            assert replica["node_id"]
            assert set(replica) >= {"actor_id", "node_id", "healthy", "in_flight", "served"}
            assert model["resources"]["num_cpus"] > 0

        result = json_of(
            cantata("call", "triage", "--input", "I was charged twice for my order",
                    "--address", cli_cluster, "--json")
        )  # fmt: skip
        assert result["route"]["label"] == "billing"
        assert result["text"].strip()
        assert {s["actor_id"] for s in result["trace"] if s["model"]} <= {
            r["actor_id"] for m in models.values() for r in m["replicas"]
        }
        spent = sum(s["cost_usd"] for s in result["trace"] if s["model"])
        assert spent > 0
        assert spent == pytest.approx(result["cost_usd"])

        cost = json_of(cantata("cost", "triage", "--by", "model", "--address", cli_cluster,
                               "--json"))  # fmt: skip
        rows = {row["key"]: row for row in cost["rows"]}
        assert set(rows) == set(models)  # every model holds a priced reservation
        assert cost["total"]["requests"] == 1
        assert rows["e5"]["calls"] >= 1
        assert rows["billing-agent"]["output_tokens"] > 0
        assert rows["billing-agent"]["requests"] == 1
        for field in ("input_tokens", "output_tokens", "token_cost_usd", "reservation_cost_usd"):
            assert sum(row[field] for row in rows.values()) == pytest.approx(cost["total"][field])
        assert cost["total"]["token_cost_usd"] == pytest.approx(spent)
        assert cost["total"]["total_usd"] == pytest.approx(
            cost["total"]["token_cost_usd"] + cost["total"]["reservation_cost_usd"]
        )
        by_route = json_of(cantata("cost", "triage", "--by", "route", "--since", "1h",
                                   "--address", cli_cluster, "--json"))  # fmt: skip
        assert {row["key"] for row in by_route["rows"]} == {"billing", "(reserved capacity)"}

        # Four replicas at $3.60 an hour are $14.40 an hour, above the $1 alert.
        spend = json_of(cantata("status", "triage", "--address", cli_cluster, "--json"))[
            "deployments"
        ][0]["spend"]
        assert spend["alerting"]
        assert spend["alert_usd_per_hour"] == 1
        text = cantata("status", "triage", "--address", cli_cluster)
        assert "ALERT" in text.stdout

        scaled = json_of(
            cantata("scale", "triage", "general-agent", "2", "--address", cli_cluster, "--json")
        )
        general = {m["name"]: m for m in scaled["deployments"][0]["models"]}["general-agent"]
        assert len(general["replicas"]) == 2
    finally:
        down = cantata("down", "triage", "--address", cli_cluster, "--json")
    assert json_of(down) == {"down": "triage"}
    give_up = time.monotonic() + 30
    while available(cli_cluster) != before and time.monotonic() < give_up:
        time.sleep(1)
    assert available(cli_cluster) == before
    listing = json_of(cantata("status", "--address", cli_cluster, "--json"))
    assert listing == {"deployments": []}


def test_deploy_commands_need_a_cluster():
    done = cantata("status", "--json")
    assert done.returncode == 1
    assert "--address" in json.loads(done.stdout)["error"]["message"]


def test_a_team_hosted_on_its_own_node_answers_in_one_trace(cli_cluster):
    """examples/triage_cluster.yaml: the refund team and its judges run on the team_b node."""
    address = ["--address", cli_cluster]
    deployed = cantata("deploy", "examples/triage_cluster.yaml", "--name", "triage", *address)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr[-3000:]
    try:
        (status,) = json_of(cantata("status", "triage", *address, "--json"))["deployments"]
        (team,) = [a for a in status["agents"] if a["name"] == "refund-team"]
        (coordinator,) = [a for a in status["agents"] if a["role"] == "coordinator"]
        team_node = team["replicas"][0]["node_id"]
        assert team["resources"]["custom"] == {"team_b": 0.1}
        judges = [m for m in status["models"] if m["name"].startswith("refund-judge")]
        assert len(judges) == 3
        assert {r["node_id"] for m in judges for r in m["replicas"]} == {team_node}
        assert coordinator["replicas"][0]["node_id"] != team_node  # one CPU on team_b

        text = "I was charged twice for the same order, please refund one payment."
        result = json_of(cantata("call", "triage", "--input", text, *address, "--json"))
        assert result["route"]["label"] == "billing"
        assert result["text"] == "approve"
        trace = result["trace"]
        ids = {span["span_id"] for span in trace}
        assert trace[0]["parent_id"] is None
        assert all(span["parent_id"] in ids for span in trace[1:])
        team_root = next(span for span in trace if span["agent"] == "refund-team")
        assert team_root["node_id"] == team_node
        assert len({span["node_id"] for span in trace}) >= 2
        assert len({span["actor_id"] for span in trace}) >= 3
    finally:
        cantata("down", "triage", *address)


def test_custom_classes_and_roles_named_in_a_file_work_in_run_and_deploy(cli_cluster):
    """examples/custom_code.yaml: a GuardedModelActor and a VetoVoter, by import path."""
    text = "I forgot my password and was charged twice, refund please."

    def check(result: dict[str, Any]) -> None:
        replies = {reply["member"]: reply for reply in result["replies"]}
        assert "refused" in replies["judge-1"]["error"]  # the custom actor class ran
        assert result["decision"]["winner"] in {"approve", "escalate-to-human"}

    check(json_of(cantata("run", "examples/custom_code.yaml", "--input", text, "--json")))
    address = ["--address", cli_cluster]
    deployed = cantata("deploy", "examples/custom_code.yaml", "--name", "custom", *address)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr[-3000:]
    try:
        check(json_of(cantata("call", "custom", "--input", text, *address, "--json")))
    finally:
        cantata("down", "custom", *address)
