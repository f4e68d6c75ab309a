"""The ONNX Runtime passes' outputs also run on OpenVINO, within their precision's tolerance."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from crossinfer.backends.base import Precision, SessionOptions, get_backend
from crossinfer.check import default_tolerance
from crossinfer.check.parity import compare_outputs
from crossinfer.model import load_model
from crossinfer.passes.base import PassContext, read_provenance
from crossinfer.passes.calibration import load_calibration
from crossinfer.passes.int8_static import Int8StaticConfig
from crossinfer.passes.pipeline import PASSES, get_pass
from crossinfer.zoo import zoo_dataset

pytest.importorskip("openvino", reason="openvino not installed: pip install 'crossinfer[openvino]'")

from isa_cap import host_has_vnni, run_openvino


@pytest.mark.parametrize("name", ["simplify", "fp16", "int8-dynamic", "int8-static", "prune"])
def test_pass_output_runs_on_openvino(name: str, tmp_path: Path) -> None:
    source = "zoo:digits"
    artifact = load_model(source)
    optimization = get_pass(name)
    context = PassContext(target="openvino:cpu", calibration=load_calibration(None, artifact))
    out = optimization.apply(
        artifact, optimization.config_type(), tmp_path / f"{name}.onnx", context
    )
    produced = load_model(out)
    data = zoo_dataset(source)
    assert data is not None
    feeds = {k: v[:32] for k, v in data.inputs.items()}
    expected = get_backend("reference").prepare(artifact, "cpu").run(feeds)
    session = get_backend("openvino").prepare(
        produced, "cpu", SessionOptions(precision=Precision.FP32)
    )
    actual = session.run(feeds)
    session.close()
    precision = PASSES[name][2]
    if name == "prune":
        # pruning changes the function on purpose: it must still classify like the original
        agree = (actual["logits"].argmax(-1) == expected["logits"].argmax(-1)).mean()
        assert agree >= 0.9
        return
    for comparison in compare_outputs(actual, expected, default_tolerance(precision)):
        assert comparison.passed, f"{name} on openvino: {comparison.reason}"


# --- the INT8 recipe on the AVX2 path ---------------------------------------------------------
# oneDNN capped at AVX2 (ONEDNN_MAX_CPU_ISA) takes the vpmaddubsw path of a CPU without VNNI, so
# both paths are exercised on either kind of machine (on an AVX2-only CPU the cap changes nothing).


def _digits_case(
    name: str, config: object, tmp_path: Path
) -> tuple[Path, dict[str, np.ndarray], dict[str, np.ndarray]]:
    artifact = load_model("zoo:digits")
    optimization = get_pass(name)
    context = PassContext(target="openvino:cpu", calibration=load_calibration(None, artifact))
    out = optimization.apply(artifact, config, tmp_path / f"{name}.onnx", context)
    data = zoo_dataset("zoo:digits")
    assert data is not None
    feeds = {k: v[:32] for k, v in data.inputs.items()}
    expected = get_backend("reference").prepare(artifact, "cpu").run(feeds)
    return out, feeds, expected


@pytest.mark.parametrize("name", ["int8-static", "int8-dynamic"])
def test_int8_recipe_holds_on_the_avx2_path(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")  # the recipe for openvino:cpu sees the cap
    optimization = get_pass(name)
    out, feeds, expected = _digits_case(name, optimization.config_type(), tmp_path)
    record = read_provenance(out)
    assert record is not None
    assert record["recipe"]["reduce_range"] is True
    assert record["recipe"]["applied"]["reduce_range"] is True
    assert "vpmaddubsw" in record["recipe"]["int8_path"]
    capped = run_openvino(out, feeds, tmp_path, cap="AVX2")
    native = run_openvino(out, feeds, tmp_path, cap=None)
    tolerance = default_tolerance(Precision.INT8)
    for outputs in (capped, native):
        for comparison in compare_outputs(outputs, expected, tolerance):
            assert comparison.passed, f"{name} with 7-bit weights: {comparison.reason}"
    # 7-bit weights cannot saturate: the AVX2 and the VNNI path compute the same integers
    np.testing.assert_allclose(capped["logits"], native["logits"], rtol=1e-4, atol=1e-4)


def test_eight_bit_weights_saturate_on_the_avx2_path(tmp_path: Path) -> None:
    if not host_has_vnni():
        pytest.skip("this CPU has no VNNI: every run takes the AVX2 path, nothing to compare with")
    out, feeds, expected = _digits_case(
        "int8-static", Int8StaticConfig(reduce_range=False), tmp_path
    )
    record = read_provenance(out)
    assert record is not None and record["recipe"]["decided_by"].startswith("the pass config")
    tolerance = default_tolerance(Precision.INT8)
    (native,) = compare_outputs(run_openvino(out, feeds, tmp_path, cap=None), expected, tolerance)
    (capped,) = compare_outputs(run_openvino(out, feeds, tmp_path, cap="AVX2"), expected, tolerance)
    print(
        f"\n8-bit weights: max abs error {native.max_abs_error:.3f} with VNNI, "
        f"{capped.max_abs_error:.3f} on the AVX2 path"
    )
    assert native.passed
    assert capped.max_abs_error > 2 * native.max_abs_error
