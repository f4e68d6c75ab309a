"""The `int8-static` pass: ONNX Runtime QDQ quantization (U8S8, per-channel) from calibration data.

`quant_pre_process` runs first: it folds BatchNorm and fixes shapes, without which QDQ runs slowly.
"""

from __future__ import annotations

import collections
import contextlib
import io
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from crossinfer.errors import CompileError, InputError, UsageError
from crossinfer.hardware.int8 import int8_recipe
from crossinfer.model import ModelArtifact
from crossinfer.passes.base import PassContext, recipe_record, tool_versions, write_provenance
from crossinfer.passes.simplify import finish_model

METHODS = ("minmax", "entropy", "percentile")
# Ops that run on integers once quantized (QOperator forms and the dynamic-quantization kernels).
_INTEGER_OPS = frozenset(
    {
        "MatMulInteger",
        "ConvInteger",
        "DynamicQuantizeMatMul",
        "QLinearMatMul",
        "QLinearConv",
        "QAttention",
        "QGemm",
    }
)
_QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"})
QUANTIZED_OP_TYPES = _QDQ_OPS | _INTEGER_OPS  # a graph with any of these computes in 8 bits


@dataclass(frozen=True)
class Int8StaticConfig:
    """`method`: how activation ranges are chosen from the calibration outputs ("minmax",
    "entropy", "percentile"); `max_samples`: calibration samples fed, first ones first."""

    method: str = "minmax"
    max_samples: int = 128
    per_channel: bool = True
    # 7-bit weights where 8-bit would saturate (x86 without VNNI); None: the target's ISA decides
    reduce_range: bool | None = None


class Int8StaticPass:
    """Insert QuantizeLinear/DequantizeLinear pairs with scales calibrated on real inputs."""

    name = "int8-static"
    config_type = Int8StaticConfig
    targets = ("onnxruntime",)

    def apply(
        self,
        artifact: ModelArtifact,
        config: Int8StaticConfig,
        out_path: Path,
        context: PassContext,
    ) -> Path:
        if config.method not in METHODS:
            raise UsageError(
                f"calibration method '{config.method}' is unknown: choose from {', '.join(METHODS)}"
            )
        if config.max_samples < 1:
            raise UsageError(f"max_samples must be at least 1, got {config.max_samples}")
        calibration = context.calibration
        if calibration is None or len(calibration) == 0:
            raise InputError(
                f"int8-static needs calibration data for {artifact.source}: pass --calibration "
                "FILE.npz (or a folder of .npz files), use a zoo model with a data set "
                "(zoo:digits), or --calibration synthetic (random inputs: ranges will be poor)"
            )
        samples = calibration.samples[: config.max_samples]
        recipe = int8_recipe(context.target)
        reduce_range = recipe.reduce_range if config.reduce_range is None else config.reduce_range
        with scratch_dir(context, "int8-static-") as tmp:
            source, pre_note = pre_process(artifact, tmp)
            quantized = tmp / "quantized.onnx"
            quantize_qdq(
                source,
                quantized,
                samples,
                method=config.method,
                per_channel=config.per_channel,
                reduce_range=reduce_range,
                model_name=artifact.source,
            )
            model = onnx.load(str(quantized))
        finish_model(model, artifact, out_path)
        write_provenance(
            out_path,
            parent=artifact,
            pass_name=self.name,
            config=config,
            tools=tool_versions("onnxruntime"),
            extra={
                "calibration": calibration.source,
                "calibration_synthetic": calibration.synthetic,
                "calibration_samples": len(samples),
                "pre_process": pre_note,
                "format": "QDQ, activations QUInt8, weights QInt8"
                + (" (7-bit range)" if reduce_range else ""),
                "recipe": recipe_record(
                    recipe, reduce_range=reduce_range, chosen=config.reduce_range
                ),
                **quantization_counts(model),
            },
        )
        return out_path


class SampleReader:
    """ONNX Runtime's CalibrationDataReader over in-memory feeds, one feed per call.

    Duck-typed: the ABC accepts any class with `get_next` (its `__subclasshook__`), and ORT ships
    no type stubs to subclass from under mypy strict.
    """

    def __init__(self, samples: Sequence[Mapping[str, np.ndarray]]) -> None:
        self._samples = samples
        self._iter = iter(samples)

    def get_next(self) -> dict[str, np.ndarray] | None:
        sample = next(self._iter, None)
        return None if sample is None else dict(sample)

    def __len__(self) -> int:
        return len(self._samples)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._iter = iter(self._samples[start_index:end_index])

    def __iter__(self) -> SampleReader:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        sample = self.get_next()
        if sample is None:
            raise StopIteration
        return sample


@contextlib.contextmanager
def scratch_dir(context: PassContext, prefix: str) -> Iterator[Path]:
    """A temporary directory under the pipeline's work dir (or the system's), removed after."""
    root = context.work_dir
    if root is not None:
        root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=prefix) as tmp:
        yield Path(tmp)


def pre_process(artifact: ModelArtifact, tmp: Path) -> tuple[Path, str]:
    """ORT's `quant_pre_process` (shape inference, BatchNorm folding) into `tmp`.

    Its failure does not stop quantization: the original model is used and the note says why.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out = tmp.resolve() / "preprocessed.onnx"
    source = artifact.path.resolve()  # before the chdir below
    try:
        # when its symbolic shape inference is incomplete ORT saves the model it got as far as
        # to the working directory (sym_shape_infer_temp.onnx and a <uuid>.data as large as the
        # weights): run it from the scratch folder so that nothing lands in the user's
        with contextlib.chdir(tmp):
            quant_pre_process(str(source), str(out))
    except Exception as exc:  # symbolic shape inference raises anything from asserts to KeyError
        message = " ".join(str(exc).split())[:300] or type(exc).__name__
        return artifact.path, f"skipped: quant_pre_process failed ({message})"
    return out, "quant_pre_process: shape inference and graph optimization"


def quantization_counts(model: onnx.ModelProto) -> dict[str, Any]:
    """How much of the graph runs quantized: Q/DQ node counts and the compute nodes fed by DQ."""
    ops = collections.Counter(node.op_type for node in model.graph.node)
    dequantized = {
        output
        for node in model.graph.node
        if node.op_type == "DequantizeLinear"
        for output in node.output
    }
    quantized_nodes = sum(
        1
        for node in model.graph.node
        if node.op_type in _INTEGER_OPS
        or (node.op_type not in _QDQ_OPS and any(name in dequantized for name in node.input))
    )
    return {
        "quantized_nodes": quantized_nodes,
        "quantize_ops": {op: ops[op] for op in sorted(_QDQ_OPS | _INTEGER_OPS) if ops[op]},
    }


def quantize_qdq(
    source: Path,
    out: Path,
    samples: Sequence[Mapping[str, np.ndarray]],
    *,
    method: str,
    per_channel: bool,
    reduce_range: bool,
    model_name: str,
    nodes_to_exclude: Sequence[str] = (),
) -> None:
    """ORT static quantization to QDQ, U8S8, calibrated on `samples`; shared with accuracy-aware."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    try:
        # The entropy and percentile calibrators print progress: keep stdout for --json.
        with contextlib.redirect_stdout(io.StringIO()):
            quantize_static(
                str(source),
                str(out),
                SampleReader(samples),
                quant_format=QuantFormat.QDQ,
                per_channel=per_channel,
                reduce_range=reduce_range,
                # U8S8: what REFERENCE.md measured fast on VNNI CPUs (14-16 ms ResNet-50).
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=methods[method],
                nodes_to_exclude=sorted(nodes_to_exclude),
            )
    except Exception as exc:  # ORT's quantizer raises ValueError/RuntimeError/Fail
        raise CompileError(f"static INT8 quantization of {model_name} failed: {exc}") from exc
