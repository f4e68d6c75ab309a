"""crossinfer: find, prove and serve the best way to run one ONNX model on the hardware at hand.

The public API: load a model (`load_model`), list backends and devices (`get_backend`,
`discover`), check a model everywhere (`check_model`), optimize it per target (`optimize`),
measure it (`run_benchmark`), keep the results (`ResultStore`), and recommend a deployment
(`tune`, which writes a `DeploymentSpec` that `crossinfer serve` loads with `load_spec`).
"""

from __future__ import annotations

__version__ = "0.1.0"  # before the imports: modules below read it

from crossinfer.backends.base import (
    Backend,
    Compatibility,
    DeviceInfo,
    Placement,
    Precision,
    Session,
    SessionOptions,
    Target,
    get_backend,
)
from crossinfer.bench.result import BenchResult, EnergyReading, LatencyStats, Stability
from crossinfer.bench.runner import BenchPlan, BenchRun, run_benchmark
from crossinfer.check import (
    CheckReport,
    CheckRow,
    Tolerance,
    Verdict,
    check_model,
    default_tolerance,
    load_inputs,
    random_inputs,
)
from crossinfer.errors import (
    BackendError,
    BackendUnavailableError,
    CompileError,
    CrossinferError,
    DeviceUnavailableError,
    InferenceError,
    InputError,
    ModelError,
    ModelFormatError,
    ModelNotFoundError,
    ModelValidationError,
    SpecError,
    StoreError,
    UnsupportedOpsetError,
    UsageError,
    ZooError,
)
from crossinfer.hardware import SystemReport, discover
from crossinfer.model import ModelArtifact, TensorSpec, load_model
from crossinfer.passes.pipeline import optimize
from crossinfer.spec import BatchingSpec, DeploymentSpec, ScaleSpec, load_spec, write_spec
from crossinfer.store import ResultStore
from crossinfer.tune.config import TuneConfig
from crossinfer.tune.runner import TuneResult, tune
from crossinfer.zoo import ZOO_MODELS, ZooDataset, zoo_dataset, zoo_model_path

__all__ = [
    "ZOO_MODELS",
    "Backend",
    "BackendError",
    "BackendUnavailableError",
    "BatchingSpec",
    "BenchPlan",
    "BenchResult",
    "BenchRun",
    "CheckReport",
    "CheckRow",
    "Compatibility",
    "CompileError",
    "CrossinferError",
    "DeploymentSpec",
    "DeviceInfo",
    "DeviceUnavailableError",
    "EnergyReading",
    "InferenceError",
    "InputError",
    "LatencyStats",
    "ModelArtifact",
    "ModelError",
    "ModelFormatError",
    "ModelNotFoundError",
    "ModelValidationError",
    "Placement",
    "Precision",
    "ResultStore",
    "ScaleSpec",
    "Session",
    "SessionOptions",
    "SpecError",
    "Stability",
    "StoreError",
    "SystemReport",
    "Target",
    "TensorSpec",
    "Tolerance",
    "TuneConfig",
    "TuneResult",
    "UnsupportedOpsetError",
    "UsageError",
    "Verdict",
    "ZooDataset",
    "ZooError",
    "check_model",
    "default_tolerance",
    "discover",
    "get_backend",
    "load_inputs",
    "load_model",
    "load_spec",
    "optimize",
    "random_inputs",
    "run_benchmark",
    "tune",
    "write_spec",
    "zoo_dataset",
    "zoo_model_path",
]
