"""The exceptions crossinfer raises, each with a message a person can act on.

    CrossinferError
    ├── ModelError                 a model source cannot be used
    │   ├── ModelNotFoundError     the path does not exist
    │   ├── ModelFormatError       empty, truncated, corrupt or not ONNX at all
    │   ├── ModelValidationError   parses, but onnx.checker or shape inference rejects it
    │   ├── UnsupportedOpsetError  opset or IR version newer than the installed onnx
    │   └── ZooError               unknown zoo:NAME or a bad zoo parameter
    ├── InputError                 feeds or an inputs file do not match the model signature
    ├── BackendError               a runtime cannot do what was asked
    │   ├── BackendUnavailableError  the runtime is not installed (message has the install hint)
    │   ├── DeviceUnavailableError   the runtime is there, the device is not
    │   ├── CompileError             the runtime refused to load or compile the model
    │   └── InferenceError           the runtime failed while running the model
    └── UsageError                 a command-line value that cannot be understood

Native errors from a runtime are translated at the backend boundary with ``raise ... from exc``.
"""

from __future__ import annotations


class CrossinferError(Exception):
    """Base of every error crossinfer raises on purpose."""


class ModelError(CrossinferError):
    """A model source cannot be used."""


class ModelNotFoundError(ModelError):
    """The model path does not exist."""


class ModelFormatError(ModelError):
    """The file is empty, truncated, corrupt, or not an ONNX model."""


class ModelValidationError(ModelError):
    """The file parses, but onnx.checker or shape inference rejects it."""


class UnsupportedOpsetError(ModelError):
    """The model needs a newer opset or IR version than the installed onnx knows."""


class ZooError(ModelError):
    """An unknown zoo model name or a bad zoo parameter."""


class InputError(CrossinferError):
    """Input tensors (or an inputs file) that do not match the model's signature."""


class BackendError(CrossinferError):
    """A runtime cannot do what was asked."""


class BackendUnavailableError(BackendError):
    """The runtime is not installed or cannot be imported."""


class DeviceUnavailableError(BackendError):
    """The runtime is installed but the requested device is not present."""


class CompileError(BackendError):
    """The runtime refused to load or compile the model."""

    def __init__(self, message: str, *, unsupported_ops: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.unsupported_ops = unsupported_ops


class InferenceError(BackendError):
    """The runtime failed while running the model."""


class UsageError(CrossinferError):
    """A command-line value that cannot be understood."""


def short_message(exc: BaseException, limit: int = 400) -> str:
    """A runtime's exception text on one line, without OpenVINO's source-location preamble."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    # OpenVINO prefixes "Exception from src/...cpp:NNN:" lines; the reason comes after them
    useful = [line for line in lines if not line.startswith("Exception from ")] or lines
    text = " ".join(" ".join(useful).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
