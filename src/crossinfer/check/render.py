"""Terminal view of a CheckReport: one row per backend x device, then the reasons in full."""

from __future__ import annotations

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from crossinfer.check.isolate import last_words
from crossinfer.check.runner import CheckReport, CheckRow, Verdict

_STYLES = {
    Verdict.PASS: "green",
    Verdict.MISMATCH: "red",
    Verdict.CRASHED: "red",
    Verdict.TIMEOUT: "red",
    Verdict.ERROR: "red",
    Verdict.UNSUPPORTED: "yellow",
    Verdict.UNAVAILABLE: "dim",
    Verdict.NO_REFERENCE: "yellow",
}


def render_check(report: CheckReport, console: Console) -> None:
    shapes = ", ".join(f"{k} {d}{s}" for k, (s, d) in report.inputs.items())
    tol = report.tolerance
    console.print(
        f"[bold]check[/bold] {report.model.source}  sha256 {report.model.short_hash}  "
        f"precision {report.precision.value}  tolerance atol={tol.atol:g} rtol={tol.rtol:g} "
        f"cosine>={tol.min_cosine:g}"
    )
    if not report.judged:
        served = f"none ({report.requested_reference} and the fallbacks failed: rows not judged)"
    elif report.requested_reference and report.reference != report.requested_reference:
        served = f"{report.reference} (fallback: {report.requested_reference} failed)"
    else:
        served = report.reference
    console.print(f"inputs ({report.input_source}): {shapes}; reference: {served}")
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1))
    # 80 columns: the target and the verdict are never cut ("unsuppor…" said nothing); the
    # placement folds onto more lines instead
    table.add_column("target", no_wrap=True)
    table.add_column("verdict", no_wrap=True, min_width=len(Verdict.MISMATCH.value))
    for column in ("load s", "run ms"):
        table.add_column(column, justify="right", no_wrap=True)
    table.add_column("placement", min_width=9, overflow="fold")
    for column in ("abs err", "cosine"):
        table.add_column(column, justify="right", no_wrap=True)
    for row in report.rows:
        table.add_row(*_cells(row))
    console.print(table)
    console.print(
        "* the reference: judged on producing every declared output, all finite.",
        style="dim",
    )
    for row in report.rows:
        fell_back = row.is_reference and report.reference != report.requested_reference
        if row.reason and (fell_back or not (row.passed and row.is_reference)):
            console.print(
                f"[{_STYLES[row.verdict]}]{row.target}[/]: {escape(row.reason)}", highlight=False
            )
        worst = row.worst()
        if worst is not None and not row.is_reference:
            console.print(
                f"  {len(row.comparisons)} output(s): max rel err "
                f"{max(c.max_rel_error for c in row.comparisons):.2e}; smallest passing atol "
                f"{max(c.needed_atol for c in row.comparisons):.1e} at rtol {tol.rtol:g}; "
                f"first run {(row.first_run_s or 0) * 1e3:.1f} ms",
                highlight=False,
            )
        if row.unsupported_ops:
            console.print(f"  unsupported ops: {escape(', '.join(row.unsupported_ops))}")
        if row.stderr_tail and row.verdict in (Verdict.CRASHED, Verdict.TIMEOUT):
            said = last_words(row.stderr_tail) or row.stderr_tail[-400:]
            console.print(f"  last stderr: {escape(said[-400:])}", highlight=False)
        ignored = row.session.get("ignored_options")
        if ignored and not row.target.startswith("reference:"):
            console.print(f"  {row.target} ignored: {escape(', '.join(ignored))}", highlight=False)
        precisions = row.session.get("runtime_precisions")
        if isinstance(precisions, dict) and precisions:
            ran = ", ".join(f"{k}: {v}" for k, v in precisions.items())
            console.print(f"  {row.target} layers by runtime precision: {ran}", highlight=False)


def _cells(row: CheckRow) -> list[str]:
    placement = "-"
    if row.placement:
        devices = row.placement.get("devices", {})
        placement = " ".join(f"{_short_device(k)}:{v}" for k, v in devices.items())
        if row.placement.get("fallback_count"):
            placement += f" ({row.placement['fallback_count']} fallback)"
    worst = row.worst()
    if worst is not None and not row.is_reference:
        errors = [
            f"{worst.max_abs_error:.1e}",
            f"{min(c.cosine for c in row.comparisons):.6f}",
        ]
    else:
        errors = ["-", "-"]
    return [
        row.target + ("*" if row.is_reference else ""),
        f"[{_STYLES[row.verdict]}]{row.verdict.value}[/]",
        f"{row.load_s:.2f}" if row.load_s is not None else "-",
        f"{row.run_s * 1e3:.1f}" if row.run_s is not None else "-",
        placement,
        *errors,
    ]


def _short_device(name: str) -> str:
    return "numpy" if name == "reference" else name.removesuffix("ExecutionProvider")
