"""The report's plotly figures, each built from tune.json's plain data (no crossinfer objects), so a
report can be drawn again from the file alone.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import plotly.graph_objects as go

Data = Mapping[str, Any]

STATUS_COLOURS = {
    "pick": "#d62728",
    "meets constraints": "#1f77b4",
    "rejected": "#9e9e9e",
    "failed": "#000000",
}
RECIPES = ("fp32", "fp16", "bf16", "int8")
_LAYOUT = {
    "template": "plotly_white",
    "margin": {"l": 60, "r": 20, "t": 50, "b": 50},
    "height": 420,
}


def measured(data: Data) -> list[Data]:
    return [c for c in data["recommendation"]["candidates"] if c.get("metrics")]


def compatibility_matrix(data: Data) -> go.Figure:
    """Targets x precisions: measured (best throughput), pruned (why) or not asked."""
    targets: list[str] = []
    for row in (data.get("check") or {}).get("rows", []):
        # onnx's evaluator is never a candidate; a runtime that stood in for it (check's
        # fallback reference) still is
        if not str(row["target"]).startswith("reference:"):
            targets.append(row["target"])
    for variant in data["variants"]:
        if variant["target"] not in targets:
            targets.append(variant["target"])
    best: dict[tuple[str, str], float] = {}
    for c in measured(data):
        key = (c["target"], c["recipe"])
        best[key] = max(best.get(key, 0.0), c["metrics"]["throughput"])
    pruned = {p["what"]: p for p in data["pruned"]}
    check_rows = {r["target"]: r for r in (data.get("check") or {}).get("rows", [])}
    z: list[list[float | None]] = []
    text: list[list[str]] = []
    hover: list[list[str]] = []
    for target in targets:
        z_row: list[float | None] = []
        t_row: list[str] = []
        h_row: list[str] = []
        for recipe in RECIPES:
            row = check_rows.get(target)
            if row is not None and row["verdict"] != "pass":
                z_row.append(0.0)
                t_row.append(row["verdict"])
                h_row.append(f"check: {row['verdict']}: {row['reason']}"[:300])
            elif (target, recipe) in best:
                z_row.append(2.0)
                t_row.append(f"{best[(target, recipe)]:,.1f}/s")
                h_row.append(f"measured: best {best[(target, recipe)]:,.1f} samples/s")
            elif f"{target}/{recipe}" in pruned:
                p = pruned[f"{target}/{recipe}"]
                z_row.append(0.5)
                t_row.append(_short(p))
                h_row.append(f"pruned ({p['stage']}): {p['reason']}"[:300])
            elif any(v["key"] == f"{target}/{recipe}" for v in data["variants"]):
                z_row.append(1.0)
                t_row.append("not measured")
                h_row.append("passed check and parity; the search did not measure it")
            else:
                z_row.append(None)  # no colour: nothing was asked
                t_row.append("not asked")
                h_row.append("not asked for (--precisions)")
        z.append(z_row)
        text.append(t_row)
        hover.append(h_row)
    figure = go.Figure(
        go.Heatmap(
            z=z,
            x=list(RECIPES),
            y=targets,
            text=text,
            texttemplate="%{text}",
            customdata=hover,
            hovertemplate="%{y} %{x}<br>%{customdata}<extra></extra>",
            colorscale=[[0, "#f4cccc"], [0.25, "#fce5cd"], [0.5, "#fff2cc"], [1, "#d9ead3"]],
            zmin=0,
            zmax=2,
            showscale=False,
        )
    )
    figure.update_layout(
        title="Compatibility: runtime x device x precision",
        **{**_LAYOUT, "height": 140 + 50 * len(targets)},
    )
    return figure


def pareto(data: Data) -> go.Figure:
    """Objective against p99 for every measured candidate; the front joined, the pick starred."""
    objective = data["recommendation"]["objective"]
    front = set(data["recommendation"]["front"])
    x_axis = "p99_ms"
    figure = go.Figure()
    groups: dict[str, list[Data]] = defaultdict(list)
    for c in measured(data):
        if c.get("value") is not None:
            groups[c["status"]].append(c)
    for status, items in groups.items():
        figure.add_trace(
            go.Scatter(
                x=[c["metrics"][x_axis] for c in items],
                y=[c["value"] for c in items],
                mode="markers",
                name=status,
                text=[c["key"] for c in items],
                customdata=["<br>".join(c["reasons"])[:400] for c in items],
                hovertemplate="%{text}<br>p99 %{x:.2f} ms, %{y:.4g}<br>%{customdata}<extra></extra>",
                marker={
                    "size": 16 if status == "pick" else 9,
                    "symbol": "star" if status == "pick" else "circle",
                    "color": STATUS_COLOURS.get(status, "#9e9e9e"),
                },
            )
        )
    on_front = sorted(
        (c for c in measured(data) if c["key"] in front and c.get("value") is not None),
        key=lambda c: c["metrics"][x_axis],
    )
    if on_front:
        figure.add_trace(
            go.Scatter(
                x=[c["metrics"][x_axis] for c in on_front],
                y=[c["value"] for c in on_front],
                mode="lines",
                name="Pareto front",
                line={"dash": "dot", "color": "#d62728"},
                hoverinfo="skip",
            )
        )
    limit = data["recommendation"]["constraints"].get("max_p99_ms")
    if limit:
        figure.add_vline(x=limit, line_dash="dash", line_color="#555", annotation_text="max p99")
    figure.update_layout(
        title=f"Pareto front: {objective} against p99 latency (the pick starred)",
        xaxis_title="p99 latency per batch run (ms)",
        yaxis_title=_objective_title(objective),
        **_LAYOUT,
    )
    return figure


def throughput_vs_batch(data: Data) -> go.Figure:
    """Throughput against batch size, one line per variant and knob setting."""
    lines: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for c in measured(data):
        knobs = c["knobs"]
        label = f"{c['variant']} ({_knob_label(knobs)})"
        lines[label].append((c["batch_size"], c["metrics"]["throughput"]))
    figure = go.Figure()
    for label, points in sorted(lines.items()):
        points.sort()
        figure.add_trace(
            go.Scatter(
                x=[b for b, _ in points],
                y=[t for _, t in points],
                mode="lines+markers",
                name=label,
            )
        )
    figure.update_layout(
        title="Throughput against batch size (LoadGen Offline, quick runs)",
        xaxis_title="batch size",
        yaxis_title="samples/s",
        xaxis_type="log",
        **_LAYOUT,
    )
    return figure


def latency_distributions(data: Data, limit: int = 8) -> go.Figure:
    """Latency percentiles (min to max) of the pick, the naive default and each variant's best."""
    chosen: list[Data] = []
    by_key = {c["key"]: c for c in measured(data)}
    for key in (data["recommendation"]["pick"], data.get("naive_default")):
        if key in by_key and by_key[key] not in chosen:
            chosen.append(by_key[key])
    best_of: dict[str, Data] = {}
    for c in by_key.values():
        old = best_of.get(c["variant"])
        if old is None or c["metrics"]["throughput"] > old["metrics"]["throughput"]:
            best_of[c["variant"]] = c
    for c in sorted(best_of.values(), key=lambda c: -c["metrics"]["throughput"]):
        if c not in chosen:
            chosen.append(c)
    figure = go.Figure()
    for c in chosen[:limit]:
        percentiles = c["metrics"]["percentiles_ms"]
        figure.add_trace(
            go.Scatter(
                x=list(percentiles),
                y=list(percentiles.values()),
                mode="lines+markers",
                name=c["key"] + (" (pick)" if c["status"] == "pick" else ""),
                line={"width": 4 if c["status"] == "pick" else 2},
            )
        )
    figure.update_layout(
        title="Latency distribution per batch run (percentiles)",
        xaxis_title="percentile",
        yaxis_title="ms (log scale)",
        yaxis_type="log",
        **_LAYOUT,
    )
    return figure


def optimizations(data: Data) -> go.Figure:
    """Before/after of each optimization: FP32 baseline and optimized throughput, per target."""
    names, before, after, notes = [], [], [], []
    for variant in data["variants"]:
        if not variant.get("after") or not variant.get("before"):
            continue
        names.append(variant["key"])
        before.append(variant["before"]["throughput"])
        after.append(variant["after"]["throughput"])
        speed = variant["after"]["throughput"] / variant["before"]["throughput"]
        notes.append(f"{speed:.2f}x; " + "; ".join(variant.get("notes", [])))
    figure = go.Figure(
        [
            go.Bar(name="before (FP32 on the same target)", x=names, y=before),
            go.Bar(
                name="after",
                x=names,
                y=after,
                customdata=notes,
                hovertemplate="%{x}: %{y:,.1f}/s<br>%{customdata}<extra></extra>",
            ),
        ]
    )
    figure.update_layout(
        barmode="group",
        title="Each optimization before and after (optimize's check at batch 8)",
        yaxis_title="samples/s",
        **_LAYOUT,
    )
    return figure


def all_figures(data: Data) -> Sequence[tuple[str, str, go.Figure]]:
    """(section id, heading, figure) in the order the report shows them."""
    return (
        ("compatibility", "Compatibility matrix", compatibility_matrix(data)),
        ("pareto", "Pareto front", pareto(data)),
        ("throughput-vs-batch", "Throughput against batch size", throughput_vs_batch(data)),
        ("latency", "Latency distributions", latency_distributions(data)),
        ("optimizations", "Optimizations, before and after", optimizations(data)),
    )


def _short(pruned: Mapping[str, Any]) -> str:
    reason = str(pruned["reason"])
    if reason.startswith("no ") and "recipe" in reason:
        return "no recipe"
    if "parity" in reason:
        return "parity fails"
    if pruned["stage"] == "accuracy":
        return "accuracy"
    return f"{pruned['stage']} failed"


def _knob_label(knobs: Mapping[str, Any]) -> str:
    # backend options first (torch's mode): eager and compile are two lines, not one
    parts = [f"{k}={v}" for k, v in (knobs.get("options") or {}).items()]
    if knobs.get("performance_hint"):
        parts.append(str(knobs["performance_hint"]).lower())
    parts.append(f"{knobs['threads']} threads" if knobs.get("threads") else "default threads")
    if knobs.get("instances", 1) > 1:
        parts.append(f"x{knobs['instances']}")
    return ", ".join(parts)


def _objective_title(objective: str) -> str:
    return {
        "throughput": "throughput (samples/s)",
        "latency": "p99 latency (ms)",
        "cost": "USD per million inferences",
        "energy": "J per inference",
    }.get(objective, objective)
