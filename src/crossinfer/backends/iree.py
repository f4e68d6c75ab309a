"""IREE backend: ONNX imported to MLIR, compiled ahead of time for llvm-cpu, cuda or vulkan.

Each input shape compiles to one module (.vmfb) cached under crossinfer's cache dir by model
hash, shapes, target and flags. `compile_for` cross-compiles for a device that is not here.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import iree.compiler as ireec
import iree.runtime as ireert
import numpy as np
import onnx
from iree.compiler.extras import onnx_importer
from iree.compiler.ir import Context

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
    CompileError,
    DeviceUnavailableError,
    InferenceError,
    UsageError,
    short_message,
)
from crossinfer.hardware.nvml import open_nvml
from crossinfer.model import ModelArtifact


@dataclass(frozen=True)
class IreeDevice:
    """A crossinfer device name and the IREE compiler target and runtime driver behind it."""

    name: str
    target_backend: str  # iree-compile --iree-hal-target-backends
    driver: str  # iree.runtime HAL driver


DEVICES: dict[str, IreeDevice] = {
    "cpu": IreeDevice("cpu", "llvm-cpu", "local-task"),
    "cuda": IreeDevice("cuda", "cuda", "cuda"),
    "vulkan": IreeDevice("vulkan", "vulkan-spirv", "vulkan"),
    "hip": IreeDevice("hip", "rocm", "hip"),
}
_TARGET_BACKENDS = {d.target_backend: d for d in DEVICES.values()}

# Defaults per target. llvm-cpu: this CPU's own features, convolutions as im2col + matmul
# (ResNet-50 here: 1.7-4x), and data tiling (matmul operands packed into the layout the
# microkernels want: ResNet-50 1.45x, BERT 1.55x on top; docs/benchmarks.md).
DEFAULT_FLAGS: dict[str, tuple[str, ...]] = {
    "llvm-cpu": (
        "--iree-llvmcpu-target-cpu=host",
        "--iree-global-opt-use-im2col-for-convs",
        "--iree-opt-data-tiling",
    ),
    "cuda": (),
    "vulkan-spirv": (),
    "rocm": (),
}
# Matmul and convolution inputs at the low precision, accumulation and the rest in FP32, so
# the model's inputs and outputs keep their types.
_PRECISION_FLAGS: dict[Precision, tuple[str, ...]] = {
    Precision.FP32: (),
    Precision.BF16: (
        "--iree-global-opt-demote-contraction-inputs-type=bf16",
        "--iree-global-opt-demote-contraction-inputs-operations=all",
    ),
    Precision.FP16: (
        "--iree-global-opt-demote-contraction-inputs-type=f16",
        "--iree-global-opt-demote-contraction-inputs-operations=all",
    ),
}
# an op the ONNX conversion does not handle: the diagnostic, then the source line it points at
_UNLOWERED = re.compile(
    r"failed to legalize operation 'torch\.operator'[^\n]*\n[^\n]*?torch\.operator \"onnx\.([\w.]+)\""
)
# iree-base-compiler 3.13 has no CUDA target details for sm_90 and newer ("missing GPU target",
# iree-org/iree#22147): Ampere's sm_80 PTX, which the driver JIT-compiles for newer GPUs, is used.
_FIRST_UNSUPPORTED_CUDA = (9, 0)


class IreeBackend:
    name = "iree"

    def version(self) -> str:
        return runtime_version()

    def devices(self) -> list[DeviceInfo]:
        found = []
        for device in DEVICES.values():
            reason = _driver_problem(device.driver)
            description = f"IREE {device.target_backend} on the {device.driver} driver"
            found.append(DeviceInfo(device.name, description, reason is None, reason or ""))
        return found

    def supports(self, artifact: ModelArtifact, device: str) -> Compatibility:
        # standard ops show whether they lower only when the compiler runs: prepare() names them
        try:
            self._device(device)
        except (UsageError, DeviceUnavailableError) as exc:
            return Compatibility(False, str(exc))
        custom = custom_domain_ops(onnx.load(str(artifact.path), load_external_data=False))
        if custom:
            return Compatibility(False, _custom_reason(custom), unsupported_ops=custom)
        return Compatibility(True)

    def prepare(
        self, artifact: ModelArtifact, device: str, options: SessionOptions | None = None
    ) -> IreeSession:
        return IreeSession(artifact, self._device(device), options or SessionOptions())

    def _device(self, device: str) -> IreeDevice:
        found = DEVICES.get(device.lower())
        if found is None:
            raise UsageError(f"iree knows no device '{device}': use one of {', '.join(DEVICES)}")
        problem = _driver_problem(found.driver)
        if problem is not None:
            raise DeviceUnavailableError(
                f"iree:{device} is not usable here: {problem}; compile for it anyway with "
                f"crossinfer.backends.iree.compile_for(artifact, '{found.target_backend}', out)"
            )
        return found


def _driver_problem(driver: str) -> str | None:
    """Why this HAL driver has no device here, or None when it has one."""
    if driver not in ireert.query_available_drivers():
        return f"this iree runtime has no '{driver}' driver"
    try:
        if not ireert.get_driver(driver).query_available_devices():
            return f"the '{driver}' driver finds no device"
    except (RuntimeError, ValueError) as exc:  # missing libcuda / Vulkan loader
        return f"the '{driver}' driver cannot start: {short_message(exc, 160)}"
    return None


# --- compiling -----------------------------------------------------------------------------


def import_onnx(model: onnx.ModelProto) -> str:
    """ONNX -> MLIR (torch-onnx dialect) text, after ONNX shape inference with data propagation."""
    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    info = onnx_importer.ModelInfo(inferred)
    module = info.create_module(context=Context()).operation
    importer = onnx_importer.NodeImporter.define_function(info.main_graph, module)
    importer.import_all()
    module.verify()
    return str(module.get_asm(assume_verified=True))


def custom_domain_ops(model: onnx.ModelProto) -> tuple[str, ...]:
    """Ops outside the standard ONNX domain, as ``domain:Op``.

    IREE's importer drops a node's domain (com.example.Relu imports as onnx.Relu, and would run
    as the standard op), so crossinfer refuses these before importing.
    """
    return tuple(
        sorted(
            {
                f"{node.domain}:{node.op_type}"
                for node in model.graph.node
                if node.domain not in ("", "ai.onnx")
            }
        )
    )


def _custom_reason(ops: Sequence[str]) -> str:
    return (
        f"op(s) {', '.join(ops)} are outside the standard ONNX domain; IREE's ONNX importer "
        "would run them as the standard op of the same name"
    )


def fix_shapes(model: onnx.ModelProto, shapes: Mapping[str, Sequence[int]]) -> onnx.ModelProto:
    """A copy whose graph inputs have these fixed shapes (IREE generates faster static code)."""
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    for value in fixed.graph.input:
        if value.name not in shapes:
            continue
        dims = value.type.tensor_type.shape.dim
        for dim, size in zip(dims, shapes[value.name], strict=True):
            dim.ClearField("dim_param")
            dim.dim_value = int(size)
    return fixed


def compile_flags(
    target_backend: str,
    precision: Precision = Precision.FP32,
    extra: Mapping[str, str] | None = None,
) -> tuple[str, ...]:
    """The flags crossinfer passes to iree-compile: defaults, precision, then the user's.

    ``extra`` keys starting with ``--`` are compiler flags (``{"--iree-opt-level": "O3"}``,
    an empty value for a bare flag); ``"flags"`` holds more, space-separated. A user flag
    replaces a default of the same name.
    """
    if target_backend not in DEFAULT_FLAGS:
        raise UsageError(
            f"iree target backend '{target_backend}' is not one of {', '.join(DEFAULT_FLAGS)}"
        )
    user = [f"{k}={v}" if v else k for k, v in (extra or {}).items() if k.startswith("--")]
    user += (extra or {}).get("flags", "").split()
    named = {flag.split("=", 1)[0] for flag in user}
    if precision in (Precision.BF16, Precision.FP16):
        # data tiling with demoted contraction inputs fails on ResNet-50's convolutions
        # ("operations with large vector sizes"): low precision compiles without it
        named.add("--iree-opt-data-tiling")
    chosen = [f for f in DEFAULT_FLAGS[target_backend] if f.split("=", 1)[0] not in named]
    if target_backend == "cuda" and "--iree-cuda-target" not in named:
        chosen.append(f"--iree-cuda-target={cuda_target(_local_cuda_capability())}")
    return (*chosen, *_PRECISION_FLAGS.get(precision, ()), *user)


def cuda_target(capability: tuple[int, int] | None) -> str:
    """The --iree-cuda-target for a GPU of this compute capability (sm_80 when none is known)."""
    if capability is None or capability >= _FIRST_UNSUPPORTED_CUDA:
        return "sm_80"
    return f"sm_{capability[0]}{capability[1]}"


def _local_cuda_capability() -> tuple[int, int] | None:
    with open_nvml() as nvml:
        if nvml.lib is None:  # no NVML, no driver: the caller falls back to a default
            return None
        try:
            major, minor = nvml.lib.nvmlDeviceGetCudaComputeCapability(
                nvml.lib.nvmlDeviceGetHandleByIndex(0)
            )
        except Exception:  # no GPU: the caller falls back to a default
            return None
        return int(major), int(minor)


def compile_mlir(mlir: str, target_backend: str, flags: Sequence[str], source: str) -> bytes:
    try:
        return bytes(
            ireec.compile_str(mlir, target_backends=[target_backend], extra_args=list(flags))
        )
    except ireec.CompilerToolError as exc:
        text = str(exc)
        ops = tuple(sorted({_op_name(op) for op in _UNLOWERED.findall(text)}))
        detail = f"unsupported op(s) {', '.join(ops)}" if ops else short_message(exc)
        raise CompileError(
            f"iree-compile ({target_backend}) could not compile {source}: {detail}",
            unsupported_ops=ops,
        ) from exc


def _op_name(imported: str) -> str:
    # "Relu" for the default domain, "com.example.Relu" -> "com.example:Relu"
    domain, _, op = imported.rpartition(".")
    return f"{domain}:{op}" if domain else op


def compile_for(
    artifact: ModelArtifact,
    target_backend: str,
    out: Path,
    *,
    shapes: Mapping[str, Sequence[int]] | None = None,
    precision: Precision = Precision.FP32,
    extra: Mapping[str, str] | None = None,
) -> Path:
    """Cross-compile a model for an IREE target that need not be on this machine (compile here,
    run there with iree.runtime or ``iree-run-module``). Symbolic dims need ``shapes``."""
    shapes = dict(shapes or {})
    for spec in artifact.inputs:
        if spec.name not in shapes:
            if spec.shape is None or not all(isinstance(d, int) for d in spec.shape):
                raise UsageError(
                    f"input '{spec.name}' has shape {spec.shape_str()}: give its size in shapes="
                )
            shapes[spec.name] = [int(d) for d in spec.shape if isinstance(d, int)]
    proto = artifact.load_proto()
    custom = custom_domain_ops(proto)
    if custom:
        raise CompileError(_custom_reason(custom), unsupported_ops=custom)
    mlir = import_onnx(fix_shapes(proto, shapes))
    flags = compile_flags(target_backend, precision, extra)
    out.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(out, compile_mlir(mlir, target_backend, flags, artifact.source))
    return out


def module_cache_path(
    artifact: ModelArtifact,
    shapes: Mapping[str, Sequence[int]],
    target_backend: str,
    flags: Sequence[str],
) -> Path:
    """Where the module for this model, input shapes, target and flags is cached."""
    from crossinfer.zoo import default_cache_dir

    key = "\n".join(
        [
            artifact.sha256,
            target_backend,
            _version("iree-base-compiler"),
            *(f"{k}={list(v)}" for k, v in sorted(shapes.items())),
            *flags,
        ]
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:24]
    return default_cache_dir() / "iree" / f"{artifact.short_hash}-{target_backend}-{digest}.vmfb"


@dataclass(frozen=True)
class ModuleRecord:
    """One compiled module: shapes, where it is cached, how long it took, whether it was reused."""

    shapes: dict[str, list[int]]
    path: str
    cache: str  # "hit" or "miss"
    import_s: float
    compile_s: float
    load_s: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "shapes": self.shapes,
            "path": self.path,
            "cache": self.cache,
            "import_s": round(self.import_s, 4),
            "compile_s": round(self.compile_s, 4),
            "load_s": round(self.load_s, 4),
        }


class IreeSession:
    def __init__(
        self, artifact: ModelArtifact, device: IreeDevice, options: SessionOptions
    ) -> None:
        self.target = Target("iree", device.name)
        self.inputs = artifact.inputs
        self.outputs = artifact.outputs
        self._artifact = artifact
        self._device = device
        self._ignored: list[str] = []
        self._precision = options.precision
        if options.precision not in _PRECISION_FLAGS:
            self._ignored.append(f"precision={options.precision.value} (model-defined)")
            self._precision = Precision.FP32
        for name in ("graph_optimization_level", "performance_hint", "streams"):
            if getattr(options, name) is not None:
                self._ignored.append(name)
        if options.threads is not None:
            _limit_threads(options.threads, self._ignored)
        unknown = sorted(k for k in options.extra if not k.startswith("--") and k != "flags")
        if unknown:
            raise UsageError(
                f"iree does not know option(s) {', '.join(unknown)}: it takes compiler flags "
                "as --iree-...=VALUE keys and 'flags' (a space-separated list)"
            )
        self._flags = compile_flags(device.target_backend, self._precision, options.extra)
        self._config = ireert.Config(device.driver)
        self._modules: dict[tuple[Any, ...], Any] = {}
        self._lock = threading.Lock()
        self.modules: list[ModuleRecord] = []
        fixed = {s.name: _fixed_shape(s.shape) for s in self.inputs}
        if all(shape is not None for shape in fixed.values()):
            # every shape is known: compile (or load) now, so load time holds it
            self._function({k: v or () for k, v in fixed.items()})

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        arrays = validate_feeds(self.inputs, feeds, model=self._artifact.source)
        function = self._function({k: tuple(v.shape) for k, v in arrays.items()})
        try:
            result = function(*(arrays[spec.name] for spec in self.inputs))
        except (RuntimeError, ValueError) as exc:
            raise InferenceError(f"iree:{self.target.device} failed: {short_message(exc)}") from exc
        values = result if isinstance(result, list | tuple) else [result]
        return {
            spec.name: np.asarray(value.to_host()).astype(spec.numpy_dtype, copy=False)
            for spec, value in zip(self.outputs, values, strict=True)
        }

    def _function(self, shapes: Mapping[str, tuple[int, ...]]) -> Any:
        key = tuple(sorted(shapes.items()))
        with self._lock:
            if key not in self._modules:
                self._modules[key] = self._load(shapes)
            return self._modules[key]

    def _load(self, shapes: Mapping[str, tuple[int, ...]]) -> Any:
        backend = self._device.target_backend
        path = module_cache_path(self._artifact, shapes, backend, self._flags)
        import_s = compile_s = 0.0
        hit = path.is_file()
        if not hit:
            start = time.perf_counter()
            proto = self._artifact.load_proto()
            custom = custom_domain_ops(proto)
            if custom:
                raise CompileError(_custom_reason(custom), unsupported_ops=custom)
            try:
                mlir = import_onnx(fix_shapes(proto, shapes))
            except Exception as exc:  # the importer raises OnnxImportError, MLIRError, ...
                raise CompileError(
                    f"iree could not import {self._artifact.source}: {short_message(exc)}"
                ) from exc
            import_s = time.perf_counter() - start
            start = time.perf_counter()
            module = compile_mlir(mlir, backend, self._flags, self._artifact.source)
            compile_s = time.perf_counter() - start
            path.parent.mkdir(parents=True, exist_ok=True)
            _write_atomic(path, module)
        start = time.perf_counter()
        try:
            vm_module = ireert.VmModule.mmap(self._config.vm_instance, str(path))
            bound = ireert.load_vm_module(vm_module, self._config)
        except (RuntimeError, ValueError) as exc:
            raise CompileError(
                f"iree could not load the module {path} on {self._device.driver}: "
                f"{short_message(exc)}; delete it to recompile"
            ) from exc
        name = next(n for n in vm_module.function_names if "$" not in n and n != "__init")
        self.modules.append(
            ModuleRecord(
                shapes={k: list(v) for k, v in shapes.items()},
                path=str(path),
                cache="hit" if hit else "miss",
                import_s=import_s,
                compile_s=compile_s,
                load_s=time.perf_counter() - start,
            )
        )
        return bound[name]

    def placement(self) -> Placement:
        proto = onnx.load(str(self._artifact.path), load_external_data=False)
        nodes = {
            n.name or f"<{n.op_type}#{i}>": self.target.device
            for i, n in enumerate(proto.graph.node)
        }
        return Placement(
            node_devices=nodes,
            primary=self.target.device,
            note=f"IREE compiles the whole graph for {self._device.target_backend}",
        )

    def describe(self) -> dict[str, Any]:
        return {
            "runtime": runtime_version(),
            "device": f"{self._device.target_backend} on the {self._device.driver} driver",
            "precision": self._precision.value,
            "precision_method": "matmul/conv inputs demoted by iree-compile, FP32 accumulation"
            if self._precision is not Precision.FP32
            else "as stored in the model",
            "compile_flags": list(self._flags),
            "modules": [m.to_dict() for m in self.modules],
            "ignored_options": list(self._ignored),
        }

    def close(self) -> None:
        self._modules.clear()


def runtime_version() -> str:
    compiler, runtime = _version("iree-base-compiler"), _version("iree-base-runtime")
    return f"iree-base-compiler {compiler}, iree-base-runtime {runtime}"


_threads_set: int | None = None


def _limit_threads(threads: int, ignored: list[str]) -> None:
    # the task system's worker count is a process-wide runtime flag, read when the driver starts
    global _threads_set
    if _threads_set is None:
        ireert.flags.parse_flags(f"--task_topology_max_group_count={threads}")
        _threads_set = threads
    elif _threads_set != threads:
        ignored.append(f"threads={threads} (this process already runs IREE with {_threads_set})")


def _fixed_shape(shape: Sequence[int | str | None] | None) -> tuple[int, ...] | None:
    if shape is None or not all(isinstance(d, int) for d in shape):
        return None
    return tuple(int(d) for d in shape if isinstance(d, int))


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "?"


__all__ = [
    "DEFAULT_FLAGS",
    "DEVICES",
    "IreeBackend",
    "IreeDevice",
    "IreeSession",
    "ModuleRecord",
    "compile_flags",
    "compile_for",
    "cuda_target",
    "custom_domain_ops",
    "fix_shapes",
    "import_onnx",
    "module_cache_path",
]
