"""The `int8-dynamic` pass: INT8 weights, activations quantized at run time; no calibration needed.

Suits transformers (MatMul-heavy); on conv nets use int8-static (ConvInteger is 15x slower here).
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path

import onnx

from crossinfer.errors import CompileError
from crossinfer.hardware.int8 import int8_recipe
from crossinfer.model import ModelArtifact
from crossinfer.passes.base import PassContext, recipe_record, tool_versions, write_provenance
from crossinfer.passes.int8_static import pre_process, quantization_counts, scratch_dir
from crossinfer.passes.simplify import finish_model

# Conv is left out on purpose: dynamic Conv becomes ConvInteger, which REFERENCE.md measured
# at 199-226 ms on ResNet-50 against 42-44 ms FP32 and 14-16 ms static QDQ.
DYNAMIC_OP_TYPES = ("MatMul", "Gemm", "Attention", "LSTM", "GRU")


@dataclass(frozen=True)
class Int8DynamicConfig:
    """`op_types`: which op types to quantize (empty: every op type ORT can, Conv included);
    `per_channel`: one weight scale per output channel instead of one per tensor."""

    # one weight scale per output channel; None: per tensor, per channel where the ISA needs
    # 7-bit weights (it wins back the precision the lost bit costs)
    per_channel: bool | None = None
    # 7-bit weights, for CPUs without VNNI where 8-bit can saturate; None: the target's ISA decides
    reduce_range: bool | None = None
    op_types: tuple[str, ...] = DYNAMIC_OP_TYPES


class Int8DynamicPass:
    """Quantize weights to INT8 now and activations per batch at run time."""

    name = "int8-dynamic"
    config_type = Int8DynamicConfig
    targets = ("onnxruntime",)

    def apply(
        self,
        artifact: ModelArtifact,
        config: Int8DynamicConfig,
        out_path: Path,
        context: PassContext,
    ) -> Path:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        recipe = int8_recipe(context.target)
        reduce_range = recipe.reduce_range if config.reduce_range is None else config.reduce_range
        per_channel = recipe.per_channel if config.per_channel is None else config.per_channel
        with scratch_dir(context, "int8-dynamic-") as tmp:
            source, pre_note = pre_process(artifact, tmp)
            quantized = tmp / "quantized.onnx"
            try:
                with contextlib.redirect_stdout(io.StringIO()):
                    quantize_dynamic(
                        str(source),
                        str(quantized),
                        op_types_to_quantize=list(config.op_types) or None,
                        per_channel=per_channel,
                        reduce_range=reduce_range,
                        weight_type=QuantType.QInt8,
                    )
            except Exception as exc:  # ORT's quantizer raises ValueError/RuntimeError/Fail
                raise CompileError(
                    f"dynamic INT8 quantization of {artifact.source} failed: {exc}"
                ) from exc
            model = onnx.load(str(quantized))
        finish_model(model, artifact, out_path)
        write_provenance(
            out_path,
            parent=artifact,
            pass_name=self.name,
            config=config,
            tools=tool_versions("onnxruntime"),
            extra={
                "pre_process": pre_note,
                "format": "dynamic, weights QInt8, activations UInt8 at run time",
                "recipe": recipe_record(
                    recipe,
                    reduce_range=reduce_range,
                    per_channel=per_channel,
                    chosen=config.reduce_range,
                ),
                **quantization_counts(model),
            },
        )
        return out_path
