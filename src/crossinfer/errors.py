"""The exceptions crossinfer raises, each with a message a person can act on.

    CrossinferError
    ├── ModelError                 a model source cannot be used
    │   ├── ModelNotFoundError     the path does not exist
    │   ├── ModelFormatError       empty, truncated, corrupt or not ONNX at all
    │   ├── ModelValidationError   parses, but onnx.checker or shape inference rejects it
    │   ├── UnsupportedOpsetError  opset or IR version newer than the installed onnx
    │   ├── ZooError               unknown zoo:NAME or a bad zoo parameter
    │   └── ConverterUnavailableError  a framework source's converter is not installed (hint)
    ├── InputError                 feeds or an inputs file do not match the model signature
    ├── BackendError               a runtime cannot do what was asked
    │   ├── BackendUnavailableError  the runtime is not installed (message has the install hint)
    │   ├── DeviceUnavailableError   the runtime is there, the device is not
    │   ├── CompileError             the runtime refused to load or compile the model
    │   │   └── UnsupportedNodeError   a converter (ONNX to torch/JAX) cannot convert one node
    │   └── InferenceError           the runtime failed while running the model
    ├── UsageError                 a command-line value (or a serve config.toml) that cannot be used
    ├── SpecError                  a deployment spec file cannot be used (names the file and key)
    ├── CatalogError               a hardware catalog cannot be read, or lacks the instance named
    ├── StoreError                 the results store cannot be opened, read or written
    ├── ReportError                a tune result file cannot be turned into a report
    ├── ProtocolError              a serving request the protocol refuses (``status``: HTTP status)
    │   ├── MethodNotAllowedError  405, with the method the route takes (``allowed``)
    │   └── ClientDisconnectedError  499: the client went away before its body arrived
    ├── ScaleOutError              Ray Serve cannot start, place or load a model's replicas
    ├── ServingError               the server cannot take or finish a request now (HTTP 503)
    │   ├── QueueFullError           the model's queue is full
    │   ├── QueueTimeoutError        the request's timeout passed while it was queued
    │   └── BatcherStoppedError      the model is unloading and accepts no new requests
    ├── PerfAnalyzerUnavailableError  perf_analyzer is not installed or cannot start here
    └── PerfAnalyzerError          perf_analyzer ran and failed

Native errors from a runtime are translated at the backend boundary with ``raise ... from exc``.
Errors cross the child-process boundary (``check.isolate``) as their class name; `error_class`
turns the name back into the class, so callers judge by the tree (``issubclass``), never by a
string that a rename would silently stop matching.
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


class ConverterUnavailableError(ModelError):
    """A framework model source (TensorFlow) needs a converter that is not installed; the
    message says how to install it."""


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


class UnsupportedNodeError(CompileError):
    """A converter (ONNX to torch or JAX) cannot convert one node: names the node, its op type,
    its domain and what the converter said."""

    def __init__(
        self, *, node: str, op_type: str, domain: str, reason: str, converter: str = ""
    ) -> None:
        where = f"{converter}: " if converter else ""
        super().__init__(
            f"node '{node}' (op {op_type}, domain {domain or 'ai.onnx'}): {where}{reason}"
        )
        self.node = node
        self.op_type = op_type
        self.domain = domain
        self.reason = reason


class InferenceError(BackendError):
    """The runtime failed while running the model."""


class UsageError(CrossinferError):
    """A command-line value (or a serve config.toml) that cannot be understood."""


class SpecError(CrossinferError):
    """A deployment spec file cannot be used; the message names the file and the key."""


class CatalogError(CrossinferError):
    """A catalog file cannot be read, or names an instance it does not have."""


class StoreError(CrossinferError):
    """The results store cannot be opened, read or written."""


class ReportError(CrossinferError):
    """A tune result file cannot be turned into a report."""


class ProtocolError(CrossinferError):
    """A request the protocol layer refuses; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class MethodNotAllowedError(ProtocolError):
    """405, with the method the route takes (the answer's ``Allow`` header, RFC 9110)."""

    def __init__(self, message: str, allowed: str) -> None:
        super().__init__(405, message)
        self.allowed = allowed


class ClientDisconnectedError(ProtocolError):
    """499 (as nginx logs it): the client went away before its request body arrived.

    There is no one to answer; the HTTP front ends stop the request without a response.
    """

    def __init__(
        self, message: str = "the client went away before its request body arrived"
    ) -> None:
        super().__init__(499, message)


class ScaleOutError(CrossinferError):
    """Ray Serve cannot start, place or load a model's replicas (``serve --ray``)."""


class ServingError(CrossinferError):
    """The server cannot take or finish a request right now (the HTTP front end answers 503)."""


class QueueFullError(ServingError):
    """The model's queue holds max_queue_size requests already; retry later or raise the limit."""


class QueueTimeoutError(ServingError):
    """The request's timeout passed before a model instance took it from the queue."""


class BatcherStoppedError(ServingError):
    """The batcher is stopping or stopped and accepts no new requests."""


class PerfAnalyzerUnavailableError(CrossinferError):
    """perf_analyzer is not installed or cannot start here; the message says what to install."""


class PerfAnalyzerError(CrossinferError):
    """perf_analyzer ran and failed; the message carries the end of its output."""


def _tree(root: type[CrossinferError]) -> dict[str, type[CrossinferError]]:
    found = {root.__name__: root} if root.__module__ == __name__ else {}
    for sub in root.__subclasses__():
        found.update(_tree(sub))
    return found


ERROR_CLASSES: dict[str, type[CrossinferError]] = _tree(CrossinferError)
"""Every class of the tree above by its name (built from the tree, so it cannot fall behind)."""


def error_class(name: str) -> type[CrossinferError] | None:
    """The crossinfer error class called `name` (a child process's report); None for a foreign one."""
    return ERROR_CLASSES.get(name)


def short_message(exc: BaseException, limit: int = 400) -> str:
    """A runtime's exception text on one line, without OpenVINO's source-location preamble."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    # OpenVINO prefixes "Exception from src/...cpp:NNN:" lines; the reason comes after them
    useful = [line for line in lines if not line.startswith("Exception from ")] or lines
    text = " ".join(" ".join(useful).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
