"""Terminal views of benchmark results: the summary table of a run, history, and comparisons."""

from __future__ import annotations

from collections.abc import Sequence

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from crossinfer.bench.result import BenchResult
from crossinfer.bench.stats import Comparison


def _number(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def _figure(result: BenchResult) -> str:
    if result.scenario == "server":
        return f"{_number(result.server_qps)} qps" if result.server_qps else "no valid qps"
    return f"{_number(result.throughput)}/s"


def render_results(results: Sequence[BenchResult], console: Console, *, title: str) -> None:
    if not results:
        console.print(f"{title}: no results, every setting failed (reasons above)", highlight=False)
        return
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for column, justify in (
        ("scenario", "left"),
        ("batch", "right"),
        ("loadgen", "left"),
        ("throughput", "right"),
        ("p50 ms", "right"),
        ("p99 ms", "right"),
        ("spread", "right"),
        ("RSS MB", "right"),
    ):
        table.add_column(column, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for r in results:
        table.add_row(
            r.scenario,
            str(r.batch_size),
            r.loadgen_result,
            _figure(r),
            f"{r.latency.p50_ms:.2f}",
            f"{r.latency.p99_ms:.2f}",
            f"{r.stability.spread_pct:.0f}%{'' if r.stability.stable else '!'}",
            f"{r.peak_rss_mb:.0f}",
        )
    console.print(table)
    console.print(
        "spread: of throughput over the run's windows; ! = windows did not agree within "
        f"{results[0].stability.threshold_pct:g}% (not stable)"
        if results
        else "",
        style="dim",
    )
    if results:
        first = results[0]
        console.print(
            f"first inference {first.first_inference_ms:.1f} ms, load {first.load_s:.2f} s; "
            f"energy: {escape(first.energy.method)}",
            highlight=False,
        )
        for line in staging_lines(results):
            console.print(line, highlight=False)
        if not first.compliant:
            console.print(
                "[yellow]quick run: not a compliant MLPerf run[/yellow] (official runs last 600 s)"
            )
        console.print(
            f"LoadGen logs: {escape(str(first.loadgen_log_dir).rsplit('/', 2)[0])}", highlight=False
        )


def staging_lines(results: Sequence[BenchResult]) -> list[str]:
    """Where the inputs were staged (labelled when on the device) and the warm-up per shape."""
    lines: list[str] = []
    placements = sorted({r.input_placement for r in results})
    if "device" in placements:
        lines.append(
            "[yellow]inputs on device[/yellow]: the figures measure the device, not the system "
            "(no host-to-device copies)"
        )
    if "pinned" in placements:
        lines.append("inputs: pinned host memory, each batch copied on its worker's own stream")
    casts = {
        f"{name} {how}" for r in results for name, how in r.input_staging.get("cast", {}).items()
    }
    if casts:
        lines.append(f"inputs cast once when staged (preprocessing): {', '.join(sorted(casts))}")
    warmup: dict[str, float] = {}
    for r in results:
        for size, seconds in r.warmup_s.items():
            warmup.setdefault(size, seconds)
    if warmup:
        shapes = ", ".join(f"b{size} {warmup[size]:.2f} s" for size in sorted(warmup, key=int))
        lines.append(
            f"warm-up before LoadGen (first run per batch shape, compile/capture included): {shapes}"
        )
    return lines


def render_history(rows: Sequence[tuple[int, BenchResult]], console: Console) -> None:
    """Stored results as (row id, result) pairs, newest first, as `ResultStore.query` gives them."""
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("id", justify="right", no_wrap=True)
    table.add_column("when (UTC)", no_wrap=True)
    table.add_column("model / target", overflow="fold", min_width=16)
    table.add_column("scenario", no_wrap=True)
    table.add_column("figure", justify="right", no_wrap=True)
    table.add_column("p99 ms", justify="right", no_wrap=True)
    table.add_column("loadgen", no_wrap=True)
    for row_id, r in rows:
        table.add_row(
            str(row_id),
            r.created_at[5:16].replace("T", " "),
            escape(f"{r.model_source}\n{r.backend}:{r.device}"),
            f"{r.scenario} b{r.batch_size}",
            _figure(r),
            f"{r.latency.p99_ms:.2f}",
            r.loadgen_result + ("" if r.compliant else "*"),
        )
    console.print(table)
    console.print("* quick run: not a compliant MLPerf run", style="dim")


def render_comparisons(
    result: BenchResult,
    baseline_id: int | None,
    comparisons: Sequence[Comparison],
    changes: Sequence[str],
    console: Console,
) -> None:
    head = f"{result.scenario} batch {result.batch_size}"
    if baseline_id is None:
        console.print(f"{head}: no earlier matching result to compare with", highlight=False)
        return
    moved = f" (changed: {', '.join(changes)})" if changes else ""
    for c in comparisons:
        if c.regressed:
            console.print(
                f"[bold red]REGRESSION[/] {head} vs #{baseline_id}: {escape(c.reason)}{escape(moved)}",
                highlight=False,
            )
        elif c.improved:
            console.print(
                f"[green]improved[/] {head} vs #{baseline_id}: {escape(c.reason)}{escape(moved)}",
                highlight=False,
            )
        else:
            console.print(f"{head} vs #{baseline_id}: {escape(c.reason)}", highlight=False)
