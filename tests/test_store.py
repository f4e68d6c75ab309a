"""The SQLite results store: round trips, queries, concurrent writers, migrations, refusals."""

from __future__ import annotations

import json
import multiprocessing
import sqlite3
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from crossinfer.bench.fingerprint import fingerprint_key
from crossinfer.bench.result import BenchResult, EnergyReading, LatencyStats, Stability
from crossinfer.errors import StoreError
from crossinfer.store import (
    SCHEMA_VERSION,
    ResultStore,
    default_store_path,
    result_from_dict,
)


def bench_result(**changes: Any) -> BenchResult:
    """A result with every field set to something other than its default."""
    result = BenchResult(
        model_source="zoo:resnet50",
        model_sha256="5e" * 32,
        backend="openvino",
        device="CPU",
        precision="int8",
        scenario="server",
        batch_size=4,
        settings={"performance_hint": "THROUGHPUT", "streams": 4, "cores": [0, 1, 2]},
        latency=LatencyStats(
            count=4096,
            mean_ms=4.25,
            p50_ms=4.0,
            p90_ms=5.5,
            p95_ms=6.0,
            p99_ms=7.125,
            p999_ms=9.75,
            min_ms=3.0,
            max_ms=12.5,
        ),
        throughput=812.5,
        server_qps=800.0,
        target_latency_ms=15.0,
        first_inference_ms=21.5,
        load_s=1.75,
        peak_rss_mb=512.25,
        peak_device_mem_mb=1024.0,
        energy=EnergyReading(joules=120.5, joules_per_inference=0.03, method="RAPL package-0"),
        loadgen_result="VALID",
        loadgen_log_dir="/tmp/loadgen/run-1",
        compliant=False,
        stability=Stability(
            stable=True,
            window_throughputs=(810.0, 815.0, 812.5),
            spread_pct=0.6153846153846154,
            threshold_pct=10.0,
            note="last 3 windows spread 0.6%",
        ),
        hardware={
            "cpu": {"model": "Test CPU", "isa_flags": ["avx2", "avx512_vnni"]},
            "gpus": [{"name": "Test GPU", "driver_version": "550.1"}],
        },
        runtime_versions={"openvino": "2025.1.0", "python": "3.11.9"},
        crossinfer_version="0.1.0",
        created_at="2025-03-01T12:00:00+00:00",
        notes=("quick run: not a compliant run", "BF16 by default on this CPU"),
        load_average=0.5,
    )
    return replace(result, **changes)


def test_round_trip_keeps_every_field(tmp_path: Path) -> None:
    result = bench_result()
    with ResultStore(tmp_path / "results.sqlite") as store:
        row_id = store.add(result)
        [stored] = store.query()
    assert stored.id == row_id
    assert stored.result == result
    assert isinstance(stored.result.latency, LatencyStats)
    assert isinstance(stored.result.stability.window_throughputs, tuple)
    assert isinstance(stored.result.notes, tuple)
    assert result_from_dict(result.to_dict()) == result


def test_key_columns_are_real_columns(tmp_path: Path) -> None:
    path = tmp_path / "results.sqlite"
    with ResultStore(path) as store:
        store.add(bench_result())
    db = sqlite3.connect(path)
    row = db.execute(
        "SELECT model_sha256, backend, device, precision, scenario, batch_size, "
        "settings_json, hardware_key, created_at, throughput, p99_ms, loadgen_result "
        "FROM results"
    ).fetchone()
    db.close()
    assert row == (
        "5e" * 32,
        "openvino",
        "CPU",
        "int8",
        "server",
        4,
        '{"cores":[0,1,2],"performance_hint":"THROUGHPUT","streams":4}',
        fingerprint_key(bench_result().hardware),
        "2025-03-01T12:00:00.000000Z",
        812.5,
        7.125,
        "VALID",
    )


def test_query_filters_newest_first(tmp_path: Path) -> None:
    with ResultStore(tmp_path / "results.sqlite") as store:
        # stored out of time order: newest first means by created_at, not by insertion
        middle = store.add(bench_result(created_at="2025-03-02T00:00:00+00:00"))
        oldest = store.add(bench_result(created_at="2025-03-01T00:00:00Z"))
        # same instant as 2025-03-03T00:00Z, written with another offset
        newest = store.add(bench_result(created_at="2025-03-03T01:00:00+01:00", backend="ort"))
        other = store.add(bench_result(model_sha256="00" * 32, scenario="offline"))

        assert [s.id for s in store.query(model_sha256="5e" * 32)] == [newest, middle, oldest]
        assert [s.id for s in store.query(backend="openvino", model_sha256="5e" * 32)] == [
            middle,
            oldest,
        ]
        assert [s.id for s in store.query(scenario="offline")] == [other]
        assert [s.id for s in store.query(device="GPU")] == []
        assert [s.id for s in store.query(model_source="zoo:resnet50", limit=2)] == [
            newest,
            middle,
        ]
        assert store.count() == 4
        with pytest.raises(ValueError, match="limit=0"):
            store.query(limit=0)


def test_last_matching(tmp_path: Path) -> None:
    with ResultStore(tmp_path / "results.sqlite") as store:
        first = store.add(bench_result(created_at="2025-03-01T00:00:00Z", throughput=800.0))
        second = store.add(bench_result(created_at="2025-03-02T00:00:00Z", throughput=805.0))
        store.add(bench_result(created_at="2025-03-02T01:00:00Z", settings={"streams": 8}))
        store.add(bench_result(created_at="2025-03-02T02:00:00Z", hardware={"cpu": "another"}))
        store.add(bench_result(created_at="2025-03-02T03:00:00Z", batch_size=8))

        new = bench_result(created_at="2025-03-03T00:00:00Z")
        match = store.last_matching(new)
        assert match is not None and match.id == second
        # once the new result is stored, it is not its own baseline
        store.add(new)
        match = store.last_matching(new)
        assert match is not None and match.id == second
        # an earlier run is compared with the one before it, not with later ones
        earlier = store.last_matching(bench_result(created_at="2025-03-01T12:00:00Z"))
        assert earlier is not None and earlier.id == first
        # runtime versions may differ: that is what a comparison looks for
        upgraded = replace(new, runtime_versions={"openvino": "2026.0.0"})
        assert store.last_matching(upgraded) is not None
        assert store.last_matching(replace(new, settings={"streams": 2})) is None
        assert store.last_matching(replace(new, hardware={"cpu": "a third"})) is None
        assert store.last_matching(replace(new, precision="fp32")) is None


def test_wal_mode_and_parent_directories(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "results.sqlite"
    with ResultStore(path) as store:
        assert store.journal_mode == "wal"
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    db.close()


def test_default_store_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CROSSINFER_STORE", str(tmp_path / "mine.sqlite"))
    assert default_store_path() == tmp_path / "mine.sqlite"
    monkeypatch.delenv("CROSSINFER_STORE")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert default_store_path() == tmp_path / "data" / "crossinfer" / "results.sqlite"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    expected = tmp_path / "home" / ".local" / "share" / "crossinfer" / "results.sqlite"
    assert default_store_path() == expected


def test_closed_store_says_so(tmp_path: Path) -> None:
    store = ResultStore(tmp_path / "results.sqlite")
    store.close()
    store.close()
    with pytest.raises(StoreError, match="is closed"):
        store.add(bench_result())


def test_add_many_stores_all_or_nothing(tmp_path: Path) -> None:
    with ResultStore(tmp_path / "results.sqlite") as store:
        ids = store.add_many([bench_result(batch_size=1), bench_result(batch_size=2)])
        assert len(ids) == 2
        with pytest.raises(StoreError, match="cannot be stored"):
            store.add_many([bench_result(), bench_result(settings={"hint": object()})])
        assert store.count() == 2


# --------------------------------------------------------------------------- concurrency


def test_a_writer_waits_for_the_lock_then_gives_up_clearly(tmp_path: Path) -> None:
    path = tmp_path / "results.sqlite"
    ResultStore(path).close()
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process in the middle of a write
    try:
        with ResultStore(path, timeout_s=0.2) as store:
            assert store.count() == 0  # WAL: reading is not blocked by the writer
            with pytest.raises(StoreError, match=r"stayed locked by another process for 0\.2 s"):
                store.add(bench_result())
    finally:
        other.execute("ROLLBACK")
        other.close()


def _write_rows(path: str, writer: int, rows: int, barrier: Any) -> None:
    barrier.wait()  # all writers open and write at the same moment
    with ResultStore(Path(path)) as store:
        for n in range(rows):
            store.add(bench_result(loadgen_log_dir=f"writer-{writer}/row-{n}"))


def test_concurrent_writers_lose_no_rows(tmp_path: Path) -> None:
    path = tmp_path / "results.sqlite"  # not created beforehand: the writers race to create it
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(4)
    writers = [
        context.Process(target=_write_rows, args=(str(path), w, 25, barrier)) for w in range(4)
    ]
    for process in writers:
        process.start()
    for process in writers:
        process.join(timeout=120)
    assert [p.exitcode for p in writers] == [0, 0, 0, 0]
    with ResultStore(path) as store:
        dirs = {s.result.loadgen_log_dir for s in store.query()}
    assert dirs == {f"writer-{w}/row-{n}" for w in range(4) for n in range(25)}
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert db.execute("SELECT COUNT(*) FROM results").fetchone()[0] == 100
    db.close()


# --------------------------------------------------------------------------- schema versions

V0_SCHEMA = """
CREATE TABLE results (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at TEXT NOT NULL,
    model_sha256 TEXT NOT NULL,
    model_source TEXT NOT NULL,
    backend TEXT NOT NULL,
    device TEXT NOT NULL,
    precision TEXT NOT NULL,
    scenario TEXT NOT NULL,
    batch_size INTEGER NOT NULL,
    settings_json TEXT NOT NULL,
    throughput REAL NOT NULL,
    p99_ms REAL NOT NULL,
    loadgen_result TEXT NOT NULL,
    result_json TEXT NOT NULL
);
CREATE INDEX results_match ON results (model_sha256, backend, device, scenario);
"""


def make_v0_store(path: Path, results: list[BenchResult]) -> None:
    db = sqlite3.connect(path)
    db.executescript(V0_SCHEMA)
    for result in results:
        db.execute(
            "INSERT INTO results (created_at, model_sha256, model_source, backend, device, "
            "precision, scenario, batch_size, settings_json, throughput, p99_ms, "
            "loadgen_result, result_json) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                result.created_at,
                result.model_sha256,
                result.model_source,
                result.backend,
                result.device,
                result.precision,
                result.scenario,
                result.batch_size,
                json.dumps(dict(result.settings), sort_keys=True, separators=(",", ":")),
                result.throughput,
                result.latency.p99_ms,
                result.loadgen_result,
                json.dumps(result.to_dict()),
            ),
        )
    db.commit()
    db.close()


def test_migration_from_v0_keeps_the_rows(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    old = [
        bench_result(created_at="2024-06-01T00:00:00+00:00"),
        bench_result(created_at="2024-06-02T02:00:00+02:00", hardware={"cpu": "other"}),
    ]
    make_v0_store(path, old)
    with ResultStore(path) as store:
        assert [s.result for s in store.query()] == old[::-1]
        # hardware_key was computed for the old rows: matching tells the machines apart
        match = store.last_matching(bench_result(created_at="2025-01-01T00:00:00Z"))
        assert match is not None and match.result == old[0]
        # created_at was rewritten in the v1 form, so old and new rows sort together
        middle = store.add(bench_result(created_at="2024-06-01T12:00:00Z"))
        assert [s.id for s in store.query()] == [2, middle, 1]
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    rows = db.execute("SELECT hardware_key, created_at FROM results ORDER BY id").fetchall()
    assert rows[:2] == [
        (fingerprint_key(old[0].hardware), "2024-06-01T00:00:00.000000Z"),
        (fingerprint_key(old[1].hardware), "2024-06-02T00:00:00.000000Z"),
    ]
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db.close()


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "new.sqlite"
    with ResultStore(path) as store:
        store.add(bench_result())
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    before = path.read_bytes()
    with pytest.raises(StoreError) as caught:
        ResultStore(path)
    assert str(caught.value) == (
        f"results store {path} was written by a newer crossinfer (schema {SCHEMA_VERSION + 1}, "
        f"this one reads up to {SCHEMA_VERSION}): upgrade crossinfer or use --store to pick "
        "another file"
    )
    assert path.read_bytes() == before


def test_a_file_that_is_not_sqlite_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(b"not a database\n" * 100)
    before = path.read_bytes()
    with pytest.raises(StoreError, match="is not an SQLite database") as caught:
        ResultStore(path)
    assert str(path) in str(caught.value)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_a_corrupt_store_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "broken.sqlite"
    with ResultStore(path) as store:
        store.add(bench_result())
    data = bytearray(path.read_bytes())
    data[100:4096] = b"\xff" * (4096 - 100)  # the schema page, past the 100-byte header
    path.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="cannot be read") as caught:
        ResultStore(path)
    assert str(path) in str(caught.value)
    assert path.read_bytes() == bytes(data)


def test_another_programs_database_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "app.sqlite"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE users (name TEXT)")
    db.commit()
    db.close()
    before = path.read_bytes()
    with pytest.raises(StoreError, match="not a crossinfer results store") as caught:
        ResultStore(path)
    assert "users" in str(caught.value)
    assert path.read_bytes() == before
