"""The ONNX Runtime passes' outputs also run on OpenVINO, within their precision's tolerance."""

from __future__ import annotations

from pathlib import Path

import pytest

from crossinfer.backends.base import Precision, SessionOptions, get_backend
from crossinfer.check import default_tolerance
from crossinfer.check.parity import compare_outputs
from crossinfer.model import load_model
from crossinfer.passes.base import PassContext
from crossinfer.passes.calibration import load_calibration
from crossinfer.passes.pipeline import PASSES, get_pass
from crossinfer.zoo import zoo_dataset

pytest.importorskip("openvino", reason="openvino not installed: pip install 'crossinfer[openvino]'")


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
