"""The small shared helpers: top-1 accuracy, batch dims and shape fits, ONNX graph walking."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from crossinfer.accuracy import first_output, predictions, top1
from crossinfer.model import TensorSpec
from crossinfer.onnx_graph import all_nodes, subgraphs
from crossinfer.tensor_specs import batchable, dtype_fits, has_batch_dim, shape_fits


def test_top1() -> None:
    logits = np.array([[0.1, 0.9, 0.0], [2.0, 1.0, 0.0], [0.0, 0.0, 3.0], [1.0, 5.0, 0.0]])
    assert predictions(logits).tolist() == [1, 0, 2, 1]
    assert top1(logits, np.array([1, 0, 0, 0])) == 0.5
    assert top1(logits, predictions(logits)) == 1.0  # agreement with itself
    outputs = {"logits": logits, "probabilities": -logits}
    assert first_output(outputs) is logits


def _spec(shape: tuple[int | str | None, ...] | None) -> TensorSpec:
    return TensorSpec("x", "float32", shape, TensorProto.FLOAT)


def test_batch_dim() -> None:
    assert has_batch_dim(_spec(("batch", 3)))
    assert has_batch_dim(_spec((None, 3)))
    assert not has_batch_dim(_spec((1, 3)))
    assert not has_batch_dim(_spec(()))  # a scalar
    assert not has_batch_dim(_spec(None))  # rank unknown
    assert batchable([_spec(("n", 3)), _spec((None,))])
    assert not batchable([_spec(("n", 3)), _spec((4, 3))])
    assert batchable([])


def test_shape_fits() -> None:
    assert shape_fits(("batch", 3, None), (8, 3, 100))
    assert not shape_fits(("batch", 3), (8, 4))
    assert not shape_fits(("batch", 3), (8, 3, 1))  # rank differs
    assert shape_fits(None, (1, 2, 3))  # rank unknown takes anything
    assert shape_fits((), ())


def test_dtype_fits() -> None:
    assert dtype_fits(_spec(None), np.dtype(np.float32))
    assert not dtype_fits(_spec(None), np.dtype(np.float64))
    bf16 = TensorSpec("x", "bfloat16", None, TensorProto.BFLOAT16)
    assert dtype_fits(bf16, np.dtype(np.float32))  # numpy has none: the backend converts


def test_all_nodes_walks_into_if_and_loop_bodies() -> None:
    def body(name: str) -> onnx.GraphProto:
        out = helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, [1])
        return helper.make_graph(
            [helper.make_node("Identity", ["x"], [f"{name}_out"], name=name)], name, [], [out]
        )

    inner_if = helper.make_node(
        "If", ["c"], ["inner"], name="inner_if", then_branch=body("t2"), else_branch=body("e2")
    )
    then = helper.make_graph(
        [inner_if], "then", [], [helper.make_tensor_value_info("inner", TensorProto.FLOAT, [1])]
    )
    outer = helper.make_node(
        "If", ["c"], ["y"], name="outer_if", then_branch=then, else_branch=body("e1")
    )
    graph = helper.make_graph(
        [helper.make_node("Identity", ["c"], ["d"], name="first"), outer], "g", [], []
    )
    # make_node sorts attributes by name: else_branch comes before then_branch
    assert [g.name for g in subgraphs(outer)] == ["e1", "then"]
    walked = [n.name for n in all_nodes(graph)]
    assert walked == ["first", "outer_if", "e1", "inner_if", "e2", "t2"]
