"""Passes that make a model worse on purpose, to prove the pipeline catches a regression."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from crossinfer.model import ModelArtifact
from crossinfer.passes.base import PassContext, tool_versions, write_provenance


@dataclass(frozen=True)
class SlowConfig:
    repeats: int = 24


class SlowdownPass:
    """Multiplies the first input by an identity matrix many times: same outputs, more work."""

    name = "slowdown"
    config_type = SlowConfig
    targets = ("onnxruntime", "openvino")

    def apply(
        self, artifact: ModelArtifact, config: SlowConfig, out_path: Path, context: PassContext
    ) -> Path:
        model = onnx.load(str(artifact.path))
        graph = model.graph
        first = graph.input[0].name
        width = graph.input[0].type.tensor_type.shape.dim[-1].dim_value
        eye = numpy_helper.from_array(np.eye(width, dtype=np.float32), "slow_eye")
        graph.initializer.append(eye)
        current = first
        nodes = []
        for i in range(config.repeats):
            out = f"slow_{i}"
            nodes.append(
                helper.make_node("MatMul", [current, "slow_eye"], [out], name=f"slow_mm_{i}")
            )
            current = out
        for node in graph.node:
            for j, name in enumerate(node.input):
                if name == first:
                    node.input[j] = current
        for k, node in enumerate(nodes):
            graph.node.insert(k, node)
        onnx.save(model, out_path)
        write_provenance(
            out_path, parent=artifact, pass_name=self.name, config=config, tools=tool_versions()
        )
        return out_path


@dataclass(frozen=True)
class NoiseConfig:
    scale: float = 3.0


class NoisePass:
    """Adds large seeded noise to every float weight: a model that is wrong."""

    name = "noise"
    config_type = NoiseConfig
    targets = ("onnxruntime", "openvino")

    def apply(
        self, artifact: ModelArtifact, config: NoiseConfig, out_path: Path, context: PassContext
    ) -> Path:
        model = onnx.load(str(artifact.path))
        rng = np.random.default_rng(0)
        for init in model.graph.initializer:
            array = numpy_helper.to_array(init)
            if array.dtype == np.float32 and array.size > 16:
                noisy = array + rng.standard_normal(array.shape).astype(
                    np.float32
                ) * config.scale * float(np.std(array))
                init.CopyFrom(numpy_helper.from_array(noisy, init.name))
        onnx.save(model, out_path)
        write_provenance(
            out_path, parent=artifact, pass_name=self.name, config=config, tools=tool_versions()
        )
        return out_path
