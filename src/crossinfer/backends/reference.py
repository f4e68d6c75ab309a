"""Reference backend: onnx's own ReferenceEvaluator, the golden numbers other runtimes are checked against.

Slow (pure numpy, one op at a time) but independent of every optimizing runtime.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx
from onnx.reference import ReferenceEvaluator

from crossinfer.backends.base import (
    Compatibility,
    DeviceInfo,
    Placement,
    Precision,
    SessionOptions,
    Target,
    validate_feeds,
)
from crossinfer.errors import CompileError, InferenceError, UsageError
from crossinfer.model import ModelArtifact


class ReferenceBackend:
    name = "reference"

    def version(self) -> str:
        return f"onnx {onnx.__version__}"

    def devices(self) -> list[DeviceInfo]:
        return [DeviceInfo(name="cpu", description="onnx.reference.ReferenceEvaluator (numpy)")]

    def supports(self, artifact: ModelArtifact, device: str) -> Compatibility:
        if device != "cpu":
            return Compatibility(False, "the reference evaluator runs on the CPU only")
        return Compatibility(True)

    def prepare(
        self, artifact: ModelArtifact, device: str, options: SessionOptions | None = None
    ) -> ReferenceSession:
        if device != "cpu":
            raise UsageError(f"the reference backend has only the device 'cpu', not '{device}'")
        return ReferenceSession(artifact, options or SessionOptions())


class ReferenceSession:
    def __init__(self, artifact: ModelArtifact, options: SessionOptions) -> None:
        self.target = Target("reference", "cpu")
        self.inputs = artifact.inputs
        self.outputs = artifact.outputs
        self._model = artifact.source
        self._proto = artifact.load_proto()
        self._ignored = ["threads", "graph_optimization_level", "performance_hint", "streams"]
        if options.precision is not Precision.FP32:
            self._ignored.append(f"precision={options.precision.value}")
        try:
            self._evaluator = ReferenceEvaluator(self._proto)
        except Exception as exc:  # the evaluator raises NotImplementedError, TypeError, ...
            ops = _unknown_ops(exc)
            raise CompileError(
                f"onnx's reference evaluator cannot run {artifact.source}"
                f"{_first_node_of(self._proto, ops)}: {exc}",
                unsupported_ops=ops,
            ) from exc
        for node in self._evaluator.rt_nodes_:
            _name_failures(node)

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        arrays = validate_feeds(self.inputs, feeds, model=self._model)
        try:
            values = self._evaluator.run(None, arrays)
        except _NodeFailure as failure:
            raise InferenceError(
                f"reference evaluator failed at {failure.where}: {failure.cause}"
            ) from failure.cause
        except Exception as exc:
            raise InferenceError(f"reference evaluator failed: {exc}") from exc
        names = [o.name for o in self._proto.graph.output]
        return {name: np.asarray(v) for name, v in zip(names, values, strict=True)}

    def placement(self) -> Placement:
        nodes = {
            n.name or f"<{n.op_type}#{i}>": "reference"
            for i, n in enumerate(self._proto.graph.node)
        }
        return Placement(node_devices=nodes, primary="reference", note="every node in numpy")

    def describe(self) -> dict[str, Any]:
        return {
            "runtime": f"onnx {onnx.__version__} ReferenceEvaluator",
            "precision": "as stored in the model",
            "ignored_options": list(self._ignored),
        }

    def close(self) -> None:
        del self._evaluator


class _NodeFailure(Exception):
    """An op's own error, wrapped on its way out so that the node that raised it can be named."""

    def __init__(self, where: str, cause: BaseException) -> None:
        super().__init__(f"{where}: {cause}")
        self.where = where
        self.cause = cause


def describe_node(node: onnx.NodeProto, index: int | None = None) -> str:
    """ "node 'name' (Domain:OpType)", the words `check` uses to point at one node of a graph."""
    op = f"{node.domain}:{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type
    name = node.name or (f"#{index}" if index is not None else "(unnamed)")
    return f"node '{name}' ({op})"


def _name_failures(rt_node: Any) -> None:
    # ReferenceEvaluator.run loops over its nodes without saying which one raised; wrapping each
    # node's run (an instance attribute shadows the method) names it in the error instead
    original = rt_node.run
    where = describe_node(rt_node.onnx_node)

    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return original(*args, **kwargs)
        except _NodeFailure:
            raise
        except Exception as exc:
            raise _NodeFailure(where, exc) from exc

    rt_node.run = run


def _first_node_of(proto: onnx.ModelProto, ops: tuple[str, ...]) -> str:
    for i, node in enumerate(proto.graph.node):
        op = f"{node.domain}:{node.op_type}" if node.domain else node.op_type
        if op in ops:
            return f" ({describe_node(node, i)} is the first it does not know)"
    return ""


_UNKNOWN_NODE = re.compile(r"Node type '(\w+)' from domain '([\w.]*)' is unknown")


def _unknown_ops(exc: BaseException) -> tuple[str, ...]:
    return tuple(
        f"{domain}:{op}" if domain else op for op, domain in _UNKNOWN_NODE.findall(str(exc))
    )
