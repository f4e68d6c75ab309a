"""bench end to end on the real onnxruntime through the real LoadGen, the store, and the CLI."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

import fake_backends
from crossinfer.backends.base import SessionOptions, Target, register_backend, unregister_backend
from crossinfer.bench.result import SCENARIOS
from crossinfer.bench.runner import NOT_COMPLIANT, BenchPlan, run_benchmark
from crossinfer.cli import app
from crossinfer.errors import UsageError
from crossinfer.model import load_model
from crossinfer.store import ResultStore, find_baseline

runner = CliRunner()


def test_every_scenario_quick_on_onnxruntime(tmp_path: Path) -> None:
    artifact = load_model("zoo:mlp")
    run = run_benchmark(
        artifact,
        Target("onnxruntime", "cpu"),
        plan=BenchPlan(scenarios=SCENARIOS, batch_sizes=(1, 4), quick=True, max_server_steps=3),
        options=SessionOptions(threads=1),
        log_root=tmp_path / "logs",
    )
    assert run.errors == ()
    seen = sorted((r.scenario, r.batch_size) for r in run.results)
    # SingleStream and MultiStream run once; Offline and Server once per batch size
    assert seen == sorted(
        [
            ("singlestream", 1),
            ("multistream", 8),
            ("server", 1),
            ("offline", 1),
            ("server", 4),
            ("offline", 4),
        ]
    )
    for r in run.results:
        assert r.loadgen_result in ("VALID", "INVALID")
        assert Path(r.loadgen_log_dir, "mlperf_log_summary.txt").is_file()
        assert not r.compliant and r.notes[0] == NOT_COMPLIANT
        assert r.throughput > 0 and r.latency.count > 0
        assert r.latency.p50_ms <= r.latency.p90_ms <= r.latency.p99_ms <= r.latency.max_ms
        assert r.peak_rss_mb > 50 and r.load_s >= 0 and r.first_inference_ms > 0
        assert r.model_sha256 == artifact.sha256 and r.settings["threads"] == 1
        assert r.hardware["cpu"]["logical_cores"] >= 1 and "onnxruntime" in r.runtime_versions
        if r.energy.joules is None:
            assert r.energy.method.startswith("not measured")
    server = [r for r in run.results if r.scenario == "server"]
    assert all(r.target_latency_ms == 10.0 for r in server)
    assert any(r.server_qps for r in server)


def test_a_crashing_backend_is_an_error_row(tmp_path: Path) -> None:
    register_backend(fake_backends.entry(fake_backends.SegfaultBackend))
    try:
        run = run_benchmark(
            load_model("zoo:mlp"),
            Target("segfault", "cpu"),
            plan=BenchPlan(scenarios=("offline",), quick=True),
            log_root=tmp_path,
            timeout_s=60,
        )
    finally:
        unregister_backend("segfault")
    assert run.results == ()
    (error,) = run.errors
    assert (
        error.scenarios == ("offline",) and "crashed" in error.reason and "SIGSEGV" in error.reason
    )


def test_plan_refuses_unknown_scenarios_and_batches() -> None:
    with pytest.raises(UsageError, match="unknown scenario"):
        BenchPlan(scenarios=("burst",))
    with pytest.raises(UsageError, match="positive integers"):
        BenchPlan(batch_sizes=(0,))


@pytest.fixture
def store_path(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "results.sqlite"


def test_cli_bench_stores_compares_and_history_lists(store_path: Path, tmp_path: Path) -> None:
    args = [
        "bench",
        "zoo:mlp",
        "--scenario",
        "offline",
        "--batch",
        "2",
        "--quick",
        "--store",
        str(store_path),
        "--log-dir",
        str(tmp_path / "logs"),
        "--json",
    ]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    data = json.loads(first.stdout)
    assert [r["scenario"] for r in data["results"]] == ["offline"]
    assert data["results"][0]["batch_size"] == 2

    second = runner.invoke(app, [*args, "--compare", "--threads", "1"])
    assert second.exit_code in (0, 1), second.output  # 1 only when a regression is flagged
    again = json.loads(second.stdout)
    compared = again["comparisons"]
    assert len(compared) == 1 and compared[0]["baseline_id"] is not None
    assert "threads None -> 1" in compared[0]["changes"]
    # both metrics, each comparing the second run's figure with the first run's
    by_metric = {c["metric"]: c for c in compared[0]["comparisons"]}
    assert list(by_metric) == ["throughput", "p99 latency"]
    old, new = data["results"][0], again["results"][0]
    assert by_metric["throughput"]["old"] == old["throughput"]
    assert by_metric["throughput"]["new"] == new["throughput"]
    assert by_metric["p99 latency"]["old"] == old["latency"]["p99_ms"]
    assert by_metric["p99 latency"]["new"] == new["latency"]["p99_ms"]
    flagged = any(c["regressed"] for c in compared[0]["comparisons"])
    assert (second.exit_code == 1) == flagged

    with ResultStore(store_path) as store:
        rows = store.query()
        assert len(rows) == 2
        newest = rows[0].result
        assert find_baseline(store, newest) is not None
        assert compared[0]["baseline_id"] == rows[1].id  # the first run

    listed = runner.invoke(app, ["history", "zoo:mlp", "--store", str(store_path), "--json"])
    assert listed.exit_code == 0, listed.output
    assert [r["scenario"] for r in json.loads(listed.stdout)] == ["offline", "offline"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--batch", "1,x"], "--batch '1,x' is not a comma list"),
        (["--scenario", "burst"], "unknown scenario(s) burst"),
        (["--backend", "tvm:cpu"], "unknown backend 'tvm'"),
    ],
)
def test_cli_bench_bad_options(args: list[str], message: str, store_path: Path) -> None:
    result = runner.invoke(app, ["bench", "zoo:mlp", "--quick", "--store", str(store_path), *args])
    assert result.exit_code == 2
    assert message in result.stderr


def test_history_without_a_store(tmp_path: Path) -> None:
    result = runner.invoke(app, ["history", "--store", str(tmp_path / "none.sqlite")])
    assert result.exit_code == 2 and "no results store" in result.stderr


def test_history_refuses_a_file_that_is_not_a_store(tmp_path: Path) -> None:
    bogus = tmp_path / "notes.sqlite"
    bogus.write_text("my notes\n")
    result = runner.invoke(app, ["history", "--store", str(bogus)])
    assert result.exit_code == 2 and "notes.sqlite" in result.stderr
    assert bogus.read_text() == "my notes\n"


def test_cli_bench_inputs_on_device_on_a_cpu_backend_says_why_not(tmp_path: Path) -> None:
    args = ["bench", "zoo:mlp", "--scenario", "offline", "--batch", "2", "--quick"]
    args += ["--no-store", "--log-dir", str(tmp_path / "logs"), "--inputs-on-device", "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)["results"]
    assert row["input_placement"] == "numpy"
    assert row["input_staging"]["asked"] == "device"
    assert row["notes"][0] == NOT_COMPLIANT  # the compliance note stays first
    assert row["notes"][1].startswith("device inputs asked, numpy inputs used")
    assert set(row["warmup_s"]) == {"2"}
