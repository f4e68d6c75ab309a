"""Hardware and runtime discovery: the CPU, its ISA features, NVIDIA GPUs and inference runtimes.

Every probe turns failure into a reason string, so one broken part never hides the others.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import platform
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Literal

from crossinfer.backends.base import BackendEntry, backend_entries, find_backend_entry
from crossinfer.errors import UsageError
from crossinfer.hardware.nvml import open_nvml

JsonDict = dict[str, Any]
IsaFamily = Literal["x86", "arm"]

X86_FEATURES: tuple[str, ...] = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
)
ARM_FEATURES: tuple[str, ...] = ("neon", "fp16", "dotprod", "i8mm", "bf16", "sve", "sve2")

# The features that decide which precision runs fast; render.py highlights them.
IMPORTANT_FEATURES: frozenset[str] = frozenset(
    {
        "avx2",
        "avx512f",
        "avx512_vnni",
        "avx_vnni",
        "avx512_bf16",
        "avx512_fp16",
        "amx_bf16",
        "amx_int8",
        "dotprod",
        "i8mm",
        "bf16",
        "sve",
    }
)

# /proc/cpuinfo on ARM names the ISA extensions differently from the names people search for.
_ARM_FLAG_ALIASES: dict[str, tuple[str, ...]] = {
    "neon": ("asimd", "neon"),
    "fp16": ("asimdhp", "fphp"),
    "dotprod": ("asimddp",),
    "i8mm": ("i8mm",),
    "bf16": ("bf16",),
    "sve": ("sve",),
    "sve2": ("sve2",),
}

_X86_VENDORS = {"GenuineIntel": "Intel", "AuthenticAMD": "AMD", "HygonGenuine": "Hygon"}
_ARM_IMPLEMENTERS = {
    "0x41": "ARM",
    "0x42": "Broadcom",
    "0x43": "Cavium",
    "0x46": "Fujitsu",
    "0x48": "HiSilicon",
    "0x4e": "NVIDIA",
    "0x50": "APM",
    "0x51": "Qualcomm",
    "0x61": "Apple",
    "0xc0": "Ampere",
}
# Only ARM Ltd designs: other implementers reuse part numbers with other meanings.
_ARM_PARTS = {
    "0xd03": "Cortex-A53",
    "0xd05": "Cortex-A55",
    "0xd07": "Cortex-A57",
    "0xd08": "Cortex-A72",
    "0xd0b": "Cortex-A76",
    "0xd0c": "Neoverse-N1",
    "0xd40": "Neoverse-V1",
    "0xd49": "Neoverse-N2",
    "0xd4f": "Neoverse-V2",
    "0xd84": "Neoverse-V3",
    "0xd8e": "Neoverse-N3",
}

NOTE_INT8_NO_VNNI = "INT8 without VNNI: quantized models may run slower than FP32"
NOTE_INT8_NO_DOTPROD = "INT8 without dotprod or i8mm: quantized models may run slower than FP32"
NOTE_NO_AVX2 = "No AVX2: runtimes fall back to older SIMD kernels, expect low throughput"
NOTE_HYPERVISOR = "Running under a hypervisor: timings vary with load on the host"

_MAX_REASON = 240


def _shorten(text: str, limit: int = _MAX_REASON) -> str:
    first = " ".join(text.strip().splitlines()[:1]) if text.strip() else ""
    return first if len(first) <= limit else first[: limit - 3] + "..."


def describe_error(exc: BaseException) -> str:
    """One short line for a probe's failure: the exception's class and the first line of it."""
    message = _shorten(str(exc))
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


# --------------------------------------------------------------------------- CPU


@dataclass(frozen=True)
class ParsedCpuinfo:
    """What the text of Linux /proc/cpuinfo says about the first processor."""

    model_name: str | None
    vendor: str | None
    isa: IsaFamily | None
    features: dict[str, bool]
    notes: tuple[str, ...]
    reason: str | None = None

    def to_dict(self) -> JsonDict:
        return {
            "model_name": self.model_name,
            "vendor": self.vendor,
            "isa": self.isa,
            "features": dict(self.features),
            "notes": list(self.notes),
            "reason": self.reason,
        }


@dataclass(frozen=True)
class CpuInfo:
    """The host CPU: identity, core counts, memory and the ISA features inference cares about."""

    model_name: str
    vendor: str | None
    architecture: str
    physical_cores: int | None
    logical_cores: int
    total_memory_bytes: int
    isa: IsaFamily | None
    features: dict[str, bool]
    notes: tuple[str, ...] = ()
    features_reason: str | None = None

    def to_dict(self) -> JsonDict:
        return {
            "model_name": self.model_name,
            "vendor": self.vendor,
            "architecture": self.architecture,
            "physical_cores": self.physical_cores,
            "logical_cores": self.logical_cores,
            "total_memory_bytes": self.total_memory_bytes,
            "isa": self.isa,
            "features": dict(self.features),
            "notes": list(self.notes),
            "features_reason": self.features_reason,
        }


def _cpuinfo_fields(text: str) -> dict[str, str]:
    """Key/value pairs of the first processor block; later blocks repeat the same flags."""
    fields: dict[str, str] = {}
    seen_processor = False
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key = key.strip().lower()
        if key == "processor":
            if seen_processor and ("flags" in fields or "features" in fields):
                break
            seen_processor = True
        fields.setdefault(key, value.strip())
    return fields


def _x86_notes(features: dict[str, bool], flags: set[str]) -> list[str]:
    notes: list[str] = []
    if not features["avx2"]:
        notes.append(NOTE_NO_AVX2)
    if not (features["avx512_vnni"] or features["avx_vnni"] or features["amx_int8"]):
        notes.append(NOTE_INT8_NO_VNNI)
    if features["avx512_bf16"] or features["amx_bf16"]:
        isa = "AVX512_BF16" if features["avx512_bf16"] else "AMX_BF16"
        notes.append(
            f"{isa}: OpenVINO runs BF16 by default on this CPU "
            "(set INFERENCE_PRECISION_HINT=f32 when FP32 accuracy matters)"
        )
    if features["amx_tile"] and (features["amx_int8"] or features["amx_bf16"]):
        notes.append("AMX: INT8 and BF16 matrix multiplies can run on the tile unit")
    if features["avx512_fp16"]:
        notes.append("AVX512_FP16: native FP16 arithmetic for runtimes that use it")
    if "hypervisor" in flags:
        notes.append(NOTE_HYPERVISOR)
    return notes


def _arm_notes(features: dict[str, bool]) -> list[str]:
    notes: list[str] = []
    if not (features["dotprod"] or features["i8mm"]):
        notes.append(NOTE_INT8_NO_DOTPROD)
    if features["i8mm"]:
        notes.append("I8MM: INT8 matrix-multiply instructions speed up quantized models")
    if features["bf16"]:
        notes.append(
            "BF16: ONNX Runtime can use BF16 fast-math GEMM "
            "(session option mlas.enable_gemm_fastmath_arm64_bfloat16)"
        )
    return notes


def parse_cpuinfo(text: str) -> ParsedCpuinfo:
    """Read model name, vendor and inference-relevant ISA features from /proc/cpuinfo text."""
    fields = _cpuinfo_fields(text)
    if "flags" in fields:
        flags = set(fields["flags"].split())
        features = {name: name in flags for name in X86_FEATURES}
        raw_vendor = fields.get("vendor_id")
        vendor = _X86_VENDORS.get(raw_vendor, raw_vendor) if raw_vendor else None
        return ParsedCpuinfo(
            model_name=fields.get("model name") or None,
            vendor=vendor,
            isa="x86",
            features=features,
            notes=tuple(_x86_notes(features, flags)),
        )
    if "features" in fields:
        flags = set(fields["features"].split())
        features = {
            name: any(alias in flags for alias in aliases)
            for name, aliases in _ARM_FLAG_ALIASES.items()
        }
        implementer = fields.get("cpu implementer", "").lower()
        part = fields.get("cpu part", "").lower()
        vendor = _ARM_IMPLEMENTERS.get(implementer, implementer or None)
        model = fields.get("model name") or None
        if model is None and implementer == "0x41" and part in _ARM_PARTS:
            model = f"ARM {_ARM_PARTS[part]}"
        elif model is None and implementer:
            model = f"{vendor} part {part or 'unknown'}"
        return ParsedCpuinfo(
            model_name=model,
            vendor=vendor,
            isa="arm",
            features=features,
            notes=tuple(_arm_notes(features)),
        )
    return ParsedCpuinfo(
        model_name=fields.get("model name") or None,
        vendor=fields.get("vendor_id") or None,
        isa=None,
        features={},
        notes=(),
        reason="no x86 'flags' or ARM 'Features' line in /proc/cpuinfo",
    )


def _read_proc_cpuinfo(path: str = "/proc/cpuinfo") -> ParsedCpuinfo:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            text = handle.read()
    except OSError as exc:
        return ParsedCpuinfo(None, None, None, {}, (), f"cannot read {path}: {describe_error(exc)}")
    return parse_cpuinfo(text)


def _core_counts() -> tuple[int | None, int]:
    try:
        import psutil

        physical = psutil.cpu_count(logical=False)
        logical = psutil.cpu_count(logical=True)
    except Exception:
        # psutil is a dependency, but core counts are not worth failing discovery over.
        physical, logical = None, None
    return physical, logical or os.cpu_count() or 1


def _total_memory() -> int:
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except Exception:
        return _sysconf_memory()


def _sysconf_memory() -> int:
    # Without psutil, POSIX sysconf gives the same number on Linux and macOS; 0 means unknown.
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return 0


def discover_cpu() -> CpuInfo:
    """Describe the host CPU; on non-Linux systems the ISA features are reported as unknown."""
    system = platform.system()
    if system == "Linux":
        parsed = _read_proc_cpuinfo()
    else:
        reason = f"CPU features unknown on {system or 'this OS'}: only Linux /proc/cpuinfo is read"
        parsed = ParsedCpuinfo(None, None, None, {}, (), reason)
    physical, logical = _core_counts()
    model = parsed.model_name or platform.processor() or platform.machine() or "unknown CPU"
    return CpuInfo(
        model_name=model,
        vendor=parsed.vendor,
        architecture=platform.machine(),
        physical_cores=physical,
        logical_cores=logical,
        total_memory_bytes=_total_memory(),
        isa=parsed.isa,
        features=dict(parsed.features),
        notes=parsed.notes,
        features_reason=parsed.reason,
    )


# --------------------------------------------------------------------------- GPU


@dataclass(frozen=True)
class GpuInfo:
    """One NVIDIA GPU as NVML reports it."""

    index: int
    name: str
    total_memory_bytes: int
    compute_capability: str | None
    driver_version: str | None
    uuid: str | None

    def to_dict(self) -> JsonDict:
        return {
            "index": self.index,
            "name": self.name,
            "total_memory_bytes": self.total_memory_bytes,
            "compute_capability": self.compute_capability,
            "driver_version": self.driver_version,
            "uuid": self.uuid,
        }


@dataclass(frozen=True)
class GpuReport:
    """The NVIDIA GPUs found, or the reason there are none."""

    gpus: tuple[GpuInfo, ...] = ()
    reason: str | None = None
    driver_version: str | None = None
    cuda_driver_version: str | None = None
    notes: tuple[str, ...] = ()

    def to_dict(self) -> JsonDict:
        return {
            "gpus": [gpu.to_dict() for gpu in self.gpus],
            "reason": self.reason,
            "driver_version": self.driver_version,
            "cuda_driver_version": self.cuda_driver_version,
            "notes": list(self.notes),
        }


def _text(value: object) -> str:
    # Older pynvml releases return bytes, newer ones str.
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _cuda_version(raw: object) -> str:
    number = int(str(raw))
    return f"{number // 1000}.{(number % 1000) // 10}"


def _one_gpu(nvml: ModuleType, index: int, driver: str | None) -> GpuInfo:
    handle = nvml.nvmlDeviceGetHandleByIndex(index)
    name = _text(nvml.nvmlDeviceGetName(handle))
    memory = int(nvml.nvmlDeviceGetMemoryInfo(handle).total)
    try:
        major, minor = nvml.nvmlDeviceGetCudaComputeCapability(handle)
        capability: str | None = f"{int(major)}.{int(minor)}"
    except Exception:
        # Some vGPU and MIG setups refuse this query; the rest of the row is still useful.
        capability = None
    try:
        uuid: str | None = _text(nvml.nvmlDeviceGetUUID(handle))
    except Exception:
        uuid = None
    return GpuInfo(
        index=index,
        name=name,
        total_memory_bytes=memory,
        compute_capability=capability,
        driver_version=driver,
        uuid=uuid,
    )


def discover_gpus() -> GpuReport:
    """List NVIDIA GPUs through NVML (the nvidia-ml-py package); failures become the reason."""
    with open_nvml() as nvml:
        if nvml.lib is None:
            return GpuReport(reason=nvml.reason)
        try:
            return _enumerate_gpus(nvml.lib)
        except Exception as exc:
            return GpuReport(reason=f"NVML query failed: {describe_error(exc)}")


def _enumerate_gpus(nvml: ModuleType) -> GpuReport:
    notes: list[str] = []
    try:
        driver: str | None = _text(nvml.nvmlSystemGetDriverVersion())
    except Exception as exc:
        driver = None
        notes.append(f"driver version unknown: {describe_error(exc)}")
    try:
        cuda: str | None = _cuda_version(nvml.nvmlSystemGetCudaDriverVersion())
    except Exception:
        cuda = None
    count = int(nvml.nvmlDeviceGetCount())
    gpus: list[GpuInfo] = []
    for index in range(count):
        try:
            gpus.append(_one_gpu(nvml, index, driver))
        except Exception as exc:
            notes.append(f"GPU {index}: {describe_error(exc)}")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and gpus:
        # NVML ignores CUDA_VISIBLE_DEVICES, CUDA runtimes do not: the lists can differ.
        notes.append(f"CUDA_VISIBLE_DEVICES={visible!r} limits what CUDA runtimes see")
    reason = None
    if not gpus:
        reason = "NVML found no NVIDIA GPUs" if count == 0 else "no NVIDIA GPU could be queried"
    return GpuReport(
        gpus=tuple(gpus),
        reason=reason,
        driver_version=driver,
        cuda_driver_version=cuda,
        notes=tuple(notes),
    )


# --------------------------------------------------------------------------- runtimes


@dataclass(frozen=True)
class RuntimeInfo:
    """One inference runtime: whether it imports, its version and the devices it offers."""

    name: str
    installed: bool
    version: str | None = None
    devices: tuple[str, ...] = ()
    reason: str | None = None
    install_hint: str | None = None
    notes: tuple[str, ...] = ()

    @property
    def usable(self) -> bool:
        """Installed, imported and probed without error."""
        return self.installed and self.reason is None

    @property
    def device_ids(self) -> tuple[str, ...]:
        """The devices without their descriptions: "CPU (Intel Xeon)" becomes "CPU"."""
        return tuple(device.split(" (", 1)[0] for device in self.devices)

    def to_dict(self) -> JsonDict:
        return {
            "name": self.name,
            "installed": self.installed,
            "usable": self.usable,
            "version": self.version,
            "devices": list(self.devices),
            "reason": self.reason,
            "install_hint": self.install_hint,
            "notes": list(self.notes),
        }


@dataclass(frozen=True)
class OnnxInfo:
    """The onnx package every model passes through, with the newest opset and IR it knows."""

    version: str | None
    max_opset: int | None
    ir_version: int | None
    reason: str | None = None

    def to_dict(self) -> JsonDict:
        return {
            "version": self.version,
            "max_opset": self.max_opset,
            "ir_version": self.ir_version,
            "reason": self.reason,
        }


def known_runtimes() -> tuple[str, ...]:
    """The registered backends doctor lists: those that name a runtime module, in order."""
    return tuple(e.name for e in backend_entries() if e.runtime_module is not None)


def _runtime_entry(name: str) -> BackendEntry:
    entry = find_backend_entry(name)
    if entry is None or entry.runtime_module is None:
        raise UsageError(f"unknown runtime {name!r}; known runtimes: {', '.join(known_runtimes())}")
    return entry


def _find_module(module: str) -> str | None:
    """Why ``module`` cannot be found, or None when it can; nothing is imported but parents."""
    parts = module.split(".")
    for depth in range(1, len(parts) + 1):
        name = ".".join(parts[:depth])
        try:
            found = importlib.util.find_spec(name)
        except (ImportError, ValueError) as exc:
            return f"not installed ({name}: {describe_error(exc)})"
        if found is None:
            return f"not installed (no module named {name!r})"
    return None


@contextmanager
def _collect_warnings(notes: list[str]) -> Iterator[None]:
    # Runtimes warn on import and device probing; as notes they show up in the report instead
    # of on stderr, and they cannot turn into errors where warnings are errors.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for item in caught:
        notes.append(f"warning: {item.category.__name__}: {_shorten(str(item.message), 160)}")


def probe_runtime(name: str) -> RuntimeInfo:
    """Find, import and list the devices of one known runtime; failures become the reason."""
    spec = _runtime_entry(name)
    assert spec.runtime_module is not None  # _runtime_entry refuses the others
    missing = _find_module(spec.runtime_module)
    if missing is not None:
        return RuntimeInfo(
            name=name, installed=False, reason=missing, install_hint=spec.install_hint
        )
    notes: list[str] = []
    module: ModuleType | None = None
    failure: str | None = None
    with _collect_warnings(notes):
        try:
            module = importlib.import_module(spec.runtime_module)
        except Exception as exc:
            failure = f"installed but failed to import: {describe_error(exc)}"
    version = spec.installed_version()
    if module is None:
        return RuntimeInfo(
            name=name,
            installed=True,
            version=version,
            reason=failure,
            install_hint=spec.install_hint,
            notes=tuple(notes),
        )
    if version is None:
        raw = getattr(module, "__version__", None)
        version = str(raw) if raw is not None else None
    devices: tuple[str, ...] = ()
    reason: str | None = None
    with _collect_warnings(notes):
        try:
            if spec.probe is not None:
                devices, probe_notes = spec.probe(module)
                notes.extend(probe_notes)
        except Exception as exc:
            reason = f"imported, but listing devices failed: {describe_error(exc)}"
    return RuntimeInfo(
        name=name,
        installed=True,
        version=version,
        devices=devices,
        reason=reason,
        install_hint=spec.install_hint,
        notes=tuple(notes),
    )


def discover_onnx() -> OnnxInfo:
    """Version of the onnx package and the newest opset and IR version it understands."""
    try:
        import onnx
        import onnx.defs

        return OnnxInfo(
            version=str(onnx.__version__),
            max_opset=int(onnx.defs.onnx_opset_version()),
            ir_version=int(onnx.IR_VERSION),
        )
    except Exception as exc:
        return OnnxInfo(None, None, None, reason=f"onnx unusable: {describe_error(exc)}")


# --------------------------------------------------------------------------- report


@dataclass(frozen=True)
class SystemReport:
    """Everything ``crossinfer doctor`` prints; holds no hostname or user name."""

    platform: str
    os: str
    python_version: str
    python_implementation: str
    crossinfer_version: str | None
    cpu: CpuInfo
    gpu: GpuReport
    onnx: OnnxInfo
    runtimes: tuple[RuntimeInfo, ...]

    def runtime(self, name: str) -> RuntimeInfo | None:
        """The entry for one runtime, or None when it was not probed."""
        return next((r for r in self.runtimes if r.name == name), None)

    def to_dict(self) -> JsonDict:
        return {
            "platform": self.platform,
            "os": self.os,
            "python_version": self.python_version,
            "python_implementation": self.python_implementation,
            "crossinfer_version": self.crossinfer_version,
            "cpu": self.cpu.to_dict(),
            "gpu": self.gpu.to_dict(),
            "onnx": self.onnx.to_dict(),
            "runtimes": [r.to_dict() for r in self.runtimes],
        }


def _crossinfer_version() -> str | None:
    try:
        return importlib.metadata.version("crossinfer")
    except importlib.metadata.PackageNotFoundError:
        return None


def discover(*, runtimes: Sequence[str] | None = None) -> SystemReport:
    """Probe CPU, GPUs, onnx and the runtimes (all known ones when ``runtimes`` is None)."""
    known = known_runtimes()
    names = tuple(known if runtimes is None else dict.fromkeys(runtimes))
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UsageError(
            f"unknown runtime(s) {', '.join(unknown)}; known runtimes: {', '.join(known)}"
        )
    return SystemReport(
        platform=platform.platform(),
        os=platform.system(),
        python_version=platform.python_version(),
        python_implementation=platform.python_implementation(),
        crossinfer_version=_crossinfer_version(),
        cpu=discover_cpu(),
        gpu=discover_gpus(),
        onnx=discover_onnx(),
        runtimes=tuple(probe_runtime(n) for n in names),
    )
