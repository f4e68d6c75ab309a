"""The one interface every runtime implements: Target, SessionOptions, Session, Backend, registry.

A backend says which devices it can use, checks a model for a device (with a reason when it
cannot), and prepares a Session that maps numpy inputs to numpy outputs.
"""

from __future__ import annotations

import enum
import importlib
import importlib.metadata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, field
from types import ModuleType
from typing import Any, Protocol, runtime_checkable

import numpy as np

from crossinfer.errors import BackendUnavailableError, InputError, UsageError
from crossinfer.model import ModelArtifact, TensorSpec
from crossinfer.tensor_specs import dtype_fits, shape_fits


class Precision(enum.StrEnum):
    """Numeric precision a session runs at (what the runtime is asked for)."""

    FP32 = "fp32"
    TF32 = "tf32"
    FP16 = "fp16"
    BF16 = "bf16"
    INT8 = "int8"


@dataclass(frozen=True)
class Target:
    """A backend and one of its devices, written ``backend:device`` (``onnxruntime:cpu``)."""

    backend: str
    device: str

    @classmethod
    def parse(cls, text: str) -> Target:
        backend, sep, device = text.strip().partition(":")
        if not backend:
            raise UsageError(
                f"target '{text}' has no backend: write BACKEND:DEVICE, e.g. onnxruntime:cpu"
            )
        return cls(backend=backend.lower(), device=(device or "cpu").lower() if sep else "cpu")

    def __str__(self) -> str:
        return f"{self.backend}:{self.device}"


@dataclass(frozen=True)
class DeviceInfo:
    """One device as a backend sees it."""

    name: str  # the device part of a Target: "cpu", "cuda", "gpu.0", "npu"
    description: str = ""  # "AMD EPYC 9R14 (CPUExecutionProvider)"
    available: bool = True
    reason: str = ""  # why not, when not available


@dataclass(frozen=True)
class SessionOptions:
    """Runtime knobs; a backend uses the ones it understands and says which it ignored."""

    precision: Precision = Precision.FP32
    threads: int | None = None  # intra-op threads; None: the runtime's default
    graph_optimization_level: str | None = None  # "disable", "basic", "extended", "all"
    performance_hint: str | None = None  # OpenVINO: "LATENCY", "THROUGHPUT"
    streams: int | None = None  # OpenVINO inference streams
    extra: Mapping[str, str] = field(default_factory=dict)  # passed through to the runtime


@dataclass(frozen=True)
class Placement:
    """Where the runtime put each node, and what it could not run."""

    node_devices: Mapping[str, str]  # node name -> device or execution provider
    primary: str  # the device or provider the user asked for
    fallback_nodes: tuple[str, ...] = ()  # nodes placed somewhere other than primary
    unsupported_ops: tuple[str, ...] = ()
    note: str = ""  # how the placement was learned, or why it is partial

    @property
    def fallback_count(self) -> int:
        return len(self.fallback_nodes)

    def device_histogram(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for device in self.node_devices.values():
            counts[device] = counts.get(device, 0) + 1
        return counts

    def to_dict(self) -> dict[str, Any]:
        return {
            "primary": self.primary,
            "nodes": len(self.node_devices),
            "devices": self.device_histogram(),
            "fallback_count": self.fallback_count,
            "fallback_nodes": list(self.fallback_nodes),
            "unsupported_ops": list(self.unsupported_ops),
            "note": self.note,
        }


@dataclass(frozen=True)
class Compatibility:
    """Whether a backend can run a model on a device, and why not."""

    supported: bool
    reason: str = ""
    unsupported_ops: tuple[str, ...] = ()


@runtime_checkable
class Session(Protocol):
    """A model prepared for one device: numpy in, numpy out."""

    target: Target
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def placement(self) -> Placement | None: ...

    def describe(self) -> dict[str, Any]:
        """What actually ran: runtime version, precision, providers, ignored options."""
        ...

    def close(self) -> None: ...


class InputPlacement(enum.StrEnum):
    """Where a benchmark's sample pool is staged before a run, as MLPerf harnesses do."""

    NUMPY = "numpy"  # host numpy arrays handed to Session.run (every backend)
    PINNED = "pinned"  # page-locked host memory, each batch copied to the device on its own stream
    DEVICE = "device"  # resident on the device: measures the device, not the system


@dataclass(frozen=True)
class InputStaging:
    """What a `StagingSession` takes: the placements it accepts and the dtypes it computes in."""

    placements: tuple[InputPlacement, ...] = (InputPlacement.NUMPY,)
    # input -> numpy dtype the session casts that input to itself and also accepts in `run`
    # (FP16 for an FP16 variant): staging in it once moves the cast out of every batch
    host_dtypes: Mapping[str, str] = field(default_factory=dict)
    # the session compiles or captures per input shape: pad partial batches to a few fixed
    # shapes (powers of two up to the batch size) so that all of them can be warmed up
    fixed_shapes: bool = False
    reason: str = ""  # why a placement is missing ("torch:cpu: pin_memory needs CUDA")


@runtime_checkable
class StagedLane(Protocol):
    """One worker's path through a staged pool: its own batch buffers (and copy stream)."""

    def run(
        self, indices: Sequence[int], *, prefetch: Sequence[int] | None = None
    ) -> dict[str, np.ndarray]:
        """Run the samples at `indices` (rows of the staged pool); `prefetch`: the batch that
        comes next, whose copy may start while this one computes."""
        ...


@runtime_checkable
class StagedInputs(Protocol):
    """A sample pool staged by a session (pinned host or device memory), built by index."""

    placement: InputPlacement

    def lane(self) -> StagedLane: ...

    def close(self) -> None: ...


@runtime_checkable
class StagingSession(Protocol):
    """Optional Session capability: take a sample pool staged once, outside the measured run.

    `arrays` are the pool's samples, one contiguous array per input, rows along axis 0, in the
    host dtype `input_staging` asked for; the session copies them to `placement` in its own
    compute dtype.
    """

    def input_staging(self) -> InputStaging: ...

    def stage_inputs(
        self, arrays: Mapping[str, np.ndarray], *, placement: InputPlacement
    ) -> StagedInputs: ...


@runtime_checkable
class Backend(Protocol):
    """A runtime: lists devices, checks models, prepares sessions."""

    name: str

    def version(self) -> str: ...

    def devices(self) -> list[DeviceInfo]: ...

    def supports(self, artifact: ModelArtifact, device: str) -> Compatibility: ...

    def prepare(
        self, artifact: ModelArtifact, device: str, options: SessionOptions | None = None
    ) -> Session: ...


# --- registry ------------------------------------------------------------------------------

# A backend's runtime as doctor sees it: the imported runtime module -> (devices, notes).
DeviceProbe = Callable[[ModuleType], tuple[tuple[str, ...], tuple[str, ...]]]
# A backend's tune grid: logical cores -> the knob settings to try (tune.space.Knobs fields),
# most conventional first.
KnobGrid = Callable[[int], tuple[Mapping[str, Any], ...]]
# A backend's tune grid of runtime options (SessionOptions.extra, as `bench --option` takes them)
# on one device: (device, exhaustive) -> the settings to try, cheapest first (quick screens each
# variant at the first). `exhaustive` adds the costly ones (long compiles) a user asks for by
# choosing the exhaustive strategy.
OptionGrid = Callable[[str, bool], tuple[Mapping[str, str], ...]]
# An optimize --precision shortcut: the passes to run, and the precision to ask the runtime for.
Preset = tuple[tuple[str, ...], Precision]


@dataclass(frozen=True)
class BackendEntry:
    """Everything crossinfer knows about a backend without importing its runtime.

    Where the Backend class lives and what to install when it cannot be imported; for doctor,
    the runtime module to find and import, its device probe and its package names (also the
    version the fingerprint records); tune's knob and option grids (tune searches their product:
    threads and instances x runtime modes such as torch's eager/compile), optimize's precision
    presets and the platform serve reports. Functions must be module-level: entries travel to
    child processes.
    """

    name: str
    module: str  # "crossinfer.backends.onnxruntime"
    attribute: str  # the Backend class in that module
    install_hint: str  # "pip install 'crossinfer[openvino]'"
    _: KW_ONLY
    is_reference: bool = False
    # what doctor finds and imports ("iree.runtime"); None: doctor does not list this backend
    runtime_module: str | None = None
    # package names, first installed gives the version: ONNX Runtime ships under several
    distributions: tuple[str, ...] = ()
    probe: DeviceProbe | None = field(default=None, compare=False)
    knob_grid: KnobGrid | None = field(default=None, compare=False)
    option_grid: OptionGrid | None = field(default=None, compare=False)
    # device names people type -> the name this backend lists ({"cuda": "gpu"}: jax's CUDA GPUs
    # are gpu:N), so tune --device cuda keeps them
    device_aliases: Mapping[str, str] = field(default_factory=dict, compare=False)
    presets: Mapping[str, Preset] = field(default_factory=dict, compare=False)
    serving_platform: str | None = None  # KServe metadata platform; None: "<name>_onnx"

    @property
    def platform(self) -> str:
        return self.serving_platform or f"{self.name}_onnx"

    def installed_version(self) -> str | None:
        """The version of the first of `distributions` installed; read from package metadata,
        so nothing is imported."""
        for distribution in self.distributions:
            try:
                return importlib.metadata.version(distribution)
            except importlib.metadata.PackageNotFoundError:
                continue
        return None


# One line per backend: the module declaring its ENTRY, which must import no runtime at the top
# (a missing OpenVINO never breaks ONNX Runtime). The built-in backends import theirs at the top,
# so each has a small <name>_entry.py beside it; a backend that imports its runtime inside its
# functions can declare ENTRY in its own module. Read at the first registry lookup, not at
# import, so an entry module may import this one.
_BUILTIN = (
    "crossinfer.backends.onnxruntime_entry",
    "crossinfer.backends.openvino_entry",
    "crossinfer.backends.torch_entry",
    "crossinfer.backends.jax_entry",
    "crossinfer.backends.iree_entry",
    "crossinfer.backends.reference_entry",
    "crossinfer.backends.litert_entry",
)

_REGISTRY: dict[str, BackendEntry] = {}
_builtins_loaded = False


def _registry() -> dict[str, BackendEntry]:
    global _builtins_loaded
    if not _builtins_loaded:
        _builtins_loaded = True
        builtin = [importlib.import_module(module).ENTRY for module in _BUILTIN]
        # the built-in backends come first, in the order above, before any registered since
        added = dict(_REGISTRY)
        _REGISTRY.clear()
        for entry in (*builtin, *added.values()):
            _add(entry)
    return _REGISTRY


def _add(entry: BackendEntry) -> None:
    if entry.name in _REGISTRY:
        raise ValueError(
            f"backend '{entry.name}' is already registered ({_REGISTRY[entry.name].module})"
        )
    _REGISTRY[entry.name] = entry


def register_backend(entry: BackendEntry) -> None:
    """Add a backend; a second backend under the same name is a mistake, not an override."""
    _registry()
    _add(entry)


def unregister_backend(name: str) -> None:
    _registry().pop(name, None)


def backend_entries() -> list[BackendEntry]:
    return list(_registry().values())


def find_backend_entry(name: str) -> BackendEntry | None:
    """The entry of a registered backend, or None."""
    return _registry().get(name)


def backend_entry(name: str) -> BackendEntry:
    registry = _registry()
    try:
        return registry[name]
    except KeyError:
        known = ", ".join(sorted(registry))
        raise UsageError(f"unknown backend '{name}': known backends are {known}") from None


def get_backend(name: str) -> Backend:
    """Import and construct a backend; a missing runtime raises with its install hint."""
    return load_backend(backend_entry(name))


def load_backend(entry: BackendEntry) -> Backend:
    try:
        module = importlib.import_module(entry.module)
        backend: Backend = getattr(module, entry.attribute)()
    except ImportError as exc:
        raise BackendUnavailableError(
            f"backend '{entry.name}' cannot be used: {exc}: {entry.install_hint}"
        ) from exc
    return backend


# --- feeds --------------------------------------------------------------------------------


def validate_feeds(
    inputs: Sequence[TensorSpec],
    feeds: Mapping[str, np.ndarray],
    *,
    model: str = "model",
    also_accept: Mapping[str, str] | None = None,
) -> dict[str, np.ndarray]:
    """Check names, dtypes and shapes against the signature; return contiguous arrays.

    `also_accept`: input -> a second dtype the session casts to itself (`InputStaging.host_dtypes`).
    Raises InputError naming the input, what it expects and what it got.
    """
    also = also_accept or {}
    expected = {spec.name: spec for spec in inputs}
    missing = [name for name in expected if name not in feeds]
    unknown = [name for name in feeds if name not in expected]
    if missing or unknown:
        parts = []
        if missing:
            parts.append(f"missing input(s) {', '.join(repr(n) for n in missing)}")
        if unknown:
            parts.append(f"unknown input(s) {', '.join(repr(n) for n in unknown)}")
        raise InputError(
            f"{model}: {'; '.join(parts)}; the model takes {', '.join(repr(n) for n in expected)}"
        )
    out: dict[str, np.ndarray] = {}
    for name, spec in expected.items():
        array = np.asarray(feeds[name])
        if not dtype_fits(spec, array.dtype) and array.dtype.name != also.get(name):
            raise InputError(
                f"{model}: input '{name}' expects {spec.dtype.upper()} of shape {spec.shape_str()}, "
                f"got {array.dtype.name.upper()} {list(array.shape)}: convert it with "
                f".astype('{spec.dtype}')"
            )
        if not shape_fits(spec.shape, array.shape):
            raise InputError(
                f"{model}: input '{name}' expects shape {spec.shape_str()} ({spec.dtype}), "
                f"got {list(array.shape)}"
            )
        # np.require, not np.ascontiguousarray: the latter turns a 0-d input (CumSum's axis,
        # a scalar position) into shape [1], which the model then rejects or broadcasts wrongly
        out[name] = array if array.flags.c_contiguous else np.require(array, requirements="C")
    return out
