"""Zoo builder for a digit classifier trained here on scikit-learn's bundled 8x8 digits.

The one zoo model with real accuracy: training is a seeded numpy loop; the test split ships with it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import onnx

from crossinfer.zoo._graph import FLOAT, GraphBuilder

# Bump when the graph, the training or the split change: it is part of the cache file name.
VERSION = 1

INPUT = "pixels"
PIXELS = 64
HIDDEN = 64
CLASSES = 10
PIXEL_MAX = 16.0
TEST_SIZE = 0.25
SPLIT_SEED = 0
_STEPS = 400
_LR = 0.01
_WEIGHT_DECAY = 1e-4

F64 = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Split:
    """The fixed train / held-out split of ``sklearn.datasets.load_digits``."""

    x_train: npt.NDArray[np.float32]
    y_train: npt.NDArray[np.int64]
    x_test: npt.NDArray[np.float32]
    y_test: npt.NDArray[np.int64]

    @property
    def description(self) -> str:
        total = len(self.y_train) + len(self.y_test)
        return (
            f"scikit-learn digits (8x8 handwritten digits, {total} images): held-out "
            f"{TEST_SIZE:.0%} stratified split (train_test_split random_state={SPLIT_SEED}), "
            f"{len(self.y_test)} samples; raw pixel values 0..16"
        )


def load_split() -> Split:
    # Imported here: scikit-learn takes about a second to import and only digits needs it.
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = np.asarray(data.data, dtype=np.float32)
    y = np.asarray(data.target, dtype=np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=TEST_SIZE, stratify=y, random_state=SPLIT_SEED
    )
    return Split(x_train, y_train, x_test, y_test)


def build_digits(params: Mapping[str, int], seed: int, metadata: dict[str, str]) -> onnx.ModelProto:
    split = load_split()
    w1, b1, w2, b2 = _train(split.x_train, split.y_train, seed)
    g = GraphBuilder("digits", seed)
    x = g.input(INPUT, FLOAT, ["batch", PIXELS])
    with g.scope("scale"):
        # The model takes load_digits' raw 0..16 values and normalises them itself.
        x = g.node("Mul", [x, g.scalar(1.0 / PIXEL_MAX)])
    with g.scope("fc1"):
        w, b = g.param("weight", w1.T.astype(np.float32)), g.param("bias", b1.astype(np.float32))
        x = g.node("Gemm", [x, w, b], transB=1)
    with g.scope("relu"):
        x = g.node("Relu", [x])
    with g.scope("fc2"):
        w, b = g.param("weight", w2.T.astype(np.float32)), g.param("bias", b2.astype(np.float32))
        g.node("Gemm", [x, w, b], out="logits", transB=1)
    g.output("logits", FLOAT, ["batch", CLASSES])
    doc = f"MLP {PIXELS}-{HIDDEN}-{CLASSES} trained on {split.description}"
    return g.build(doc=doc, metadata=metadata)


def _train(
    x_raw: npt.NDArray[np.float32], y: npt.NDArray[np.int64], seed: int
) -> tuple[F64, F64, F64, F64]:
    """Full-batch Adam on softmax cross-entropy; float64 so the result does not hinge on BLAS."""
    rng = np.random.default_rng(seed)
    x = x_raw.astype(np.float64) / PIXEL_MAX
    onehot = np.eye(CLASSES)[y]
    params = [
        rng.standard_normal((PIXELS, HIDDEN)) * np.sqrt(2.0 / PIXELS),
        np.zeros(HIDDEN),
        rng.standard_normal((HIDDEN, CLASSES)) * np.sqrt(1.0 / HIDDEN),
        np.zeros(CLASSES),
    ]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    n = len(y)
    for step in range(1, _STEPS + 1):
        w1, b1, w2, b2 = params
        pre = x @ w1 + b1
        h = np.maximum(pre, 0.0)
        logits = h @ w2 + b2
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        probs /= probs.sum(axis=1, keepdims=True)
        dlogits = (probs - onehot) / n
        dh = (dlogits @ w2.T) * (pre > 0)
        grads = [
            x.T @ dh + _WEIGHT_DECAY * w1,
            dh.sum(axis=0),
            h.T @ dlogits + _WEIGHT_DECAY * w2,
            dlogits.sum(axis=0),
        ]
        for i, grad in enumerate(grads):
            m[i] = beta1 * m[i] + (1 - beta1) * grad
            v[i] = beta2 * v[i] + (1 - beta2) * grad * grad
            m_hat = m[i] / (1 - beta1**step)
            v_hat = v[i] / (1 - beta2**step)
            params[i] = params[i] - _LR * m_hat / (np.sqrt(v_hat) + eps)
    w1, b1, w2, b2 = params
    return w1, b1, w2, b2
