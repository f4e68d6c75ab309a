"""GraphBuilder: the small helper every zoo family uses to emit an ONNX graph.

Scoped, unique node names, seeded initializers, shared constants, opset 17 / IR 8 ModelProto.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
# onnx 1.23 writes IR 14 by default, which onnxruntime 1.31 (at most IR 13) refuses to load.
IR_VERSION = 8
PRODUCER = "crossinfer.zoo"

Dim = int | str


def seed_for(key: str) -> int:
    """A stable 64-bit seed for a canonical spec string (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")


class GraphBuilder:
    """Accumulates nodes, initializers and the signature of one graph.

    Names follow the PyTorch exporter's style: nodes ``/layer1/0/conv1/Conv``, their outputs
    ``/layer1/0/conv1/Conv_output_0``, parameters ``layer1.0.conv1.weight``, so a graph reads
    like the module tree it mirrors.
    """

    def __init__(self, name: str, seed: int) -> None:
        self.name = name
        self.rng = np.random.default_rng(seed)
        self._scope: list[str] = []
        self._nodes: list[onnx.NodeProto] = []
        self._initializers: list[onnx.TensorProto] = []
        self._inputs: list[onnx.ValueInfoProto] = []
        self._outputs: list[onnx.ValueInfoProto] = []
        self._names: set[str] = set()
        self._consts: dict[tuple[str, bytes, tuple[int, ...]], str] = {}

    @contextmanager
    def scope(self, *parts: str | int) -> Iterator[None]:
        """Nest the names of everything added inside the ``with`` block under ``parts``."""
        self._scope.extend(str(p) for p in parts)
        try:
            yield
        finally:
            del self._scope[len(self._scope) - len(parts) :]

    def input(self, name: str, elem_type: int, shape: Sequence[Dim]) -> str:
        self._claim(name)
        self._inputs.append(helper.make_tensor_value_info(name, elem_type, list(shape)))
        return name

    def output(self, name: str, elem_type: int, shape: Sequence[Dim]) -> None:
        """Declare a graph output; a node must have produced ``name`` (pass ``out=name``)."""
        self._outputs.append(helper.make_tensor_value_info(name, elem_type, list(shape)))

    def param(self, leaf: str, array: npt.NDArray[np.floating]) -> str:
        """A trained-parameter initializer named ``<scope>.<leaf>`` (counted as a parameter)."""
        name = ".".join([*self._scope, leaf])
        self._claim(name)
        self._initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def ints(self, values: Sequence[int], kind: str = "shape") -> str:
        """A shared int64 initializer for shapes, axes and ids: int64, so not a parameter."""
        arr = np.asarray(values, dtype=np.int64)
        return self._const(arr, kind, as_initializer=True)

    def index(self, value: int) -> str:
        """A shared int64 scalar initializer (Gather index)."""
        return self._const(np.asarray(value, dtype=np.int64), "index", as_initializer=True)

    def scalar(self, value: float) -> str:
        """A shared float32 scalar, as a Constant node: not an initializer, so not a parameter."""
        return self._const(np.asarray(value, dtype=np.float32), "const", as_initializer=False)

    def node(
        self,
        op_type: str,
        inputs: Sequence[str],
        *,
        name: str | None = None,
        out: str | None = None,
        **attrs: Any,
    ) -> str:
        """Append one node under the current scope and return the name of its (single) output."""
        node_name = self._unique("/" + "/".join([*self._scope, name or op_type]))
        output = out if out is not None else f"{node_name}_output_0"
        self._claim(output)
        self._nodes.append(helper.make_node(op_type, list(inputs), [output], node_name, **attrs))
        return output

    def build(self, *, doc: str, metadata: dict[str, str]) -> onnx.ModelProto:
        graph = helper.make_graph(
            self._nodes,
            self.name,
            self._inputs,
            self._outputs,
            initializer=self._initializers,
        )
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", OPSET)],
            producer_name=PRODUCER,
            doc_string=doc,
        )
        model.ir_version = IR_VERSION
        helper.set_model_props(model, metadata)
        return model

    def _const(self, arr: npt.NDArray[np.generic], kind: str, *, as_initializer: bool) -> str:
        key = (arr.dtype.str, arr.tobytes(), arr.shape)
        if key in self._consts:
            return self._consts[key]
        if as_initializer:
            # Short constants spell their values in the name (shape_0_0_12_64); long ones do not.
            values = [str(v).replace("-", "m") for v in arr.reshape(-1).tolist()]
            name = self._unique("_".join([kind, *values]) if 0 < len(values) <= 8 else kind)
            self._initializers.append(numpy_helper.from_array(arr, name))
        else:
            node_name = self._unique("/Constant")
            name = f"{node_name}_output_0"
            self._claim(name)
            tensor = numpy_helper.from_array(arr, name)
            self._nodes.append(helper.make_node("Constant", [], [name], node_name, value=tensor))
        self._consts[key] = name
        return name

    def _unique(self, base: str) -> str:
        if base not in self._names:
            self._names.add(base)
            return base
        i = 1
        while f"{base}_{i}" in self._names:
            i += 1
        self._names.add(f"{base}_{i}")
        return f"{base}_{i}"

    def _claim(self, name: str) -> None:
        # Node names and tensor names live in different namespaces in ONNX, but keeping one
        # namespace makes every name in a dump unambiguous.
        if name in self._names:
            raise ValueError(f"duplicate tensor name {name!r} in zoo graph {self.name!r}")
        self._names.add(name)


FLOAT = TensorProto.FLOAT
INT64 = TensorProto.INT64


def conv(
    g: GraphBuilder,
    x: str,
    cin: int,
    cout: int,
    kernel: int,
    *,
    stride: int = 1,
    groups: int = 1,
    bias: bool = False,
) -> str:
    """Conv2d with He-normal weights (fan-in), so ReLU stacks keep their activation scale."""
    fan_in = cin // groups * kernel * kernel
    w = g.rng.standard_normal((cout, cin // groups, kernel, kernel), dtype=np.float32)
    inputs = [x, g.param("weight", w * np.float32(np.sqrt(2.0 / fan_in)))]
    if bias:
        inputs.append(g.param("bias", _uniform(g, (cout,), 1.0 / np.sqrt(fan_in))))
    pad = kernel // 2
    return g.node(
        "Conv",
        inputs,
        kernel_shape=[kernel, kernel],
        strides=[stride, stride],
        pads=[pad, pad, pad, pad],
        group=groups,
        dilations=[1, 1],
    )


def batch_norm(g: GraphBuilder, x: str, channels: int, *, gamma: float = 1.0) -> str:
    """Inference-mode BatchNormalization with plausible, non-trivial running statistics.

    Running var is near but not exactly 1 and the mean is small, so the BN is neither an
    identity a runtime could silently skip nor a rescaling that blows activations up.
    """
    c = (channels,)
    scale = np.float32(gamma) * g.rng.uniform(0.9, 1.1, c).astype(np.float32)
    inputs = [
        x,
        g.param("weight", scale),
        g.param("bias", g.rng.normal(0.0, 0.05, c).astype(np.float32)),
        g.param("running_mean", g.rng.normal(0.0, 0.05, c).astype(np.float32)),
        g.param("running_var", g.rng.uniform(0.8, 1.2, c).astype(np.float32)),
    ]
    return g.node("BatchNormalization", inputs, epsilon=1e-5)


def gemm(g: GraphBuilder, x: str, fin: int, fout: int, *, out: str | None = None) -> str:
    """nn.Linear on a 2-D tensor, exported as torch does: Gemm with a [out, in] weight."""
    bound = 1.0 / np.sqrt(fin)
    w = g.param("weight", _uniform(g, (fout, fin), bound))
    b = g.param("bias", _uniform(g, (fout,), bound))
    return g.node("Gemm", [x, w, b], out=out, transB=1)


def _uniform(g: GraphBuilder, shape: tuple[int, ...], bound: float) -> npt.NDArray[np.float32]:
    return g.rng.uniform(-bound, bound, shape).astype(np.float32)
