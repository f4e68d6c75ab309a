"""crossinfer: find, prove and serve the best way to run one ONNX model on the hardware at hand."""

from __future__ import annotations

__version__ = "0.1.0"
