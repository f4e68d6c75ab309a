"""Zoo builder for BERT-base (uncased geometry) with its pooler, as an ONNX encoder graph.

Hugging Face BertModel's layers and parameter names; GELU in erf form since opset 17 has none.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import numpy.typing as npt
import onnx

from crossinfer.zoo._graph import FLOAT, INT64, GraphBuilder

# Bump when the graph or the weights this builder emits change: it is part of the cache file name.
VERSION = 1

VOCAB = 30522
MAX_POSITIONS = 512
TYPE_VOCAB = 2
HIDDEN = 768
HEADS = 12
HEAD_DIM = HIDDEN // HEADS
FFN = 3072
MAX_LAYERS = 12
_LN_EPS = 1e-12
# BERT's initializer_range: every weight matrix and embedding is drawn from normal(0, 0.02).
_INIT_STD = 0.02
# Added to the attention scores of padded positions; exp() of it underflows to 0 in fp32.
_MASK_BIAS = -10000.0


def build_bert(params: Mapping[str, int], seed: int, metadata: dict[str, str]) -> onnx.ModelProto:
    seq, layers = params["seq"], params["layers"]
    g = GraphBuilder("bert-base", seed)
    input_ids = g.input("input_ids", INT64, ["batch", seq])
    attention_mask = g.input("attention_mask", INT64, ["batch", seq])
    token_type_ids = g.input("token_type_ids", INT64, ["batch", seq])

    with g.scope("embeddings"):
        x = _embeddings(g, input_ids, token_type_ids, seq)
    with g.scope("extended_attention_mask"):
        mask = g.node("Unsqueeze", [attention_mask, g.ints([1, 2], "axes")])
        mask = g.node("Cast", [mask], to=FLOAT)
        mask = g.node("Sub", [g.scalar(1.0), mask])
        mask_bias = g.node("Mul", [mask, g.scalar(_MASK_BIAS)])
    for i in range(layers):
        with g.scope("encoder", "layer", i):
            last = i == layers - 1
            x = _layer(g, x, mask_bias, out="last_hidden_state" if last else None)
    with g.scope("pooler"):
        first = g.node("Gather", [x, g.index(0)], axis=1)
        with g.scope("dense"):
            pooled = _dense(g, first, HIDDEN, HIDDEN)
        g.node("Tanh", [pooled], out="pooler_output")
    g.output("last_hidden_state", FLOAT, ["batch", seq, HIDDEN])
    g.output("pooler_output", FLOAT, ["batch", HIDDEN])
    doc = f"BERT-base encoder ({layers} layers, sequence {seq}) with seeded random weights"
    return g.build(doc=doc, metadata=metadata)


def _normal(g: GraphBuilder, shape: tuple[int, ...]) -> npt.NDArray[np.float32]:
    # Drawn in float32 directly: float64 draws for 110M weights double the build time.
    return g.rng.standard_normal(shape, dtype=np.float32) * np.float32(_INIT_STD)


def _embeddings(g: GraphBuilder, input_ids: str, token_type_ids: str, seq: int) -> str:
    with g.scope("word_embeddings"):
        table = g.param("weight", _normal(g, (VOCAB, HIDDEN)))
        words = g.node("Gather", [table, input_ids], axis=0)
    with g.scope("position_embeddings"):
        # The full 512-row table is kept, as in the checkpoint, even when seq is shorter.
        table = g.param("weight", _normal(g, (MAX_POSITIONS, HIDDEN)))
        positions = g.node("Gather", [table, g.ints(range(seq), "position_ids")], axis=0)
    with g.scope("token_type_embeddings"):
        table = g.param("weight", _normal(g, (TYPE_VOCAB, HIDDEN)))
        types = g.node("Gather", [table, token_type_ids], axis=0)
    x = g.node("Add", [words, types])
    x = g.node("Add", [x, positions])
    with g.scope("LayerNorm"):
        return _layer_norm(g, x)


def _layer(g: GraphBuilder, x: str, mask_bias: str, *, out: str | None) -> str:
    with g.scope("attention"):
        with g.scope("self"):
            context = _self_attention(g, x, mask_bias)
        with g.scope("output"):
            with g.scope("dense"):
                y = _dense(g, context, HIDDEN, HIDDEN)
            y = g.node("Add", [y, x])
            with g.scope("LayerNorm"):
                x = _layer_norm(g, y)
    with g.scope("intermediate"):
        with g.scope("dense"):
            h = _dense(g, x, HIDDEN, FFN)
        with g.scope("intermediate_act_fn"):
            h = _gelu(g, h)
    with g.scope("output"):
        with g.scope("dense"):
            y = _dense(g, h, FFN, HIDDEN)
        y = g.node("Add", [y, x])
        with g.scope("LayerNorm"):
            return _layer_norm(g, y, out=out)


def _self_attention(g: GraphBuilder, x: str, mask_bias: str) -> str:
    split = g.ints([0, 0, HEADS, HEAD_DIM])

    def heads(name: str, perm: list[int]) -> str:
        with g.scope(name):
            y = _dense(g, x, HIDDEN, HIDDEN)
            y = g.node("Reshape", [y, split])
            return g.node("Transpose", [y], perm=perm)

    q = heads("query", [0, 2, 1, 3])
    k = heads("key", [0, 2, 3, 1])  # [batch, heads, head_dim, seq]: ready for Q @ K^T
    v = heads("value", [0, 2, 1, 3])
    scores = g.node("MatMul", [q, k])
    scores = g.node("Div", [scores, g.scalar(math.sqrt(HEAD_DIM))])
    scores = g.node("Add", [scores, mask_bias])
    probs = g.node("Softmax", [scores], axis=-1)
    context = g.node("MatMul", [probs, v])
    context = g.node("Transpose", [context], perm=[0, 2, 1, 3])
    return g.node("Reshape", [context, g.ints([0, 0, HIDDEN])])


def _dense(g: GraphBuilder, x: str, fin: int, fout: int) -> str:
    # Stored [in, out] for MatMul, as the Hugging Face ONNX exports lay them out.
    w = g.param("weight", _normal(g, (fin, fout)))
    b = g.param("bias", _normal(g, (fout,)))
    y = g.node("MatMul", [x, w])
    return g.node("Add", [y, b])


def _layer_norm(g: GraphBuilder, x: str, *, out: str | None = None) -> str:
    scale = g.param("weight", np.ones(HIDDEN, dtype=np.float32))
    bias = g.param("bias", np.zeros(HIDDEN, dtype=np.float32))
    return g.node("LayerNormalization", [x, scale, bias], out=out, axis=-1, epsilon=_LN_EPS)


def _gelu(g: GraphBuilder, x: str) -> str:
    # Exact GELU, 0.5 * x * (1 + erf(x / sqrt(2))): opset 17 has no Gelu op (it arrived in 20).
    y = g.node("Div", [x, g.scalar(math.sqrt(2.0))])
    y = g.node("Erf", [y])
    y = g.node("Add", [y, g.scalar(1.0)])
    y = g.node("Mul", [x, y])
    return g.node("Mul", [y, g.scalar(0.5)])
