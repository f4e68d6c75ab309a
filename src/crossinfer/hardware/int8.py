"""How INT8 runs on a target's processor, and the quantization settings that keep it exact there.

x86 CPUs without VNNI multiply-add 8-bit pairs with `vpmaddubsw`, whose 16-bit sums saturate
when weights use all 8 bits (255 * 127 * 2 > 32767); 7-bit weights cannot overflow. ONNX
Runtime's quantization docs prescribe `reduce_range` there, NNCF its overflow fix.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# ONEDNN_MAX_CPU_ISA caps under which oneDNN has no 8-bit dot-product instruction left to use;
# OpenVINO's CPU plugin honours the cap, ONNX Runtime (MLAS) does not.
_ONEDNN_CAPS_WITHOUT_VNNI = frozenset({"SSE41", "AVX", "AVX2", "AVX512_CORE"})
# Backends whose CPU kernels come from oneDNN and so follow ONEDNN_MAX_CPU_ISA.
_ONEDNN_BACKENDS = frozenset({"openvino"})

SATURATION_NOTE = (
    "8-bit multiply-add runs through vpmaddubsw, whose 16-bit sums saturate with 8-bit weights"
)


@dataclass(frozen=True)
class Int8Recipe:
    """The INT8 settings chosen for one target, and why.

    `reduce_range`: 7-bit weights for ONNX Runtime's quantizers; `overflow_fix`: NNCF's option
    ("enable" halves every weight range, "first_layer_only" is NNCF's default).
    """

    target: str
    int8_path: str  # "AVX512-VNNI", "AVX2 without VNNI (vpmaddubsw)", "ARM dotprod", ...
    fast_int8: bool  # the processor has 8-bit dot-product instructions
    reduce_range: bool
    overflow_fix: str
    reason: str
    # one weight scale per output channel: wins back the precision a 7-bit range costs
    per_channel: bool = False

    def headline(self) -> str:
        """One line `optimize` prints before it quantizes."""
        return f"INT8 on {self.target}: {self.int8_path}; {self.reason}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "int8_path": self.int8_path,
            "fast_int8": self.fast_int8,
            "reduce_range": self.reduce_range,
            "overflow_fix": self.overflow_fix,
            "per_channel": self.per_channel,
            "reason": self.reason,
        }


def onednn_isa_cap(env: Mapping[str, str] | None = None) -> str | None:
    """The ISA oneDNN is capped at by ONEDNN_MAX_CPU_ISA (or DNNL_MAX_CPU_ISA), if any."""
    env = os.environ if env is None else env
    value = (env.get("ONEDNN_MAX_CPU_ISA") or env.get("DNNL_MAX_CPU_ISA") or "").strip().upper()
    return value if value and value not in ("ALL", "DEFAULT") else None


def int8_recipe(
    target: str,
    *,
    features: Mapping[str, bool] | None = None,
    architecture: str | None = None,
    env: Mapping[str, str] | None = None,
) -> Int8Recipe:
    """Choose INT8 settings for `target` ("onnxruntime:cpu") from the CPU's ISA features.

    `features` default to this machine's (`crossinfer doctor`); tests pass others.
    """
    backend, _, device = target.partition(":")
    device = device or "cpu"
    if device != "cpu":
        return Int8Recipe(
            target=target,
            int8_path=f"{device} (not a CPU)",
            fast_int8=True,
            reduce_range=False,
            overflow_fix="first_layer_only",
            reason="accelerators accumulate 8-bit products in 32 bits: full 8-bit weights",
        )
    if features is None:
        from crossinfer.hardware.discover import discover_cpu

        cpu = discover_cpu()
        features, architecture = cpu.features, architecture or cpu.architecture
    architecture = (architecture or platform.machine()).lower()
    if architecture in ("aarch64", "arm64") or "neon" in features:
        return _arm_recipe(target, features)
    if not features:
        return Int8Recipe(
            target=target,
            int8_path="unknown x86 ISA",
            fast_int8=False,
            reduce_range=True,
            overflow_fix="enable",
            per_channel=True,
            reason="CPU features unknown: 7-bit weights (reduce_range, NNCF overflow fix), "
            "which cannot saturate on any x86 CPU",
        )
    vnni = [name for name in ("amx_int8", "avx512_vnni", "avx_vnni") if features.get(name)]
    cap = onednn_isa_cap(env) if backend in _ONEDNN_BACKENDS else None
    if vnni and cap in _ONEDNN_CAPS_WITHOUT_VNNI:
        return _no_vnni(
            target,
            f"{cap} (ONEDNN_MAX_CPU_ISA caps oneDNN below VNNI on this {_label(vnni[0])} CPU)",
        )
    if vnni:
        return Int8Recipe(
            target=target,
            int8_path=_label(vnni[0]),
            fast_int8=True,
            reduce_range=False,
            overflow_fix="first_layer_only",
            reason="8-bit dot products accumulate in 32 bits (VNNI): full 8-bit weights",
        )
    return _no_vnni(target, "AVX2 without VNNI" if features.get("avx2") else "SSE without VNNI")


def _label(feature: str) -> str:
    return {"amx_int8": "AMX-INT8", "avx512_vnni": "AVX512-VNNI", "avx_vnni": "AVX-VNNI"}[feature]


def _no_vnni(target: str, path: str) -> Int8Recipe:
    return Int8Recipe(
        target=target,
        int8_path=f"{path}: {SATURATION_NOTE}",
        fast_int8=False,
        reduce_range=True,
        overflow_fix="enable",
        per_channel=True,
        reason="7-bit weights used (ONNX Runtime reduce_range, NNCF overflow fix) so nothing "
        "saturates, with per-channel scales; expect little speed-up over FP32",
    )


def _arm_recipe(target: str, features: Mapping[str, bool]) -> Int8Recipe:
    fast = bool(features.get("dotprod") or features.get("i8mm"))
    return Int8Recipe(
        target=target,
        int8_path="ARM " + ("i8mm" if features.get("i8mm") else "dotprod" if fast else "NEON"),
        fast_int8=fast,
        reduce_range=False,
        overflow_fix="first_layer_only",
        reason="ARM widens 8-bit products before adding them: full 8-bit weights"
        + ("" if fast else "; without dotprod or i8mm expect little speed-up over FP32"),
    )


def vnni_missing_note(
    target: str,
    *,
    features: Mapping[str, bool] | None = None,
    provenance: Mapping[str, Any] | None = None,
) -> str | None:
    """A sentence for a failed INT8 parity verdict when the CPU lacks VNNI, else None.

    A model whose provenance says it was quantized with 7-bit weights cannot saturate: its drift
    has another cause, and the ISA is not blamed.
    """
    recipe = int8_recipe(target, features=features)
    if recipe.fast_int8 or not recipe.target.endswith(":cpu"):
        return None
    applied = ((provenance or {}).get("recipe") or {}).get("applied") or {}
    if applied.get("reduce_range") is True or applied.get("overflow_fix") == "enable":
        return None
    return (
        f"this CPU lacks VNNI ({recipe.int8_path}): a model quantized with full 8-bit weights "
        "drifts here; re-quantize with `crossinfer optimize` on this target (it picks 7-bit "
        "weights) or with reduce_range / NNCF overflow_fix"
    )


__all__ = ["Int8Recipe", "int8_recipe", "onednn_isa_cap", "vnni_missing_note"]
