"""The jax backend on this CPU (XLA), and its GPU/TPU logic with fake device lists.

Compiles are the slow part: sessions are shared per module and models are the small zoo variants.
"""

from __future__ import annotations

import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from conftest import make_model
from crossinfer.backends.base import Precision, SessionOptions, get_backend
from crossinfer.check import compare_outputs, default_tolerance, random_inputs
from crossinfer.errors import CompileError, DeviceUnavailableError, InputError, UsageError
from crossinfer.model import ModelArtifact, load_model
from crossinfer.zoo import zoo_dataset

jax_backend = pytest.importorskip("crossinfer.backends.jax", reason="pip install 'crossinfer[jax]'")
JaxBackend = jax_backend.JaxBackend
BERT = "zoo:bert-base?layers=2&seq=32"


@pytest.fixture(scope="module")
def bert() -> ModelArtifact:
    return load_model(BERT)


@pytest.fixture(scope="module")
def bert_feeds(bert: ModelArtifact) -> dict[str, np.ndarray]:
    return random_inputs(bert.inputs, batch=2, seed=11)


@pytest.fixture(scope="module")
def bert_reference(bert: ModelArtifact, bert_feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return get_backend("reference").prepare(bert, "cpu").run(bert_feeds)


@pytest.fixture(scope="module")
def bert_fp32(bert: ModelArtifact):  # type: ignore[no-untyped-def]
    session = JaxBackend().prepare(bert, "cpu")
    yield session
    session.close()


def _passes(outputs: dict[str, np.ndarray], reference: dict[str, np.ndarray], p: Precision) -> None:
    for comparison in compare_outputs(outputs, reference, default_tolerance(p)):
        assert comparison.passed, f"{p.value} {comparison.name}: {comparison.reason}"


def test_bert_matches_the_reference_at_fp32(bert_fp32, bert_feeds, bert_reference) -> None:  # type: ignore[no-untyped-def]
    outputs = bert_fp32.run(bert_feeds)
    assert {k: v.dtype for k, v in outputs.items()} == {
        "last_hidden_state": np.float32,
        "pooler_output": np.float32,
    }
    _passes(outputs, bert_reference, Precision.FP32)


def test_the_lowering_paths_are_reported(bert_fp32) -> None:  # type: ignore[no-untyped-def]
    info = bert_fp32.describe()
    # LayerNormalization is missing from jaxonnxruntime 0.3: ours lowers it
    assert "LayerNormalization" in info["lowering"]["crossinfer"]
    assert {"MatMul", "Softmax", "Gather"} <= set(info["lowering"]["jaxonnxruntime"])
    assert "unsupported" not in info["lowering"]
    assert info["precision"] == "fp32" and "'highest'" in info["precision_method"]
    placement = bert_fp32.placement()
    assert placement.primary == "cpu" and set(placement.node_devices.values()) == {"cpu"}
    assert len(placement.node_devices) == load_model(BERT).node_count


@pytest.mark.parametrize("precision", [Precision.BF16, Precision.FP16])
def test_low_precision_runs_at_that_precision(  # type: ignore[no-untyped-def]
    bert, bert_feeds, bert_reference, precision
) -> None:
    session = JaxBackend().prepare(bert, "cpu", SessionOptions(precision=precision))
    outputs = session.run(bert_feeds)
    _passes(outputs, bert_reference, precision)
    # it really ran at the low precision: FP32's tolerance is out of reach
    worst = max(
        compare_outputs(outputs, bert_reference, default_tolerance(Precision.FP32)),
        key=lambda c: c.max_abs_error,
    )
    assert not worst.passed and worst.max_abs_error > 1e-3
    assert session.describe()["precision"] == precision.value
    session.close()


def test_batch_norms_fold_into_convs_and_bf16_stays_within_tolerance() -> None:
    artifact = load_model("zoo:resnet18")
    feeds = random_inputs(artifact.inputs, batch=2, seed=4)
    session = JaxBackend().prepare(artifact, "cpu", SessionOptions(precision=Precision.BF16))
    outputs = session.run(feeds)
    assert session.describe()["rewrites"].startswith("20 BatchNormalization folded into Conv")
    # placement still lists the model's own nodes: a folded BatchNormalization ran in its Conv
    assert len(session.placement().node_devices) == artifact.node_count
    _passes(outputs, get_backend("onnxruntime").prepare(artifact, "cpu").run(feeds), Precision.BF16)
    session.close()


def test_mlp_new_batch_sizes_compile_once_each() -> None:
    artifact = load_model("zoo:mlp")
    session = JaxBackend().prepare(artifact, "cpu")
    reference = get_backend("reference").prepare(artifact, "cpu")
    for batch in (1, 5, 1):
        feeds = random_inputs(artifact.inputs, batch=batch, seed=batch)
        _passes(session.run(feeds), reference.run(feeds), Precision.FP32)
    assert [c.shapes["features"] for c in session.compiles] == [[1, 784], [5, 784]]
    assert all(c.compile_s >= 0 and c.trace_s > 0 for c in session.compiles)
    session.close()


def test_digits_predictions_match_onnxruntime() -> None:
    dataset = zoo_dataset("zoo:digits")
    assert dataset is not None
    artifact = load_model("zoo:digits")
    ours = JaxBackend().prepare(artifact, "cpu").run(dataset.inputs)
    theirs = get_backend("onnxruntime").prepare(artifact, "cpu").run(dataset.inputs)
    name = artifact.outputs[0].name
    predicted = ours[name].argmax(axis=1)
    np.testing.assert_array_equal(predicted, theirs[name].argmax(axis=1))
    assert (predicted == dataset.labels).mean() > 0.9


def test_the_persistent_compile_cache_is_reused(zoo_cache: Path) -> None:
    artifact = load_model("zoo:mlp")
    feeds = random_inputs(artifact.inputs, batch=3, seed=0)
    first = JaxBackend().prepare(artifact, "cpu")
    first.run(feeds)
    cache_dir = Path(first.describe()["compile_cache_dir"])
    assert cache_dir == zoo_cache / "jax"
    entries = sorted(p.name for p in cache_dir.iterdir())
    assert entries
    second = JaxBackend().prepare(artifact, "cpu")
    second.run(feeds)
    # a new session traces anew; XLA's program comes from the disk cache, nothing is added
    assert second.compiles[0].persistent_cache == "hit"
    assert sorted(p.name for p in cache_dir.iterdir()) == entries


def test_bad_inputs_are_refused_with_the_input_named(bert_fp32, bert_feeds) -> None:  # type: ignore[no-untyped-def]
    huge = dict(bert_feeds, input_ids=np.full((2, 32), 2**40, np.int64))
    with pytest.raises(InputError, match=r"input 'input_ids' holds values outside INT32"):
        bert_fp32.run(huge)
    with pytest.raises(InputError, match=r"input 'attention_mask' expects INT64"):
        bert_fp32.run(dict(bert_feeds, attention_mask=bert_feeds["attention_mask"].astype(float)))
    with pytest.raises(InputError, match=r"missing input\(s\) 'token_type_ids'"):
        bert_fp32.run({k: v for k, v in bert_feeds.items() if k != "token_type_ids"})


def test_matmul_precision_is_an_option_and_checked() -> None:
    artifact = load_model("zoo:mlp")
    session = JaxBackend().prepare(
        artifact, "cpu", SessionOptions(extra={"matmul_precision": "bfloat16"})
    )
    info = session.describe()
    assert "'bfloat16'" in info["precision_method"]
    with pytest.raises(
        UsageError, match=r"jax does not know option\(s\) foo: it takes matmul_prec"
    ):
        JaxBackend().prepare(
            artifact, "cpu", SessionOptions(extra={"matmul_precision": "bfloat16", "foo": "1"})
        )
    with pytest.raises(UsageError, match="matmul_precision 'fastest' is not one of default"):
        JaxBackend().prepare(artifact, "cpu", SessionOptions(extra={"matmul_precision": "fastest"}))


def test_an_op_without_a_lowering_is_named(tmp_path: Path) -> None:
    model = make_model(
        [helper.make_node("Det", ["x"], ["y"], name="det")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    onnx.save(model, tmp_path / "det.onnx")
    artifact = load_model(tmp_path / "det.onnx")
    compat = JaxBackend().supports(artifact, "cpu")
    assert not compat.supported and compat.unsupported_ops == ("Det",)
    assert "Det" in compat.reason
    with pytest.raises(CompileError, match="Det") as info:
        JaxBackend().prepare(artifact, "cpu")
    assert info.value.unsupported_ops == ("Det",)


# --- device logic, with fake device lists: runs unchanged on a GPU host or a TPU VM ---------


@dataclass(frozen=True)
class FakeDevice:
    platform: str
    id: int
    device_kind: str


def _lister(**platforms: list[FakeDevice]):  # type: ignore[no-untyped-def]
    def list_devices(platform: str) -> list[FakeDevice]:
        if platform not in platforms:
            raise RuntimeError(f"Unknown backend: '{platform}' requested")
        return platforms[platform]

    return list_devices


TPU_VM = _lister(
    cpu=[FakeDevice("cpu", 0, "cpu")],
    tpu=[FakeDevice("tpu", 0, "TPU v5 lite"), FakeDevice("tpu", 1, "TPU v5 lite")],
)


def test_tpu_devices_are_listed_with_their_bf16_default() -> None:
    backend = JaxBackend(list_devices=TPU_VM)
    devices = {d.name: d for d in backend.devices()}
    assert set(devices) == {"cpu", "gpu:0", "tpu:0", "tpu:1"}
    assert devices["tpu:1"].available and "TPU v5 lite" in devices["tpu:1"].description
    assert "bf16" in devices["tpu:0"].description
    assert not devices["gpu:0"].available and "jax[cuda12]" in devices["gpu:0"].reason
    assert jax_backend.default_precision("tpu:0") is Precision.BF16
    assert jax_backend.default_precision("gpu:0") is Precision.FP32
    assert backend._device("tpu") == FakeDevice("tpu", 0, "TPU v5 lite")
    assert backend._device("tpu:1").id == 1


def test_tpu_refuses_fp16_and_absent_devices_are_unavailable(bert: ModelArtifact) -> None:
    backend = JaxBackend(list_devices=TPU_VM)
    with pytest.raises(UsageError, match="ask for bf16"):
        backend.prepare(bert, "tpu:0", SessionOptions(precision=Precision.FP16))
    with pytest.raises(DeviceUnavailableError, match="no gpu device"):
        backend.prepare(bert, "cuda")
    with pytest.raises(DeviceUnavailableError, match="2 tpu device"):
        backend.prepare(bert, "tpu:5")
    compat = backend.supports(bert, "gpu:0")
    assert not compat.supported and "no gpu device" in compat.reason


@pytest.mark.parametrize(
    ("typed", "expected"),
    [("cpu", ("cpu", 0)), ("gpu", ("gpu", 0)), ("cuda:1", ("gpu", 1)), ("TPU:3", ("tpu", 3))],
)
def test_device_names(typed: str, expected: tuple[str, int]) -> None:
    assert jax_backend.canonical_device(typed) == expected


@pytest.mark.parametrize("typed", ["quantum", "gpu:x", "npu:0"])
def test_unknown_device_names_are_refused(typed: str) -> None:
    with pytest.raises(UsageError, match="use cpu, gpu"):
        jax_backend.canonical_device(typed)


def test_discovery_lists_tpus_through_jax() -> None:
    from crossinfer.backends.jax_entry import probe

    fake_jax = types.SimpleNamespace(devices=lambda: TPU_VM("tpu"))
    devices, notes = probe(fake_jax)  # type: ignore[arg-type]
    assert devices == ("tpu:0 (TPU v5 lite)", "tpu:1 (TPU v5 lite)")
    assert any("bf16" in note for note in notes)


# --- through crossinfer's machinery: check (child processes) and optimize's bf16 preset ------


def test_check_and_optimize_run_through_the_jax_backend(tmp_path: Path) -> None:
    from crossinfer.backends.base import Target
    from crossinfer.check import Verdict, check_model
    from crossinfer.passes.base import LabelledSet
    from crossinfer.passes.pipeline import optimize, preset

    artifact = load_model("zoo:digits")
    report = check_model(
        artifact,
        targets=[Target("jax", "cpu")],
        feeds=random_inputs(artifact.inputs, batch=2, seed=0),
    )
    row = report.row("jax:cpu")
    assert row.verdict is Verdict.PASS, row.reason
    assert row.placement is not None and row.placement["devices"] == {"cpu": artifact.node_count}
    passes, runtime = preset(Target("jax", "cpu"), "bf16")
    assert passes == () and runtime is Precision.BF16
    data = zoo_dataset("zoo:digits")
    assert data is not None
    optimized = optimize(
        artifact,
        target=Target("jax", "cpu"),
        passes=[],
        runtime_precision=runtime,
        out_dir=tmp_path,
        dataset=LabelledSet(data.inputs, data.labels, data.description),
        measure_seconds=0.5,
        measure_batch=16,
    )
    _, bf16 = optimized.steps
    assert bf16.precision is Precision.BF16 and bf16.parity_passed, bf16.reasons
    assert bf16.accuracy_drop is not None and bf16.accuracy_drop < 0.02
