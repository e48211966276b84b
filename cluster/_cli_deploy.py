"""``cantata deploy | status | call | scale | down``: long-lived deployments on a cluster."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from cantata.agents import LogConfig, RuntimeFailure, configure_logging
from cantata.topologies import load_topology

from ._cli_common import AddressOption, JsonOption, print_json, print_result, report_failure
from ._connection import connect
from ._deployment import deploy, get_deployment, list_deployments
from ._status import DeploymentStatus

__all__ = ["add_deployment_commands"]


def _join(address: str | None, runtime_env: dict[str, Any] | None = None) -> None:
    if not address:
        raise RuntimeFailure(
            "deployments live on a running Ray cluster: give --address (or set RAY_ADDRESS);"
            " start one with `ray start --head --node-ip-address=127.0.0.1`"
        )
    configure_logging(LogConfig())
    connect(address, runtime_env=runtime_env)


def _status_json(statuses: list[DeploymentStatus]) -> dict[str, Any]:
    return {"deployments": [status.model_dump(mode="json") for status in statuses]}


def _show(statuses: list[DeploymentStatus], json_output: bool) -> None:
    if json_output:
        print_json(_status_json(statuses))
    else:
        _print_status(statuses)


def _print_status(statuses: list[DeploymentStatus]) -> None:
    console = Console(soft_wrap=True)
    if not statuses:
        console.print("no deployments")
    for status in statuses:
        table = Table(title=f"{status.name} ({status.pattern} '{status.topology}')")
        for column in ("model", "version", "actor", "node", "healthy", "in flight", "served"):
            table.add_column(column)
        for model in status.models:
            for replica in model.replicas:
                table.add_row(
                    model.name,
                    model.version,
                    replica.actor_id[:12],
                    (replica.node_id or "-")[:12],
                    "yes" if replica.healthy else f"no {replica.detail}",
                    str(replica.in_flight),
                    str(replica.served),
                )
        console.print(table)


def deploy_command(
    file: Annotated[Path, typer.Argument(help="A topology YAML file.")],
    name: Annotated[str, typer.Option("--name", help="The deployment's name.")],
    address: AddressOption = None,
    start_timeout: Annotated[
        float, typer.Option(help="Seconds to wait for the reservation and the models.")
    ] = 120.0,
    wheel: Annotated[
        Path | None,
        typer.Option(
            help="A Cantata wheel to ship to workers that do not have it installed"
            " (build one with `pip wheel --no-deps -w dist .`).",
        ),
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Deploy a topology: reserve every replica at once, start them, keep them running."""
    try:
        spec = load_topology(file)
        _join(address, {"py_modules": [str(wheel.resolve())]} if wheel else None)
        deployment = deploy(spec, name, start_timeout_s=start_timeout)
        status = deployment.status()
    except Exception as exc:
        report_failure(exc, json_output)
    _show([status], json_output)


def status_command(
    name: Annotated[str | None, typer.Argument(help="One deployment; default: all.")] = None,
    address: AddressOption = None,
    json_output: JsonOption = False,
) -> None:
    """Every deployment's models and replicas: node, health, load."""
    try:
        _join(address)
        names = [name] if name else list_deployments()
        statuses = [get_deployment(each).status() for each in names]
    except Exception as exc:
        report_failure(exc, json_output)
    _show(statuses, json_output)


def call_command(
    name: Annotated[str, typer.Argument(help="The deployment to ask.")],
    input_text: Annotated[str, typer.Option("--input", "-i", help="The request text.")],
    address: AddressOption = None,
    json_output: JsonOption = False,
) -> None:
    """Send one request to a deployment; prints what `cantata run` prints."""
    try:
        _join(address)
        result = get_deployment(name).call(input_text)
    except Exception as exc:
        report_failure(exc, json_output)
    print_result(result, json_output)


def scale_command(
    name: Annotated[str, typer.Argument(help="The deployment.")],
    model: Annotated[str, typer.Argument(help="The model to scale.")],
    replicas: Annotated[int, typer.Argument(help="The model's new number of replicas.", min=1)],
    address: AddressOption = None,
    json_output: JsonOption = False,
) -> None:
    """Change one model's replicas; requests in flight finish first."""
    try:
        _join(address)
        status = get_deployment(name).scale(model, replicas)
    except Exception as exc:
        report_failure(exc, json_output)
    _show([status], json_output)


def down_command(
    name: Annotated[str, typer.Argument(help="The deployment to remove.")],
    address: AddressOption = None,
    json_output: JsonOption = False,
) -> None:
    """Drain a deployment and free everything it reserved."""
    try:
        _join(address)
        get_deployment(name).down()
    except Exception as exc:
        report_failure(exc, json_output)
    if json_output:
        print_json({"down": name})
    else:
        Console().print(f"{name} is down")


def add_deployment_commands(app: typer.Typer) -> None:
    """Register the deployment commands on the ``cantata`` app."""
    app.command("deploy")(deploy_command)
    app.command("status")(status_command)
    app.command("call")(call_command)
    app.command("scale")(scale_command)
    app.command("down")(down_command)
