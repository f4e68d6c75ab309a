"""The first divergent node: every intermediate tensor of two runs compared, in graph order.

As Polygraphy's `--mark all`: each node output becomes a graph output, both sides run it, and the
first node (topological order) whose output leaves tolerance is the culprit; it is saved alone as
an ONNX model with its input values and the expected outputs (ONNX's test-data layout).
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from crossinfer.backends.base import (
    BackendEntry,
    Precision,
    SessionOptions,
    Target,
    backend_entry,
)
from crossinfer.check.isolate import run_isolated
from crossinfer.check.parity import OutputComparison, Tolerance, compare_outputs
from crossinfer.errors import InferenceError
from crossinfer.model import ModelArtifact, load_model


@dataclass(frozen=True)
class TensorError:
    """One tensor's error: B's value against A's."""

    name: str
    passed: bool
    max_abs_error: float
    cosine: float
    reason: str = ""

    @classmethod
    def from_comparison(cls, c: OutputComparison) -> TensorError:
        return cls(c.name, c.passed, c.max_abs_error, c.cosine, c.reason)

    def describe(self) -> str:
        return f"'{self.name}' max abs err {self.max_abs_error:.2e}, cosine {self.cosine:.6f}"


@dataclass(frozen=True)
class Divergence:
    """Where B first leaves A: the node, its outputs' errors, and its inputs' errors."""

    a: str  # "model on target" of each side
    b: str
    compared: int  # tensors present in both runs and compared
    node: str = ""  # empty: no intermediate tensor left tolerance
    op_type: str = ""
    node_index: int = -1
    outputs: tuple[TensorError, ...] = ()
    inputs: tuple[TensorError, ...] = ()  # node outputs feeding it; graph inputs/weights exact
    repro_dir: Path | None = None
    note: str = ""  # e.g. the final outputs differ while no shared intermediate does

    @property
    def found(self) -> bool:
        return bool(self.node)

    def summary(self) -> str:
        if not self.found:
            return self.note or (
                f"no intermediate tensor of {self.b} leaves tolerance ({self.compared} compared)"
            )
        worst = min(self.outputs, key=lambda e: e.cosine)
        feeding = (
            "its inputs within tolerance"
            if all(e.passed for e in self.inputs)
            else "its inputs already off"
        )
        if self.inputs:
            feeding += " (" + "; ".join(e.describe() for e in self.inputs) + ")"
        text = (
            f"first divergent node: '{self.node}' ({self.op_type}, #{self.node_index}): "
            f"output {worst.describe()}, {feeding}"
        )
        if self.repro_dir is not None:
            text += f"; reproducer saved in {self.repro_dir}"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {
            "a": self.a,
            "b": self.b,
            "compared": self.compared,
            "node": self.node or None,
            "op_type": self.op_type or None,
            "node_index": self.node_index,
            "outputs": [asdict(e) for e in self.outputs],
            "inputs": [asdict(e) for e in self.inputs],
            "repro_dir": str(self.repro_dir) if self.repro_dir else None,
            "summary": self.summary(),
        }


@dataclass(frozen=True)
class _Side:
    artifact: ModelArtifact
    target: Target
    options: SessionOptions = field(default_factory=SessionOptions)


def mark_all_outputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose graph outputs are every node output (typed where shape inference knows)."""
    marked = onnx.ModelProto()
    marked.CopyFrom(model)
    try:
        inferred = onnx.shape_inference.infer_shapes(marked)
    except Exception:  # inference is a help, not a need: untyped outputs still run on ORT
        inferred = marked
    types = {vi.name: vi for vi in inferred.graph.value_info}
    existing = {o.name for o in marked.graph.output}
    for node in marked.graph.node:
        for name in node.output:
            if not name or name in existing:
                continue
            existing.add(name)
            if name in types and types[name].type.tensor_type.elem_type:
                marked.graph.output.append(types[name])
            else:
                marked.graph.output.append(onnx.ValueInfoProto(name=name))
    return marked


def first_divergence(
    a: ModelArtifact,
    target_a: Target,
    b: ModelArtifact,
    target_b: Target,
    *,
    feeds: Mapping[str, np.ndarray],
    tolerance: Tolerance,
    options_a: SessionOptions | None = None,
    options_b: SessionOptions | None = None,
    repro_dir: Path | None = None,
    timeout_s: float = 600.0,
) -> Divergence:
    """Run A (the trusted side) and B with every tensor marked; find B's first node off A.

    A and B may be different models (FP32 and its INT8 version): tensors are matched by name,
    which quantizers keep for the float tensors they wrap in Q/DQ pairs.
    """
    fp32 = SessionOptions(precision=Precision.FP32)
    with tempfile.TemporaryDirectory(prefix="crossinfer-bisect-") as tmp:
        values_a, values_b = _run_marked(
            [_Side(a, target_a, options_a or fp32), _Side(b, target_b, options_b or fp32)],
            feeds,
            Path(tmp),
            timeout_s,
        )
    return locate(
        b.load_proto(),
        values_a,
        values_b,
        tolerance=tolerance,
        a=f"{a.source} on {target_a}",
        b=f"{b.source} on {target_b}",
        repro_dir=repro_dir,
    )


def locate(
    model_b: onnx.ModelProto,
    values_a: Mapping[str, np.ndarray],
    values_b: Mapping[str, np.ndarray],
    *,
    tolerance: Tolerance,
    a: str = "A",
    b: str = "B",
    repro_dir: Path | None = None,
) -> Divergence:
    """Walk B's nodes in order (ONNX keeps them topologically sorted); compare shared tensors."""
    errors: dict[str, TensorError] = {}
    compared = 0
    for index, node in enumerate(model_b.graph.node):
        shared = [n for n in node.output if n and n in values_a and n in values_b]
        if not shared:
            continue
        comparisons = compare_outputs(
            {n: values_b[n] for n in shared}, {n: values_a[n] for n in shared}, tolerance
        )
        compared += len(comparisons)
        outs = tuple(TensorError.from_comparison(c) for c in comparisons)
        errors.update({e.name: e for e in outs})
        if all(e.passed for e in outs):
            continue
        ins = tuple(errors[n] for n in node.input if n in errors)
        saved = None
        if repro_dir is not None:
            saved = save_reproducer(model_b, index, values_a, repro_dir)
        return Divergence(
            a=a,
            b=b,
            compared=compared,
            node=node.name or f"#{index}",
            op_type=f"{node.domain}:{node.op_type}" if node.domain else node.op_type,
            node_index=index,
            outputs=outs,
            inputs=ins,
            repro_dir=saved,
        )
    return Divergence(a=a, b=b, compared=compared)


def save_reproducer(
    model: onnx.ModelProto, index: int, values: Mapping[str, np.ndarray], out_dir: Path
) -> Path:
    """The node alone as model.onnx, weights kept, other inputs fed from A's values, and A's
    outputs expected: ONNX's test-data layout (test_data_set_0/input_N.pb, output_N.pb), which
    onnx_test_runner and `crossinfer check --inputs inputs.npz` both read."""
    node = model.graph.node[index]
    initializers = {t.name: t for t in model.graph.initializer}
    out_dir.mkdir(parents=True, exist_ok=True)
    data_dir = out_dir / "test_data_set_0"
    data_dir.mkdir(exist_ok=True)
    graph_inputs, weights, feeds = [], [], {}
    for name in dict.fromkeys(n for n in node.input if n):
        if name in initializers:
            weights.append(initializers[name])
        elif name in values:
            value = np.asarray(values[name])
            feeds[name] = value
            graph_inputs.append(
                helper.make_tensor_value_info(
                    name, helper.np_dtype_to_tensor_dtype(value.dtype), list(value.shape)
                )
            )
        else:
            raise InferenceError(
                f"input '{name}' of node '{node.name}' has no value from the trusted run: "
                "the reproducer cannot be written"
            )
    graph_outputs = []
    expected = []
    for name in node.output:
        if name and name in values:
            value = np.asarray(values[name])
            expected.append((name, value))
            graph_outputs.append(
                helper.make_tensor_value_info(
                    name, helper.np_dtype_to_tensor_dtype(value.dtype), list(value.shape)
                )
            )
    alone = helper.make_model(
        helper.make_graph(
            [node], f"{node.name or node.op_type}-repro", graph_inputs, graph_outputs, weights
        ),
        opset_imports=list(model.opset_import),
    )
    alone.ir_version = model.ir_version
    onnx.save(alone, out_dir / "model.onnx")
    for i, (name, value) in enumerate(feeds.items()):
        tensor = numpy_helper.from_array(value, name)
        (data_dir / f"input_{i}.pb").write_bytes(tensor.SerializeToString())
    for i, (name, value) in enumerate(expected):
        tensor = numpy_helper.from_array(value, name)
        (data_dir / f"output_{i}.pb").write_bytes(tensor.SerializeToString())
    np.savez(out_dir / "inputs.npz", **feeds)  # type: ignore[arg-type]  # numpy types kwargs as its own options
    return out_dir


_Job = tuple[BackendEntry, ModelArtifact, str, SessionOptions]  # what one side runs


def _run_marked(
    sides: list[_Side], feeds: Mapping[str, np.ndarray], tmp: Path, timeout_s: float
) -> list[dict[str, np.ndarray]]:
    """Both sides in one child process (one start-up, not two), one after the other."""
    jobs: list[_Job] = []
    for i, side in enumerate(sides):
        path = tmp / f"side-{i}.onnx"
        onnx.save(mark_all_outputs(side.artifact.load_proto()), path)
        marked = replace(load_model(path), proto=None)
        jobs.append((backend_entry(side.target.backend), marked, side.target.device, side.options))
    outcome = run_isolated(_run_sides_in_child, jobs, dict(feeds), timeout_s=timeout_s)
    where = " and ".join(f"{s.artifact.source} on {s.target}" for s in sides)
    if not outcome.ok:
        raise InferenceError(
            f"{where} with every tensor marked did not run: {outcome.status}: {outcome.message}"
        )
    values: list[dict[str, np.ndarray]] = []
    for side, result in zip(sides, outcome.value, strict=True):
        if result.error is not None or result.outputs is None:
            message = result.error[1] if result.error else "no outputs"
            raise InferenceError(
                f"{side.artifact.source} with every tensor marked did not run on "
                f"{side.target}: {message}"
            )
        values.append(result.outputs)
    return values


def _run_sides_in_child(jobs: list[_Job], feeds: dict[str, np.ndarray]) -> list[Any]:
    """Runs in the child: check's own per-target work for each side. Module-level for pickling."""
    from crossinfer.check.runner import run_target_in_child

    return [
        run_target_in_child(entry, artifact, device, options, feeds)
        for entry, artifact, device, options in jobs
    ]
