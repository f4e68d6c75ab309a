"""Zoo builder for torchvision's MobileNetV2 (width 1.0) as an inference-mode ONNX graph.

Inverted residual blocks with depthwise convs, ReLU6 as Clip, BatchNormalization unfolded.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx

from crossinfer.zoo._graph import FLOAT, GraphBuilder, batch_norm, conv

# Bump when the graph or the weights this builder emits change: it is part of the cache file name.
VERSION = 1

# torchvision's inverted_residual_setting: expand ratio t, channels c, repeats n, first stride s.
_SETTING = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
_LAST_CHANNELS = 1280

# Scales down the linear bottleneck's output (no activation follows it) so the residual sums
# do not grow block after block, as a trained network's small projection-BN gammas do.
_PROJECT_GAMMA = 0.5


def build_mobilenetv2(
    params: Mapping[str, int], seed: int, metadata: dict[str, str]
) -> onnx.ModelProto:
    g = GraphBuilder("mobilenetv2", seed)
    x = g.input("pixel_values", FLOAT, ["batch", 3, 224, 224])
    layer = 0
    with g.scope("features", layer):
        x = _conv_bn_relu6(g, x, 3, 32, 3, stride=2)
    cin = 32
    for t, c, n, s in _SETTING:
        for i in range(n):
            layer += 1
            with g.scope("features", layer):
                x = _inverted_residual(g, x, cin, c, s if i == 0 else 1, t)
            cin = c
    layer += 1
    with g.scope("features", layer):
        x = _conv_bn_relu6(g, x, cin, _LAST_CHANNELS, 1)
    x = g.node("GlobalAveragePool", [x])
    x = g.node("Flatten", [x], axis=1)
    # Dropout(0.2) sits before the Linear in torchvision; inference export drops it.
    with g.scope("classifier", 1):
        # torchvision initialises this Linear with normal(0, 0.01).
        w = g.param("weight", g.rng.normal(0.0, 0.01, (1000, _LAST_CHANNELS)).astype(np.float32))
        b = g.param("bias", g.rng.normal(0.0, 0.01, (1000,)).astype(np.float32))
        g.node("Gemm", [x, w, b], out="logits", transB=1)
    g.output("logits", FLOAT, ["batch", 1000])
    return g.build(doc="torchvision mobilenet_v2 with seeded random weights", metadata=metadata)


def _relu6(g: GraphBuilder, x: str) -> str:
    # Opset 17's Clip takes its bounds as inputs; Constant nodes keep them out of the parameters.
    return g.node("Clip", [x, g.scalar(0.0), g.scalar(6.0)])


def _conv_bn_relu6(
    g: GraphBuilder, x: str, cin: int, cout: int, kernel: int, *, stride: int = 1, groups: int = 1
) -> str:
    # torchvision's Conv2dNormActivation numbers its children 0 (conv), 1 (bn), 2 (ReLU6).
    with g.scope(0):
        x = conv(g, x, cin, cout, kernel, stride=stride, groups=groups)
    with g.scope(1):
        x = batch_norm(g, x, cout)
    with g.scope(2):
        return _relu6(g, x)


def _inverted_residual(g: GraphBuilder, x: str, cin: int, cout: int, stride: int, t: int) -> str:
    hidden = cin * t
    y = x
    index = 0
    with g.scope("conv"):
        if t != 1:
            with g.scope(index):
                y = _conv_bn_relu6(g, y, cin, hidden, 1)
            index += 1
        with g.scope(index):
            y = _conv_bn_relu6(g, y, hidden, hidden, 3, stride=stride, groups=hidden)
        with g.scope(index + 1):
            y = conv(g, y, hidden, cout, 1)
        with g.scope(index + 2):
            y = batch_norm(g, y, cout, gamma=_PROJECT_GAMMA)
    if stride == 1 and cin == cout:
        return g.node("Add", [x, y])
    return y
