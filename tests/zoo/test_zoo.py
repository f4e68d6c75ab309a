"""Tests for the built-in model zoo: specs, parameter counts, signatures, runtimes, caching.

Models are built once per session into the temporary ``zoo_cache`` from tests/conftest.py.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from crossinfer.errors import ZooError
from crossinfer.model import count_parameters
from crossinfer.zoo import (
    ZOO_MODELS,
    ZooSpec,
    build_zoo_model,
    parse_zoo_spec,
    zoo_dataset,
    zoo_model_path,
)

PUBLISHED_PARAMETERS = {
    "zoo:resnet18": 11_689_512,
    "zoo:resnet50": 25_557_032,
    "zoo:mobilenetv2": 3_504_872,
    "zoo:bert-base": 109_482_240,
}
SLOW = {"zoo:resnet50", "zoo:bert-base"}

VISION = {"pixel_values": (1, ["batch", 3, 224, 224])}
LOGITS_1000 = {"logits": (1, ["batch", 1000])}
# source -> (inputs, outputs), each name -> (ONNX element type, dims); 1 is FLOAT, 7 INT64.
Signature = dict[str, tuple[int, list[object]]]
SIGNATURES: dict[str, tuple[Signature, Signature]] = {
    "zoo:mlp": ({"features": (1, ["batch", 784])}, {"logits": (1, ["batch", 10])}),
    "zoo:digits": ({"pixels": (1, ["batch", 64])}, {"logits": (1, ["batch", 10])}),
    "zoo:resnet18": (VISION, LOGITS_1000),
    "zoo:resnet50": (VISION, LOGITS_1000),
    "zoo:mobilenetv2": (VISION, LOGITS_1000),
    "zoo:bert-base": (
        {name: (7, ["batch", 128]) for name in ("input_ids", "attention_mask", "token_type_ids")},
        {"last_hidden_state": (1, ["batch", 128, 768]), "pooler_output": (1, ["batch", 768])},
    ),
    "zoo:bert-base?layers=2&seq=16": (
        {name: (7, ["batch", 16]) for name in ("input_ids", "attention_mask", "token_type_ids")},
        {"last_hidden_state": (1, ["batch", 16, 768]), "pooler_output": (1, ["batch", 768])},
    ),
}
# What runs on onnxruntime: full-size vision models at batch 2, BERT in a small variant.
RUNNABLE = [
    "zoo:mlp",
    "zoo:digits",
    "zoo:resnet18",
    "zoo:resnet50",
    "zoo:mobilenetv2",
    "zoo:bert-base?layers=2&seq=16",
]


def _marks(source: str) -> list[pytest.MarkDecorator]:
    return [pytest.mark.slow] if source in SLOW else []


def _params(sources: list[str]) -> list[object]:
    return [pytest.param(s, id=s.removeprefix("zoo:"), marks=_marks(s)) for s in sources]


@pytest.fixture(scope="session")
def loaded(zoo_cache: Path) -> dict[str, onnx.ModelProto]:
    """Models loaded from the shared cache, each at most once per session."""
    return _LoadedModels(zoo_cache)


class _LoadedModels(dict[str, onnx.ModelProto]):
    def __init__(self, cache: Path) -> None:
        super().__init__()
        self.cache = cache

    def __missing__(self, source: str) -> onnx.ModelProto:
        model = onnx.load(zoo_model_path(source, cache_dir=self.cache))
        self[source] = model
        return model


def _dims(value: onnx.ValueInfoProto) -> list[object]:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def _feeds(session: ort.InferenceSession, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for arg in session.get_inputs():
        shape = [2 if isinstance(d, str) else d for d in arg.shape]
        if arg.name == "input_ids":
            feeds[arg.name] = rng.integers(0, 30522, shape, dtype=np.int64)
        elif arg.name == "attention_mask":
            mask = np.ones(shape, dtype=np.int64)
            mask[1, shape[1] // 2 :] = 0  # second sequence padded
            feeds[arg.name] = mask
        elif arg.name == "token_type_ids":
            feeds[arg.name] = rng.integers(0, 2, shape, dtype=np.int64)
        elif arg.name == "pixels":
            feeds[arg.name] = rng.integers(0, 17, shape).astype(np.float32)
        else:
            feeds[arg.name] = rng.standard_normal(shape, dtype=np.float32)
    return feeds


# --- specs -------------------------------------------------------------------------------------


def test_zoo_models_names() -> None:
    assert set(ZOO_MODELS) == {"mlp", "resnet18", "resnet50", "mobilenetv2", "bert-base", "digits"}


def test_parse_spec_is_canonical() -> None:
    full = parse_zoo_spec("zoo:bert-base")
    assert full == ZooSpec("bert-base", (("layers", 12), ("seq", 128)))
    assert parse_zoo_spec("bert-base?seq=128") == full
    assert parse_zoo_spec("zoo:bert-base?seq=128&layers=12") == full
    assert parse_zoo_spec(full.source) == full
    small = parse_zoo_spec("zoo:bert-base?seq=16&layers=2")
    assert small.params == (("layers", 2), ("seq", 16))
    assert small.source == "zoo:bert-base?layers=2&seq=16"
    assert parse_zoo_spec("zoo:resnet50") == ZooSpec("resnet50", ())
    assert parse_zoo_spec("resnet50") == parse_zoo_spec("zoo:resnet50")
    assert parse_zoo_spec(" zoo:BERT-base?layers=12& seq=128 ") == full


def test_hand_made_spec_is_canonicalised(tmp_path: Path) -> None:
    partial = ZooSpec("mlp", (("hidden", 16),))
    assert zoo_model_path(partial, cache_dir=tmp_path) == zoo_model_path(
        "zoo:mlp?hidden=16", cache_dir=tmp_path
    )
    with pytest.raises(ZooError, match="'hidden'"):
        build_zoo_model(ZooSpec("mlp", (("hidden", 0),)))


@pytest.mark.parametrize(
    ("source", "needles"),
    [
        ("zoo:resnet51", ["'resnet51'", "resnet50", "bert-base", "digits", "mobilenetv2"]),
        ("zoo:", ["unknown zoo model ''", "mlp"]),
        ("zoo:bert-base?heads=4", ["'heads'", "seq=1..512", "layers=1..12"]),
        ("zoo:resnet18?depth=3", ["'depth'", "no parameters"]),
        ("zoo:bert-base?seq=abc", ["'seq'", "'abc'", "integer", "1..512"]),
        ("zoo:bert-base?seq=1.5", ["'seq'", "'1.5'", "integer"]),
        ("zoo:bert-base?layers", ["'layers'", "integer", "1..12"]),
        ("zoo:bert-base?seq=513", ["'seq'", "513", "1..512", "out of range"]),
        ("zoo:bert-base?layers=0", ["'layers'", "0", "1..12", "out of range"]),
        ("zoo:bert-base?layers=13", ["'layers'", "13", "1..12"]),
        ("zoo:mlp?hidden=-4", ["'hidden'", "-4", "out of range"]),
        ("zoo:bert-base?seq=16&seq=32", ["'seq'", "twice"]),
    ],
)
def test_bad_spec_raises_zoo_error(source: str, needles: list[str]) -> None:
    with pytest.raises(ZooError) as info:
        parse_zoo_spec(source)
    message = str(info.value)
    for needle in needles:
        assert needle in message, f"{needle!r} missing from {message!r}"


def test_bad_spec_raises_from_zoo_model_path(tmp_path: Path) -> None:
    with pytest.raises(ZooError, match="resnet"):
        zoo_model_path("zoo:resnet", cache_dir=tmp_path)
    assert not list(tmp_path.glob("zoo/*.onnx"))


# --- graphs ------------------------------------------------------------------------------------


@pytest.mark.parametrize("source", _params(list(PUBLISHED_PARAMETERS)))
def test_parameter_count_matches_published(source: str, loaded: dict[str, onnx.ModelProto]) -> None:
    assert count_parameters(loaded[source]) == PUBLISHED_PARAMETERS[source]


@pytest.mark.parametrize("source", _params(list(SIGNATURES)))
def test_model_is_valid_with_exact_signature(
    source: str, zoo_cache: Path, loaded: dict[str, onnx.ModelProto]
) -> None:
    onnx.checker.check_model(str(zoo_model_path(source, cache_dir=zoo_cache)), full_check=True)
    model = loaded[source]
    assert model.ir_version == 8
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 17)]
    inputs, outputs = SIGNATURES[source]
    got_inputs = {v.name: (v.type.tensor_type.elem_type, _dims(v)) for v in model.graph.input}
    got_outputs = {v.name: (v.type.tensor_type.elem_type, _dims(v)) for v in model.graph.output}
    assert got_inputs == inputs
    assert got_outputs == outputs
    names = [node.name for node in model.graph.node]
    assert all(names)
    assert len(set(names)) == len(names)
    assert all(node.domain == "" for node in model.graph.node)


def test_graph_is_faithful() -> None:
    resnet = build_zoo_model(parse_zoo_spec("zoo:resnet18"))
    ops = [node.op_type for node in resnet.graph.node]
    assert ops.count("BatchNormalization") == ops.count("Conv") == 20
    conv1 = next(node for node in resnet.graph.node if node.name == "/layer1/0/conv1/Conv")
    assert len(conv1.input) == 2  # torchvision convs before BN have no bias
    bert = build_zoo_model(parse_zoo_spec("zoo:bert-base?layers=1&seq=8"))
    bert_ops = {node.op_type for node in bert.graph.node}
    assert {"Erf", "LayerNormalization", "Softmax", "Tanh"} <= bert_ops
    assert "Gelu" not in bert_ops


# --- runtimes ----------------------------------------------------------------------------------


@pytest.mark.parametrize("source", _params(RUNNABLE))
def test_runs_on_onnxruntime(source: str, zoo_cache: Path) -> None:
    path = zoo_model_path(source, cache_dir=zoo_cache)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    _, outputs = SIGNATURES[source]
    first = session.run(None, _feeds(session, seed=0))
    second = session.run(None, _feeds(session, seed=1))
    for meta, a, b in zip(session.get_outputs(), first, second, strict=True):
        expected = tuple(2 if d == "batch" else d for d in outputs[meta.name][1])
        assert a.shape == expected
        assert a.dtype == np.float32
        assert np.isfinite(a).all()
        # Moderate magnitudes: other code compares runtimes at FP32 tolerances.
        assert 0 < np.abs(a).max() < 100
        assert not np.allclose(a[0], a[1]), "outputs for different samples are equal"
        assert not np.allclose(a, b), "outputs for different inputs are equal"


def test_bert_attention_mask_is_applied(zoo_cache: Path) -> None:
    path = zoo_model_path("zoo:bert-base?layers=1&seq=8", cache_dir=zoo_cache)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ids = np.arange(8, dtype=np.int64).reshape(1, 8) + 100
    types = np.zeros((1, 8), dtype=np.int64)
    mask = np.array([[1, 1, 1, 1, 0, 0, 0, 0]], dtype=np.int64)
    changed = ids.copy()
    changed[0, 6] = 999

    def run(ids: np.ndarray, mask: np.ndarray) -> list[np.ndarray]:
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        return list(session.run(None, feeds))

    base, other = run(ids, mask), run(changed, mask)
    # A masked-out token must not influence the unmasked positions nor the pooled [CLS] output.
    np.testing.assert_allclose(base[0][:, :4], other[0][:, :4], atol=1e-5)
    np.testing.assert_allclose(base[1], other[1], atol=1e-5)
    unmasked = run(changed, np.ones_like(mask))
    assert not np.allclose(base[1], unmasked[1], atol=1e-5)


def test_digits_accuracy_on_held_out_split(zoo_cache: Path) -> None:
    path = zoo_model_path("zoo:digits", cache_dir=zoo_cache)
    data = zoo_dataset("zoo:digits", cache_dir=zoo_cache)
    assert data is not None
    assert path.with_suffix(".npz").is_file()
    assert "digits" in data.description and "450" in data.description
    assert len(data.labels) == 450  # 25% of 1797, rounded up by train_test_split
    assert data.labels.dtype == np.int64
    assert set(data.labels.tolist()) == set(range(10))
    pixels = data.inputs["pixels"]
    assert pixels.dtype == np.float32 and pixels.shape == (450, 64)
    assert pixels.max() == 16.0  # raw pixel values: scaling happens inside the graph
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"pixels": pixels})
    accuracy = float((logits.argmax(axis=1) == data.labels).mean())
    assert accuracy > 0.9, f"held-out accuracy {accuracy:.3f}"


def test_only_digits_has_a_dataset(tmp_path: Path) -> None:
    for name in ZOO_MODELS:
        if name != "digits":
            assert zoo_dataset(name, cache_dir=tmp_path) is None
    assert zoo_dataset("digits", cache_dir=tmp_path) is not None


# --- determinism and cache ---------------------------------------------------------------------


@pytest.mark.parametrize("source", ["zoo:mlp?hidden=32", "zoo:digits", "zoo:resnet18"])
def test_builds_are_byte_identical(source: str) -> None:
    spec = parse_zoo_spec(source)
    assert build_zoo_model(spec).SerializeToString() == build_zoo_model(spec).SerializeToString()


def test_bert_build_is_byte_identical() -> None:
    spec = parse_zoo_spec("zoo:bert-base?layers=1&seq=8")
    assert build_zoo_model(spec).SerializeToString() == build_zoo_model(spec).SerializeToString()


def test_cache_reuses_file_without_rebuilding(tmp_path: Path) -> None:
    first = zoo_model_path("zoo:mlp?hidden=32", cache_dir=tmp_path)
    assert first.parent == tmp_path / "zoo"
    stat = first.stat()
    again = zoo_model_path(parse_zoo_spec("mlp?hidden=32"), cache_dir=tmp_path)
    assert again == first
    assert again.stat().st_mtime_ns == stat.st_mtime_ns
    assert again.stat().st_ino == stat.st_ino
    assert (
        first.read_bytes()
        == build_zoo_model(parse_zoo_spec("zoo:mlp?hidden=32")).SerializeToString()
    )
    other = zoo_model_path("zoo:mlp?hidden=64", cache_dir=tmp_path)
    assert other != first
    assert other.read_bytes() != first.read_bytes()
    default = zoo_model_path("zoo:mlp", cache_dir=tmp_path)
    assert default == zoo_model_path("zoo:mlp?hidden=256", cache_dir=tmp_path)
    assert len({first, other, default}) == 3
    assert not [p for p in (tmp_path / "zoo").iterdir() if p.suffix != ".onnx"]


def test_cache_dir_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CROSSINFER_CACHE_DIR", str(tmp_path / "env-cache"))
    path = zoo_model_path("zoo:mlp?hidden=8")
    assert path.parent == tmp_path / "env-cache" / "zoo"
    monkeypatch.delenv("CROSSINFER_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert zoo_model_path("zoo:mlp?hidden=8").parent == tmp_path / "xdg" / "crossinfer" / "zoo"


def test_cache_file_name_names_spec_and_version(tmp_path: Path) -> None:
    path = zoo_model_path("zoo:bert-base?layers=1&seq=8", cache_dir=tmp_path)
    assert "bert-base" in path.name and "layers=1" in path.name and "seq=8" in path.name
    assert "_v" in path.stem


def test_concurrent_builds_never_expose_partial_files(tmp_path: Path) -> None:
    results: list[bytes] = []
    errors: list[BaseException] = []

    def build() -> None:
        try:
            results.append(zoo_model_path("zoo:mlp?hidden=512", cache_dir=tmp_path).read_bytes())
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=build) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len(results) == 4 and len(set(results)) == 1
    onnx.checker.check_model(onnx.load_from_string(results[0]), full_check=True)
    assert [p.name for p in (tmp_path / "zoo").iterdir()] == ["mlp_hidden=512_v1.onnx"]
