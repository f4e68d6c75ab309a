"""The INT8 recipe follows the target's ISA: 7-bit weights where 8-bit multiply-add saturates."""

from __future__ import annotations

import pytest

from crossinfer.hardware.discover import X86_FEATURES
from crossinfer.hardware.int8 import int8_recipe, onednn_isa_cap, vnni_missing_note


def _x86(*present: str) -> dict[str, bool]:
    return {name: name in present for name in X86_FEATURES}


AVX2_EPYC = _x86("sse4_2", "avx", "avx2", "fma", "f16c")  # family 23 model 1: no AVX-512, no VNNI
ZEN4 = _x86("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16")
SAPPHIRE_RAPIDS = _x86("avx2", "avx512f", "avx512_vnni", "amx_tile", "amx_int8", "amx_bf16")
ALDER_LAKE = _x86("avx2", "fma", "avx_vnni")


@pytest.mark.parametrize("target", ["onnxruntime:cpu", "openvino:cpu"])
def test_avx2_without_vnni_gets_seven_bit_weights_and_says_why(target: str) -> None:
    recipe = int8_recipe(target, features=AVX2_EPYC, architecture="x86_64", env={})
    assert recipe.reduce_range is True
    assert recipe.overflow_fix == "enable"
    assert recipe.fast_int8 is False
    assert "vpmaddubsw" in recipe.headline()
    assert "little speed-up" in recipe.headline()
    assert recipe.to_dict()["reduce_range"] is True


@pytest.mark.parametrize(
    ("features", "path"),
    [(ZEN4, "AVX512-VNNI"), (SAPPHIRE_RAPIDS, "AMX-INT8"), (ALDER_LAKE, "AVX-VNNI")],
)
def test_vnni_cpus_keep_full_eight_bit_weights(features: dict[str, bool], path: str) -> None:
    recipe = int8_recipe("onnxruntime:cpu", features=features, architecture="x86_64", env={})
    assert recipe.reduce_range is False
    assert recipe.overflow_fix == "first_layer_only"  # NNCF's own default
    assert recipe.fast_int8 is True
    assert recipe.int8_path == path


def test_onednn_cap_below_vnni_applies_to_openvino_only() -> None:
    env = {"ONEDNN_MAX_CPU_ISA": "avx2"}
    assert onednn_isa_cap(env) == "AVX2"
    capped = int8_recipe("openvino:cpu", features=ZEN4, architecture="x86_64", env=env)
    assert capped.reduce_range is True and capped.overflow_fix == "enable"
    assert "ONEDNN_MAX_CPU_ISA" in capped.int8_path
    # ONNX Runtime's MLAS kernels pick their ISA from cpuid: the cap does not reach them
    ort = int8_recipe("onnxruntime:cpu", features=ZEN4, architecture="x86_64", env=env)
    assert ort.reduce_range is False
    # a cap that keeps VNNI changes nothing
    vnni_cap = {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_VNNI"}
    kept = int8_recipe("openvino:cpu", features=ZEN4, architecture="x86_64", env=vnni_cap)
    assert kept.reduce_range is False
    assert onednn_isa_cap({"ONEDNN_MAX_CPU_ISA": "ALL"}) is None


def test_unknown_x86_features_choose_the_safe_side() -> None:
    recipe = int8_recipe("onnxruntime:cpu", features={}, architecture="x86_64", env={})
    assert recipe.reduce_range is True
    assert "unknown" in recipe.int8_path


def test_arm_and_accelerators_keep_eight_bits() -> None:
    arm = {"neon": True, "fp16": True, "dotprod": True, "i8mm": False, "bf16": False}
    recipe = int8_recipe("onnxruntime:cpu", features=arm, architecture="aarch64", env={})
    assert recipe.reduce_range is False and recipe.fast_int8 is True
    old_arm = {**arm, "dotprod": False}
    slow = int8_recipe("onnxruntime:cpu", features=old_arm, architecture="aarch64", env={})
    assert slow.reduce_range is False and slow.fast_int8 is False
    gpu = int8_recipe("onnxruntime:cuda", features=AVX2_EPYC, env={})
    assert gpu.reduce_range is False and "not a CPU" in gpu.int8_path


def test_vnni_missing_note_names_the_feature_and_the_remedy() -> None:
    note = vnni_missing_note("onnxruntime:cpu", features=AVX2_EPYC)
    assert note is not None
    assert "lacks VNNI" in note and "reduce_range" in note and "crossinfer optimize" in note
    assert vnni_missing_note("onnxruntime:cpu", features=ZEN4) is None


def test_a_model_already_on_seven_bit_weights_is_not_blamed_on_the_isa() -> None:
    seven_bit = {"recipe": {"applied": {"reduce_range": True}}}
    nncf_fixed = {"recipe": {"applied": {"overflow_fix": "enable"}}}
    eight_bit = {"recipe": {"applied": {"reduce_range": False}}}
    for provenance in (seven_bit, nncf_fixed):
        assert (
            vnni_missing_note("onnxruntime:cpu", features=AVX2_EPYC, provenance=provenance) is None
        )
    assert vnni_missing_note("onnxruntime:cpu", features=AVX2_EPYC, provenance=eight_bit)
    assert vnni_missing_note("onnxruntime:cpu", features=AVX2_EPYC, provenance=None)
