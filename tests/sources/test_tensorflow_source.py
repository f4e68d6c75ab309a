"""TensorFlow models as a source: tf2onnx's conversion, its parity checked, reached by load_model.

The conversion itself needs TensorFlow (the `litert-convert` group, not in CI): its test is
skipped without it. The rest (the error that says how to add it, a conversion that differs from
TensorFlow refused, the cache) runs everywhere, with the child process stood in for.
"""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from conftest import linear_model
from crossinfer.errors import ConverterUnavailableError, ModelError, ModelValidationError
from crossinfer.model import load_model
from crossinfer.sources import tensorflow as tf_source


def _saved_model_dir(tmp_path: Path) -> Path:
    saved = tmp_path / "classifier"
    (saved / "variables").mkdir(parents=True)
    (saved / "saved_model.pb").write_bytes(b"not read before conversion")
    return saved


def _no_tensorflow(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.metadata.distribution

    def distribution(name: str) -> Any:
        if name == "tensorflow":
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(tf_source.importlib.metadata, "distribution", distribution)


def test_without_tensorflow_the_error_says_how_to_add_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_tensorflow(monkeypatch)
    saved = _saved_model_dir(tmp_path)
    keras_file = tmp_path / "classifier.keras"
    keras_file.write_bytes(b"zip")
    for source in (saved, keras_file):
        with pytest.raises(ConverterUnavailableError) as caught:
            load_model(source)
        message = str(caught.value)
        assert f"cannot load TensorFlow model '{source}'" in message
        assert "tensorflow is not installed" in message
        assert "uv sync --all-extras --group litert-convert" in message
        assert isinstance(caught.value, ModelError)  # callers judge it as a bad model source
    # a plain directory is no TensorFlow model: the ONNX error, which names both kinds
    with pytest.raises(ModelError, match=r"holds saved_model\.pb"):
        load_model(tmp_path / "classifier" / "variables")


def _fake_worker(report: dict[str, Any], calls: list[Path]) -> Any:
    def convert(path: Path, onnx_path: Path, report_path: Path, opset: int) -> None:
        calls.append(path)
        onnx.save(linear_model(), onnx_path)
        report_path.write_text(json.dumps(report))

    return convert


def test_a_conversion_that_differs_from_tensorflow_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tf_source, "tensorflow_missing", lambda: None)
    failed = {
        "passed": False,
        "outputs": [
            {"name": "logits", "passed": False, "reason": "12 of 16 elements outside tolerance",
             "max_abs_error": 0.75, "cosine": 0.91},
        ],
    }  # fmt: skip
    calls: list[Path] = []
    monkeypatch.setattr(tf_source, "_convert", _fake_worker(failed, calls))
    saved = _saved_model_dir(tmp_path)
    with pytest.raises(ModelValidationError) as caught:
        load_model(saved)
    message = str(caught.value)
    assert f"tf2onnx's ONNX of TensorFlow model '{saved}' does not match TensorFlow" in message
    assert "output 'logits': 12 of 16 elements outside tolerance (max abs err 0.75" in message
    # nothing was cached: the next load converts again
    with pytest.raises(ModelValidationError):
        load_model(saved)
    assert len(calls) == 2


def test_a_matching_conversion_is_cached_and_keeps_its_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tf_source, "tensorflow_missing", lambda: None)
    calls: list[Path] = []
    passed = {"passed": True, "outputs": [{"name": "y", "passed": True}]}
    monkeypatch.setattr(tf_source, "_convert", _fake_worker(passed, calls))
    saved = _saved_model_dir(tmp_path)
    artifact = load_model(str(saved))
    assert artifact.source == str(saved)
    assert artifact.path.suffix == ".onnx" and artifact.path.parent.name == "tf-export"
    assert [t.name for t in artifact.inputs] == ["x"]
    assert tf_source.parity_report(artifact) == passed
    assert load_model(saved).sha256 == artifact.sha256
    assert len(calls) == 1  # converted once
    # a changed SavedModel is another model: converted again
    (saved / "variables" / "variables.index").write_bytes(b"new weights")
    load_model(saved)
    assert len(calls) == 2


_BUILD = """
import sys
import numpy as np
import keras

keras.utils.set_random_seed(0)
pixels = keras.Input((8, 8, 3), name="pixels")
x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(pixels)
x = keras.layers.GlobalAveragePooling2D()(x)
logits = keras.layers.Dense(5, name="logits")(x)
model = keras.Model(pixels, logits)
out = sys.argv[1]
model.save(out + "/tiny.keras")
model.export(out + "/tiny_saved")
feeds = np.random.default_rng(3).standard_normal((3, 8, 8, 3)).astype(np.float32)
np.savez(out + "/expected.npz", pixels=feeds, logits=np.asarray(model(feeds)))
"""


@pytest.mark.skipif(
    tf_source.tensorflow_missing() is not None,
    reason=f"no TensorFlow here: {tf_source.tensorflow_missing()}",
)
def test_a_keras_model_and_its_savedmodel_convert_with_parity(tmp_path: Path) -> None:
    import onnxruntime as ort

    subprocess.run([sys.executable, "-c", _BUILD, str(tmp_path)], check=True, timeout=600)
    expected = np.load(tmp_path / "expected.npz")
    for source in (tmp_path / "tiny_saved", tmp_path / "tiny.keras"):
        artifact = load_model(source)
        report = tf_source.parity_report(artifact)
        assert report is not None and report["passed"], report
        assert report["outputs"][0]["max_abs_error"] < 1e-4
        (spec,) = artifact.inputs
        assert spec.shape[1:] == (8, 8, 3)  # NHWC as Keras has it; the batch stays free
        session = ort.InferenceSession(str(artifact.path))
        # a batch of 3, not the 2 the parity check ran: the batch dimension is dynamic
        (got,) = session.run(None, {spec.name: expected["pixels"]})
        np.testing.assert_allclose(got, expected["logits"], atol=1e-4, rtol=1e-3)


def test_a_spec_may_name_a_savedmodel_directory(tmp_path: Path) -> None:
    from crossinfer.spec import load_spec

    saved = _saved_model_dir(tmp_path)
    spec_path = tmp_path / "classifier.toml"
    spec_path.write_text(
        '[deployment]\nname = "classifier"\nmodel = "classifier"\n'
        'backend = "onnxruntime"\ndevice = "cpu"\n'
    )
    assert load_spec(spec_path, check_hash=False).model == saved.resolve()
