"""`int8-nncf`: post-training INT8 with NNCF's ONNX backend, for OpenVINO to run.

The output is a QDQ ONNX model; OpenVINO reads its Q/DQ pairs as INT8 FakeQuantize layers.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from crossinfer.errors import BackendUnavailableError, InputError, UsageError
from crossinfer.hardware.int8 import int8_recipe
from crossinfer.model import ModelArtifact
from crossinfer.onnx_graph import all_nodes
from crossinfer.passes.base import (
    CalibrationData,
    PassContext,
    recipe_record,
    tool_versions,
    write_provenance,
)

# ONNX Runtime 1.31 loads IR <= 13 and older runtimes less; 10 covers opsets up to 21.
_MAX_IR_VERSION = 10
_PRESETS = ("performance", "mixed")
_OVERFLOW_FIXES = ("enable", "first_layer_only", "disable")
# A graph with these is a transformer to NNCF: it then keeps Softmax/LayerNorm paths in float.
_TRANSFORMER_OPS = (
    "LayerNormalization",
    "com.microsoft.Attention",
    "com.microsoft.SkipLayerNormalization",
)
# protobuf cannot serialise a message of 2 GiB or more: write the weights beside it first.
_EXTERNAL_DATA_BYTES = 1_800_000_000


@dataclass(frozen=True)
class NncfInt8Config:
    """NNCF post-training quantization settings."""

    subset_size: int = 300  # calibration samples NNCF reads (all of them when fewer)
    preset: str = (
        "performance"  # "performance": symmetric everywhere; "mixed": asymmetric activations
    )
    fast_bias_correction: bool = True  # False: NNCF's slower, more exact bias correction
    # "enable" (7-bit weights everywhere, for CPUs without VNNI), "first_layer_only" (NNCF's
    # default) or "disable"; None: the target's ISA decides
    overflow_fix: str | None = None


class Int8NncfPass:
    """Quantizes weights and activations to INT8 with NNCF, calibrated on `context.calibration`.

    BatchNormalization is folded into the preceding Conv first (ONNX Runtime's
    `quant_pre_process`): NNCF then quantizes the folded weights, and the result also runs fast on
    ONNX Runtime, which does not fold BN between Q/DQ pairs itself.
    """

    name = "int8-nncf"
    config_type = NncfInt8Config
    targets = ("openvino",)

    def apply(
        self, artifact: ModelArtifact, config: NncfInt8Config, out_path: Path, context: PassContext
    ) -> Path:
        _check_config(config)
        calibration = context.calibration
        if calibration is None or len(calibration) == 0:
            raise InputError(
                f"int8-nncf needs calibration data for {artifact.source}: pass --calibration "
                "with a .npz of representative inputs (or 'synthetic' for seeded random ones)"
            )
        items = _feeds(artifact, calibration)
        try:
            import nncf
        except ImportError as exc:
            raise BackendUnavailableError(
                "int8-nncf needs NNCF and OpenVINO, which are not installed: "
                "pip install 'crossinfer[openvino]'"
            ) from exc

        recipe = int8_recipe(context.target)
        overflow_fix = config.overflow_fix or recipe.overflow_fix
        folded = "BatchNormalization" in artifact.op_histogram
        transformer = any(op in artifact.op_histogram for op in _TRANSFORMER_OPS)
        subset = min(config.subset_size, len(items))
        with tempfile.TemporaryDirectory(dir=_scratch(context)) as scratch:
            model = _fold_batchnorm(artifact, Path(scratch)) if folded else artifact.load_proto()
            quantized = self._quantize(
                nncf,
                model,
                nncf.Dataset(items),
                subset_size=subset,
                preset=(
                    nncf.QuantizationPreset.PERFORMANCE
                    if config.preset == "performance"
                    else nncf.QuantizationPreset.MIXED
                ),
                model_type=nncf.ModelType.TRANSFORMER if transformer else None,
                fast_bias_correction=config.fast_bias_correction,
                overflow_fix=nncf.OverflowFix(overflow_fix),
                context=context,
                scratch=Path(scratch),
            )
        _drop_unused_opsets(quantized)
        quantized.ir_version = min(quantized.ir_version, _MAX_IR_VERSION)
        _save(quantized, out_path, large=artifact.file_size > _EXTERNAL_DATA_BYTES)

        ops: dict[str, int] = {}
        for node in quantized.graph.node:
            if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
                ops[node.op_type] = ops.get(node.op_type, 0) + 1
        write_provenance(
            out_path,
            parent=artifact,
            pass_name=self.name,
            config=config,
            tools=tool_versions("nncf", "openvino", "onnxruntime"),
            extra={
                "calibration": {
                    "source": calibration.source,
                    "synthetic": calibration.synthetic,
                    "samples_used": subset,
                    "samples_given": len(items),
                },
                "batchnorm_folded": folded,
                "model_type": "transformer" if transformer else "default",
                "recipe": recipe_record(
                    recipe, overflow_fix=overflow_fix, chosen=config.overflow_fix
                ),
                "qdq_nodes": ops,
                **self._extra,
            },
        )
        return out_path

    _extra: dict[str, Any] = {}  # noqa: RUF012  # subclasses record what their quantizer decided

    def _quantize(
        self,
        nncf: Any,
        model: onnx.ModelProto,
        dataset: Any,
        *,
        context: PassContext,
        scratch: Path,
        overflow_fix: Any,
        **kwargs: Any,
    ) -> onnx.ModelProto:
        from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters

        advanced = AdvancedQuantizationParameters(overflow_fix=overflow_fix)
        quantized: onnx.ModelProto = nncf.quantize(
            model, dataset, advanced_parameters=advanced, **kwargs
        )
        return quantized


def _check_config(config: NncfInt8Config) -> None:
    if config.preset not in _PRESETS:
        raise UsageError(
            f"int8-nncf preset '{config.preset}' is unknown: use {' or '.join(_PRESETS)}"
        )
    if config.overflow_fix is not None and config.overflow_fix not in _OVERFLOW_FIXES:
        raise UsageError(
            f"int8-nncf overflow_fix '{config.overflow_fix}' is unknown: use "
            f"{', '.join(_OVERFLOW_FIXES)} (or leave it unset: the target's ISA decides)"
        )
    if config.subset_size < 1:
        raise UsageError(
            f"int8-nncf subset_size must be at least 1, got {config.subset_size} "
            "(NNCF's default is 300)"
        )


def _feeds(artifact: ModelArtifact, calibration: CalibrationData) -> list[dict[str, np.ndarray]]:
    """The calibration samples as NNCF's ONNX backend reads them: name -> array, model dtypes."""
    wanted = {spec.name: spec for spec in artifact.inputs}
    items = []
    for i, sample in enumerate(calibration.samples):
        missing = sorted(set(wanted) - set(sample))
        if missing:
            raise InputError(
                f"calibration sample {i} ({calibration.source}) lacks model input(s) "
                f"{', '.join(missing)} of {artifact.source}: it has {', '.join(sorted(sample))}"
            )
        items.append(
            {
                name: np.ascontiguousarray(sample[name], dtype=spec.numpy_dtype)
                for name, spec in wanted.items()
            }
        )
    return items


def _fold_batchnorm(artifact: ModelArtifact, scratch: Path) -> onnx.ModelProto:
    # ORT's basic graph optimizations fold Conv+BatchNormalization; symbolic shape inference is
    # only for ORT's own quantizer and fails on some graphs, so it is skipped.
    from onnxruntime.quantization import quant_pre_process

    folded = scratch / "folded.onnx"
    quant_pre_process(
        str(artifact.path),
        str(folded),
        skip_symbolic_shape=True,
        save_as_external_data=artifact.file_size > _EXTERNAL_DATA_BYTES,
    )
    return onnx.load(str(folded))


def _drop_unused_opsets(model: onnx.ModelProto) -> None:
    # quant_pre_process declares every ORT-internal domain (nchwc, aten, ...) whether used or not
    used = {node.domain for node in all_nodes(model.graph)}
    keep = [op for op in model.opset_import if op.domain in ("", "ai.onnx") or op.domain in used]
    del model.opset_import[:]
    model.opset_import.extend(keep)


def _save(model: onnx.ModelProto, out_path: Path, *, large: bool) -> None:
    if large:
        onnx.save(
            model, str(out_path), save_as_external_data=True, location=out_path.name + ".data"
        )
    else:
        onnx.save(model, str(out_path))


def _scratch(context: PassContext) -> Path | None:
    if context.work_dir is None:
        return None
    context.work_dir.mkdir(parents=True, exist_ok=True)
    return context.work_dir
