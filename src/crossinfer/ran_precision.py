"""The precision a session really ran, read back after compiling: a runtime may silently run
another precision than the one asked for (OpenVINO compiles a bf16 hint as f32 without AMX).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from crossinfer.backends.base import Precision

# OpenVINO's INFERENCE_PRECISION_HINT read back, as its element-type names
_HINT_PRECISIONS = {
    "f32": Precision.FP32,
    "f16": Precision.FP16,
    "bf16": Precision.BF16,
    "float32": Precision.FP32,
    "float16": Precision.FP16,
    "bfloat16": Precision.BF16,
}


def precision_that_ran(asked: Precision, session: Mapping[str, Any]) -> tuple[Precision, str]:
    """The precision a session really computed in, from what it reports after compiling (its
    `describe()`): OpenVINO's INFERENCE_PRECISION_HINT read back from the compiled model, and
    its runtime model's layers by precision. A CPU without AVX512_BF16/AMX or FP16 compiles a
    bf16/f16 hint as f32. Returns (precision, why); `asked` with "" when nothing says otherwise.
    """
    if asked not in (Precision.BF16, Precision.FP16):
        return asked, ""
    hint = str(session.get("inference_precision_hint", "")).lower()
    read_back = _HINT_PRECISIONS.get(hint)
    if read_back is not None and read_back is not asked:
        return read_back, (
            f"the compiled model's INFERENCE_PRECISION_HINT reads back {hint}: the runtime "
            f"compiled the {asked.value} hint as {hint} on this device"
        )
    layers = session.get("runtime_precisions")
    if isinstance(layers, Mapping) and layers:
        halves = {_HINT_PRECISIONS[k] for k in map(str, layers) if k in ("f16", "bf16")}
        if asked not in halves:
            # not one layer at the asked precision: the other half precision if some ran at
            # it, else FP32 (integer layers are the model's own quantization)
            found = halves.pop() if halves else Precision.FP32
            ran = ", ".join(f"{k}: {n}" for k, n in layers.items())
            return found, f"no layer of the runtime model ran at {asked.value} ({ran})"
    return asked, ""
