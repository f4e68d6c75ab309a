"""Backend options as tune knobs: torch's modes per device, the candidates and keys they make,
quick screening modes at one batch size, the spec and the store carrying the mode, compile
seconds in the results and the report, and the target filters keeping other targets idle."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterator
from pathlib import Path

import onnx
import pytest
from rich.console import Console

import fake_backends
from conftest import linear_model
from crossinfer.backends.base import Precision, Target, register_backend, unregister_backend
from crossinfer.errors import UsageError
from crossinfer.model import load_model
from crossinfer.report.figures import throughput_vs_batch
from crossinfer.spec import load_spec
from crossinfer.store import ResultStore
from crossinfer.tune.config import TuneConfig, device_matches, wanted
from crossinfer.tune.constraints import Constraints, Metrics, Objective, Scorer, merge_metrics
from crossinfer.tune.recommend import rank_for
from crossinfer.tune.render import render_tune
from crossinfer.tune.runner import tune
from crossinfer.tune.space import Candidate, Knobs, Variant, build_space, knob_grid
from crossinfer.tune.strategies import default_budget, quick

EAGER = Knobs(options=(("mode", "eager"),))
COMPILE = Knobs(options=(("mode", "compile"),))
CUDAGRAPHS = Knobs(options=(("mode", "cudagraphs"),))
COMPILED_GRAPHS = Knobs(options=(("mode", "compile-cudagraphs"),))
AUTOTUNE = Knobs(options=(("mode", "compile"), ("compile_mode", "max-autotune-no-cudagraphs")))


def test_torch_modes_per_device_and_strategy() -> None:
    # on CUDA, inductor's kernels are captured (compile-cudagraphs) in place of plain compile
    assert knob_grid("torch", 4, "cuda") == (EAGER, CUDAGRAPHS, COMPILED_GRAPHS)
    assert knob_grid("torch", 4, "cuda:1", exhaustive=True) == (
        EAGER,
        CUDAGRAPHS,
        COMPILED_GRAPHS,
        COMPILE,
        AUTOTUNE,
    )
    # CUDA graphs need CUDA; max-autotune is for accelerators, and only when asked for
    assert knob_grid("torch", 4, "cpu") == (EAGER, COMPILE)
    assert knob_grid("torch", 4, "cpu", exhaustive=True) == (EAGER, COMPILE)
    assert knob_grid("torch", 4, "mps") == (EAGER, COMPILE)
    # jax's one option is a numeric precision, not a speed knob; ORT has threads only
    assert knob_grid("jax", 4, "gpu:0") == (Knobs(),)
    assert all(not k.options for k in knob_grid("onnxruntime", 4, "cpu"))


def test_modes_make_candidates_whose_key_and_session_options_carry_them(tmp_path: Path) -> None:
    variant = Variant(
        Target("torch", "cuda"), "fp16", Precision.FP16, tmp_path / "m.onnx", "0" * 64
    )
    space = build_space([variant], (1, 8), batchable=True, cores=2)
    assert len(space) == 6  # 2 batch sizes x 3 modes
    keys = [c.key for c in space.candidates]
    assert "torch:cuda/fp16/batch 8/mode=cudagraphs, default threads" in keys
    compiled = space.find(variant, 8, COMPILED_GRAPHS)
    assert compiled is not None
    assert dict(compiled.options.extra) == {"mode": "compile-cudagraphs"}
    assert compiled.options.precision is Precision.FP16
    assert compiled.to_dict()["knobs"]["options"] == {"mode": "compile-cudagraphs"}
    assert compiled.knobs.compiles and not EAGER.compiles and not Knobs().compiles
    exhaustive = build_space([variant], (1, 8), batchable=True, cores=2, exhaustive=True)
    assert len(exhaustive) == 10


def test_options_times_the_knob_grid() -> None:
    register_backend(fake_backends.TOY_ENTRY)
    try:
        # the toy has threads/instances and no options: its grid is unchanged
        assert knob_grid("toy", 2, "cpu") == (Knobs(threads=2), Knobs(threads=1, instances=2))
    finally:
        unregister_backend("toy")


def _metrics(throughput: float, compile_s: float | None = None) -> Metrics:
    return Metrics(
        throughput=throughput,
        p50_ms=1.0,
        p99_ms=2.0,
        percentiles_ms={},
        peak_rss_mb=100.0,
        energy_j_per_inference=None,
        energy_method="not measured",
        compile_s=compile_s,
    )


def test_quick_screens_modes_at_one_batch_size_then_climbs_in_the_best(tmp_path: Path) -> None:
    variant = Variant(
        Target("torch", "cuda"), "fp16", Precision.FP16, tmp_path / "m.onnx", "0" * 64
    )
    sizes = (1, 4, 16, 64, 256)
    space = build_space([variant], sizes, batchable=True, cores=2)
    mode_speed = {"eager": 1.0, "compile-cudagraphs": 2.0, "cudagraphs": 1.5}
    measured: list[Candidate] = []

    def measure(candidate: Candidate) -> Metrics:
        measured.append(candidate)
        mode = candidate.knobs.extra["mode"]
        # throughput grows with the batch up to 64, in every mode
        batch_term = 1.0 - abs(math.log2(candidate.batch_size) - 6) / 10
        return _metrics(1000 * mode_speed[mode] * batch_term)

    outcome = quick(
        space, measure, rank_for(Constraints(), Scorer(Objective.THROUGHPUT)), budget=15
    )
    # screened in eager (compiles nothing) at the middle batch size
    assert measured[0].knobs == EAGER and measured[0].batch_size == 16
    other_modes = [c for c in measured if c.knobs != COMPILED_GRAPHS]
    assert {c.batch_size for c in other_modes} == {16}  # modes tried at batch 16 only
    best = max(outcome.measured.items(), key=lambda item: item[1].throughput if item[1] else 0)
    assert best[0] == "torch:cuda/fp16/batch 64/mode=compile-cudagraphs, default threads"
    skipped = outcome.skipped["torch:cuda/fp16/batch 64/mode=cudagraphs, default threads"]
    assert "at batch 16 only" in skipped and "mode=compile-cudagraphs" in skipped


def test_the_default_budget_leaves_room_for_the_modes(tmp_path: Path) -> None:
    variants = [
        Variant(Target("torch", "cuda"), r, Precision.FP32, tmp_path / f"{r}.onnx", r)
        for r in ("fp32", "fp16", "bf16")
    ]
    space = build_space(variants, (1, 64, 256), batchable=True, cores=2)
    assert len(space) == 27
    # a screen per variant, two climbs, and the two other modes of the two variants climbed
    assert default_budget(space) == 3 + 2 + 2 * 2


def test_merged_runs_keep_the_larger_compile_time() -> None:
    merged = merge_metrics(_metrics(10.0, 30.0), _metrics(12.0, 4.0))
    assert merged.compile_s == 30.0 and merged.throughput == 11.0
    assert merge_metrics(_metrics(10.0), _metrics(12.0, 4.0)).compile_s == 4.0


def test_device_filter() -> None:
    assert device_matches("cuda", "cuda") and device_matches("cuda:1", "cuda")
    assert device_matches("gpu.0", "gpu") and device_matches("gpu:0", "gpu")
    assert not device_matches("cpu", "cuda") and not device_matches("cuda", "cuda:1")
    config = TuneConfig(backends=("torch",), devices=("cuda",))
    assert wanted(Target("torch", "cuda:1"), config)
    assert not wanted(Target("torch", "cpu"), config)
    assert not wanted(Target("jax", "gpu:0"), config)
    # jax lists its CUDA GPUs as gpu:N (its entry says so); OpenVINO's gpu is an Intel GPU
    cuda = TuneConfig(devices=("cuda",))
    assert wanted(Target("jax", "gpu:0"), cuda) and wanted(Target("torch", "cuda"), cuda)
    assert not wanted(Target("openvino", "gpu"), cuda) and not wanted(Target("jax", "cpu"), cuda)
    with pytest.raises(UsageError, match="--device"):
        TuneConfig(devices=(" ",))


# --------------------------------------------------------------------------- a tune, with fakes


@pytest.fixture
def modal(tmp_path: Path) -> Iterator[Path]:
    register_backend(fake_backends.MODAL_ENTRY)
    path = tmp_path / "linear.onnx"
    onnx.save(linear_model(), path)
    try:
        yield path
    finally:
        unregister_backend("modal")


def test_a_tune_of_modes_stores_them_and_writes_them_into_the_spec(
    modal: Path, tmp_path: Path
) -> None:
    config = TuneConfig(
        targets=(Target("modal", "fakegpu"),),
        precisions=("fp32",),
        batch_sizes=(1, 4),
        strategy="exhaustive",
        measure_ms=200,
        confirm=0,
        timeout_s=120,
    )
    events: list[str] = []
    with ResultStore(tmp_path / "store.sqlite") as store:
        result = tune(
            load_model(modal), config, out_dir=tmp_path / "out", store=store, on_event=events.append
        )
        rows = store.query(backend="modal")
        assert store.count() == 6
        # run again: each candidate reads back its own mode's row, none another mode's
        again = tune(load_model(modal), config, out_dir=tmp_path / "again", store=store)
        assert store.count() == 6
    for key, metrics in again.outcome.measured.items():
        first = result.outcome.measured[key]
        assert metrics is not None and metrics.resumed and first is not None
        assert metrics.compile_s == first.compile_s and metrics.throughput == first.throughput
    measured = {k: m for k, m in result.outcome.measured.items() if m is not None}
    assert len(measured) == len(result.space) == 6  # 2 batch sizes x eager, compile, capture
    for key, metrics in measured.items():
        assert metrics.compile_s is not None
        if "mode=eager" in key:
            assert metrics.compile_s < fake_backends.MODAL_COMPILE_S
        else:  # the session's own figure for its first shape, plus loading
            assert metrics.compile_s >= fake_backends.MODAL_COMPILE_S
    # the store keeps each row's mode, and the session's own account of it
    modes = sorted(r.result.settings["options"]["mode"] for r in rows)
    assert modes == ["capture", "capture", "compile", "compile", "eager", "eager"]
    assert {r.result.settings["runtime"]["mode"] for r in rows} == {"eager", "compile", "capture"}
    # progress names what compiles
    assert any(e.strip().startswith("2 compiling modal:fakegpu/fp32 mode=compile") for e in events)

    pick = result.recommendation.pick
    assert pick is not None and result.spec_path is not None
    spec = load_spec(result.spec_path)
    assert dict(spec.options.extra) == pick.candidate.knobs.extra
    assert spec.options.extra["mode"] in ("eager", "compile", "capture")
    assert "mode=" in spec.source["candidate"]

    data = json.loads((tmp_path / "out" / "tune.json").read_text())
    figures = [c["metrics"]["compile_s"] for c in data["recommendation"]["candidates"]]
    assert all(f is not None for f in figures) and len(figures) == 6
    # confirm=0: each candidate measured once, so the total is the sum of the figures shown
    assert data["compile_s_total"] == pytest.approx(sum(figures))
    assert again.compile_s_total == 0.0  # all read back: nothing compiled
    html = (tmp_path / "out" / "report.html").read_text()
    assert "compile s" in html and "mode=capture" in html
    # one line per mode in the throughput figure, not the three merged into one
    names = sorted(trace.name for trace in throughput_vs_batch(data).data)
    assert names == [
        f"modal:fakegpu/fp32 (mode={mode}, default threads)"
        for mode in ("capture", "compile", "eager")
    ]


def test_target_and_device_filters_leave_other_targets_alone(modal: Path, tmp_path: Path) -> None:
    for config in (
        TuneConfig(targets=(Target("modal", "cpu"),), precisions=("fp32", "bf16")),
        TuneConfig(backends=("modal",), devices=("cpu",), precisions=("fp32", "bf16")),
    ):
        events: list[str] = []
        result = tune(
            load_model(modal),
            dataclasses.replace(
                config, batch_sizes=(1,), measure_ms=200, confirm=0, budget=2, timeout_s=120
            ),
            out_dir=tmp_path / "out",
            store=None,
            on_event=events.append,
        )
        assert result.check is not None
        checked = [row.target for row in result.check.rows if not row.is_reference]
        assert checked == ["modal:cpu"]
        optimized = [e for e in events if e.startswith("optimize:")]
        assert optimized == ["optimize: modal:cpu/bf16"]
        assert {str(v.target) for v in result.variants} == {"modal:cpu"}


def test_a_filter_that_keeps_nothing_says_what_there_was(modal: Path, tmp_path: Path) -> None:
    config = TuneConfig(backends=("modal",), devices=("cuda",))
    with pytest.raises(UsageError, match=r"--device cuda.*modal:cpu, modal:fakegpu"):
        tune(load_model(modal), config, out_dir=tmp_path / "out", store=None)


def test_render_shows_compile_seconds(modal: Path, tmp_path: Path) -> None:
    config = TuneConfig(
        targets=(Target("modal", "cpu"),),
        precisions=("fp32",),
        batch_sizes=(1,),
        strategy="exhaustive",
        measure_ms=200,
        confirm=0,
        timeout_s=120,
    )
    result = tune(load_model(modal), config, out_dir=tmp_path / "out", store=None)
    console = Console(record=True, width=200)
    render_tune(result, console)
    text = console.export_text()
    assert "compile s" in text
    compiled = result.outcome.measured["modal:cpu/fp32/batch 1/mode=compile, default threads"]
    assert compiled is not None and compiled.compile_s is not None
    assert f"{compiled.compile_s:,.1f}" in text
    # at 80 columns nothing is cut: the candidate whole, the settings wrapped in their column
    narrow = Console(record=True, width=80)
    render_tune(result, narrow)
    lines = narrow.export_text().splitlines()
    table = lines[: lines.index(next(line for line in lines if line.startswith("  modal:")))]
    assert all(len(line) <= 80 for line in table)
    assert not any("…" in line for line in table), "\n".join(table)
    assert sum(line.startswith(" modal:cpu/fp32/batch 1 ") for line in table) == len(
        [r for r in result.recommendation.results if r.metrics is not None]
    )
