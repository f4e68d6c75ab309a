"""`int8-nncf-accuracy-aware`: NNCF's quantize_with_accuracy_control for OpenVINO targets.

NNCF quantizes everything, then reverts the most harmful quantizers to float until top-1 on the
labelled set, measured on OpenVINO itself, is within the budget.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from crossinfer.accuracy import first_output, predictions
from crossinfer.backends.base import Precision, SessionOptions, get_backend
from crossinfer.errors import InputError
from crossinfer.model import load_model
from crossinfer.passes.base import PassContext
from crossinfer.passes.int8_nncf import Int8NncfPass


class Int8NncfAccuracyAwarePass(Int8NncfPass):
    name = "int8-nncf-accuracy-aware"

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

        data = context.dataset
        if data is None:
            raise InputError(
                "int8-nncf-accuracy-aware needs a labelled data set: pass --dataset FILE.npz "
                "(inputs and labels), or use a zoo model with a data set (zoo:digits)"
            )
        rows = len(data.labels)
        validation = nncf.Dataset(
            [
                ({k: np.asarray(v)[i : i + 1] for k, v in data.inputs.items()}, int(data.labels[i]))
                for i in range(rows)
            ]
        )
        runs = {"count": 0}

        def top1(candidate: onnx.ModelProto, items: Iterable[Any]) -> tuple[float, list[float]]:
            # judged on OpenVINO, the runtime the model is for, through its backend: a model it
            # cannot compile or run raises crossinfer's CompileError or InferenceError
            runs["count"] += 1
            path = scratch / f"candidate-{runs['count']}.onnx"
            onnx.save(candidate, path)
            session = get_backend("openvino").prepare(
                load_model(path), "cpu", SessionOptions(precision=Precision.FP32)
            )
            try:
                hits = [
                    float(predictions(first_output(session.run(feeds)))[0] == label)
                    for feeds, label in items
                ]
            finally:
                session.close()
            return float(np.mean(hits)), hits

        quantized: onnx.ModelProto = nncf.quantize_with_accuracy_control(
            model,
            calibration_dataset=dataset,
            validation_dataset=validation,
            validation_fn=top1,
            max_drop=context.max_accuracy_drop,
            drop_type=nncf.DropType.ABSOLUTE,
            advanced_quantization_parameters=AdvancedQuantizationParameters(
                overflow_fix=overflow_fix
            ),
            **kwargs,
        )
        items = [validation_item for validation_item in validation.get_inference_data()]
        initial, _ = top1(model, items)
        final, _ = top1(quantized, items)
        qdq = sum(n.op_type == "QuantizeLinear" for n in quantized.graph.node)
        self._extra = {
            "accuracy_control": {
                "max_drop": context.max_accuracy_drop,
                "dataset": data.description,
                "validation_runs": runs["count"],
                "float_accuracy": initial,
                "final_accuracy": final,
                "budget_met": initial - final <= context.max_accuracy_drop + 1e-12,
                "quantize_nodes_left": qdq,
            }
        }
        return quantized
