"""The registry entry of the reference backend (onnx's ReferenceEvaluator).

Doctor does not list it (no runtime_module): its runtime is the onnx package, which doctor and
the fingerprint report on their own.
"""

from __future__ import annotations

from crossinfer.backends.base import BackendEntry

ENTRY = BackendEntry(
    "reference",
    "crossinfer.backends.reference",
    "ReferenceBackend",
    "pip install onnx",
    is_reference=True,
)
