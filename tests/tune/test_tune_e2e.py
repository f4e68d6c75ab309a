"""End to end on real runtimes: a quick tune of zoo:digits on ONNX Runtime (FP32 and INT8) writes
a spec that loads, a report and store rows; run again it resumes from the store; interrupted, it
keeps what it measured."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from crossinfer.model import load_model
from crossinfer.spec import load_spec
from crossinfer.store import ResultStore
from crossinfer.tune.constraints import Constraints
from crossinfer.tune.runner import NAIVE_DEFAULT, TuneConfig, TuneResult, tune

CONFIG = TuneConfig(
    backends=("onnxruntime",),
    precisions=("fp32", "int8"),
    batch_sizes=(1, 8),
    strategy="quick",
    constraints=Constraints(max_accuracy_drop=0.05),
    measure_ms=300,
    optimize_seconds=0.3,
    timeout_s=300,
    # confirming runs re-rank on fresh figures, so which candidates a second run confirms could
    # differ: resume is tested without them (the CLI demo test runs them on a real runtime)
    confirm=0,
)


@pytest.fixture(scope="module")
def tuned(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TuneResult, Path, Path]]:
    root = tmp_path_factory.mktemp("tune")
    store_path = root / "results.sqlite"
    with ResultStore(store_path) as store:
        result = tune(load_model("zoo:digits"), CONFIG, out_dir=root / "out", store=store)
    yield result, root / "out", store_path


def test_quick_tune_recommends_and_writes_a_spec_that_loads(
    tuned: tuple[TuneResult, Path, Path],
) -> None:
    result, out, _ = tuned
    pick = result.recommendation.pick
    assert pick is not None and pick.metrics is not None and pick.metrics.throughput > 0
    assert [v.key for v in result.variants] == ["onnxruntime:cpu/fp32", "onnxruntime:cpu/int8"]
    int8 = result.variants[1]
    assert int8.accuracy is not None and int8.accuracy > 0.9  # digits' labelled set, top-1
    assert len(result.space) == 8  # 2 variants x 2 batch sizes x 2 knob settings (2 cores)
    measured = [m for m in result.outcome.measured.values() if m is not None]
    assert 1 <= len(measured) <= len(result.space)
    assert result.baseline is not None and result.baseline.key == NAIVE_DEFAULT
    assert result.spec_path is not None and result.spec_path.parent == out
    spec = load_spec(result.spec_path)  # hash checked against the copied model
    assert spec.backend == "onnxruntime" and spec.device == "cpu"
    assert spec.model.parent == out and spec.model_sha256 == pick.candidate.variant.model_sha256
    assert spec.options.threads == pick.candidate.knobs.threads
    assert spec.batching.instances == pick.candidate.knobs.instances
    assert spec.measured["throughput"] == pytest.approx(pick.metrics.throughput)
    assert spec.source["candidate"] == pick.key and spec.source["objective"] == "throughput"
    assert (out / "report.html").stat().st_size > 1_000_000  # plotly.js inlined
    for candidate in result.recommendation.results:  # every candidate has its reason
        assert candidate.reasons, candidate.key


def test_measurements_are_stored_and_a_second_run_resumes(
    tuned: tuple[TuneResult, Path, Path], tmp_path: Path
) -> None:
    result, _, store_path = tuned
    with ResultStore(store_path) as store:
        before = store.count()
        assert before == len(result.stored_ids) >= 1
        again = tune(load_model("zoo:digits"), CONFIG, out_dir=tmp_path / "again", store=store)
        assert store.count() == before  # nothing measured twice
    resumed = [m for m in again.outcome.measured.values() if m is not None]
    assert resumed and all(m.resumed for m in resumed)
    assert again.recommendation.pick is not None and result.recommendation.pick is not None
    assert again.recommendation.pick.key == result.recommendation.pick.key


def test_an_interrupted_tune_keeps_what_it_measured(tmp_path: Path) -> None:
    lines: list[str] = []

    def interrupt_after_two(text: str) -> None:
        lines.append(text)
        if sum(1 for line in lines if "samples/s" in line) == 2:
            raise KeyboardInterrupt

    config = TuneConfig(
        backends=("onnxruntime",),
        precisions=("fp32",),
        batch_sizes=(1, 8),
        measure_ms=300,
        confirm=0,  # what is read back, not what a second run adds, is under test
    )
    with ResultStore(tmp_path / "store.sqlite") as store:
        with pytest.raises(KeyboardInterrupt):
            tune(
                load_model("zoo:digits"),
                config,
                out_dir=tmp_path / "a",
                store=store,
                on_event=interrupt_after_two,
            )
        assert store.count() == 2
        resumed = tune(load_model("zoo:digits"), config, out_dir=tmp_path / "b", store=store)
    flags = [m.resumed for m in resumed.outcome.measured.values() if m is not None]
    assert flags.count(True) == 2 and len(flags) >= 2
