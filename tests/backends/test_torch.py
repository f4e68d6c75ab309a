"""The torch backend on the CPU: conversion (onnx2torch and our own converters and rewrites),
precisions, modes, errors, and `check` through it. CUDA paths are measured by
benchmarks/gpu_torch.py on the GPU machine; here their CPU halves and their refusals are tested.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from conftest import linear_model, make_model
from crossinfer.backends.base import (
    InputPlacement,
    Precision,
    SessionOptions,
    Target,
    get_backend,
)
from crossinfer.backends.onnx_to_torch import (
    convert,
    fold_batch_norms,
    fuse_attention_chains,
    fuse_conv_relu_chains,
    unsupported_ops,
)
from crossinfer.backends.torch import TorchBackend, TorchSettings, resolve_device
from crossinfer.bench.pool import SamplePool, StagedPool, default_placement
from crossinfer.check import Verdict, check_model, default_tolerance, random_inputs
from crossinfer.check.parity import compare_outputs
from crossinfer.errors import CompileError, DeviceUnavailableError, InputError, UsageError
from crossinfer.model import ModelArtifact, load_model

F = TensorProto.FLOAT
RNG = np.random.default_rng(11)


def _save(tmp_path: Path, model: onnx.ModelProto, name: str = "m.onnx") -> ModelArtifact:
    path = tmp_path / name
    onnx.save(model, path)
    return load_model(path)


def _vi(name: str, shape: list[int | str], elem: int = F) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def _matches_reference(
    artifact: ModelArtifact, precision: Precision = Precision.FP32, **extra: str
) -> dict[str, object]:
    feeds = random_inputs(artifact.inputs, batch=3, seed=1)
    reference = get_backend("reference").prepare(artifact, "cpu").run(feeds)
    session = TorchBackend().prepare(
        artifact, "cpu", SessionOptions(precision=precision, extra=extra)
    )
    outputs = session.run(feeds)
    for comparison in compare_outputs(outputs, reference, default_tolerance(precision)):
        assert comparison.passed, comparison.reason
    info = session.describe()
    session.close()
    return info


# --- our own converters: what onnx2torch 1.5 lacks --------------------------------------------


@pytest.mark.parametrize(
    ("node", "opset", "out_shape"),
    [
        (helper.make_node("Gelu", ["x"], ["y"]), 20, ["batch", 4, 6]),
        (helper.make_node("Gelu", ["x"], ["y"], approximate="tanh"), 20, ["batch", 4, 6]),
        (helper.make_node("ReduceMean", ["x", "axes"], ["y"], keepdims=0), 18, ["batch", 4]),
        (helper.make_node("ReduceMax", ["x", "axes"], ["y"]), 18, ["batch", 4, 1]),
        (helper.make_node("ReduceL2", ["x", "axes"], ["y"], keepdims=0), 18, ["batch", 4]),
        (helper.make_node("Mish", ["x"], ["y"]), 18, ["batch", 4, 6]),
        # 4-D: onnx's ReferenceEvaluator drops the channel dim of a 3-D GlobalMaxPool
        (helper.make_node("GlobalMaxPool", ["x"], ["y"]), 17, ["batch", 4, 1, 1]),
    ],
)
def test_crossinfer_converters_match_the_reference(
    node: onnx.NodeProto, opset: int, out_shape: list[int | str], tmp_path: Path
) -> None:
    axes = (
        [numpy_helper.from_array(np.array([-1], np.int64), "axes")] if len(node.input) > 1 else []
    )
    in_shape: list[int | str] = ["batch", 4, 6] if len(out_shape) < 4 else ["batch", 4, 3, 3]
    model = make_model([node], [_vi("x", in_shape)], [_vi("y", out_shape)], axes, opset=opset)
    artifact = _save(tmp_path, model)
    assert unsupported_ops(artifact.load_proto()) == ()
    info = _matches_reference(artifact)
    assert info["crossinfer_converters"] == [node.op_type]


def test_gather_with_negative_and_scalar_indices_matches_the_reference(tmp_path: Path) -> None:
    table = numpy_helper.from_array(RNG.standard_normal((5, 3)).astype(np.float32), "table")
    ids = numpy_helper.from_array(np.array([[-1, 0], [2, -5]], np.int64), "ids")
    first = numpy_helper.from_array(np.array(0, np.int64), "first")
    model = make_model(
        [
            helper.make_node("Gather", ["table", "ids"], ["rows"], axis=0),
            helper.make_node("Add", ["rows", "x"], ["y"]),
            helper.make_node("Gather", ["x", "first"], ["z"], axis=1),
        ],
        [_vi("x", [2, 2, 3])],
        [_vi("y", [2, 2, 3]), _vi("z", [2, 3])],
        [table, ids, first],
    )
    info = _matches_reference(_save(tmp_path, model))
    assert info["rewritten_for_no_host_reads"] == 2


def test_an_op_without_converter_is_named_before_and_at_prepare(tmp_path: Path) -> None:
    model = make_model(
        [helper.make_node("Hardmax", ["x"], ["y"])], [_vi("x", [2, 3])], [_vi("y", [2, 3])]
    )
    artifact = _save(tmp_path, model)
    compat = TorchBackend().supports(artifact, "cpu")
    assert not compat.supported and compat.unsupported_ops == ("Hardmax",)
    assert "no ONNX-to-torch converter for op type(s) Hardmax" in compat.reason
    with pytest.raises(CompileError, match="Hardmax") as info:
        TorchBackend().prepare(artifact, "cpu")
    assert info.value.unsupported_ops == ("Hardmax",)


# --- graph rewrites ------------------------------------------------------------------------


def test_batchnorm_folding_and_conv_relu_fusion_keep_fp32_parity() -> None:
    artifact = load_model("zoo:resnet18")
    folded, count = fold_batch_norms(artifact.load_proto())
    assert count == 20
    assert not any(n.op_type == "BatchNormalization" for n in folded.graph.node)
    conversion = convert(artifact.load_proto())
    fused = fuse_conv_relu_chains(conversion.module)
    assert fused == 17  # 9 Conv->ReLU, 8 Conv->Add->ReLU (one per basic block)
    feeds = random_inputs(artifact.inputs, batch=2, seed=0)
    expected = get_backend("onnxruntime").prepare(artifact, "cpu").run(feeds)["logits"]
    with torch.inference_mode():
        got = conversion.module(torch.from_numpy(feeds["pixel_values"])).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-3)


def test_attention_and_bias_matmuls_fuse_with_parity_under_a_padding_mask() -> None:
    artifact = load_model("zoo:bert-base?layers=2&seq=16")
    plain = convert(artifact.load_proto())
    fused = convert(artifact.load_proto(), fuse_attention=True, fuse_linear=True)
    assert fused.fused_attention == 2  # one per layer
    assert fused.fused_linear == 2 * 6 + 1  # Q, K, V, output, FFN up and down; the pooler
    assert plain.fused_attention == plain.fused_linear == 0
    kinds = [type(m).__name__ for m in fused.module.modules()]
    assert kinds.count("Attention") == 2 and "OnnxSoftmaxV1V11" not in kinds
    assert not any(isinstance(m, torch.nn.Softmax) for m in fused.module.modules())
    feeds = random_inputs(artifact.inputs, batch=3, seed=2)
    feeds["attention_mask"] = np.ones_like(feeds["attention_mask"])
    feeds["attention_mask"][1, 9:] = 0  # a padded row: the mask must reach the fused kernel
    tensors = [torch.from_numpy(feeds[spec.name]) for spec in artifact.inputs]
    with torch.inference_mode():
        want = plain.module(*tensors)
        got = fused.module(*tensors)
    for a, b in zip(want, got, strict=True):
        np.testing.assert_allclose(b.numpy(), a.numpy(), atol=1e-5, rtol=1e-4)
    # the padded positions changed the answer (the mask was not dropped on the way)
    feeds["attention_mask"][1, 9:] = 1
    with torch.inference_mode():
        unmasked = fused.module(*[torch.from_numpy(feeds[s.name]) for s in artifact.inputs])
    assert not np.allclose(unmasked[0][1].numpy(), got[0][1].numpy(), atol=1e-3)


def test_attention_chain_with_a_second_user_of_the_scores_is_left_alone(tmp_path: Path) -> None:
    scale = numpy_helper.from_array(np.array(8.0, np.float32), "scale")
    model = make_model(
        [
            helper.make_node("MatMul", ["q", "k"], ["s"]),
            helper.make_node("Div", ["s", "scale"], ["d"]),
            helper.make_node("Softmax", ["d"], ["p"], axis=-1),
            helper.make_node("MatMul", ["p", "v"], ["y"]),
            helper.make_node("Identity", ["d"], ["scores"]),  # the scaled scores are an output
        ],
        [_vi("q", [1, 2, 4, 8]), _vi("k", [1, 2, 8, 4]), _vi("v", [1, 2, 4, 8])],
        [_vi("y", [1, 2, 4, 8]), _vi("scores", [1, 2, 4, 4])],
        [scale],
    )
    assert convert(model, fuse_attention=True).fused_attention == 0
    artifact = _save(tmp_path, model)
    session = TorchBackend().prepare(artifact, "cpu", SessionOptions(extra={"fuse_attention": "1"}))
    assert session.describe()["fused_attention"] == 0
    module = convert(artifact.load_proto()).module
    assert fuse_attention_chains(module) == 0


def test_batchnorm_without_constant_parameters_is_left_alone(tmp_path: Path) -> None:
    w = numpy_helper.from_array(RNG.standard_normal((2, 1, 1, 1)).astype(np.float32), "w")
    stats = [numpy_helper.from_array(np.ones(2, np.float32), n) for n in ("b", "m", "v")]
    model = make_model(
        [
            helper.make_node("Conv", ["x", "w"], ["c"]),
            helper.make_node("BatchNormalization", ["c", "scale", "b", "m", "v"], ["y"]),
        ],
        [_vi("x", [1, 1, 2, 2]), _vi("scale", [2])],
        [_vi("y", [1, 2, 2, 2])],
        [w, *stats],
    )
    _, count = fold_batch_norms(model)
    assert count == 0


# --- precisions and settings ------------------------------------------------------------------


def test_bert_fp16_converts_weights_and_bf16_defaults_to_autocast() -> None:
    artifact = load_model("zoo:bert-base?layers=2&seq=16")
    fp16 = _matches_reference(artifact, Precision.FP16)
    bf16 = _matches_reference(artifact, Precision.BF16)
    converted = _matches_reference(artifact, Precision.BF16, autocast="0")
    assert fp16["precision"] == "fp16 (converted weights)"
    assert fp16["retargeted_casts"] == 1  # the attention mask's Cast to float
    assert bf16["precision"] == "bf16 (autocast, FP32 weights)"
    assert converted["precision"] == "bf16 (converted weights)"


def test_tf32_on_cpu_is_fp32_and_says_so(tmp_path: Path) -> None:
    info = _matches_reference(load_model("zoo:mlp"), Precision.TF32)
    assert info["precision"].startswith("tf32 (FP32 weights")


def test_compile_mode_reports_compile_time_per_shape_and_caches_under_crossinfer(
    zoo_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    artifact = load_model("zoo:mlp")
    session = TorchBackend().prepare(artifact, "cpu", SessionOptions(extra={"mode": "compile"}))
    feeds = random_inputs(artifact.inputs, batch=2, seed=0)
    expected = get_backend("onnxruntime").prepare(artifact, "cpu").run(feeds)["logits"]
    np.testing.assert_allclose(session.run(feeds)["logits"], expected, atol=1e-4, rtol=1e-3)
    session.run(feeds)
    info = session.describe()
    assert list(info["compile_s"]) == ["2x784"] and info["compile_s"]["2x784"] > 0
    assert info["inductor_cache"] == str(zoo_cache / "torchinductor")
    assert any((zoo_cache / "torchinductor").iterdir())
    session.close()


def test_device_tensors_path_matches_numpy_path() -> None:
    artifact = load_model("zoo:mlp")
    session = TorchBackend().prepare(artifact, "cpu")
    feeds = random_inputs(artifact.inputs, batch=4, seed=2)
    on_device = session.prepare_inputs(feeds)
    out = session.run_tensors(on_device)["logits"]
    assert out.dtype == torch.float32
    np.testing.assert_array_equal(out.numpy(), session.run(feeds)["logits"])
    (bound,) = session.bind(feeds)()
    np.testing.assert_array_equal(bound.numpy(), out.numpy())


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            {"mode": "jit"},
            "torch mode 'jit' is not one of eager, compile, cudagraphs, compile-cudagraphs",
        ),
        ({"compile_mode": "fast"}, "torch compile_mode 'fast' is not one of"),
        ({"channels_last": "yes"}, "torch channels_last 'yes' must be 0, 1 or auto"),
        ({"autocast": "maybe"}, "torch option autocast='maybe' must be 0, 1 or auto"),
        ({"threads_per_core": "2"}, "torch does not know option(s) threads_per_core"),
    ],
)
def test_bad_settings_are_refused_by_name(extra: dict[str, str], message: str) -> None:
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        TorchSettings.from_extra(extra)


@pytest.mark.parametrize("mode", ["cudagraphs", "compile-cudagraphs"])
def test_cudagraphs_needs_cuda(mode: str) -> None:
    with pytest.raises(UsageError, match=f"mode {mode} needs a CUDA device, not cpu"):
        TorchBackend().prepare(load_model("zoo:mlp"), "cpu", SessionOptions(extra={"mode": mode}))


# --- devices ---------------------------------------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_cuda_without_a_gpu_is_unavailable_with_the_reason() -> None:
    backend = TorchBackend()
    (cuda,) = [d for d in backend.devices() if d.name == "cuda"]
    assert not cuda.available and "torch" in cuda.reason
    with pytest.raises(DeviceUnavailableError, match=r"no GPU|CPU-only build"):
        backend.prepare(load_model("zoo:mlp"), "cuda")
    compat = backend.supports(load_model("zoo:mlp"), "cuda:1")
    assert not compat.supported and compat.reason


@pytest.mark.parametrize("name", ["tpu", "cuda:x", "gpu"])
def test_unknown_devices_are_usage_errors(name: str) -> None:
    with pytest.raises(UsageError, match=f"torch knows no device '{name}'"):
        resolve_device(name)


# --- through check -----------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["zoo:mlp", "zoo:bert-base?layers=2&seq=16"])
def test_check_passes_torch_cpu_with_every_node_on_the_cpu(source: str) -> None:
    artifact = load_model(source)
    report = check_model(
        artifact,
        targets=[Target("torch", "cpu")],
        feeds=random_inputs(artifact.inputs, batch=2, seed=0),
    )
    row = report.row("torch:cpu")
    assert row.verdict is Verdict.PASS, row.reason
    assert row.placement is not None
    assert row.placement["primary"] == "cpu" and row.placement["fallback_count"] == 0
    assert set(row.placement["devices"]) == {"cpu"}
    assert row.session["runtime"].startswith("torch ")


def test_check_at_fp16_passes_on_torch_cpu() -> None:
    artifact = load_model("zoo:mlp")
    report = check_model(
        artifact,
        targets=[Target("torch", "cpu")],
        feeds=random_inputs(artifact.inputs, batch=2, seed=0),
        precision=Precision.FP16,
    )
    row = report.row("torch:cpu")
    assert row.verdict is Verdict.PASS, row.reason
    assert row.session["precision"] == "fp16 (converted weights)"


# --- staging for bench's sample pool: the CUDA paths' logic, on the CPU ----------------------


def _linear_session(tmp_path: Path, precision: Precision = Precision.FP32, **extra: str) -> Any:
    artifact = _save(tmp_path, linear_model())
    return TorchBackend().prepare(artifact, "cpu", SessionOptions(precision=precision, extra=extra))


def test_torch_on_cpu_stages_numpy_only_and_says_why(tmp_path: Path) -> None:
    session = _linear_session(tmp_path)
    staging = session.input_staging()
    assert staging.placements == (InputPlacement.NUMPY,)
    assert "pin_memory" in staging.reason and "CUDA" in staging.reason
    assert not staging.fixed_shapes  # eager runs any shape as it comes
    pool = SamplePool.random(session.inputs, count=8)
    staged = StagedPool(pool, session, placement=InputPlacement.PINNED)
    assert staged.placement is InputPlacement.NUMPY
    assert "torch:cpu computes in host memory" in staged.reason
    assert default_placement(session) is InputPlacement.NUMPY
    with pytest.raises(UsageError, match="cannot stage inputs as pinned"):
        session.stage_inputs({"x": np.zeros((2, 8), np.float32)}, placement=InputPlacement.PINNED)
    compiled = _linear_session(tmp_path, mode="compile")
    assert compiled.input_staging().fixed_shapes  # each new shape would compile again


def test_an_fp16_session_takes_fp16_host_inputs_as_the_same_numbers(tmp_path: Path) -> None:
    session = _linear_session(tmp_path, Precision.FP16)
    assert session.input_staging().host_dtypes == {"x": "float16"}
    feeds = random_inputs(session.inputs, batch=4, seed=2)
    as_fp32 = session.run(feeds)
    as_fp16 = session.run({"x": feeds["x"].astype(np.float16)})
    np.testing.assert_array_equal(as_fp16["y"], as_fp32["y"])
    # an FP32 session still refuses FP16 input, naming the cast to make
    with pytest.raises(InputError, match="astype"):
        _linear_session(tmp_path).run({"x": feeds["x"].astype(np.float16)})


@pytest.mark.parametrize(
    ("placement", "strategy"),
    [
        (InputPlacement.PINNED, "gather"),
        (InputPlacement.PINNED, "rows"),
        (InputPlacement.PINNED, "auto"),
        (InputPlacement.DEVICE, "auto"),
    ],
)
def test_staged_lanes_give_what_run_gives(
    tmp_path: Path, placement: InputPlacement, strategy: str
) -> None:
    from crossinfer.backends.torch import _TorchStaged

    session = _linear_session(tmp_path, Precision.FP16)
    pool = SamplePool.random(session.inputs, count=10, seed=4)
    host = StagedPool(pool, session)
    host.load()
    assert host._arrays is not None and host._arrays["x"].dtype == np.float16
    # pin=False: the pinned path's slots, gathers and prefetches without CUDA (no streams)
    staged = _TorchStaged(session, host._arrays, placement, pin=False)
    assert staged.dtypes == {"x": "float16"}
    lane = staged.lane(strategy=strategy)
    if placement is InputPlacement.PINNED:
        # auto: this model's rows are a few bytes, below ROW_COPY_MIN_BYTES: gathered on the host
        assert lane.strategy == ("gather" if strategy == "auto" else strategy)  # type: ignore[union-attr]
    for indices, following in (
        ([2, 3, 4], [5, 6, 0, 1, 2, 9]),  # runs of consecutive rows and single rows
        ([5, 6, 0, 1, 2, 9], [7, 1, 7]),
        ([7, 1, 7], [0]),
        ([0], [4]),  # [4] is copied ahead but not run next: discarded
        ([9, 8], None),
    ):
        out = lane.run(indices, prefetch=following)
        np.testing.assert_array_equal(out["y"], session.run(pool.batch(indices))["y"])
    if placement is InputPlacement.PINNED:
        assert lane.prefetch_hits == 3  # [7, 1, 7], [3] and [0] had been copied ahead
        assert not staged.pool["x"].is_pinned()
    staged.close()
    assert staged.pool == {}


class _FakeEvent:
    def __init__(self, log: list[tuple[str, ...]], name: str) -> None:
        self.log, self.name = log, name

    def synchronize(self) -> None:
        self.log.append(("synchronize", self.name))


class _FakeStream:
    """Stands in for a CUDA stream: records waits and events in one log, in order."""

    def __init__(self, log: list[tuple[str, ...]], name: str) -> None:
        self.log, self.name, self.events = log, name, 0

    def wait_event(self, event: _FakeEvent) -> None:
        self.log.append(("wait", self.name, event.name))

    def synchronize(self) -> None:
        self.log.append(("synchronize", self.name))

    def record_event(self) -> _FakeEvent:
        self.events += 1
        event = _FakeEvent(self.log, f"{self.name}{self.events}")
        self.log.append(("record", self.name, event.name))
        return event


@pytest.mark.parametrize("strategy", ["gather", "rows"])
def test_the_pinned_lanes_stream_ordering(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, strategy: str
) -> None:
    """The CUDA branch of the pinned lane, with streams and events recorded instead of run:
    compute waits for its batch's copy; the next batch is copied (into the other slot) and
    launched before this one's outputs are read back, on the output stream, after this batch's
    compute only; a slot is overwritten only after its last copy and the compute that read it
    (the host waits for the copy only where it gathers into the slot's pinned buffer)."""
    from contextlib import contextmanager

    from crossinfer.backends.torch import _TorchStaged

    log: list[tuple[str, ...]] = []
    compute, copy = _FakeStream(log, "compute"), _FakeStream(log, "copy")

    @contextmanager
    def on_stream(stream: _FakeStream) -> Any:
        log.append(("enter", stream.name))
        yield
        log.append(("leave", stream.name))

    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: compute)
    monkeypatch.setattr(torch.cuda, "stream", on_stream)
    session = _linear_session(tmp_path)
    run_tensors = session.run_tensors

    def logged(feeds: Any) -> Any:
        log.append(("compute", ",".join(str(int(v)) for v in feeds["x"][:, 0])))
        return run_tensors(feeds)

    monkeypatch.setattr(session, "run_tensors", logged)
    pool = SamplePool.random(session.inputs, count=8, seed=5)
    host = StagedPool(pool, session)
    host.load()
    assert host._arrays is not None
    host._arrays["x"][:, 0] = np.arange(8)  # row i starts with i: the log names the rows
    staged = _TorchStaged(session, host._arrays, InputPlacement.PINNED, pin=False)
    lane = staged.lane(strategy=strategy)
    out = _FakeStream(log, "out")
    # the CUDA branch, on the CPU
    lane._cuda, lane._stream, lane._out_stream = True, copy, out  # type: ignore[union-attr]
    lane.run([1, 4], prefetch=[6, 2])
    lane.run([6, 2], prefetch=[3, 0])
    lane.run([3, 0])
    assert lane.prefetch_hits == 2
    assert log == [
        # batch [1, 4] into slot 0: gathered, copied on the copy stream
        ("enter", "copy"),
        ("record", "copy", "copy1"),
        ("leave", "copy"),
        ("wait", "compute", "copy1"),  # compute waits for that copy only
        ("compute", "1,4"),
        ("record", "compute", "compute1"),  # slot 0 read by this compute
        # [6, 2] into slot 1 and launched while [1, 4] computes
        ("enter", "copy"),
        ("record", "copy", "copy2"),
        ("leave", "copy"),
        ("wait", "compute", "copy2"),
        ("compute", "6,2"),
        ("record", "compute", "compute2"),
        # [1, 4]'s outputs come back on the output stream, after its own compute only
        ("enter", "out"),
        ("wait", "out", "compute1"),
        ("leave", "out"),
        ("synchronize", "out"),
        # [3, 0] back into slot 0: its pinned buffer's copy done, its last compute done
        *([("synchronize", "copy1")] if strategy == "gather" else []),
        ("enter", "copy"),
        ("wait", "copy", "compute1"),
        ("record", "copy", "copy3"),
        ("leave", "copy"),
        ("wait", "compute", "copy3"),
        ("compute", "3,0"),
        ("record", "compute", "compute3"),
        ("enter", "out"),
        ("wait", "out", "compute2"),
        ("leave", "out"),
        ("synchronize", "out"),
        ("enter", "out"),
        ("wait", "out", "compute3"),
        ("leave", "out"),
        ("synchronize", "out"),
    ]


def test_a_shape_inductor_fails_on_is_compiled_again_without_its_pattern_matcher(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """torch 2.11's attention-fusion pattern fails to trace BERT's mask at batch 1 on CUDA (H200,
    BackendCompilerFailed); that shape, and only it, is compiled with the pattern matcher off."""
    import torch._dynamo.config as dynamo_config
    import torch._dynamo.exc as dynamo_exc

    from crossinfer.backends.torch import _Inductor

    compiled: list[dict[str, Any]] = []

    def fake_compile(module: Any, **kwargs: Any) -> Any:
        compiled.append(kwargs)
        plain = kwargs.get("options", {}).get("pattern_matcher") is False

        def run(x: torch.Tensor) -> torch.Tensor:
            if not plain and x.shape[0] == 1:
                raise dynamo_exc.BackendCompilerFailed(
                    fake_compile, RuntimeError("Attempting to broadcast a dimension"), None
                )
            return module(x)

        return run

    monkeypatch.setattr(torch, "compile", fake_compile)
    monkeypatch.setattr(dynamo_config, "recompile_limit", 8)
    notes: list[str] = []
    inductor = _Inductor(torch.nn.Linear(3, 2), "default", notes)
    assert dynamo_config.recompile_limit == 64  # serve's 9 padded sizes all compile
    x4, x1 = torch.ones(4, 3), torch.ones(1, 3)
    assert inductor([x4])[0].shape == (4, 2) and notes == []
    assert inductor([x1])[0].shape == (1, 2)
    assert len(notes) == 1 and "[[1, 3]]" in notes[0] and "pattern matcher off" in notes[0]
    assert compiled[1]["options"]["pattern_matcher"] is False and "mode" not in compiled[1]
    inductor([x1])
    inductor([x4])
    assert len(compiled) == 2 and len(notes) == 1  # the fallback is made once, used for [1, 3]


def test_a_cuda_run_uploads_and_downloads_on_its_own_stream_outside_the_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`run` on CUDA, with streams and events recorded instead of run (on the CPU): the upload
    is on the caller's side stream, compute waits for it under the session lock only, and the
    download waits for the compute, back on the side stream, after the lock is released."""
    from contextlib import contextmanager

    log: list[tuple[str, ...]] = []
    compute, side = _FakeStream(log, "compute"), _FakeStream(log, "side")

    @contextmanager
    def on_stream(stream: _FakeStream) -> Any:
        log.append(("enter", stream.name))
        yield
        log.append(("leave", stream.name))

    session = _linear_session(tmp_path)
    feeds = random_inputs(session.inputs, batch=3, seed=1)
    expected = session.run(feeds)  # the CPU path
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: compute)
    monkeypatch.setattr(torch.cuda, "stream", on_stream)
    monkeypatch.setattr(torch.Tensor, "record_stream", lambda self, stream: None)
    monkeypatch.setattr(session, "_thread_stream", lambda: side)

    class LoggedLock:
        def __enter__(self) -> None:
            log.append(("lock",))

        def __exit__(self, *exc: object) -> None:
            log.append(("unlock",))

    monkeypatch.setattr(session, "_lock", LoggedLock())
    forward = session._forward

    def logged(tensors: Any) -> Any:
        log.append(("compute",))
        return forward(tensors)

    monkeypatch.setattr(session, "_forward", logged)
    out = session._run_overlapped(feeds)
    np.testing.assert_allclose(out["y"], expected["y"], rtol=1e-6)
    assert log == [
        ("enter", "side"),  # upload (and cast) on the caller's stream
        ("leave", "side"),
        ("record", "side", "side1"),
        ("lock",),
        ("wait", "compute", "side1"),  # compute waits for that upload only
        ("compute",),
        ("record", "compute", "compute1"),
        ("unlock",),  # the lock is not held for the download
        ("wait", "side", "compute1"),
        ("enter", "side"),
        ("leave", "side"),
    ]
