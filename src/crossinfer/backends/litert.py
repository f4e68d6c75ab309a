"""LiteRT (TensorFlow Lite) on the CPU with XNNPACK: the ONNX model converted by onnx2tf.

FP32 and FP16 (16-bit weights) convert directly; INT8 is full-integer post-training
quantization calibrated on the same data as `int8-static`. Conversions are cached by model
hash, precision and calibration source; the `.tflite` is what an Ethos-U or Edge TPU flow takes.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import io
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from ai_edge_litert.interpreter import Interpreter

from crossinfer.backends.base import (
    Compatibility,
    DeviceInfo,
    Placement,
    Precision,
    SessionOptions,
    Target,
    validate_feeds,
)
from crossinfer.errors import (
    BackendUnavailableError,
    CompileError,
    CrossinferError,
    InferenceError,
    UsageError,
)
from crossinfer.model import ModelArtifact

__all__ = ["LiteRtBackend", "LiteRtSession", "convert_to_tflite"]

CONVERT_HINT = (
    "ONNX -> LiteRT conversion needs TensorFlow and onnx2tf (about 1.6 GB, not in the extras): "
    "uv sync --all-extras --group litert-convert"
)
# onnx2tf's file for each precision, after the model's stem
_SUFFIX = {
    Precision.FP32: "_float32.tflite",
    Precision.FP16: "_float16.tflite",
    Precision.INT8: "_full_integer_quant.tflite",
}
_CONVERSION = 3  # the options given to onnx2tf: bump when they change, to convert again
_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # onnx2tf colours its messages
_CALIBRATION_SAMPLES = 100  # representative samples for INT8, as onnx2tf's own default


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def converter_missing() -> str | None:
    """Why this environment cannot convert ONNX to LiteRT, or None when it can."""
    for module in ("onnx2tf", "tensorflow", "tf_keras"):
        try:
            importlib.metadata.distribution(module.replace("_", "-"))
        except importlib.metadata.PackageNotFoundError:
            return f"{module} is not installed: {CONVERT_HINT}"
    return None


def cache_root() -> Path:
    from crossinfer.zoo import default_cache_dir

    return default_cache_dir() / "litert"


def convert_to_tflite(
    artifact: ModelArtifact, precision: Precision, *, calibration: str | None = None
) -> Path:
    """The `.tflite` of `artifact` at `precision`, converted once and cached."""
    if precision not in _SUFFIX:
        raise UsageError(
            f"litert runs fp32, fp16 or int8, not {precision.value}: choose one of those"
        )
    quantized = precision is Precision.INT8
    folder = cache_root() / _key(artifact, calibration if quantized else None, quantized)
    target = folder / f"model{_SUFFIX[precision]}"
    if target.is_file():
        return target
    missing = converter_missing()
    if missing is not None:
        raise BackendUnavailableError(f"litert cannot convert {artifact.source}: {missing}")
    folder.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="convert-", dir=folder.parent))
    try:
        _run_onnx2tf(artifact, precision, calibration, work)
        if not (work / target.name).is_file():
            raise CompileError(f"onnx2tf wrote no {target.name} for {artifact.source}")
        folder.mkdir(exist_ok=True)
        # every file one conversion wrote (FP32 and FP16 come together); rename is atomic, and
        # a concurrent conversion of the same key writes the same bytes
        for produced in work.glob("model_*.tflite"):
            os.replace(produced, folder / produced.name)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def _key(artifact: ModelArtifact, calibration: str | None, quantized: bool) -> str:
    text = f"{artifact.sha256}:{quantized}:{calibration}:{_version('onnx2tf')}:{_CONVERSION}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _run_onnx2tf(
    artifact: ModelArtifact, precision: Precision, calibration: str | None, work: Path
) -> None:
    import onnx2tf  # TensorFlow: imported only to convert

    model = work / "model.onnx"
    shutil.copyfile(artifact.path, model)
    # onnx2tf makes 3-5-D inputs channels-last. Images (4-D, 5-D) keep the ONNX layout at the
    # boundary, transposed inside for LiteRT's NHWC kernels; 3-D inputs are sequences
    # ([batch, tokens, hidden]), kept as they are, or the outputs come back channels-last
    ranks = {s.name: len(s.shape) for s in artifact.inputs if s.shape is not None}
    images = [name for name, rank in ranks.items() if rank in (4, 5)]
    sequences = [name for name, rank in ranks.items() if rank == 3]
    kwargs: dict[str, Any] = {}
    if precision is Precision.INT8:
        kwargs = {
            "output_integer_quantized_tflite": True,
            "quant_type": "per-channel",
            "custom_input_op_name_np_data_path": _calibration_files(artifact, calibration, work),
            "input_quant_dtype": "float32",  # feeds stay float: the model quantizes them
            "output_quant_dtype": "float32",
        }
    sink = io.StringIO()
    try:
        with contextlib.redirect_stdout(sink):
            onnx2tf.convert(
                input_onnx_file_path=str(model),
                output_folder_path=str(work),
                # keep the ONNX layout: onnx2tf otherwise makes 4-D inputs NHWC
                keep_ncw_or_nchw_or_ncdhw_input_names=images or None,
                keep_shape_absolutely_input_names=sequences or None,
                # Erf has no LiteRT builtin (it would need the Flex delegate): an erf
                # approximation from builtins instead, for BERT's GELU
                replace_to_pseudo_operators=["erf"],
                copy_onnx_input_output_names_to_tflite=True,
                non_verbose=True,
                **kwargs,
            )
    except CrossinferError:
        raise
    except Exception as exc:  # onnx2tf raises bare exceptions for unsupported graphs
        tail = _ANSI.sub("", " ".join(sink.getvalue().split()[-40:]))
        raise CompileError(
            f"onnx2tf could not convert {artifact.source} ({precision.value}): "
            f"{_ANSI.sub('', str(exc))}" + (f"; onnx2tf said: {tail}" if tail else "")
        ) from exc


def _calibration_files(
    artifact: ModelArtifact, calibration: str | None, work: Path
) -> list[list[Any]]:
    from crossinfer.passes.calibration import load_calibration

    data = load_calibration(calibration, artifact, max_samples=_CALIBRATION_SAMPLES)
    files: list[list[Any]] = []
    for spec in artifact.inputs:
        stacked = np.concatenate([sample[spec.name] for sample in data.samples], axis=0)
        path = work / f"calibration_{len(files)}.npy"
        np.save(path, stacked.astype(np.float32))
        files.append([spec.name, str(path), 0.0, 1.0])  # mean 0, std 1: data used as given
    return files


class LiteRtBackend:
    name = "litert"

    def __init__(self) -> None:
        missing = converter_missing()
        if missing is not None:
            # the registry turns this into "backend 'litert' cannot be used: ..." with the hint,
            # as for any runtime that is not installed; LiteRtSession still runs a .tflite
            raise ImportError(missing)

    def version(self) -> str:
        return _version("ai-edge-litert")

    def devices(self) -> list[DeviceInfo]:
        return [DeviceInfo(name="cpu", description="LiteRT interpreter with XNNPACK")]

    def supports(self, artifact: ModelArtifact, device: str) -> Compatibility:
        if device != "cpu":
            return Compatibility(False, f"litert runs on the CPU only, not '{device}'")
        if any(spec.dtype != "float32" for spec in artifact.inputs):
            return Compatibility(False, "the litert backend feeds float32 inputs only")
        # onnx2tf converts the default ONNX domain only
        custom = sorted(
            {
                f"{n.domain}:{n.op_type}"
                for n in artifact.load_proto().graph.node
                if n.domain not in ("", "ai.onnx")
            }
        )
        if custom:
            return Compatibility(
                False,
                f"onnx2tf converts standard ONNX ops only, not {', '.join(custom)}",
                unsupported_ops=tuple(custom),
            )
        return Compatibility(True)

    def prepare(
        self, artifact: ModelArtifact, device: str, options: SessionOptions | None = None
    ) -> LiteRtSession:
        options = options or SessionOptions()
        if device != "cpu":
            raise UsageError(f"litert has no device '{device}': it runs on the CPU (litert:cpu)")
        calibration = options.extra.get("calibration")
        path = convert_to_tflite(artifact, options.precision, calibration=calibration)
        return LiteRtSession(artifact, path, options)


class LiteRtSession:
    def __init__(self, artifact: ModelArtifact, path: Path, options: SessionOptions) -> None:
        self.target = Target("litert", "cpu")
        self.inputs = artifact.inputs
        self.outputs = artifact.outputs
        self._model = artifact.source
        self._path = path
        self._precision = options.precision
        self._threads = options.threads or os.cpu_count() or 1
        self._ignored = [
            name
            for name, value in (
                ("graph_optimization_level", options.graph_optimization_level),
                ("performance_hint", options.performance_hint),
                ("streams", options.streams),
            )
            if value is not None
        ]
        self._ignored += [f"extra {k}" for k in options.extra if k != "calibration"]
        try:
            self._interpreter = Interpreter(model_path=str(path), num_threads=self._threads)
            self._interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise CompileError(f"litert could not load {path} ({artifact.source}): {exc}") from exc
        details = self._interpreter.get_input_details()
        self._input_index: dict[str, int] = {str(d["name"]): int(d["index"]) for d in details}
        self._input_order: list[str] = [str(d["name"]) for d in details]
        self._outputs = self._interpreter.get_output_details()
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._lock = threading.Lock()  # one interpreter: one call at a time

    def _input_name(self, name: str) -> str:
        if name in self._input_index:
            return name
        # older onnx2tf names inputs "serving_default_<name>:0"
        for tflite in self._input_index:
            if name in tflite:
                return tflite
        if len(self.inputs) == 1 and len(self._input_index) == 1:
            return self._input_order[0]
        raise InferenceError(
            f"{self._path} has no input for '{name}' (it takes {', '.join(self._input_index)})"
        )

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        arrays = validate_feeds(self.inputs, feeds, model=self._model)
        with self._lock:
            interpreter = self._interpreter
            try:
                resized = False
                for name, array in arrays.items():
                    tflite = self._input_name(name)
                    if self._shapes.get(tflite) != array.shape:
                        interpreter.resize_tensor_input(self._input_index[tflite], array.shape)
                        self._shapes[tflite] = array.shape
                        resized = True
                if resized:
                    interpreter.allocate_tensors()
                    self._outputs = interpreter.get_output_details()
                for name, array in arrays.items():
                    tflite = self._input_name(name)
                    interpreter.set_tensor(self._input_index[tflite], array.astype(np.float32))
                interpreter.invoke()
                values = [interpreter.get_tensor(d["index"]) for d in self._outputs]
            except (ValueError, RuntimeError) as exc:
                raise InferenceError(f"litert:cpu failed on {self._model}: {exc}") from exc
        by_name = {d["name"]: v for d, v in zip(self._outputs, values, strict=True)}
        out: dict[str, np.ndarray] = {}
        for position, spec in enumerate(self.outputs):
            value = by_name.get(spec.name)
            if value is None:  # names not carried over: the converter keeps the order
                value = values[position]
            out[spec.name] = _channels_first(np.array(value), spec.shape)
        return out

    def placement(self) -> Placement | None:
        # the converted graph's ops; XNNPACK takes those it supports, LiteRT's own CPU kernels
        # the rest: both are this CPU, so nothing falls back to another device
        getter = getattr(self._interpreter, "_get_ops_details", None)
        if getter is None:
            return None
        ops = {f"{op['op_name']}_{op['index']}": "cpu" for op in getter()}
        return Placement(node_devices=ops, primary="cpu", note="LiteRT ops after onnx2tf")

    def describe(self) -> dict[str, Any]:
        return {
            "runtime": f"ai-edge-litert {_version('ai-edge-litert')} (XNNPACK)",
            "converter": f"onnx2tf {_version('onnx2tf')}",
            "precision": self._precision.value,
            "tflite": str(self._path),
            "threads": self._threads,
            "ignored_options": list(self._ignored),
        }

    def close(self) -> None:
        del self._interpreter


def _channels_first(value: np.ndarray, declared: Sequence[Any] | None) -> np.ndarray:
    """onnx2tf hands 3-5-D outputs back channels-last (a pooling's [1, 2, 2, 1] for ONNX's
    [1, 1, 2, 2]): move the channels back where the declared shape says so. Only when it is
    unambiguous: a shape that fits the declaration both ways is left as it came."""
    if declared is None or value.ndim not in (3, 4, 5) or len(declared) != value.ndim:
        return value

    def fits(shape: tuple[int, ...]) -> bool:
        return all(
            not isinstance(d, int) or d < 0 or d == n for d, n in zip(declared, shape, strict=True)
        )

    if fits(value.shape):
        return value
    moved = np.moveaxis(value, -1, 1)
    return moved if fits(moved.shape) else value
