"""Terminal view of a ModelArtifact, for `crossinfer inspect`."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from crossinfer.model import ModelArtifact


def render_artifact(artifact: ModelArtifact, console: Console, *, top_ops: int = 25) -> None:
    console.print(Text(artifact.source, style="bold"), Text(f"({artifact.path})"), soft_wrap=True)
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="bold")
    facts.add_column()
    facts.add_row("sha256", artifact.sha256)
    facts.add_row(
        "file size", f"{artifact.file_size:,} bytes ({artifact.file_size / 2**20:.1f} MiB)"
    )
    if artifact.external_data:
        facts.add_row("external data", ", ".join(artifact.external_data))
    facts.add_row("IR version", str(artifact.ir_version))
    facts.add_row(
        "opsets", ", ".join(f"{d or 'ai.onnx'} {v}" for d, v in sorted(artifact.opsets.items()))
    )
    if artifact.producer:
        facts.add_row("producer", artifact.producer)
    facts.add_row("parameters", f"{artifact.parameter_count:,}")
    facts.add_row("nodes", f"{artifact.node_count:,}")
    console.print(facts)

    io = Table(title="inputs and outputs", title_justify="left")
    io.add_column("kind")
    io.add_column("name")
    io.add_column("dtype")
    io.add_column("shape")
    for kind, specs in (("input", artifact.inputs), ("output", artifact.outputs)):
        for spec in specs:
            # Text, not markup: a shape like [batch,8] would read as a style tag
            io.add_row(kind, Text(spec.name), spec.dtype, Text(spec.shape_str()))
    console.print(io)

    ops = Table(title=f"op histogram ({len(artifact.op_histogram)} op types)", title_justify="left")
    ops.add_column("op")
    ops.add_column("count", justify="right")
    for op, count in list(artifact.op_histogram.items())[:top_ops]:
        ops.add_row(Text(op), str(count))
    rest = list(artifact.op_histogram.items())[top_ops:]
    if rest:
        ops.add_row(f"... {len(rest)} more", str(sum(c for _, c in rest)))
    console.print(ops)
