"""Rich rendering of a SystemReport for ``crossinfer doctor``.

Everything is spelled out in words, so the output reads the same without colour.
"""

from __future__ import annotations

from rich import box
from rich.console import Console, Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from crossinfer.hardware.discover import (
    IMPORTANT_FEATURES,
    CpuInfo,
    GpuReport,
    OnnxInfo,
    RuntimeInfo,
    SystemReport,
)

_FEATURE_COLUMNS = 3  # fits an 80-column terminal inside the CPU panel


def _gib(size: int) -> str:
    return f"{size / 2**30:.1f} GiB" if size > 0 else "unknown"


def _plain(value: str, style: str = "") -> Text:
    # Text, never markup: install hints such as crossinfer[torch] would read as markup tags.
    return Text(value, style=style)


def _feature_grid(features: dict[str, bool]) -> RenderableType:
    grid = Table.grid(padding=(0, 2))
    for _ in range(_FEATURE_COLUMNS):
        grid.add_column(no_wrap=True)
    cells: list[Text] = []
    for name, present in features.items():
        cell = Text()
        cell.append(name, style="bold" if name in IMPORTANT_FEATURES else "")
        cell.append(" ")
        cell.append("yes" if present else "no", style="green" if present else "red")
        cells.append(cell)
    for start in range(0, len(cells), _FEATURE_COLUMNS):
        row = cells[start : start + _FEATURE_COLUMNS]
        grid.add_row(*row, *([Text()] * (_FEATURE_COLUMNS - len(row))))
    return grid


def _bullets(lines: tuple[str, ...] | list[str], style: str = "") -> Text:
    return Text("\n".join(f"- {line}" for line in lines), style=style)


def _cpu_panel(cpu: CpuInfo) -> Panel:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    cores = f"{cpu.physical_cores} physical, " if cpu.physical_cores else ""
    table.add_row("Model", _plain(cpu.model_name))
    table.add_row("Vendor", _plain(cpu.vendor or "unknown"))
    table.add_row("Architecture", _plain(cpu.architecture or "unknown"))
    table.add_row("Cores", _plain(f"{cores}{cpu.logical_cores} logical"))
    table.add_row("Memory", _plain(_gib(cpu.total_memory_bytes)))
    if cpu.features:
        # Two rows rather than highlighting alone, so the split survives plain-text output.
        key = {k: v for k, v in cpu.features.items() if k in IMPORTANT_FEATURES}
        other = {k: v for k, v in cpu.features.items() if k not in IMPORTANT_FEATURES}
        table.add_row("Key ISA features", _feature_grid(key))
        if other:
            table.add_row("Other ISA", _feature_grid(other))
    else:
        reason = cpu.features_reason or "no feature list"
        table.add_row("ISA features", _plain(f"unknown: {reason}", "yellow"))
    if cpu.notes:
        table.add_row("Notes", _bullets(cpu.notes, "yellow"))
    return Panel(table, title="CPU", title_align="left", box=box.ROUNDED)


def _gpu_panel(report: GpuReport) -> Panel:
    parts: list[RenderableType] = []
    if report.gpus:
        table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
        for header in ("#", "Name", "Memory", "Compute capability", "Driver", "UUID"):
            table.add_column(header, overflow="fold")
        for gpu in report.gpus:
            table.add_row(
                str(gpu.index),
                _plain(gpu.name),
                _gib(gpu.total_memory_bytes),
                gpu.compute_capability or "unknown",
                gpu.driver_version or "unknown",
                _plain(gpu.uuid or "unknown"),
            )
        parts.append(table)
        if report.cuda_driver_version:
            parts.append(_plain(f"CUDA driver API version {report.cuda_driver_version}"))
    else:
        parts.append(_plain(f"No NVIDIA GPUs: {report.reason or 'none found'}", "yellow"))
    if report.notes:
        parts.append(_bullets(report.notes, "yellow"))
    return Panel(Group(*parts), title="NVIDIA GPUs", title_align="left", box=box.ROUNDED)


def _status(runtime: RuntimeInfo) -> Text:
    if not runtime.installed:
        return _plain("not installed", "red")
    if runtime.reason is None:
        return _plain("ready", "green")
    if runtime.reason.startswith("installed but failed to import"):
        return _plain("import failed", "red")
    return _plain("devices unknown", "yellow")


def _runtime_details(runtime: RuntimeInfo) -> Text:
    lines: list[Text] = []
    if runtime.reason:
        lines.append(_plain(runtime.reason, "yellow"))
    if not runtime.usable and runtime.install_hint:
        lines.append(_plain(f"install: {runtime.install_hint}", "cyan"))
    lines.extend(_plain(note, "dim") for note in runtime.notes)
    return Text("; ").join(lines)


def _runtimes_table(runtimes: tuple[RuntimeInfo, ...]) -> Group:
    # Narrow columns for the facts, then the reasons and hints as full-width lines below:
    # squeezed into a column they wrap into one word per line on an 80-column terminal.
    table = Table(title="Runtimes", title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("Runtime", style="bold", no_wrap=True)
    table.add_column("Status", no_wrap=True)
    table.add_column("Version", no_wrap=True)
    table.add_column("Devices / execution providers", overflow="fold")
    for runtime in runtimes:
        table.add_row(
            runtime.name,
            _status(runtime),
            _plain(runtime.version.split("-")[0] if runtime.version else "-"),
            _plain(", ".join(runtime.devices) if runtime.devices else "none"),
        )
    details: list[RenderableType] = []
    for runtime in runtimes:
        text = _runtime_details(runtime)
        if text.plain:
            details.append(Text.assemble(Text(f"{runtime.name}: ", style="bold"), text))
    return Group(table, *details)


def _onnx_line(onnx: OnnxInfo) -> Text:
    if onnx.version is None:
        return _plain(f"ONNX: {onnx.reason}", "red")
    return _plain(
        f"ONNX: onnx {onnx.version}, opsets up to {onnx.max_opset}, IR version {onnx.ir_version}"
    )


def render_report(report: SystemReport, console: Console) -> None:
    """Print CPU, GPUs and runtimes of ``report`` as rich panels and tables."""
    version = f", crossinfer {report.crossinfer_version}" if report.crossinfer_version else ""
    console.print(
        _plain(
            f"System: {report.platform}, Python {report.python_version} "
            f"({report.python_implementation}){version}"
        )
    )
    console.print(_onnx_line(report.onnx))
    console.print(_cpu_panel(report.cpu))
    console.print(_gpu_panel(report.gpu))
    console.print(_runtimes_table(report.runtimes))
