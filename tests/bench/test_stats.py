"""Latency percentiles, window stability, regression decisions and the hardware fingerprint."""

from __future__ import annotations

import importlib.metadata
import json
import platform
import random
import socket
from dataclasses import replace
from typing import Any

import pytest

from crossinfer.bench.fingerprint import (
    canonical_json,
    fingerprint_key,
    hardware_fingerprint,
    runtime_versions,
)
from crossinfer.bench.result import BenchResult, EnergyReading, LatencyStats, Stability
from crossinfer.bench.stats import (
    compare_results,
    latency_stats,
    loadgen_percentile,
    percentile,
    run_spread_pct,
    stability,
)

MS = 1_000_000  # ns


def bench_result(
    *, throughput: float = 80.3, p99_ms: float = 10.0, spread_pct: float = 2.0, **changes: Any
) -> BenchResult:
    result = BenchResult(
        model_source="zoo:mlp",
        model_sha256="ab" * 32,
        backend="onnxruntime",
        device="cpu",
        precision="fp32",
        scenario="offline",
        batch_size=1,
        settings={"intra_op_threads": 4},
        latency=LatencyStats(
            count=1000,
            mean_ms=p99_ms / 2,
            p50_ms=p99_ms / 2,
            p90_ms=p99_ms * 0.8,
            p95_ms=p99_ms * 0.9,
            p99_ms=p99_ms,
            p999_ms=p99_ms * 1.2,
            min_ms=p99_ms / 4,
            max_ms=p99_ms * 1.5,
        ),
        throughput=throughput,
        server_qps=None,
        target_latency_ms=None,
        first_inference_ms=3.0,
        load_s=0.1,
        peak_rss_mb=200.0,
        peak_device_mem_mb=None,
        energy=EnergyReading(None, None, "not measured: no counter"),
        loadgen_result="VALID",
        loadgen_log_dir="/tmp/logs",
        compliant=True,
        stability=Stability(True, (throughput,) * 3, spread_pct, 10.0),
        hardware={"cpu": {"model": "Test CPU", "isa_flags": ["avx2"]}, "gpus": []},
        runtime_versions={"onnxruntime": "1.20.0"},
        crossinfer_version="0.1.0",
        created_at="2025-01-01T00:00:00+00:00",
    )
    return replace(result, **changes)


# --------------------------------------------------------------------------- percentiles


def test_nearest_rank_percentiles_of_1_to_100() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.9) == 90.0
    assert percentile(values, 0.95) == 95.0
    assert percentile(values, 0.99) == 99.0
    assert percentile(values, 0.999) == 100.0
    assert percentile(values, 1.0) == 100.0
    assert percentile(values, 0.0) == 1.0
    # 0.07 * 100 is 7.000000000000001 in floating point: still rank 7, not 8
    assert percentile(values, 0.07) == 7.0


def test_loadgen_convention_is_one_rank_higher_on_whole_ranks() -> None:
    values = [float(v) for v in range(1, 101)]
    assert loadgen_percentile(values, 0.5) == 51.0
    assert loadgen_percentile(values, 0.99) == 100.0
    assert loadgen_percentile(values, 0.999) == 100.0
    assert loadgen_percentile([1.0, 2.0, 3.0], 0.5) == percentile([1.0, 2.0, 3.0], 0.5) == 2.0


def test_percentile_rejects_bad_quantiles_and_empty_input() -> None:
    with pytest.raises(ValueError, match=r"write p99 as 0\.99"):
        percentile([1.0], 99)
    with pytest.raises(ValueError, match="no values"):
        percentile([], 0.5)


def test_latency_stats_of_1_to_100_ms() -> None:
    latencies = [v * MS for v in range(1, 101)]
    random.Random(0).shuffle(latencies)  # the input need not be sorted
    stats = latency_stats(latencies)
    assert stats == LatencyStats(
        count=100,
        mean_ms=50.5,
        p50_ms=50.0,
        p90_ms=90.0,
        p95_ms=95.0,
        p99_ms=99.0,
        p999_ms=100.0,
        min_ms=1.0,
        max_ms=100.0,
    )


def test_latency_stats_of_one_value() -> None:
    stats = latency_stats([2_500_000])
    assert stats.count == 1
    assert stats.mean_ms == stats.p50_ms == stats.p999_ms == stats.min_ms == stats.max_ms == 2.5


def test_latency_stats_of_nothing_says_why() -> None:
    with pytest.raises(ValueError, match="no latencies to summarise"):
        latency_stats([])


# --------------------------------------------------------------------------- stability


def test_agreeing_windows_are_stable() -> None:
    result = stability([50.0, 100.0, 101.0, 99.0], threshold_pct=10.0)
    assert result.stable
    # only the last 3 windows count: the warm-up window at 50/s is ignored
    assert result.spread_pct == pytest.approx(2.0)
    assert result.window_throughputs == (50.0, 100.0, 101.0, 99.0)
    assert result.threshold_pct == 10.0


def test_drifting_windows_are_not_stable() -> None:
    result = stability([100.0, 90.0, 80.0, 70.0])
    assert not result.stable
    assert result.spread_pct == pytest.approx(25.0)
    assert "beyond the 10% asked for" in result.note


def test_too_few_windows_are_not_stable() -> None:
    result = stability([100.0, 100.0], windows=3)
    assert not result.stable
    assert result.note == "only 2 of the 3 windows needed to judge stability"
    assert not stability([]).stable


def test_run_spread() -> None:
    assert run_spread_pct([90.0, 100.0, 110.0]) == pytest.approx(20.0)
    assert run_spread_pct([5.0]) == 0.0
    assert run_spread_pct([0.0, 0.0]) == 0.0
    with pytest.raises(ValueError):
        run_spread_pct([])


# --------------------------------------------------------------------------- regressions


def by_metric(new: BenchResult, old: BenchResult, **kwargs: Any) -> dict[str, Any]:
    return {c.metric: c for c in compare_results(new, old, **kwargs)}


def test_same_figures_are_no_regression() -> None:
    comparisons = compare_results(bench_result(), bench_result())
    assert [c.metric for c in comparisons] == ["throughput", "p99 latency"]
    for comparison in comparisons:
        assert not comparison.regressed
        assert not comparison.improved
        assert comparison.ratio == 1.0
        assert comparison.change_pct == 0.0
    # p99 rests on the slowest few queries: it is allowed twice the throughput's change
    assert [c.allowed_pct for c in comparisons] == [5.0, 10.0]


def test_halved_throughput_is_a_regression_with_the_reason() -> None:
    old = bench_result(throughput=80.3, spread_pct=6.1)
    new = bench_result(throughput=41.2, spread_pct=3.0)
    throughput = by_metric(new, old)["throughput"]
    assert throughput.regressed
    assert not throughput.improved
    assert throughput.allowed_pct == pytest.approx(6.1)
    assert throughput.reason == (
        "throughput 41.2/s vs 80.3/s (-48.7%), beyond the run-to-run spread of 6.1%"
    )


def test_a_change_within_the_spread_is_not_flagged() -> None:
    old = bench_result(throughput=100.0, spread_pct=8.0)
    new = bench_result(throughput=93.0, spread_pct=1.0)
    throughput = by_metric(new, old)["throughput"]
    assert not throughput.regressed
    assert not throughput.improved
    assert "within the run-to-run spread of 8.0%" in throughput.reason
    # the same 7% loss between two quiet runs is beyond the 5% floor
    quiet = by_metric(new, bench_result(throughput=100.0, spread_pct=2.0))["throughput"]
    assert quiet.regressed
    assert quiet.reason.endswith("beyond the allowed 5.0% (run-to-run spread 2.0%)")


def test_latency_up_beyond_the_spread_is_flagged() -> None:
    old = bench_result(p99_ms=10.0, spread_pct=3.0)
    new = bench_result(p99_ms=12.4, spread_pct=3.0)
    p99 = by_metric(new, old)["p99 latency"]
    assert p99.regressed
    assert p99.reason == (
        "p99 latency 12.4 ms vs 10.0 ms (+24.0%), beyond the allowed 10.0% (run-to-run spread 3.0%)"
    )
    within = by_metric(bench_result(p99_ms=10.8, spread_pct=3.0), old)["p99 latency"]
    assert not within.regressed  # +8% is inside twice the 5% floor


def test_an_improvement_is_improved_not_regressed() -> None:
    old = bench_result(throughput=80.0, p99_ms=10.0)
    new = bench_result(throughput=160.0, p99_ms=5.0)
    for comparison in compare_results(new, old):
        assert comparison.improved
        assert not comparison.regressed
        assert "improved beyond" in comparison.reason


def test_no_baseline_figure_is_neither() -> None:
    throughput = by_metric(bench_result(), bench_result(throughput=0.0))["throughput"]
    assert not throughput.regressed and not throughput.improved
    assert "no throughput to compare with" in throughput.reason


# --------------------------------------------------------------------------- fingerprint


def test_fingerprint_key_is_stable_and_follows_the_flags() -> None:
    fp = {"cpu": {"model": "X", "isa_flags": ["avx2", "fma"]}, "gpus": []}
    same_in_other_order = {"gpus": [], "cpu": {"isa_flags": ["avx2", "fma"], "model": "X"}}
    assert fingerprint_key(fp) == fingerprint_key(same_in_other_order)
    assert len(fingerprint_key(fp)) == 16
    with_vnni = {"cpu": {"model": "X", "isa_flags": ["avx2", "avx512_vnni", "fma"]}, "gpus": []}
    assert fingerprint_key(with_vnni) != fingerprint_key(fp)


def test_hardware_fingerprint_of_this_machine() -> None:
    fp = hardware_fingerprint()
    assert fingerprint_key(fp) == fingerprint_key(hardware_fingerprint())
    assert fp["cpu"]["logical_cores"] >= 1
    assert fp["cpu"]["isa_flags"] == sorted(fp["cpu"]["isa_flags"])
    assert json.loads(canonical_json(fp)) == fp  # survives the store's JSON unchanged
    text = canonical_json(fp).lower()
    assert "host" not in text and "node" not in text
    for name in {socket.gethostname(), platform.node()}:
        if len(name) >= 6:  # shorter names could occur in a CPU model by chance
            assert name.lower() not in text


def test_runtime_versions_come_from_metadata() -> None:
    versions = runtime_versions()
    assert versions["python"] == platform.python_version()
    assert {"numpy", "onnx", "onnxruntime", "mlcommons-loadgen"} <= set(versions)


@pytest.mark.parametrize(
    ("name", "distributions"),
    [("torch", ("torch",)), ("jax", ("jax",)), ("iree", ("iree-base-runtime", "iree-runtime"))],
)
def test_runtime_versions_include_every_backend_installed(
    name: str, distributions: tuple[str, ...]
) -> None:
    # torch, jax and iree were once left out: a resumed tune reused measurements after an
    # upgrade and bench --compare never named the change
    installed = []
    for distribution in distributions:
        try:
            installed.append(importlib.metadata.version(distribution))
        except importlib.metadata.PackageNotFoundError:
            continue
    if not installed:
        pytest.skip(f"{name} is not installed")
    assert runtime_versions()[name] == installed[0]
