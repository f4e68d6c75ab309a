"""Top-1 accuracy: the class a model predicts is the argmax over the last axis of its logits."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

__all__ = ["first_output", "predictions", "top1"]


def first_output(outputs: Mapping[str, np.ndarray]) -> np.ndarray:
    """The logits of a classifier: its first output (sessions return outputs in model order)."""
    return np.asarray(next(iter(outputs.values())))


def predictions(logits: np.ndarray) -> np.ndarray:
    """The predicted class of each sample: argmax over the last axis."""
    predicted: np.ndarray = np.argmax(logits, axis=-1)
    return predicted


def top1(logits: np.ndarray, labels: np.ndarray) -> float:
    """The fraction of samples whose predicted class is their label (or the reference's
    predictions, for agreement)."""
    return float(np.mean(predictions(logits) == np.asarray(labels)))
