"""Terminal view of an OptimizeReport: the before/after table and each regression's cause."""

from __future__ import annotations

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from crossinfer.passes.pipeline import OptimizeReport, StepReport


def render_optimize(report: OptimizeReport, console: Console) -> None:
    table = Table(
        title=f"optimize on {report.target}",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    for column, justify in (
        ("step", "left"),
        ("prec", "left"),
        ("parity", "left"),
        ("top-1 %", "right"),
        ("lat ms", "right"),
        ("samples/s", "right"),
        ("speedup", "right"),
        ("kept", "left"),
    ):
        # the step's name folds at 80 columns; the figures never wrap or get cut
        table.add_column(
            column,
            justify=justify,  # type: ignore[arg-type]
            no_wrap=column != "step",
            overflow="fold",
            min_width=len(column),
        )
    for step in report.steps:
        table.add_row(*_cells(step))
    console.print(table)
    for step in report.steps:
        if step.comparisons and step.pass_name != "baseline":
            worst = max(step.comparisons, key=lambda c: c.max_abs_error)
            console.print(
                f"{step.pass_name}: {step.artifact.path.name}, {step.artifact.file_size / 2**20:.1f} MiB; "
                f"max abs err {worst.max_abs_error:.2e}, cosine {min(c.cosine for c in step.comparisons):.5f} "
                f"at {step.precision.value} tolerance",
                highlight=False,
            )
        if step.speed is not None:
            console.print(
                f"{step.pass_name}: speed {escape(step.speed.describe())}", highlight=False
            )
        for reason in step.reasons:
            style = "red" if not step.kept else "yellow"
            console.print(f"[{style}]{step.pass_name}[/]: {escape(reason)}", highlight=False)
    if report.dataset:
        console.print(f"accuracy on: {escape(report.dataset)}", highlight=False)
    if report.calibration_source:
        console.print(f"calibrated on: {escape(report.calibration_source)}", highlight=False)
    if report.int8_recipe is not None:
        console.print(f"int8 recipe: {escape(report.int8_recipe.headline())}", highlight=False)
    console.print(
        f"final model: {report.final.path} (sha256 {report.final.short_hash})", highlight=False
    )


def _cells(step: StepReport) -> list[str]:
    m = step.measurement
    if m is None:
        return [step.pass_name, step.precision.value, "-", "-", "-", "-", "-", "failed"]
    parity = "-" if step.pass_name == "baseline" else ("pass" if step.parity_passed else "FAIL")
    return [
        step.pass_name,
        step.precision.value,
        parity,
        "-" if m.accuracy is None else f"{m.accuracy * 100:.2f}",
        f"{m.latency_ms:.2f}",
        f"{m.throughput:,.0f}" if m.throughput >= 100 else f"{m.throughput:.1f}",
        _speedup(step),
        "yes" if step.kept else "no",
    ]


def _speedup(step: StepReport) -> str:
    if step.speedup is None:
        return "-"
    # "~": within noise, the rounds in turns do not agree on a direction
    return f"{step.speedup:.2f}x" + ("~" if step.speed_verdict == "within noise" else "")
