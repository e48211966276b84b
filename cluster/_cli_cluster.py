"""``cantata cluster up | down | status``: a multi-node Ray cluster on loopback, for development."""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from cantata.agents import RuntimeFailure

from ._cli_common import JsonOption, print_json, report_failure
from ._local_cluster import (
    STATE_DIR_ENV,
    ClusterSpec,
    ClusterState,
    NodeInfo,
    Supervisor,
    client_env,
    default_state_dir,
    list_nodes,
    read_state,
    start,
    stop,
)

__all__ = ["add_cluster_commands"]

cluster_app = typer.Typer(
    name="cluster",
    help=(
        "A multi-node Ray cluster on this machine for development: every node on 127.0.0.1,"
        " every socket on loopback, Ray's token authentication on. Deploy to it with"
        " `cantata deploy`; for a real cluster see docs/security.md."
    ),
    no_args_is_help=True,
)

StateDirOption = Annotated[
    Path | None,
    typer.Option(
        "--state-dir",
        envvar=STATE_DIR_ENV,
        show_default="~/.cantata/cluster",
        help="Where the cluster's token, records and logs live (created private, 0700).",
    ),
]


def _state_dir(given: Path | None) -> Path:
    return (given.expanduser() if given else default_state_dir()).absolute()


def _exports(env: dict[str, str]) -> str:
    return "export " + " ".join(f"{key}={shlex.quote(value)}" for key, value in env.items())


def _cluster_json(
    state_dir: Path, supervisor: Supervisor, ready: ClusterState | None
) -> dict[str, Any]:
    data: dict[str, Any] = {
        "state_dir": str(state_dir),
        "supervisor_pid": supervisor.pid,
        "token_path": supervisor.token_path,
        "ray_tmpdir": supervisor.ray_tmpdir,
        "log": str(state_dir / "cluster.log"),
        "spec": supervisor.spec.model_dump(mode="json"),
    }
    if ready is not None:
        data |= {
            "address": ready.address,
            "dashboard_url": ready.dashboard_url,
            "session_dir": ready.session_dir,
            "env": client_env(state_dir, ready.address),
        }
    return data


def up_command(
    nodes: Annotated[
        int, typer.Option(min=1, help="Nodes in all: a head and NODES - 1 workers.")
    ] = 3,
    cpus_per_node: Annotated[
        int, typer.Option(min=1, help="Logical CPUs each node offers to reservations.")
    ] = 1,
    object_store_mib: Annotated[
        int, typer.Option(min=75, help="Each node's object store, in MiB.")
    ] = 150,
    dashboard: Annotated[
        bool, typer.Option(help="Start Ray's dashboard, on 127.0.0.1 (token protected).")
    ] = False,
    dashboard_port: Annotated[
        int, typer.Option(min=0, max=65535, help="The dashboard's port; 0 picks a free one.")
    ] = 0,
    port: Annotated[
        int | None,
        typer.Option(min=1, max=65535, help="The head's GCS port. Default: a free one."),
    ] = None,
    timeout: Annotated[
        float, typer.Option(min=1, help="Seconds to wait for every node to join.")
    ] = 120.0,
    state_dir: StateDirOption = None,
    json_output: JsonOption = False,
) -> None:
    """Start a head and NODES - 1 workers on 127.0.0.1; return once every node has joined.

    Every node listens on loopback only, with Ray's token authentication on and a token of
    the cluster's own (the state directory's auth_token, 0600). Ray's dashboard is off unless
    --dashboard. The command prints the address and the environment a client needs.
    """
    where = _state_dir(state_dir)
    spec = ClusterSpec(
        nodes=nodes,
        cpus_per_node=cpus_per_node,
        object_store_mib=object_store_mib,
        dashboard=dashboard,
        dashboard_port=dashboard_port,
        port=port,
        timeout_s=timeout,
    )
    try:
        supervisor, ready = start(where, spec)
    except Exception as exc:
        report_failure(exc, json_output)
    if json_output:
        print_json(_cluster_json(where, supervisor, ready))
        return
    console = Console(soft_wrap=True, highlight=False, markup=False)
    console.print(
        f"local Ray cluster up: {ready.nodes} node{'s' if ready.nodes > 1 else ''} on"
        f" {ready.address.rsplit(':', 1)[0]},"
        " every socket on loopback, token authentication on"
    )
    console.print(f"  address    {ready.address}")
    console.print(f"  token      {supervisor.token_path} (0600)")
    console.print(f"  dashboard  {ready.dashboard_url or 'off'}")
    console.print(f"  logs       {ready.session_dir}/logs")
    console.print("Use it from a shell:")
    console.print(f"  {_exports(client_env(where, ready.address))}")
    console.print("  cantata deploy examples/router.yaml --name triage")
    elsewhere = "" if where == default_state_dir().absolute() else f" --state-dir {where}"
    console.print(f"Stop it with `cantata cluster down{elsewhere}`.")
    if os.environ.get("RAY_AUTH_TOKEN"):
        Console(stderr=True, highlight=False, markup=False).print(
            "warning: RAY_AUTH_TOKEN is set in this shell and wins over RAY_AUTH_TOKEN_PATH:"
            " unset it before connecting to this cluster."
        )


def down_command(
    state_dir: StateDirOption = None,
    grace: Annotated[
        float,
        typer.Option(min=0, help="Seconds to let the nodes stop before they are killed."),
    ] = 30.0,
    json_output: JsonOption = False,
) -> None:
    """Stop the cluster `cantata cluster up` started from this state directory, and only it.

    Never runs `ray stop`: other Ray instances on the machine are left alone. The token is
    removed; the logs stay.
    """
    where = _state_dir(state_dir)
    try:
        stopped = stop(where, grace_s=grace)
    except Exception as exc:
        report_failure(exc, json_output)
    if json_output:
        print_json({"state_dir": str(where), "stopped": stopped is not None})
    elif stopped is None:
        Console(highlight=False, markup=False).print(f"no local cluster runs from {where}")
    else:
        Console(highlight=False, markup=False).print(
            f"local cluster down: {stopped} processes stopped"
        )


def status_command(state_dir: StateDirOption = None, json_output: JsonOption = False) -> None:
    """Whether the local cluster runs: its address, and each node and whether it is alive.

    Exits 1 when no cluster runs from the state directory.
    """
    where = _state_dir(state_dir)
    try:
        supervisor, ready, running = read_state(where)
        if supervisor is None:
            raise RuntimeFailure(
                f"no local cluster runs from {where}: start one with `cantata cluster up`"
            )
        if not running:
            raise RuntimeFailure(
                f"the local cluster's supervisor (pid {supervisor.pid}) is gone; clean up with"
                " `cantata cluster down`"
            )
        nodes = list_nodes(where, ready.address) if ready else []
    except Exception as exc:
        report_failure(exc, json_output)
    if json_output:
        data = _cluster_json(where, supervisor, ready)
        data["state"] = "running" if ready else "starting"
        data["nodes"] = [node.model_dump(mode="json") for node in nodes]
        data["alive"] = sum(node.alive for node in nodes)
        print_json(data)
        return
    _print_status(where, supervisor, ready, nodes)


def _print_status(
    where: Path, supervisor: Supervisor, ready: ClusterState | None, nodes: list[NodeInfo]
) -> None:
    console = Console(soft_wrap=True, highlight=False, markup=False)
    if ready is None:
        console.print(f"the local cluster is starting (supervisor pid {supervisor.pid})")
        return
    alive = sum(node.alive for node in nodes)
    console.print(
        f"local cluster at {ready.address}: {alive} of {ready.nodes} nodes alive"
        f" (state {where}, supervisor pid {supervisor.pid})"
    )
    table = Table()
    for column in ("node", "id", "address", "CPUs", "alive"):
        table.add_column(column)
    for node in nodes:
        table.add_row(
            node.name if node.name == "head" or not node.head else f"{node.name} (head)",
            node.node_id[:12],
            node.address,
            f"{node.cpus:g}",
            "yes" if node.alive else "no",
        )
    console.print(table)
    console.print(f"dashboard {ready.dashboard_url or 'off'} · logs {ready.session_dir}/logs")
    console.print(_exports(client_env(where, ready.address)))


def add_cluster_commands(app: typer.Typer) -> None:
    """Register ``cantata cluster up | down | status`` on the ``cantata`` app."""
    cluster_app.command("up")(up_command)
    cluster_app.command("down")(down_command)
    cluster_app.command("status")(status_command)
    app.add_typer(cluster_app, name="cluster")
