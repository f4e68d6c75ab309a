"""Terminal rendering of a tune: the pick, the runners-up, what was rejected and where the files are."""

from __future__ import annotations

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from crossinfer.tune.recommend import FEASIBLE, PICK, REJECTED, CandidateResult
from crossinfer.tune.runner import TuneResult

SHOWN = 12
PRUNED_SHOWN = 8
# the table's status column, short enough for 80 columns; the reasons below say it in full
_SHORT_STATUS = {PICK: "pick", FEASIBLE: "meets", REJECTED: "rejected"}


def render_tune(result: TuneResult, console: Console) -> None:
    rec = result.recommendation
    shown = [r for r in rec.results if r.metrics is not None]
    shown.sort(key=_order)
    shown_rows = shown[:SHOWN]
    # 80 columns: a candidate's name folds rather than being cut (openvino:cpu/bf16/batch 8
    # stays whole on its line), its settings on the line below; the figures never wrap; a
    # column that says nothing for any row is left out
    with_accuracy = any(r.metrics and r.metrics.accuracy_drop is not None for r in shown_rows)
    with_compile = any(r.metrics and r.metrics.compile_s is not None for r in shown_rows)
    table = Table(
        title=f"tune {result.model.source}: {rec.scorer.objective.value}",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        padding=(0, 1),
    )
    table.add_column("candidate", overflow="fold", min_width=16)
    table.add_column("status", no_wrap=True)
    numbers = ["samples/s", "p99 ms", "MB"]
    numbers += ["acc drop"] if with_accuracy else []
    numbers += ["compile"] if with_compile else []
    for name in numbers:
        table.add_column(name, justify="right", no_wrap=True, min_width=len(name))
    for r in shown_rows:
        m = r.metrics
        assert m is not None
        c = r.candidate
        name = f"{c.variant.key}/batch {c.batch_size}\n[dim]  {escape(c.knobs.label)}[/dim]"
        cells = [name, _SHORT_STATUS.get(r.status, r.status)]
        cells += [f"{m.throughput:,.1f}", f"{m.p99_ms:.2f}", f"{m.peak_rss_mb:,.0f}"]
        if with_accuracy:
            cells.append("" if m.accuracy_drop is None else f"{m.accuracy_drop:.2%}")
        if with_compile:
            cells.append("" if m.compile_s is None else f"{m.compile_s:,.1f}")
        table.add_row(*cells, style="bold red" if r.status == PICK else None)
    console.print(table)
    for r in shown_rows:  # the reasons below the table: they would squeeze it unreadable
        console.print(f"  {r.key}: {'; '.join(r.reasons)}", highlight=False, markup=False)
        if r.metrics is not None and r.metrics.repeats_disagree:
            flagged = [n for n in r.metrics.notes if n.startswith("repeats disagree")]
            console.print(f"    {'; '.join(flagged)}", highlight=False, markup=False, style="red")
    if len(shown) > SHOWN:
        console.print(
            f"... and {len(shown) - SHOWN} more measured (all in the report)", highlight=False
        )
    data = result.to_dict()
    console.print(
        f"measured {data['measured']} of {data['space_size']} candidates ({result.config.strategy}"
        + (f", {data['resumed']} read back from the store" if data["resumed"] else "")
        + f"); {len(result.space.pruned)} parts pruned before measuring",
        highlight=False,
    )
    for p in result.space.pruned[:PRUNED_SHOWN]:  # said here, not only in tune.json
        console.print(f"  pruned {p.what} ({p.stage}): {p.reason}", highlight=False, markup=False)
    if len(result.space.pruned) > PRUNED_SHOWN:
        console.print(
            f"  ... and {len(result.space.pruned) - PRUNED_SHOWN} more pruned (all in tune.json)",
            highlight=False,
        )
    if data["compile_s_total"]:
        console.print(
            f"compile s: session set-up before the first result (load, then each input shape's "
            f"first call: compile or CUDA graph capture); {data['compile_s_total']:,.0f} s in all "
            f"of the search's {result.timings.get('search', 0.0):,.0f} s",
            highlight=False,
        )
    for note in rec.notes:
        console.print(f"note: {note}", highlight=False)
    if rec.pick is None:
        console.print("[bold]no candidate meets the constraints[/bold]; nearest:")
        for r in rec.nearest:
            console.print(f"  {r.key}: {'; '.join(v.text for v in r.violations)}", highlight=False)
    else:
        speedup = result.speedup_over_baseline()
        if speedup is not None:
            console.print(
                f"recommended: {rec.pick.key}: {speedup:.2f}x the throughput of the naive default "
                "(onnxruntime, FP32, batch 1, default threads)",
                highlight=False,
            )
        else:
            console.print(f"recommended: {rec.pick.key}", highlight=False)


def _order(r: CandidateResult) -> tuple[int, float]:
    rank = {PICK: 0, FEASIBLE: 1, REJECTED: 2}.get(r.status, 3)
    return rank, -(r.metrics.throughput if r.metrics else 0.0)
