"""Tables for `crossinfer predict`: the model's cost, then one predicted row per target."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from crossinfer.predict import ModelPrediction

__all__ = ["render_prediction"]


def _si(value: float) -> str:
    for factor, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= factor:
            return f"{value / factor:.2f} {suffix}"
    return f"{value:.0f} "


def render_prediction(result: ModelPrediction, console: Console) -> None:
    cost = result.cost
    console.print(
        f"[bold]{escape(result.model)}[/bold]: {_si(cost.macs)}MACs = {_si(cost.flops)}FLOP per "
        f"sample (1 MAC = 2 FLOPs), {_si(cost.parameter_elements)}parameters, "
        f"{len(cost.nodes)} nodes in {len(cost.groups)} fused groups; bytes moved at batch 1: "
        + ", ".join(f"{p} {_si(cost.bytes_moved(p))}B" for p in ("fp32", "fp16", "int8"))
    )
    if cost.unknown_shape_nodes:
        console.print(
            f"[yellow]{len(cost.unknown_shape_nodes)} node(s) with unknown shapes cost nothing "
            f"here[/yellow] (first: {escape(cost.unknown_shape_nodes[0])}): fix the model's "
            "dynamic dims (crossinfer optimize --passes simplify) for a full count"
        )
    table = Table(title="predicted, not measured", title_style="bold yellow")
    for column in (
        "hardware",
        "precision",
        "batch-1 ms",
        "bound",
        "best batch",
        "samples/s",
        "bound at best",
        "$ / M inf.",
        "expected error",
    ):
        table.add_column(column, justify="right" if column[0].isdigit() else "left")
    notes: dict[str, str] = {}
    for row in result.predictions:
        flag = "*" if row.unconfirmed else ""
        cost_text = "-" if row.cost_per_million is None else f"{row.cost_per_million:.3f}"
        table.add_row(
            escape(row.hardware) + flag,
            row.precision,
            f"{row.batch1_latency_ms:.3f}",
            escape(row.batch1_bound),
            str(row.best_batch),
            f"{row.best_throughput:,.0f}",
            escape(row.throughput_bound),
            cost_text,
            escape(row.error),
        )
        for note in row.notes:
            notes.setdefault(note, row.hardware)
    console.print(table)
    console.print(
        "* rests on catalog figures marked unconfirmed (see hardware/catalog.toml). 16-bit and "
        "INT8 rows assume the runtime converts or quantizes the model."
    )
    for note, hardware in notes.items():
        console.print(f"- {escape(hardware)}: {escape(note)}")
    calibration = result.calibration
    if calibration is None or not calibration.observations:
        console.print(
            "Efficiencies: priors, uncalibrated (no Offline/SingleStream runs in the results "
            "store: run crossinfer bench to calibrate)."
        )
    else:
        for family, scales in calibration.scales.items():
            console.print(
                f"Calibrated {escape(family)}: {escape(scales.source)}; {escape(scales.error)}"
            )
        if calibration.skipped:
            console.print(
                f"{len(calibration.skipped)} stored run(s) not used, e.g. {escape(calibration.skipped[0])}"
            )
