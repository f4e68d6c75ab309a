"""Terminal rendering of a tune: the pick, the runners-up, what was rejected and where the files are."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from crossinfer.tune.recommend import FEASIBLE, PICK, REJECTED, CandidateResult
from crossinfer.tune.runner import TuneResult

SHOWN = 12


def render_tune(result: TuneResult, console: Console) -> None:
    rec = result.recommendation
    table = Table(
        title=f"tune {result.model.source}: {rec.scorer.objective.value}", title_justify="left"
    )
    table.add_column("candidate")
    table.add_column("status")
    for name in ("samples/s", "p99 ms", "MB", "acc. drop", "compile s"):
        table.add_column(name, justify="right")
    shown = [r for r in rec.results if r.metrics is not None]
    shown.sort(key=_order)
    for r in shown[:SHOWN]:
        m = r.metrics
        assert m is not None
        table.add_row(
            r.key,
            r.status,
            f"{m.throughput:,.1f}",
            f"{m.p99_ms:.2f}",
            f"{m.peak_rss_mb:,.0f}",
            "" if m.accuracy_drop is None else f"{m.accuracy_drop:.2%}",
            "" if m.compile_s is None else f"{m.compile_s:,.1f}",
            style="bold red" if r.status == PICK else None,
        )
    console.print(table)
    for r in shown[:SHOWN]:  # the reasons below the table: they would squeeze it unreadable
        console.print(f"  {r.key}: {'; '.join(r.reasons)}", highlight=False, markup=False)
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
