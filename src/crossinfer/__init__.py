"""crossinfer: find, prove and serve the best way to run one ONNX model on the hardware at hand.

The public API: load a model (`load_model`), list backends and devices (`get_backend`,
`discover`), and check a model everywhere (`check_model`).
"""

from __future__ import annotations

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
    UnsupportedOpsetError,
    UsageError,
    ZooError,
)
from crossinfer.hardware import SystemReport, discover
from crossinfer.model import ModelArtifact, TensorSpec, load_model
from crossinfer.zoo import ZOO_MODELS, ZooDataset, zoo_dataset, zoo_model_path

__version__ = "0.1.0"

__all__ = [
    "ZOO_MODELS",
    "Backend",
    "BackendError",
    "BackendUnavailableError",
    "CheckReport",
    "CheckRow",
    "Compatibility",
    "CompileError",
    "CrossinferError",
    "DeviceInfo",
    "DeviceUnavailableError",
    "InferenceError",
    "InputError",
    "ModelArtifact",
    "ModelError",
    "ModelFormatError",
    "ModelNotFoundError",
    "ModelValidationError",
    "Placement",
    "Precision",
    "Session",
    "SessionOptions",
    "SystemReport",
    "Target",
    "TensorSpec",
    "Tolerance",
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
    "random_inputs",
    "zoo_dataset",
    "zoo_model_path",
]
