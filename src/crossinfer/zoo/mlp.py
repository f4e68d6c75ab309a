"""Zoo builder for a small MNIST-shaped multilayer perceptron (784 -> hidden -> hidden -> 10).

The quickest zoo model: a smoke test for runtimes, with the width set by ``?hidden=N``.
"""

from __future__ import annotations

from collections.abc import Mapping

import onnx

from crossinfer.zoo._graph import FLOAT, GraphBuilder, gemm

# Bump when the graph or the weights this builder emits change: it is part of the cache file name.
VERSION = 1

FEATURES = 784
CLASSES = 10
DEFAULT_HIDDEN = 256
MAX_HIDDEN = 8192


def build_mlp(params: Mapping[str, int], seed: int, metadata: dict[str, str]) -> onnx.ModelProto:
    hidden = params["hidden"]
    g = GraphBuilder("mlp", seed)
    x = g.input("features", FLOAT, ["batch", FEATURES])
    with g.scope("fc1"):
        x = gemm(g, x, FEATURES, hidden)
    with g.scope("relu1"):
        x = g.node("Relu", [x])
    with g.scope("fc2"):
        x = gemm(g, x, hidden, hidden)
    with g.scope("relu2"):
        x = g.node("Relu", [x])
    with g.scope("fc3"):
        gemm(g, x, hidden, CLASSES, out="logits")
    g.output("logits", FLOAT, ["batch", CLASSES])
    doc = f"MLP {FEATURES}-{hidden}-{hidden}-{CLASSES} with seeded random weights"
    return g.build(doc=doc, metadata=metadata)
