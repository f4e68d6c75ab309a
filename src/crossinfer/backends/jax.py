"""JAX backend: ONNX lowered to one JAX function (onnx_to_jax), jitted by XLA on CPU, GPU or TPU.

crossinfer's TPU path. Compiles are cached on disk (JAX's persistent compilation cache under
crossinfer's cache dir) and timed apart from runs; each new input shape compiles once.
"""

from __future__ import annotations

import os
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import numpy as np

# bench reports device memory: XLA's default preallocation would make every model look like
# 75% of the card. A user's own setting wins.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # after the environment it reads at first use
import ml_dtypes
import onnx

from crossinfer.backends.base import (
    Compatibility,
    DeviceInfo,
    Placement,
    Precision,
    SessionOptions,
    Target,
    validate_feeds,
)
from crossinfer.backends.onnx_to_jax import (
    LoweringError,
    build_program,
    device_dtype,
    unsupported_ops,
)
from crossinfer.errors import (
    CompileError,
    DeviceUnavailableError,
    InferenceError,
    InputError,
    UsageError,
    short_message,
)
from crossinfer.model import ModelArtifact

PLATFORMS = ("cpu", "gpu", "tpu")
# names people type for a platform's first device
_ALIASES = {"cuda": "gpu", "rocm": "gpu"}
_COMPUTE_DTYPES: dict[Precision, np.dtype[Any]] = {
    Precision.FP32: np.dtype(np.float32),
    Precision.TF32: np.dtype(np.float32),
    Precision.BF16: np.dtype(ml_dtypes.bfloat16),
    Precision.FP16: np.dtype(np.float16),
}
# XLA's "default" matmul precision is TF32 on NVIDIA GPUs and one BF16 pass on TPUs: FP32
# parity needs "highest" (FP32 on GPU, six BF16 passes on TPU).
_MATMUL_PRECISION = {
    Precision.FP32: "highest",
    Precision.TF32: "tensorfloat32",
    Precision.BF16: "default",
    Precision.FP16: "default",
}
# what jax.default_matmul_precision takes
_MATMUL_PRECISIONS = (
    "default",
    "high",
    "highest",
    "bfloat16",
    "tensorfloat32",
    "float32",
    "bfloat16_3x",
)
_INT32 = np.iinfo(np.int32)

DeviceLister = Callable[[str], Sequence[Any]]  # platform -> jax devices (raises if none)


def _jax_devices(platform: str) -> Sequence[Any]:
    return list(jax.devices(platform))


def default_precision(device: str) -> Precision:
    """BF16 on TPUs (their matrix units take BF16; FP32 costs six passes), FP32 elsewhere."""
    return Precision.BF16 if device.split(":")[0] == "tpu" else Precision.FP32


def canonical_device(device: str) -> tuple[str, int]:
    """``gpu`` / ``cuda`` / ``cuda:1`` / ``tpu:0`` / ``cpu`` -> (platform, index)."""
    platform, _, index = device.lower().partition(":")
    platform = _ALIASES.get(platform, platform)
    if platform not in PLATFORMS or (index and not index.isdigit()):
        raise UsageError(
            f"jax knows no device '{device}': use cpu, gpu[:N] (also cuda[:N]) or tpu[:N]"
        )
    return platform, int(index or 0)


def device_name(platform: str, index: int) -> str:
    return "cpu" if platform == "cpu" else f"{platform}:{index}"


class JaxBackend:
    name = "jax"

    def __init__(self, *, list_devices: DeviceLister = _jax_devices) -> None:
        self._list_devices = list_devices

    def version(self) -> str:
        return f"jax {jax.__version__}, jaxonnxruntime {_jaxort_version()}"

    def devices(self) -> list[DeviceInfo]:
        found: list[DeviceInfo] = []
        for platform in PLATFORMS:
            try:
                devices = self._list_devices(platform)
            except RuntimeError as exc:
                if platform == "gpu":
                    found.append(
                        DeviceInfo(
                            "gpu:0",
                            "XLA GPU",
                            available=False,
                            reason=f"no GPU backend in this jax ({short_message(exc, 160)}): "
                            "pip install 'jax[cuda12]'",
                        )
                    )
                continue
            # XLA's CPU client may list several virtual devices: they share the same cores
            for device in devices[:1] if platform == "cpu" else devices:
                kind = str(getattr(device, "device_kind", "") or platform)
                description = f"{kind} (XLA {platform})"
                if platform == "tpu":
                    description += ", default precision bf16"
                found.append(DeviceInfo(device_name(platform, int(device.id)), description))
        return found

    def supports(self, artifact: ModelArtifact, device: str) -> Compatibility:
        try:
            self._device(device)
        except (UsageError, DeviceUnavailableError) as exc:
            return Compatibility(False, str(exc))
        missing = unsupported_ops(onnx.load(str(artifact.path), load_external_data=False))
        if missing:
            return Compatibility(
                False,
                f"no JAX lowering for op type(s) {', '.join(missing)} "
                "(neither jaxonnxruntime nor crossinfer's own)",
                unsupported_ops=missing,
            )
        return Compatibility(True)

    def prepare(
        self, artifact: ModelArtifact, device: str, options: SessionOptions | None = None
    ) -> JaxSession:
        return JaxSession(artifact, self._device(device), options or SessionOptions())

    def _device(self, device: str) -> Any:
        platform, index = canonical_device(device)
        try:
            devices = self._list_devices(platform)
        except RuntimeError as exc:
            raise DeviceUnavailableError(
                f"jax has no {platform} device here ({short_message(exc, 160)}); "
                f"available: {', '.join(d.name for d in self.devices() if d.available)}"
            ) from exc
        matching = [d for d in devices if int(d.id) == index] or (
            list(devices[index : index + 1]) if platform != "cpu" else list(devices[:1])
        )
        if not matching:
            raise DeviceUnavailableError(
                f"jax has {len(devices)} {platform} device(s) here, not {device}"
            )
        return matching[0]


@dataclass(frozen=True)
class CompileRecord:
    """One XLA compile: for which input shapes, how long, and whether the disk cache served it."""

    shapes: dict[str, list[int]]
    trace_s: float  # ONNX -> JAX -> StableHLO
    compile_s: float  # XLA
    persistent_cache: str  # "hit", "miss" or "off"

    def to_dict(self) -> dict[str, Any]:
        return {
            "shapes": self.shapes,
            "trace_s": round(self.trace_s, 4),
            "compile_s": round(self.compile_s, 4),
            "persistent_cache": self.persistent_cache,
        }


class JaxSession:
    def __init__(self, artifact: ModelArtifact, device: Any, options: SessionOptions) -> None:
        self._platform = str(device.platform)
        self.target = Target("jax", device_name(self._platform, int(device.id)))
        self.inputs = artifact.inputs
        self.outputs = artifact.outputs
        self._model = artifact.source
        self._device = device
        self._ignored: list[str] = []
        self._precision = options.precision
        if options.precision not in _COMPUTE_DTYPES:
            self._ignored.append(f"precision={options.precision.value} (model-defined)")
            self._precision = Precision.FP32
        if self._precision is Precision.FP16 and self._platform == "tpu":
            raise UsageError("TPUs have no FP16 matrix units: ask for bf16 (their default)")
        self._matmul_precision = options.extra.get(
            "matmul_precision", _MATMUL_PRECISION[self._precision]
        )
        if self._matmul_precision not in _MATMUL_PRECISIONS:
            raise UsageError(
                f"jax matmul_precision '{self._matmul_precision}' is not one of "
                f"{', '.join(_MATMUL_PRECISIONS)}"
            )
        unknown = sorted(key for key in options.extra if key != "matmul_precision")
        if unknown:
            raise UsageError(
                f"jax does not know option(s) {', '.join(unknown)}: it takes matmul_precision "
                f"({', '.join(_MATMUL_PRECISIONS)})"
            )
        for name in ("threads", "graph_optimization_level", "performance_hint", "streams"):
            if getattr(options, name) is not None:
                # XLA's CPU thread pool is sized when the process starts (XLA_FLAGS)
                self._ignored.append(name)
        # at the first session, not at import: the cache dir may be set after import (tests)
        enable_persistent_cache()
        proto = artifact.load_proto()
        try:
            self._program = build_program(proto, _COMPUTE_DTYPES[self._precision])
        except LoweringError as exc:
            raise CompileError(
                f"jax:{self.target.device} cannot lower {artifact.source}: {exc}",
                unsupported_ops=unsupported_ops(proto),
            ) from exc
        self._params = jax.device_put(self._program.params, device)
        self._jitted = jax.jit(self._program.fn)
        self._compiled: dict[tuple[Any, ...], Any] = {}
        self._lock = threading.Lock()
        self.compiles: list[CompileRecord] = []
        fixed = {s.name: _fixed_shape(s.shape) for s in self.inputs}
        if all(shape is not None for shape in fixed.values()):
            # every shape is known: compile now, so load time holds the compile
            self._executable(
                {s.name: (fixed[s.name] or (), device_dtype(s.onnx_type)) for s in self.inputs}
            )

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        arrays = validate_feeds(self.inputs, feeds, model=self._model)
        on_device = {name: self._narrow(name, array) for name, array in arrays.items()}
        executable = self._executable({k: (v.shape, v.dtype) for k, v in on_device.items()})
        try:
            values = executable(self._params, jax.device_put(on_device, self._device))
            return {
                spec.name: np.asarray(values[spec.name]).astype(spec.numpy_dtype, copy=False)
                for spec in self.outputs
            }
        except Exception as exc:  # XlaRuntimeError (out of memory, device lost, ...)
            raise InferenceError(f"jax:{self.target.device} failed: {short_message(exc)}") from exc

    def bind(self, feeds: Mapping[str, np.ndarray]) -> Callable[[], Any]:
        """A call with no arguments that runs the compiled program on device-resident copies of
        ``feeds`` and waits for it: device time without host transfers, for benchmarks."""
        arrays = validate_feeds(self.inputs, feeds, model=self._model)
        on_device = {name: self._narrow(name, array) for name, array in arrays.items()}
        executable = self._executable({k: (v.shape, v.dtype) for k, v in on_device.items()})
        placed = jax.device_put(on_device, self._device)
        params = self._params

        def step() -> Any:
            return jax.block_until_ready(executable(params, placed))  # type: ignore[no-untyped-call]

        return step

    def _narrow(self, name: str, array: np.ndarray) -> np.ndarray:
        # 64-bit types run as 32-bit on the device (onnx_to_jax.device_dtype)
        if array.dtype == np.int64 and array.size:
            low, high = int(array.min()), int(array.max())
            if low < _INT32.min or high > _INT32.max:
                raise InputError(
                    f"{self._model}: input '{name}' holds values outside INT32 "
                    f"({low}..{high}); the jax backend runs INT64 as INT32"
                )
        narrow = {np.dtype(np.int64): np.int32, np.dtype(np.uint64): np.uint32}
        return array.astype(narrow.get(array.dtype, array.dtype), copy=False)

    def _executable(self, shapes: Mapping[str, tuple[tuple[int, ...], np.dtype[Any]]]) -> Any:
        key = tuple(sorted((k, tuple(s), str(d)) for k, (s, d) in shapes.items()))
        with self._lock:
            if key not in self._compiled:
                self._compiled[key] = self._compile(shapes)
            return self._compiled[key]

    def _compile(self, shapes: Mapping[str, tuple[tuple[int, ...], np.dtype[Any]]]) -> Any:
        sharding = jax.sharding.SingleDeviceSharding(self._device)
        specs = {
            name: jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)  # type: ignore[no-untyped-call]
            for name, (shape, dtype) in shapes.items()
        }
        start = time.perf_counter()
        try:
            with jax.default_matmul_precision(self._matmul_precision), warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Explicitly requested dtype int64")
                lowered = self._jitted.lower(self._params, specs)
            traced = time.perf_counter()
            before = dict(_CACHE_EVENTS)
            executable = lowered.compile()
        except LoweringError as exc:
            raise CompileError(
                f"jax:{self.target.device} cannot lower {self._model}: {exc}",
                unsupported_ops=(exc.op_type,) if exc.node == "<model>" else (),
            ) from exc
        except Exception as exc:  # XLA's compile errors come as XlaRuntimeError/ValueError
            raise CompileError(
                f"XLA could not compile {self._model} for jax:{self.target.device}: "
                f"{short_message(exc)}"
            ) from exc
        done = time.perf_counter()
        if _cache_dir() is None:
            cache = "off"
        else:
            cache = "hit" if _CACHE_EVENTS["hits"] > before["hits"] else "miss"
        self.compiles.append(
            CompileRecord(
                shapes={k: list(s) for k, (s, _) in shapes.items()},
                trace_s=traced - start,
                compile_s=done - traced,
                persistent_cache=cache,
            )
        )
        return executable

    def placement(self) -> Placement:
        nodes = dict.fromkeys(self._program.node_names, self.target.device)
        return Placement(
            node_devices=nodes,
            primary=self.target.device,
            note="XLA compiles the whole graph for one device; nodes that depend on no model "
            "input (shape arithmetic, constants) are folded while tracing",
        )

    def describe(self) -> dict[str, Any]:
        paths: dict[str, list[str]] = {}
        for op, path in sorted(self._program.paths.items()):
            paths.setdefault(path, []).append(op)
        dtype = self._program.compute_dtype.name
        return {
            "runtime": f"jax {jax.__version__} (jaxlib {metadata.version('jaxlib')}), "
            f"jaxonnxruntime {_jaxort_version()}",
            "device": f"{self.target.device} ({getattr(self._device, 'device_kind', '')})",
            "precision": self._precision.value,
            "precision_method": (
                f"float weights cast to {dtype} on the host, float inputs cast on the device, "
                f"outputs returned in the model's types; matmul precision "
                f"'{self._matmul_precision}'; LayerNormalization statistics in float32"
            ),
            "lowering": paths,
            "rewrites": f"{self._program.folded_batch_norms} BatchNormalization folded into Conv"
            + ("; Softmax/LogSoftmax in float32" if dtype != "float32" else ""),
            "compiles": [c.to_dict() for c in self.compiles],
            "compile_cache_dir": _cache_dir(),
            "ignored_options": list(self._ignored),
        }

    def close(self) -> None:
        self._compiled.clear()
        del self._params


def _fixed_shape(shape: Sequence[int | str | None] | None) -> tuple[int, ...] | None:
    if shape is None or not all(isinstance(d, int) for d in shape):
        return None
    return tuple(int(d) for d in shape if isinstance(d, int))


# --- the persistent compilation cache ------------------------------------------------------

_CACHE_EVENTS = {"hits": 0}
_CACHE_LOCK = threading.Lock()
_cache_enabled = False


def _on_event(event: str, **_: Any) -> None:
    if event == "/jax/compilation_cache/cache_hits":
        _CACHE_EVENTS["hits"] += 1


def enable_persistent_cache() -> None:
    """JAX's disk cache of compiled programs under crossinfer's cache dir (once per process).

    A JAX_COMPILATION_CACHE_DIR or jax_compilation_cache_dir the user set is kept.
    """
    global _cache_enabled
    with _CACHE_LOCK:
        if _cache_enabled:
            return
        from crossinfer.zoo import default_cache_dir

        if _cache_dir() is None:
            path = default_cache_dir() / "jax"
            path.mkdir(parents=True, exist_ok=True)
            _set_config("jax_compilation_cache_dir", str(path))
        # every program, however quick to compile: a check or bench child starts cold each time
        _set_config("jax_persistent_cache_min_compile_time_secs", 0.0)
        _set_config("jax_persistent_cache_min_entry_size_bytes", -1)
        jax.monitoring.register_event_listener(_on_event)
        _cache_enabled = True


def _cache_dir() -> str | None:
    value = getattr(jax.config, "jax_compilation_cache_dir", None)
    return None if value is None else str(value)


def _set_config(name: str, value: Any) -> None:
    jax.config.update(name, value)  # type: ignore[no-untyped-call]


def _jaxort_version() -> str:
    try:
        return metadata.version("jaxonnxruntime")
    except metadata.PackageNotFoundError:  # on sys.path without its metadata (a copied tree)
        import jaxonnxruntime

        return str(getattr(jaxonnxruntime, "__version__", "?"))


__all__ = [
    "PLATFORMS",
    "CompileRecord",
    "JaxBackend",
    "JaxSession",
    "canonical_device",
    "default_precision",
    "device_name",
    "enable_persistent_cache",
]
