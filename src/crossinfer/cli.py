"""The `crossinfer` command line: one small function per command, each calling the Python API."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from crossinfer.errors import CrossinferError, UsageError

if TYPE_CHECKING:
    from crossinfer.backends.base import Precision
    from crossinfer.check import CheckRow

app = typer.Typer(
    name="crossinfer",
    help="Find, prove and serve the best way to run one ONNX model on the hardware at hand.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)

ModelArg = Annotated[
    str,
    typer.Argument(
        help="An .onnx file, or a built-in model: zoo:resnet50, zoo:bert-base?seq=128&layers=2, ..."
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]


def _fail(exc: CrossinferError, code: int = 2) -> NoReturn:
    err_console.print(
        f"[bold red]error:[/bold red] {escape(str(exc))}", highlight=False, soft_wrap=True
    )
    raise typer.Exit(code)


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


@app.command()
def inspect(model: ModelArg, as_json: JsonOpt = False) -> None:
    """Validate a model and show its signature, opsets, op histogram, parameters, size and hash."""
    from crossinfer.describe import render_artifact
    from crossinfer.model import load_model

    try:
        artifact = load_model(model)
    except CrossinferError as exc:
        _fail(exc)
    if as_json:
        _print_json(artifact.to_dict())
    else:
        render_artifact(artifact, console)


@app.command()
def doctor(as_json: JsonOpt = False) -> None:
    """List this machine's processors (CPU ISA features, NVIDIA GPUs) and the runtimes installed."""
    from crossinfer.hardware import discover
    from crossinfer.hardware.render import render_report

    report = discover()
    if as_json:
        _print_json(report.to_dict())
    else:
        render_report(report, console)


@app.command()
def check(
    model: ModelArg,
    target: Annotated[
        list[str] | None,
        typer.Option(
            "--target",
            "-t",
            help="BACKEND:DEVICE to check (repeatable); default: every one available.",
        ),
    ] = None,
    require: Annotated[
        list[str] | None,
        typer.Option(help="BACKEND:DEVICE that must pass, else exit code 1 (repeatable)."),
    ] = None,
    reference: Annotated[
        str, typer.Option(help="Target whose outputs are the truth.")
    ] = "reference:cpu",
    inputs: Annotated[
        Path | None, typer.Option(help=".npz file of input arrays named like the model inputs.")
    ] = None,
    batch: Annotated[
        int, typer.Option(min=1, help="Size of a symbolic leading dim for random inputs.")
    ] = 1,
    dim: Annotated[
        list[str] | None,
        typer.Option(help="NAME=SIZE for another symbolic dim (repeatable); unnamed ones are 16."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed for the random inputs.")] = 0,
    precision: Annotated[
        str,
        typer.Option(
            help="fp32, tf32, fp16, bf16 or int8: what the runtimes are asked to run, and the default tolerance."
        ),
    ] = "fp32",
    atol: Annotated[float | None, typer.Option(help="Override the absolute tolerance.")] = None,
    rtol: Annotated[float | None, typer.Option(help="Override the relative tolerance.")] = None,
    min_cosine: Annotated[
        float | None, typer.Option(help="Override the cosine-similarity floor.")
    ] = None,
    threads: Annotated[
        int | None, typer.Option(min=1, help="Intra-op threads per runtime.")
    ] = None,
    hint: Annotated[
        str | None,
        typer.Option(help="OpenVINO performance hint: LATENCY or THROUGHPUT."),
    ] = None,
    timeout: Annotated[
        float, typer.Option(min=1, help="Seconds each row may take before it is killed.")
    ] = 600.0,
    as_json: JsonOpt = False,
) -> None:
    """Run the model on every runtime x device in child processes: placement, parity, verdicts."""
    from dataclasses import replace

    from crossinfer.backends.base import SessionOptions, Target
    from crossinfer.check import check_model, default_tolerance, load_inputs, random_inputs
    from crossinfer.check.render import render_check
    from crossinfer.model import load_model

    try:
        prec = _precision(precision)
        dims = _parse_dims(dim or [])
        targets = [Target.parse(t) for t in target] if target else None
        artifact = load_model(model)
        if inputs is not None:
            feeds = load_inputs(inputs, artifact.inputs, model=artifact.source)
            source = str(inputs)
        else:
            feeds = random_inputs(artifact.inputs, batch=batch, dims=dims, seed=seed)
            source = f"random, seed {seed}"
        tol = default_tolerance(prec)
        tol = replace(
            tol,
            atol=tol.atol if atol is None else atol,
            rtol=tol.rtol if rtol is None else rtol,
            min_cosine=tol.min_cosine if min_cosine is None else min_cosine,
        )
        report = check_model(
            artifact,
            targets=targets,
            reference=reference,
            feeds=feeds,
            input_source=source,
            precision=prec,
            tolerance=tol,
            options=SessionOptions(threads=threads, performance_hint=_hint(hint)),
            timeout_s=timeout,
            on_row=None if as_json else _print_progress,
        )
    except CrossinferError as exc:
        _fail(exc)
    if as_json:
        _print_json(report.to_dict())
    else:
        render_check(report, console)
    failed = report.failed(require or [])
    if failed:
        err_console.print(
            f"[bold red]required target(s) did not pass:[/bold red] {', '.join(failed)}"
        )
        raise typer.Exit(1)


def _print_progress(row: CheckRow) -> None:
    err_console.print(f"  {row.target}: {row.verdict.value}", highlight=False)


def _precision(text: str) -> Precision:
    from crossinfer.backends.base import Precision

    try:
        return Precision(text.lower())
    except ValueError:
        raise UsageError(
            f"--precision '{text}' is not one of {', '.join(p.value for p in Precision)}"
        ) from None


def _hint(text: str | None) -> str | None:
    if text is None:
        return None
    if text.upper() not in ("LATENCY", "THROUGHPUT", "CUMULATIVE_THROUGHPUT"):
        raise UsageError(f"--hint '{text}' is not LATENCY, THROUGHPUT or CUMULATIVE_THROUGHPUT")
    return text.upper()


def _parse_dims(items: list[str]) -> dict[str, int]:
    dims: dict[str, int] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name or not value.isdigit() or int(value) < 1:
            raise UsageError(
                f"--dim '{item}' is not NAME=SIZE with a positive integer SIZE, e.g. --dim seq=128"
            )
        dims[name] = int(value)
    return dims


@app.command()
def demo(
    model: Annotated[str, typer.Option(help="The zoo model the demo runs on.")] = "zoo:resnet18",
) -> None:
    """The main job on a built-in model: discover this machine, then check the model everywhere."""
    from crossinfer.check import check_model, random_inputs
    from crossinfer.check.render import render_check
    from crossinfer.hardware import discover
    from crossinfer.hardware.render import render_report
    from crossinfer.model import load_model

    console.rule("1. discover: processors and runtimes")
    render_report(discover(), console)
    console.rule(f"2. check: {model} on every runtime x device")
    try:
        artifact = load_model(model)
        report = check_model(
            artifact,
            feeds=random_inputs(artifact.inputs, batch=1, seed=0),
            input_source="random, seed 0",
            on_row=_print_progress,
        )
    except CrossinferError as exc:
        _fail(exc)
    render_check(report, console)
    console.print(
        f"\nnext: [bold]crossinfer inspect {model}[/bold], "
        f"[bold]crossinfer check MODEL.onnx --require onnxruntime:cpu[/bold]"
    )


def main() -> None:
    app()


if __name__ == "__main__":
    main()
