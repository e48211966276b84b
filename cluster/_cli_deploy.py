"""``cantata deploy | status | call | scale | down``: long-lived deployments on a cluster."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from cantata.agents import LogConfig, Resources, RuntimeFailure, configure_logging
from cantata.topologies import load_code, load_topology

from ._cli_common import (
    AddressOption,
    InputFileOption,
    InputOption,
    JsonOption,
    TraceOption,
    print_json,
    print_result,
    read_request,
    report_failure,
)
from ._connection import connect
from ._deployment import deploy, get_deployment, list_deployments
from ._status import DeploymentStatus, ReplicaStatus, SpendStatus

__all__ = ["add_deployment_commands", "join_cluster"]


def join_cluster(address: str | None, runtime_env: dict[str, Any] | None = None) -> None:
    """Connect to the cluster at ``address``; deployments need one, never an embedded Ray."""
    if not address:
        raise RuntimeFailure(
            "deployments live on a running Ray cluster: give --address (or set RAY_ADDRESS);"
            " on this machine, `cantata cluster up` starts one (then export what it prints)"
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
        for column in (
            "actor of",
            "kind",
            "actor",
            "node",
            "reserved",
            "healthy",
            "in flight",
            "queued",
            "served",
            "refused",
        ):
            table.add_column(column)
        rows: list[tuple[str, str, Resources, tuple[ReplicaStatus, ...]]] = [
            (a.name, a.role, a.resources, a.replicas) for a in status.agents
        ]
        rows += [(m.name, f"model {m.version}", m.resources, m.replicas) for m in status.models]
        for name, kind, resources, replicas in rows:
            for replica in replicas:
                table.add_row(
                    name,
                    kind,
                    replica.actor_id[:12],
                    (replica.node_id or "-")[:12],
                    _reservation(resources),
                    "yes" if replica.healthy else f"no {replica.detail}",
                    str(replica.in_flight),
                    str(replica.queued),
                    str(replica.served),
                    str(replica.refused),
                )
        console.print(table)
        for decision in status.scaling[-5:]:
            console.print(
                f"[dim]autoscaling: {decision.target} {decision.replicas_before} ->"
                f" {decision.replicas_after} at load {decision.load:g} ({decision.outcome})"
                f"{' ' + decision.detail if decision.detail else ''}[/]",
                highlight=False,
            )
        if status.spend is not None:
            console.print(_spend_line(status.spend), highlight=False)


def _reservation(resources: Resources) -> str:
    parts = [f"{key}={amount:g}" for key, amount in resources.demand().items() if key != "memory"]
    if resources.memory:
        parts.append(f"memory={resources.memory / 2**20:g}MiB")
    return " ".join(parts) or "-"


def _spend_line(spend: SpendStatus) -> str:
    budget = f" of a ${spend.budget_usd_per_hour:g}/h budget" if spend.budget_usd_per_hour else ""
    line = (
        f"spend: ${spend.last_hour_usd:.6f} in the last hour{budget} · now"
        f" ${spend.rate_usd_per_hour:.6f}/h · {spend.refused_last_hour} refused by the budget"
    )
    if not spend.alerting:
        return f"[dim]{line}[/]"
    culprits = ", ".join(f"{k} ${v:.6f}" for k, v in spend.top_models.items())
    routes = ", ".join(f"{k} ${v:.6f}" for k, v in spend.top_routes.items())
    return (
        f"[bold red]ALERT[/] spend rate ${spend.rate_usd_per_hour:.6f}/h is above"
        f" ${spend.alert_usd_per_hour:g}/h · models: {culprits or '-'} · routes: {routes or '-'}"
        f"\n[dim]{line}[/]"
    )


def _positive(value: float | None) -> float | None:
    if value is not None and value <= 0:
        raise typer.BadParameter("must be more than zero")
    return value


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
    budget_usd_per_hour: Annotated[
        float | None,
        typer.Option(
            "--budget-usd-per-hour",
            callback=_positive,
            help="Refuse requests that would take the last hour's token cost past this"
            " (overrides the file's budget.usd_per_hour).",
        ),
    ] = None,
    alert_usd_per_hour: Annotated[
        float | None,
        typer.Option(
            "--alert-usd-per-hour",
            callback=_positive,
            help="Mark the deployment and log a warning when it spends faster than this"
            " (overrides the file's budget.alert_usd_per_hour).",
        ),
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Deploy a topology: reserve every replica at once, start them, keep them running."""
    try:
        spec = load_topology(file)
        code = load_code(spec, file.parent)
        budget = spec.budget.model_copy(
            update={
                key: value
                for key, value in (
                    ("usd_per_hour", budget_usd_per_hour),
                    ("alert_usd_per_hour", alert_usd_per_hour),
                )
                if value is not None
            }
        )
        join_cluster(address, {"py_modules": [str(wheel.resolve())]} if wheel else None)
        deployment = deploy(spec, name, code=code, start_timeout_s=start_timeout, budget=budget)
        status = deployment.status()
    except Exception as exc:
        report_failure(exc, json_output)
    _show([status], json_output)


def status_command(
    name: Annotated[str | None, typer.Argument(help="One deployment; default: all.")] = None,
    address: AddressOption = None,
    json_output: JsonOption = False,
) -> None:
    """Every deployment's agent actors and model replicas: node, reservation, health, load."""
    try:
        join_cluster(address)
        names = [name] if name else list_deployments()
        statuses = [get_deployment(each).status() for each in names]
    except Exception as exc:
        report_failure(exc, json_output)
    _show(statuses, json_output)


def call_command(
    name: Annotated[str, typer.Argument(help="The deployment to ask.")],
    input_text: InputOption = None,
    input_file: InputFileOption = None,
    address: AddressOption = None,
    json_output: JsonOption = False,
    trace: TraceOption = False,
    timeout: Annotated[
        float | None,
        typer.Option(
            "--timeout",
            min=0.001,
            help="Seconds the request may take: its deadline, kept by every model and agent"
            " it reaches; past it the request fails with DeadlineExceededError and its work"
            " stops. Default: the topology's timeout_s.",
        ),
    ] = None,
) -> None:
    """Send one request to a deployment; prints what `cantata run` prints."""
    # Before joining the cluster: a request that cannot be read is a usage error (exit 64).
    request = read_request(input_text, input_file)
    try:
        join_cluster(address)
        result = get_deployment(name).call(request, timeout_s=timeout)
    except Exception as exc:
        report_failure(exc, json_output, trace=trace)
    print_result(result, json_output, trace=trace)


def scale_command(
    name: Annotated[str, typer.Argument(help="The deployment.")],
    model: Annotated[str, typer.Argument(help="The model or hosted agent to scale.")],
    replicas: Annotated[int, typer.Argument(help="Its new number of replicas.", min=1)],
    address: AddressOption = None,
    json_output: JsonOption = False,
) -> None:
    """Change one model's (or hosted agent's) replicas; requests in flight finish first."""
    try:
        join_cluster(address)
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
        join_cluster(address)
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
