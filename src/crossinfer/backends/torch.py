"""PyTorch backend: an ONNX model converted to ``torch.nn.Module`` (or a user's own module), run on
cpu, cuda[:N], mps or xpu in eager mode, under ``torch.compile`` or replayed from CUDA graphs.

Precision: FP16/BF16 convert the weights (``module.to(dtype)``; float inputs cast on the device,
outputs returned in their declared dtype), or with ``autocast=1`` keep FP32 weights under
``torch.autocast``; TF32 keeps FP32 weights and lets matmuls and convolutions use TF32 cores.
Knobs in ``SessionOptions.extra``: see ``TorchSettings``.
"""

from __future__ import annotations

import copy
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from crossinfer.backends.base import (
    Compatibility,
    DeviceInfo,
    InputPlacement,
    InputStaging,
    Placement,
    Precision,
    SessionOptions,
    Target,
    validate_feeds,
)
from crossinfer.errors import (
    CompileError,
    DeviceUnavailableError,
    InferenceError,
    InputError,
    UnsupportedNodeError,
    UsageError,
    short_message,
)
from crossinfer.model import ModelArtifact, TensorSpec

MODES = ("eager", "compile", "cudagraphs", "compile-cudagraphs")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
_DTYPES = {Precision.FP16: torch.float16, Precision.BF16: torch.bfloat16}
_KNOWN_EXTRA = (
    "mode",
    "compile_mode",
    "channels_last",
    "fold_batchnorm",
    "fuse_conv_relu",
    "fuse_attention",
    "fuse_linear",
    "autocast",
)
INDUCTOR_CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"
_FIRST_CALL_LOCK = threading.Lock()  # compiles and captures, one at a time per process
# dynamo recompiles a module once per input shape (dynamic=False); its default limit (8) would
# quietly run serve's 9th padded batch size (1, 2, ..., 256) uncompiled
_RECOMPILE_LIMIT = 64
# a GPU that idled while the model compiled runs its first batches slow (clocks ramping): on the
# H200 the first 20% window of every bench run was half the others without a second at full load
STEADY_WARMUP_S = 1.0


@dataclass(frozen=True)
class TorchSettings:
    """The torch knobs, read from ``SessionOptions.extra`` (strings, as the CLI passes them).

    mode: eager | compile | cudagraphs (eager kernels captured per input shape, CUDA only) |
        compile-cudagraphs (inductor's kernels, captured per input shape by crossinfer, not by
        inductor's per-thread graph trees: any thread may run it; CUDA only).
    compile_mode: torch.compile's mode: default | reduce-overhead | max-autotune |
        max-autotune-no-cudagraphs.
    channels_last: 1 | 0 | auto (auto: on for models with convolutions on a GPU).
    fold_batchnorm: 1 | 0, fold Conv+BatchNormalization before conversion (default 1).
    fuse_conv_relu: 1 | 0 | auto, Conv->ReLU and Conv->Add->ReLU as one cuDNN call (auto: on
        CUDA outside compile mode, where inductor fuses by itself).
    fuse_attention: 1 | 0 | auto, MatMul->scale->[mask add]->Softmax->MatMul chains as one
        scaled_dot_product_attention call (auto: on CUDA, in every mode: inductor's own attention
        patterns do not match the ONNX form, and on BERT-base the unfused chain cost 3.1 ms of a
        14.9 ms batch of 256 on an H200 against 1.6 ms for the fused kernel).
    fuse_linear: 1 | 0 | auto, MatMul by a constant matrix then Add of a constant bias as one
        linear call, the bias in the GEMM's epilogue (auto: on CUDA; on BERT-base the separate
        bias add cost a copy of Q, K and V in every layer).
    autocast: 1 | 0 | auto, FP16/BF16 under torch.autocast with FP32 weights instead of converted
        weights (auto: BF16 autocast, FP16 converted: BF16's 8-bit mantissa in the residual stream
        lost BERT-base's BF16 parity at batch 256 on an H100, autocast keeps adds in FP32).
    """

    mode: str = "eager"
    compile_mode: str = "default"
    channels_last: str = "auto"
    fold_batchnorm: bool = True
    fuse_conv_relu: str = "auto"
    fuse_attention: str = "auto"
    fuse_linear: str = "auto"
    autocast: str = "auto"

    @classmethod
    def from_extra(cls, extra: Mapping[str, str]) -> TorchSettings:
        unknown = sorted(set(extra) - set(_KNOWN_EXTRA))
        if unknown:
            raise UsageError(
                f"torch does not know option(s) {', '.join(unknown)}: it takes "
                f"{', '.join(_KNOWN_EXTRA)}"
            )
        mode = extra.get("mode", "eager").lower()
        if mode not in MODES:
            raise UsageError(f"torch mode '{mode}' is not one of {', '.join(MODES)}")
        compile_mode = extra.get("compile_mode", "default").lower()
        if compile_mode not in COMPILE_MODES:
            raise UsageError(
                f"torch compile_mode '{compile_mode}' is not one of {', '.join(COMPILE_MODES)}"
            )
        channels_last = extra.get("channels_last", "auto").lower()
        if channels_last not in ("auto", "0", "1"):
            raise UsageError(f"torch channels_last '{channels_last}' must be 0, 1 or auto")
        fuse = _tristate(extra, "fuse_conv_relu")
        return cls(
            mode=mode,
            fuse_conv_relu=fuse,
            fuse_attention=_tristate(extra, "fuse_attention"),
            fuse_linear=_tristate(extra, "fuse_linear"),
            compile_mode=compile_mode,
            channels_last=channels_last,
            fold_batchnorm=_flag(extra, "fold_batchnorm", True),
            autocast=_tristate(extra, "autocast"),
        )


def _tristate(extra: Mapping[str, str], key: str) -> str:
    value = extra.get(key, "auto").lower()
    if value not in ("auto", "0", "1"):
        raise UsageError(f"torch option {key}={value!r} must be 0, 1 or auto")
    return value


def _flag(extra: Mapping[str, str], key: str, default: bool) -> bool:
    value = extra.get(key)
    if value is None:
        return default
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise UsageError(f"torch option {key}={value!r} must be 0 or 1")


def inductor_cache_dir() -> str:
    """Where torch.compile keeps its artefacts: the user's choice, else under crossinfer's cache."""
    from crossinfer.zoo import default_cache_dir

    return os.environ.get(INDUCTOR_CACHE_ENV) or str(default_cache_dir() / "torchinductor")


class TorchBackend:
    name = "torch"

    def __init__(self) -> None:
        # Before onnx2torch (and with it torch._inductor) is imported: inductor writes its own
        # default cache dir into the environment on import, and compile artefacts then land in
        # /tmp, lost between machines' starts. A user's own TORCHINDUCTOR_CACHE_DIR is kept.
        os.environ.setdefault(INDUCTOR_CACHE_ENV, inductor_cache_dir())

    def version(self) -> str:
        return str(torch.__version__)

    def devices(self) -> list[DeviceInfo]:
        found = [DeviceInfo(name="cpu", description=f"torch {torch.__version__} CPU")]
        if torch.cuda.is_available():
            for index in range(torch.cuda.device_count()):
                found.append(
                    DeviceInfo(
                        name="cuda" if index == 0 else f"cuda:{index}",
                        description=f"cuda:{index} ({torch.cuda.get_device_name(index)})",
                    )
                )
        else:
            found.append(
                DeviceInfo(name="cuda", description="CUDA", available=False, reason=_no_cuda())
            )
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            found.append(DeviceInfo(name="mps", description="Apple GPU (Metal)"))
        xpu = getattr(torch, "xpu", None)
        if xpu is not None and xpu.is_available():
            for index in range(xpu.device_count()):
                found.append(DeviceInfo(name="xpu" if index == 0 else f"xpu:{index}"))
        return found

    def supports(self, artifact: ModelArtifact, device: str) -> Compatibility:
        try:
            resolve_device(device)
        except (DeviceUnavailableError, UsageError) as exc:
            return Compatibility(False, str(exc))
        if _native_module(artifact) is not None:
            return Compatibility(True)
        from crossinfer.backends.onnx_to_torch import unsupported_ops

        missing = unsupported_ops(artifact.load_proto())
        if missing:
            return Compatibility(False, _unsupported_message(missing), unsupported_ops=missing)
        return Compatibility(True)

    def prepare(
        self, artifact: ModelArtifact, device: str, options: SessionOptions | None = None
    ) -> TorchSession:
        options = options or SessionOptions()
        return TorchSession(
            artifact,
            device,
            resolve_device(device),
            options,
            TorchSettings.from_extra(options.extra),
        )


def _unsupported_message(ops: Sequence[str]) -> str:
    return (
        f"no ONNX-to-torch converter for op type(s) {', '.join(ops)} (onnx2torch and crossinfer's "
        "own converters): give the model as an nn.Module, or run it on another backend"
    )


def _no_cuda() -> str:
    if torch.version.cuda is None and getattr(torch.version, "hip", None) is None:
        return (
            f"torch {torch.__version__} is a CPU-only build: install a CUDA build "
            "(pip install torch --index-url https://download.pytorch.org/whl/cu128)"
        )
    return (
        f"torch {torch.__version__} (CUDA {torch.version.cuda}) finds no GPU: no NVIDIA GPU, "
        "or its driver is missing (torch.cuda.is_available() is False)"
    )


def resolve_device(name: str) -> torch.device:
    """``cpu``, ``cuda``, ``cuda:N``, ``mps``, ``xpu[:N]`` -> a torch.device that exists here."""
    kind, _, index_text = name.partition(":")
    if kind not in ("cpu", "cuda", "mps", "xpu") or (index_text and not index_text.isdigit()):
        raise UsageError(f"torch knows no device '{name}': use cpu, cuda, cuda:N, mps or xpu")
    index = int(index_text) if index_text else None
    if kind == "cpu":
        return torch.device("cpu")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise DeviceUnavailableError(_no_cuda())
        count = torch.cuda.device_count()
        if (index or 0) >= count:
            raise DeviceUnavailableError(
                f"torch sees {count} CUDA device(s); cuda:{index} is not one"
            )
        return torch.device("cuda", index or 0)
    if kind == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise DeviceUnavailableError(
                "torch finds no Apple GPU (MPS needs macOS on Apple silicon)"
            )
        return torch.device("mps")
    xpu = getattr(torch, "xpu", None)
    if xpu is None or not xpu.is_available():
        raise DeviceUnavailableError("torch finds no Intel GPU (xpu): install Intel's GPU build")
    return torch.device("xpu", index or 0)


def _native_module(artifact: ModelArtifact) -> torch.nn.Module | None:
    native = getattr(artifact, "native", None)
    return native if isinstance(native, torch.nn.Module) else None


class TorchSession:
    """One model on one torch device; ``run`` takes numpy, ``run_tensors`` device tensors."""

    def __init__(
        self,
        artifact: ModelArtifact,
        device_name: str,
        device: torch.device,
        options: SessionOptions,
        settings: TorchSettings,
    ) -> None:
        self.target = Target("torch", device_name)
        self.inputs = artifact.inputs
        self.outputs = artifact.outputs
        self.device = device
        self.settings = settings
        self.precision = options.precision
        self._model_name = artifact.source
        self._ignored: list[str] = []
        self._notes: list[str] = []  # what the session did differently from what was asked
        self._lock = threading.Lock()
        self._local = threading.local()  # per calling thread: its copy stream
        self.compile_s: dict[str, float] = {}  # input shapes -> first call (compile or capture)
        self._seen_shapes: set[tuple[tuple[int, ...], ...]] = set()
        self._check_options(options)
        start = time.perf_counter()
        self._module, self._conversion_info = self._build(artifact)
        self.convert_s = time.perf_counter() - start
        self._forward = self._make_forward()

    # -- set-up --

    def _check_options(self, options: SessionOptions) -> None:
        if self.precision is Precision.INT8:
            self._ignored.append("precision=int8 (torch runs the model's own types)")
        if self.settings.mode.endswith("cudagraphs") and self.device.type != "cuda":
            raise UsageError(
                f"torch mode {self.settings.mode} needs a CUDA device, not {self.device.type}"
            )
        if self.settings.autocast == "1" and self.precision not in _DTYPES:
            self._ignored.append(f"autocast (precision {self.precision.value} has no autocast)")
        if options.threads is not None:
            if self.device.type == "cpu":
                torch.set_num_threads(
                    options.threads
                )  # process-wide: torch has no per-module threads
            else:
                self._ignored.append("threads (a GPU session)")
        for name in ("graph_optimization_level", "performance_hint", "streams"):
            if getattr(options, name) is not None:
                self._ignored.append(name)

    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype weights and float activations are held in."""
        if self.precision in _DTYPES and not self.autocast:
            return _DTYPES[self.precision]
        return torch.float32

    @property
    def autocast(self) -> bool:
        """Whether FP16/BF16 run under torch.autocast (FP32 weights) rather than converted weights."""
        if self.precision not in _DTYPES:
            return False
        if self.settings.autocast == "auto":
            return self.precision is Precision.BF16
        return self.settings.autocast == "1"

    @property
    def _fuse_conv_relu(self) -> bool:
        if self.settings.fuse_conv_relu == "auto":
            return self.device.type == "cuda" and not self.settings.mode.startswith("compile")
        return self.settings.fuse_conv_relu == "1"

    def _on_cuda_unless_set(self, value: str) -> bool:
        """A 0/1/auto rewrite knob: auto is on where the session runs on CUDA."""
        if value == "auto":
            return self.device.type == "cuda"
        return value == "1"

    def _build(self, artifact: ModelArtifact) -> tuple[torch.nn.Module, dict[str, Any]]:
        native = _native_module(artifact)
        info: dict[str, Any] = {}
        if native is not None:
            module = copy.deepcopy(native).eval()
            info["source"] = f"nn.Module {type(native).__qualname__} (as given)"
            has_conv = any(isinstance(m, torch.nn.modules.conv._ConvNd) for m in module.modules())
        else:
            from crossinfer.backends.onnx_to_torch import convert

            proto = artifact.load_proto()
            try:
                conversion = convert(
                    proto,
                    dtype=self.compute_dtype if self.compute_dtype != torch.float32 else None,
                    fold_batchnorm=self.settings.fold_batchnorm,
                    fuse_conv_relu=self._fuse_conv_relu,
                    fuse_attention=self._on_cuda_unless_set(self.settings.fuse_attention),
                    fuse_linear=self._on_cuda_unless_set(self.settings.fuse_linear),
                )
            except (
                UnsupportedNodeError,
                NotImplementedError,
                KeyError,
                ValueError,
                RuntimeError,
            ) as exc:
                from crossinfer.backends.onnx_to_torch import unsupported_ops

                missing = unsupported_ops(proto)
                why = _unsupported_message(missing) if missing else short_message(exc)
                raise CompileError(
                    f"torch:{self.target.device} could not convert {artifact.source}: {why}",
                    unsupported_ops=missing,
                ) from exc
            module = conversion.module
            info["source"] = "onnx2torch"
            info["folded_batchnorms"] = conversion.folded_batchnorms
            info["retargeted_casts"] = conversion.retargeted_casts
            info["fused_conv_relu"] = conversion.fused_conv_relu
            info["fused_attention"] = conversion.fused_attention
            info["fused_linear"] = conversion.fused_linear
            info["rewritten_for_no_host_reads"] = conversion.static_reshapes
            info["crossinfer_converters"] = list(conversion.custom_ops)
            has_conv = any(n.op_type.startswith("Conv") for n in proto.graph.node)
        channels_last = self.settings.channels_last == "1" or (
            self.settings.channels_last == "auto" and has_conv and self.device.type == "cuda"
        )
        self.channels_last = channels_last
        module = module.to(self.device)
        if self.compute_dtype != torch.float32:
            module = module.to(self.compute_dtype)
        if channels_last:
            module = module.to(memory_format=torch.channels_last)
        return module, info

    def _make_forward(self) -> Callable[[list[torch.Tensor]], list[torch.Tensor]]:
        if self.settings.mode in ("compile", "compile-cudagraphs"):
            os.environ.setdefault(INDUCTOR_CACHE_ENV, inductor_cache_dir())
            run_compiled = _Inductor(self._module, self.settings.compile_mode, self._notes)
            if self.settings.mode == "compile-cudagraphs":
                return _CudaGraphs(run_compiled)
            return run_compiled
        if self.settings.mode == "cudagraphs":
            return _CudaGraphs(self._call_module)
        return self._call_module

    def _call_module(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        return _as_list(self._module(*tensors))

    # -- running --

    @contextmanager
    def _context(self) -> Iterator[None]:
        _set_tf32(self.device, self.precision is Precision.TF32)
        autocast: Any = nullcontext()
        if self.autocast:
            autocast = torch.autocast(self.device.type, dtype=_DTYPES[self.precision])
        with torch.inference_mode(), autocast:
            yield

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        arrays = validate_feeds(
            self.inputs, feeds, model=self._model_name, also_accept=self._host_dtypes()
        )
        try:
            if self.device.type == "cuda":
                return self._run_overlapped(arrays)
            with self._lock, self._context():
                tensors = [torch.from_numpy(arrays[spec.name]) for spec in self.inputs]
                outputs = self._run_prepared([self._prepare_input(t) for t in tensors])
                return {
                    spec.name: _to_numpy(value, spec)
                    for spec, value in zip(self.outputs, outputs, strict=True)
                }
        except (RuntimeError, ValueError, TypeError, IndexError) as exc:
            raise InferenceError(
                f"torch:{self.target.device} failed: {short_message(exc)}"
            ) from exc

    def _run_overlapped(self, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One numpy batch on CUDA, its copies outside the session lock: the upload (and cast)
        runs on the calling thread's own copy stream, and the outputs come back on it, so with
        several callers (serve's instances) one batch's copies overlap another's compute. Only
        the compute holds the lock. Inputs in pinned memory (`pinned_empty`) upload as one DMA."""
        side = self._thread_stream()
        with torch.inference_mode():
            with torch.cuda.stream(side):
                tensors = [
                    self._prepare_input(torch.from_numpy(arrays[spec.name])) for spec in self.inputs
                ]
            return self._compute_and_read_back(tensors, side)

    def _compute_and_read_back(
        self, tensors: list[torch.Tensor], side: Any
    ) -> dict[str, np.ndarray]:
        """Run inputs uploaded on the copy stream `side`; the outputs come back on it."""
        uploaded = side.record_event()
        with self._lock, self._context():
            compute = torch.cuda.current_stream(self.device)
            compute.wait_event(uploaded)
            for tensor in tensors:
                tensor.record_stream(compute)  # allocated on `side`, read on `compute`
            values = self._run_prepared(tensors)
            values = [
                value.to(_torch_dtype(spec, value.dtype))
                for spec, value in zip(self.outputs, values, strict=True)
            ]
            computed = compute.record_event()
        side.wait_event(computed)
        for value in values:
            value.record_stream(side)
        with torch.cuda.stream(side):
            return {
                spec.name: _to_numpy(value, spec)
                for spec, value in zip(self.outputs, values, strict=True)
            }

    def host_pinned(self, array: np.ndarray) -> bool:
        """Whether `array` lies in page-locked host memory this session's device can DMA from
        (a `pinned_empty` buffer, a shared-memory region registered with CUDA)."""
        if self.device.type != "cuda" or not array.flags.c_contiguous or not array.size:
            return False
        source = _readable(array)
        return source is not None and bool(source.is_pinned())

    def run_parts(
        self, parts: Sequence[Mapping[str, np.ndarray]], size: int
    ) -> dict[str, np.ndarray]:
        """Several requests' rows as one batch of `size` rows, joined on the device: each part
        is copied straight into its rows of a device buffer (one DMA each where it is pinned,
        see `host_pinned`), padding rows repeat the last real row, and the batch then runs as
        `run` would. The host never joins the rows (on CUDA the copies run on the calling
        thread's copy stream, as in `run`)."""
        if not parts:
            raise InputError(f"{self._model_name}: a batch needs at least one request")
        checked = [
            validate_feeds(self.inputs, p, model=self._model_name, also_accept=self._host_dtypes())
            for p in parts
        ]
        rows = sum(int(p[self.inputs[0].name].shape[0]) for p in checked)
        if size < rows:
            raise InputError(f"{self._model_name}: {rows} rows do not fit a batch of {size}")
        on_cuda = self.device.type == "cuda"
        side = self._thread_stream() if on_cuda else None
        try:
            with torch.inference_mode(), torch.cuda.stream(side) if on_cuda else nullcontext():
                tensors = [
                    self._prepare_input(self._joined(spec.name, checked, size))
                    for spec in self.inputs
                ]
                if side is not None:
                    return self._compute_and_read_back(tensors, side)
            with self._lock, self._context():
                outputs = self._run_prepared(tensors)
                return {
                    spec.name: _to_numpy(value, spec)
                    for spec, value in zip(self.outputs, outputs, strict=True)
                }
        except (RuntimeError, ValueError, TypeError, IndexError) as exc:
            raise InferenceError(
                f"torch:{self.target.device} failed: {short_message(exc)}"
            ) from exc

    def _joined(
        self, name: str, parts: Sequence[Mapping[str, np.ndarray]], size: int
    ) -> torch.Tensor:
        """Input `name` of every part, copied into one `size`-row buffer on the device."""
        first = parts[0][name]
        dtype = torch.from_numpy(first[:0].copy()).dtype
        buffer = torch.empty((size, *first.shape[1:]), dtype=dtype, device=self.device)
        at = 0
        for part in parts:
            source = _readable(part[name])
            if source is None:  # a read-only request body: copied once more, on the host
                source = torch.from_numpy(np.array(part[name]))
            buffer[at : at + source.shape[0]].copy_(source, non_blocking=True)
            at += source.shape[0]
        if at < size:
            buffer[at:] = buffer[at - 1 : at]  # padding repeats the last real row
        return buffer

    def _thread_stream(self) -> Any:
        """This thread's copy stream on the session's device (made on first use)."""
        local = self._local
        stream = getattr(local, "stream", None)
        if stream is None:
            stream = local.stream = torch.cuda.Stream(self.device)  # type: ignore[no-untyped-call]
        return stream

    def pinned_empty(self, shape: tuple[int, ...], dtype: np.dtype[Any]) -> np.ndarray:
        """A numpy array in page-locked host memory (on CUDA; ordinary memory elsewhere): a
        batch written into it uploads to the device as one asynchronous copy."""
        like = torch.from_numpy(np.empty(0, dtype=dtype))
        pin = self.device.type == "cuda" and torch.cuda.is_available()
        return torch.empty(shape, dtype=like.dtype, pin_memory=pin).numpy()

    def run_tensors(self, feeds: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Device tensors in, device tensors out: no host copies, for callers that hold them.

        Inputs are cast to the session's dtype and layout where they are not already (a no-op
        for inputs prepared with ``prepare_inputs``); outputs keep their declared dtype.
        """
        with self._lock, self._context():
            tensors = [self._prepare_input(feeds[spec.name]) for spec in self.inputs]
            outputs = self._run_prepared(tensors)
            return {
                spec.name: value.to(_torch_dtype(spec, value.dtype))
                for spec, value in zip(self.outputs, outputs, strict=True)
            }

    def prepare_inputs(self, feeds: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
        """Numpy feeds moved to the device in the session's dtype and layout, for ``run_tensors``."""
        arrays = validate_feeds(self.inputs, feeds, model=self._model_name)
        with torch.inference_mode():
            return {
                spec.name: self._prepare_input(torch.from_numpy(arrays[spec.name]))
                for spec in self.inputs
            }

    def bind(self, feeds: Mapping[str, np.ndarray]) -> Callable[[], list[torch.Tensor]]:
        """A call with no arguments that runs the model on device-resident copies of ``feeds``
        and waits for it: device time without host copies, for benchmarks (as onnxruntime's and
        jax's ``bind``)."""
        prepared = self.prepare_inputs(feeds)

        def step() -> list[torch.Tensor]:
            outputs = self.run_tensors(prepared)
            _synchronize(self.device)
            return list(outputs.values())

        return step

    # -- staging (bench's sample pool: backends.base.StagingSession) --

    def _host_dtypes(self) -> dict[str, str]:
        # float inputs are cast to FP16 on the device anyway: FP16 host input is the same numbers
        if self.compute_dtype != torch.float16:
            return {}
        return {spec.name: "float16" for spec in self.inputs if spec.dtype.startswith("float")}

    def input_staging(self) -> InputStaging:
        """numpy everywhere; pinned host memory and device-resident pools on CUDA. Compile and
        CUDA-graph modes run fixed shapes (each new shape compiles or captures)."""
        fixed = self.settings.mode != "eager"
        if self.device.type == "cuda" and torch.cuda.is_available():
            placements = (InputPlacement.NUMPY, InputPlacement.PINNED, InputPlacement.DEVICE)
            return InputStaging(placements, self._host_dtypes(), fixed_shapes=fixed)
        return InputStaging(
            (InputPlacement.NUMPY,),
            self._host_dtypes(),
            fixed_shapes=fixed,
            reason=(
                f"torch:{self.target.device} computes in host memory: pinned (pin_memory) and "
                "device-resident inputs need a CUDA device"
            ),
        )

    def stage_inputs(
        self, arrays: Mapping[str, np.ndarray], *, placement: InputPlacement
    ) -> _TorchStaged:
        """The pool in pinned host memory or on the device, in the session's compute dtype."""
        placement = InputPlacement(placement)
        if placement is InputPlacement.NUMPY or placement not in self.input_staging().placements:
            raise UsageError(
                f"torch:{self.target.device} cannot stage inputs as {placement.value}: "
                f"{self.input_staging().reason or 'use numpy inputs'}"
            )
        return _TorchStaged(self, arrays, placement, pin=True)

    def _prepare_input(self, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.to(self.device, non_blocking=True)
        if tensor.is_floating_point() and tensor.dtype != self.compute_dtype:
            tensor = tensor.to(self.compute_dtype)
        if self.channels_last and tensor.dim() == 4:
            tensor = tensor.contiguous(memory_format=torch.channels_last)
        return tensor

    def _run_prepared(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        shapes = tuple(tuple(t.shape) for t in tensors)
        if shapes in self._seen_shapes or self.settings.mode == "eager":
            return self._forward(tensors)
        # the first call at a shape compiles or captures: time it apart from the runs after it.
        # One at a time in the process: a device-wide synchronize in one thread while another
        # captures a CUDA graph breaks that capture (serve's instances warm up together)
        with _FIRST_CALL_LOCK:
            _synchronize(self.device)
            start = time.perf_counter()
            outputs = self._forward(tensors)
            _synchronize(self.device)
        self.compile_s[" ".join("x".join(map(str, s)) for s in shapes)] = (
            time.perf_counter() - start
        )
        self._seen_shapes.add(shapes)
        return outputs

    # -- reporting --

    def placement(self) -> Placement:
        """Each converted node on the device torch reports for its weights (or its inputs')."""
        nodes: dict[str, str] = {}
        module = self._module
        buffers = {name: str(b.device) for name, b in module.named_buffers()}
        graph = getattr(module, "graph", None)
        if graph is not None:
            for node in graph.nodes:
                if node.op != "call_module":
                    continue
                sub = module.get_submodule(node.target)
                devices = {str(t.device) for t in (*sub.parameters(), *sub.buffers())}
                devices |= {
                    buffers[arg.target.replace("/", ".")]
                    for arg in node.all_input_nodes
                    if arg.op == "get_attr" and arg.target.replace("/", ".") in buffers
                }
                nodes[str(node.target)] = devices.pop() if len(devices) == 1 else str(self.device)
            note = "torch: each converted node's weights' device; weightless nodes run where their inputs are"
        else:
            for name, sub in module.named_modules():
                own = {str(t.device) for t in (*sub.parameters(False), *sub.buffers(False))}
                if own:
                    nodes[name or type(sub).__name__] = own.pop()
            note = "torch: the device of each submodule's own weights"
        primary = _device_text(self.device)
        fallback = tuple(sorted(n for n, d in nodes.items() if d != primary))
        return Placement(node_devices=nodes, primary=primary, fallback_nodes=fallback, note=note)

    def describe(self) -> dict[str, Any]:
        if self.precision in _DTYPES:
            how = "autocast, FP32 weights" if self.autocast else "converted weights"
        elif self.precision is Precision.TF32:
            how = "FP32 weights, TF32 matmul and convolution"
        else:
            how = "FP32 weights, IEEE FP32 matmul and convolution"
        info: dict[str, Any] = {
            "runtime": f"torch {torch.__version__}",
            "device": _device_text(self.device),
            "device_name": _device_name(self.device),
            "precision": f"{self.precision.value} ({how})",
            "mode": self.settings.mode,
            "channels_last": self.channels_last,
            "convert_s": round(self.convert_s, 3),
            "compile_s": {k: round(v, 3) for k, v in self.compile_s.items()},
            "ignored_options": list(self._ignored),
        }
        if self._notes:
            info["notes"] = list(self._notes)
        if self.settings.mode.startswith("compile"):
            info["compile_mode"] = self.settings.compile_mode
            info["inductor_cache"] = os.environ.get(INDUCTOR_CACHE_ENV, "")
        info.update(self._conversion_info)
        return info

    def close(self) -> None:
        self._forward = self._call_module
        del self._module
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


class _TorchStaged:
    """A sample pool staged once in pinned host memory or on the device, in the compute dtype.

    Each worker gets a lane; `pin=False` stages in ordinary memory, so that the lanes' logic runs
    (synchronously, without streams) on a machine without CUDA.
    """

    def __init__(
        self,
        session: TorchSession,
        arrays: Mapping[str, np.ndarray],
        placement: InputPlacement,
        *,
        pin: bool,
    ) -> None:
        self.placement = placement
        self.session = session
        self.pinned = pin and placement is InputPlacement.PINNED
        self.pool: dict[str, torch.Tensor] = {}
        for spec in session.inputs:
            host = torch.from_numpy(np.ascontiguousarray(arrays[spec.name]))
            dtype = session.compute_dtype if host.is_floating_point() else host.dtype
            if placement is InputPlacement.DEVICE:
                tensor = host.to(session.device).to(dtype)
            else:
                tensor = torch.empty(host.shape, dtype=dtype, pin_memory=self.pinned)
                tensor.copy_(host)
            self.pool[spec.name] = tensor
        self.dtypes = {name: str(t.dtype).removeprefix("torch.") for name, t in self.pool.items()}
        # bench runs the largest batch this long before LoadGen starts (StagedPool.warm_up)
        self.steady_warmup_s = STEADY_WARMUP_S if session.device.type == "cuda" else 0.0

    def lane(self, *, strategy: str = "auto") -> _PinnedLane | _DeviceLane:
        """A worker's lane; `strategy` (pinned pools): rows, gather or auto (see _PinnedLane)."""
        if self.placement is InputPlacement.DEVICE:
            return _DeviceLane(self)
        return _PinnedLane(self, strategy=strategy)

    def close(self) -> None:
        self.pool.clear()


class _Slot:
    """One batch's buffers: pinned host (gathered rows) and device (their copy), with events."""

    def __init__(self) -> None:
        self.host: dict[str, torch.Tensor] = {}
        self.device: dict[str, torch.Tensor] = {}
        self.copied: Any = None  # event: the copy into `device` (and out of `host`) finished
        self.used: Any = None  # event: the compute that read `device` finished


# A pool row at least this large is copied to the device on its own (the copy engine gathers);
# smaller rows are gathered on the host first, where one copy call per row would cost more in
# launches than the bytes take to move (a BERT row is 1 KB, a ResNet-50 row 301 KB in FP16).
ROW_COPY_MIN_BYTES = 32 * 1024


class _LaunchingLane:
    """A lane that launches the batch asked for next (`prefetch`) before it reads this one's
    outputs back, on its own output stream: the next batch's copy and compute overlap this
    one's read-back. Subclasses say how a batch is launched (`_launch`)."""

    _staged: _TorchStaged
    _out_stream: Any
    _ahead: _Launched | None
    prefetch_hits: int  # batches launched before they were asked for

    def run(
        self, indices: Sequence[int], *, prefetch: Sequence[int] | None = None
    ) -> dict[str, np.ndarray]:
        key = tuple(indices)
        if self._ahead is not None and self._ahead.key == key:
            launched = self._ahead
            self.prefetch_hits += 1
        else:
            launched = self._launch(key)
        self._ahead = None
        if prefetch:
            self._ahead = _launch_ahead(self._launch, tuple(prefetch))
        return _read_back(self._staged.session, launched, self._out_stream)

    def _launch(self, key: tuple[int, ...]) -> _Launched:
        raise NotImplementedError


class _PinnedLane(_LaunchingLane):
    """One worker's path from a pinned pool to the device: its own copy streams and two slots.

    A batch reaches the device slot one of two ways. `rows`: each run of consecutive pool rows is
    copied straight from the pinned pool on the copy stream (the DMA engine does the gather; the
    host only issues copies). `gather`: the rows are gathered into the slot's pinned buffer by
    the host (torch.index_select), then copied in one call. Large rows take `rows`: on the H200
    the host gather of 256 ResNet-50 rows took 7.3 ms and ran at half speed off the main thread,
    where bench's workers run. Compute waits for its batch's copy only.

    The batch that comes next (`prefetch`) is copied into the other slot and launched before this
    one's outputs are read back, and the read-back runs on the lane's own output stream: so the
    next batch computes while this one's outputs cross the link (BERT-base's 100 MB of FP32
    last_hidden_state per batch of 256 took 2.5 ms of a 16 ms batch on the H200 when the
    download waited in line behind the compute stream). A slot is not overwritten before the copy
    and the compute that used it are done; a batch launched ahead and then not asked for is
    dropped.
    """

    def __init__(self, staged: _TorchStaged, *, strategy: str = "auto") -> None:
        self._staged = staged
        self._device = staged.session.device
        self._cuda = self._device.type == "cuda"
        self._stream: Any = torch.cuda.Stream(self._device) if self._cuda else None  # type: ignore[no-untyped-call]
        self._out_stream: Any = torch.cuda.Stream(self._device) if self._cuda else None  # type: ignore[no-untyped-call]
        self._slots = (_Slot(), _Slot())
        self._turn = 0
        self._ahead: _Launched | None = None
        self.prefetch_hits = 0  # batches launched before they were asked for
        if strategy == "auto":
            smallest = min(
                (t[0].numel() * t.element_size() for t in staged.pool.values() if len(t)),
                default=0,
            )
            strategy = "rows" if smallest >= ROW_COPY_MIN_BYTES else "gather"
        if strategy not in ("rows", "gather"):
            raise ValueError(f"pinned lane strategy must be auto, rows or gather, not {strategy!r}")
        self.strategy = strategy

    def _launch(self, key: tuple[int, ...]) -> _Launched:
        """Copy the batch into a slot and start its compute; nothing waits for either here."""
        slot = self._upload(key)
        feeds = {name: buffer[: len(key)] for name, buffer in slot.device.items()}
        compute = torch.cuda.current_stream(self._device) if self._cuda else None
        if compute is not None:
            compute.wait_event(slot.copied)
        outputs = self._staged.session.run_tensors(feeds)
        if compute is not None:
            slot.used = compute.record_event()
        return _Launched(key, outputs, slot.used)

    def _upload(self, key: tuple[int, ...]) -> _Slot:
        slot = self._slots[self._turn]
        self._turn ^= 1
        n = len(key)
        gather = self.strategy == "gather" and not _consecutive(key)
        if gather and slot.copied is not None:
            slot.copied.synchronize()  # the pinned buffer's last copy has read it
        sources: dict[str, torch.Tensor] = {}
        if gather:
            index = torch.as_tensor(key, dtype=torch.long)
            for name, pool in self._staged.pool.items():
                host = _grown(slot.host, name, pool, n, pin=self._staged.pinned)
                sources[name] = torch.index_select(pool, 0, index, out=host)
        targets = {
            name: _grown(slot.device, name, pool, n, device=self._device)
            for name, pool in self._staged.pool.items()
        }
        stream = torch.cuda.stream(self._stream) if self._cuda else nullcontext()
        with stream:
            if self._cuda and slot.used is not None:
                self._stream.wait_event(slot.used)  # the compute that read this slot is done
            for name, target in targets.items():
                if gather:
                    target.copy_(sources[name], non_blocking=self._cuda)
                    continue
                pool = self._staged.pool[name]
                for at, start, length in _runs(key):
                    target[at : at + length].copy_(
                        pool[start : start + length], non_blocking=self._cuda
                    )
            if self._cuda:
                slot.copied = self._stream.record_event()
        return slot


def _runs(indices: Sequence[int]) -> list[tuple[int, int, int]]:
    """(position in the batch, first pool row, length) of each run of consecutive rows."""
    runs: list[tuple[int, int, int]] = []
    for at, row in enumerate(indices):
        if runs and runs[-1][1] + runs[-1][2] == row:
            last = runs[-1]
            runs[-1] = (last[0], last[1], last[2] + 1)
        else:
            runs.append((at, row, 1))
    return runs


@dataclass
class _Launched:
    """A batch whose compute was started: its rows, its outputs (on the device, not yet
    readable) and the compute-stream event after which they are (None off CUDA)."""

    key: tuple[int, ...]
    outputs: dict[str, torch.Tensor]
    done: Any


def _launch_ahead(
    launch: Callable[[tuple[int, ...]], _Launched], key: tuple[int, ...]
) -> _Launched | None:
    """`launch(key)` for a batch that is not asked for yet; a failure here is not this batch's:
    the batch is launched again (and fails, if it does, as its own) when it is asked for."""
    try:
        return launch(key)
    except (RuntimeError, ValueError, TypeError, IndexError):
        return None


def _read_back(session: TorchSession, launched: _Launched, stream: Any) -> dict[str, np.ndarray]:
    """A launched batch's outputs on the host, copied on `stream` (a lane's output stream) once
    its compute is done, so that compute launched after it keeps running meanwhile. Off CUDA
    (stream None) the outputs are host tensors already."""
    if stream is None:
        return _host_outputs(session, launched.outputs)
    host: dict[str, torch.Tensor] = {}
    with torch.cuda.stream(stream):
        stream.wait_event(launched.done)
        for spec in session.outputs:
            value = launched.outputs[spec.name]
            if value.is_cuda:
                value.record_stream(stream)  # made on the compute stream, read on this one
            host[spec.name] = _start_download(value)
    stream.synchronize()
    return {name: tensor.numpy() for name, tensor in host.items()}


class _DeviceLane(_LaunchingLane):
    """One worker's path through a device-resident pool: batches gathered on the device. As the
    pinned lane, it launches the next batch (`prefetch`) before this one's outputs come back."""

    def __init__(self, staged: _TorchStaged) -> None:
        self._staged = staged
        self._device = staged.session.device
        self._cuda = self._device.type == "cuda"
        self._out_stream: Any = torch.cuda.Stream(self._device) if self._cuda else None  # type: ignore[no-untyped-call]
        self._buffers: dict[str, torch.Tensor] = {}
        self._ahead: _Launched | None = None
        self.prefetch_hits = 0

    def _launch(self, key: tuple[int, ...]) -> _Launched:
        n = len(key)
        session = self._staged.session
        feeds: dict[str, torch.Tensor] = {}
        if _consecutive(key):
            feeds = {name: pool[key[0] : key[0] + n] for name, pool in self._staged.pool.items()}
        else:
            # one buffer: the gather for a batch launched ahead is queued on the compute stream
            # behind the compute that read the previous rows
            buffers = self._buffers
            index = torch.as_tensor(key, dtype=torch.long)
            if self._cuda:
                # from pinned memory, asynchronously: a pageable copy would hold this thread
                # until the batch launched before it has finished computing
                index = index.pin_memory().to(session.device, non_blocking=True)
            for name, pool in self._staged.pool.items():
                out = _grown(buffers, name, pool, n, device=session.device)
                feeds[name] = torch.index_select(pool, 0, index, out=out)
        outputs = session.run_tensors(feeds)
        done = torch.cuda.current_stream(self._device).record_event() if self._cuda else None
        return _Launched(key, outputs, done)


def _consecutive(indices: Sequence[int]) -> bool:
    n = len(indices)
    return n == 1 or (
        indices[-1] - indices[0] == n - 1
        and all(indices[i + 1] - indices[i] == 1 for i in range(n - 1))
    )


def _grown(
    held: dict[str, torch.Tensor],
    name: str,
    like: torch.Tensor,
    n: int,
    *,
    pin: bool = False,
    device: torch.device | None = None,
) -> torch.Tensor:
    """The first `n` rows of a per-lane buffer shaped like `like`'s rows, grown when short."""
    buffer = held.get(name)
    if buffer is None or buffer.shape[0] < n:
        buffer = torch.empty(
            (n, *like.shape[1:]),
            dtype=like.dtype,
            device=device if device is not None else like.device,
            pin_memory=pin,
        )
        held[name] = buffer
    return buffer[:n]


def _host_outputs(
    session: TorchSession, outputs: Mapping[str, torch.Tensor]
) -> dict[str, np.ndarray]:
    return {spec.name: _to_numpy(outputs[spec.name], spec) for spec in session.outputs}


class _Inductor:
    """torch.compile of a module, per input shape, with one way out of inductor's own failures.

    A shape whose compile fails inside inductor (BackendCompilerFailed: its attention-fusion
    pattern fails to trace BERT's mask at batch 1 in torch 2.11) is compiled again with
    inductor's pattern matcher off, and the session's notes say so; other shapes keep it.
    """

    def __init__(self, module: torch.nn.Module, compile_mode: str, notes: list[str]) -> None:
        import torch._dynamo.config as dynamo_config

        dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, _RECOMPILE_LIMIT)
        self._module = module
        self._compile_mode = compile_mode
        self._compiled = torch.compile(module, mode=compile_mode, dynamic=False, fullgraph=False)
        self._plain: Callable[..., Any] | None = None
        self._plain_shapes: set[tuple[tuple[int, ...], ...]] = set()
        self._notes = notes

    def __call__(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        shapes = tuple(tuple(t.shape) for t in tensors)
        if shapes in self._plain_shapes and self._plain is not None:
            return _as_list(self._plain(*tensors))
        try:
            return _as_list(self._compiled(*tensors))
        except torch._dynamo.exc.BackendCompilerFailed as exc:
            if self._plain is None:
                from torch._inductor import list_mode_options

                options = dict(list_mode_options(self._compile_mode))
                options["pattern_matcher"] = False
                self._plain = torch.compile(
                    self._module, options=options, dynamic=False, fullgraph=False
                )
            self._plain_shapes.add(shapes)
            self._notes.append(
                f"inductor failed at input shapes {[list(s) for s in shapes]} "
                f"({short_message(exc, 160)}); compiled them with its pattern matcher off"
            )
            return _as_list(self._plain(*tensors))


class _CudaGraphs:
    """Replays one CUDA graph per input shape; inputs are copied into the graph's static buffers.

    The first call at a shape warms up on a side stream (cuDNN picks its algorithms there) and
    captures; outputs are the graph's static tensors, valid until the next replay, so callers
    copy them before the next call (TorchSession holds a lock across both).
    """

    def __init__(self, forward: Callable[[list[torch.Tensor]], list[torch.Tensor]]) -> None:
        self._forward = forward
        self._graphs: dict[
            tuple[tuple[tuple[int, ...], torch.dtype], ...],
            tuple[torch.cuda.CUDAGraph, list[torch.Tensor], list[torch.Tensor]],
        ] = {}

    def __call__(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        key = tuple((tuple(t.shape), t.dtype) for t in tensors)
        entry = self._graphs.get(key)
        if entry is None:
            entry = self._graphs[key] = self._capture(tensors)
        graph, static_in, static_out = entry
        for buffer, tensor in zip(static_in, tensors, strict=True):
            buffer.copy_(tensor)
        graph.replay()
        return [out.clone() for out in static_out]

    def _capture(
        self, tensors: list[torch.Tensor]
    ) -> tuple[torch.cuda.CUDAGraph, list[torch.Tensor], list[torch.Tensor]]:
        static_in = [t.clone() for t in tensors]
        side = torch.cuda.Stream()  # type: ignore[no-untyped-call]
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                self._forward(static_in)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        try:
            # thread_local: another session's thread (serve's instances warm up together) may
            # copy or synchronize while this one captures; only this thread's calls must not
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                static_out = self._forward(static_in)
        except RuntimeError as exc:
            raise CompileError(
                "CUDA graph capture failed: the model reads device values on the host or "
                f"synchronizes while running ({short_message(exc, 200)}); use mode=eager or "
                "mode=compile"
            ) from exc
        return graph, static_in, static_out


def _set_tf32(device: torch.device, enabled: bool) -> None:
    """FP32 means IEEE FP32: cuDNN convolutions default to TF32 on Ampere and newer."""
    if device.type != "cuda":
        return
    value = "tf32" if enabled else "ieee"
    matmul = torch.backends.cuda.matmul
    if hasattr(matmul, "fp32_precision"):  # torch >= 2.9: the per-backend precision API
        matmul.fp32_precision = value
        torch.backends.cudnn.conv.fp32_precision = value  # type: ignore[attr-defined]
    else:
        matmul.allow_tf32 = enabled
        torch.backends.cudnn.allow_tf32 = enabled


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _as_list(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, Mapping):
        return list(value.values())
    return list(value)


def _torch_dtype(spec: TensorSpec, fallback: torch.dtype) -> torch.dtype:
    if spec.dtype == "bfloat16":
        return torch.bfloat16
    try:
        return torch.from_numpy(np.zeros(0, spec.numpy_dtype)).dtype
    except (TypeError, ValueError):
        return fallback


def _to_numpy(value: torch.Tensor, spec: TensorSpec) -> np.ndarray:
    """`value` on the host in its declared dtype. From a CUDA device it comes through pinned
    memory (torch's caching host allocator: no allocation after the first of a size): a pageable
    download runs at a seventh of the link's speed, which BERT's 100 MB last_hidden_state per
    batch of 256 turned into 40% of a batch's time on the H200."""
    target = _torch_dtype(spec, value.dtype)
    if target == torch.bfloat16:
        target = torch.float32  # numpy has no bfloat16: hand back FP32
    value = value.to(target)
    if value.device.type == "cuda":
        host = _start_download(value)
        torch.cuda.current_stream(value.device).synchronize()
        return host.numpy()
    return np.asarray(value.cpu().numpy())


def _readable(array: np.ndarray) -> torch.Tensor | None:
    """A tensor over `array`'s memory, only ever read. serve marks a client's shared-memory
    rows read-only (the model must not write them); torch warns on read-only arrays, so such
    an array is viewed writable where its memory allows (a mapped region), else None (bytes)."""
    if not array.flags.writeable:
        view = array.view()
        try:
            view.flags.writeable = True
        except ValueError:
            return None
        array = view
    return torch.from_numpy(array)


def _start_download(value: torch.Tensor) -> torch.Tensor:
    """A host copy of `value`, started on the current stream: into pinned memory, asynchronously,
    from a CUDA device (the caller synchronizes before reading it); BF16 comes back as FP32,
    numpy having no bfloat16."""
    if value.dtype == torch.bfloat16:
        value = value.float()
    host = torch.empty(value.shape, dtype=value.dtype, pin_memory=value.is_cuda)
    return host.copy_(value, non_blocking=value.is_cuda)


def _device_text(device: torch.device) -> str:
    return f"{device.type}:{device.index}" if device.index is not None else device.type


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return str(torch.cuda.get_device_name(device))
    return device.type


__all__ = ["COMPILE_MODES", "MODES", "TorchBackend", "TorchSession", "TorchSettings"]
