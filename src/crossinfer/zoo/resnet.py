"""Zoo builders for torchvision's ResNet-18 and ResNet-50 (v1.5) as inference-mode ONNX graphs.

Same layers, shapes and parameter names as torchvision; BatchNormalization kept unfolded.
"""

from __future__ import annotations

from collections.abc import Mapping

import onnx

from crossinfer.zoo._graph import FLOAT, GraphBuilder, batch_norm, conv, gemm

# Bump when the graph or the weights a builder emits change: it is part of the cache file name.
VERSION = 1

# A trained ResNet's last BN in each residual branch has small gammas; with random weights the
# same choice stops every block from doubling the activation variance (2**16 over ResNet-50).
_RESIDUAL_GAMMA = 0.35


def build_resnet18(
    params: Mapping[str, int], seed: int, metadata: dict[str, str]
) -> onnx.ModelProto:
    return _build("resnet18", bottleneck=False, blocks=(2, 2, 2, 2), seed=seed, metadata=metadata)


def build_resnet50(
    params: Mapping[str, int], seed: int, metadata: dict[str, str]
) -> onnx.ModelProto:
    return _build("resnet50", bottleneck=True, blocks=(3, 4, 6, 3), seed=seed, metadata=metadata)


def _build(
    name: str, *, bottleneck: bool, blocks: tuple[int, ...], seed: int, metadata: dict[str, str]
) -> onnx.ModelProto:
    g = GraphBuilder(name, seed)
    x = g.input("pixel_values", FLOAT, ["batch", 3, 224, 224])
    with g.scope("conv1"):
        x = conv(g, x, 3, 64, 7, stride=2)
    with g.scope("bn1"):
        x = batch_norm(g, x, 64)
    with g.scope("relu"):
        x = g.node("Relu", [x])
    with g.scope("maxpool"):
        x = g.node("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])

    expansion = 4 if bottleneck else 1
    inplanes = 64
    for stage, (planes, count) in enumerate(zip((64, 128, 256, 512), blocks, strict=True)):
        for i in range(count):
            stride = 2 if stage > 0 and i == 0 else 1
            with g.scope(f"layer{stage + 1}", i):
                block = _bottleneck if bottleneck else _basic_block
                x = block(g, x, inplanes, planes, stride)
            inplanes = planes * expansion

    with g.scope("avgpool"):
        x = g.node("GlobalAveragePool", [x])
    x = g.node("Flatten", [x], axis=1)
    with g.scope("fc"):
        gemm(g, x, 512 * expansion, 1000, out="logits")
    g.output("logits", FLOAT, ["batch", 1000])
    return g.build(doc=f"torchvision {name} with seeded random weights", metadata=metadata)


def _conv_bn(
    g: GraphBuilder,
    x: str,
    index: int,
    cin: int,
    cout: int,
    kernel: int,
    stride: int = 1,
    gamma: float = 1.0,
) -> str:
    with g.scope(f"conv{index}"):
        x = conv(g, x, cin, cout, kernel, stride=stride)
    with g.scope(f"bn{index}"):
        return batch_norm(g, x, cout, gamma=gamma)


def _shortcut(g: GraphBuilder, x: str, cin: int, cout: int, stride: int) -> str:
    if stride == 1 and cin == cout:
        return x
    with g.scope("downsample", 0):
        y = conv(g, x, cin, cout, 1, stride=stride)
    with g.scope("downsample", 1):
        return batch_norm(g, y, cout)


def _basic_block(g: GraphBuilder, x: str, inplanes: int, planes: int, stride: int) -> str:
    y = _conv_bn(g, x, 1, inplanes, planes, 3, stride)
    with g.scope("relu"):
        y = g.node("Relu", [y])
    y = _conv_bn(g, y, 2, planes, planes, 3, gamma=_RESIDUAL_GAMMA)
    identity = _shortcut(g, x, inplanes, planes, stride)
    y = g.node("Add", [y, identity])
    with g.scope("relu"):
        return g.node("Relu", [y])


def _bottleneck(g: GraphBuilder, x: str, inplanes: int, planes: int, stride: int) -> str:
    # v1.5: the stride sits on the 3x3 conv, as in torchvision (not on the first 1x1).
    y = _conv_bn(g, x, 1, inplanes, planes, 1)
    with g.scope("relu"):
        y = g.node("Relu", [y])
    y = _conv_bn(g, y, 2, planes, planes, 3, stride)
    with g.scope("relu"):
        y = g.node("Relu", [y])
    y = _conv_bn(g, y, 3, planes, planes * 4, 1, gamma=_RESIDUAL_GAMMA)
    identity = _shortcut(g, x, inplanes, planes * 4, stride)
    y = g.node("Add", [y, identity])
    with g.scope("relu"):
        return g.node("Relu", [y])
