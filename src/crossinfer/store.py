"""The results store: every `BenchResult` in one embedded SQLite file, safe for several writers.

Key figures are real columns for filtering; the whole result is kept as JSON and rebuilt on read.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import time
import types
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import fields, is_dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple, Union, get_args, get_origin, get_type_hints

from crossinfer.bench.fingerprint import canonical_json, fingerprint_key
from crossinfer.bench.result import BenchResult
from crossinfer.errors import StoreError

SCHEMA_VERSION = 1
_SQLITE_MAGIC = b"SQLite format 3\x00"
_DEFAULT_TIMEOUT_S = 30.0

# Schema history (PRAGMA user_version):
#   0  results without hardware_key: results of different machines could not be told apart
#   1  hardware_key, the fingerprint key of each result's hardware, with the lookup index
_SCHEMA = """
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
    hardware_key TEXT NOT NULL,
    throughput REAL NOT NULL,
    p99_ms REAL NOT NULL,
    loadgen_result TEXT NOT NULL,
    result_json TEXT NOT NULL
);
CREATE INDEX results_match ON results (model_sha256, backend, device, scenario, hardware_key);
CREATE INDEX results_created ON results (created_at);
"""

_COLUMNS = (
    "created_at",
    "model_sha256",
    "model_source",
    "backend",
    "device",
    "precision",
    "scenario",
    "batch_size",
    "settings_json",
    "hardware_key",
    "throughput",
    "p99_ms",
    "loadgen_result",
    "result_json",
)
_INSERT = f"INSERT INTO results ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' for _ in _COLUMNS)})"
_NEWEST_FIRST = "ORDER BY created_at DESC, id DESC"


class StoredResult(NamedTuple):
    """A result as the store holds it, with its row id."""

    id: int
    result: BenchResult


def default_store_path() -> Path:
    """$CROSSINFER_STORE, else $XDG_DATA_HOME/crossinfer/results.sqlite, else under ~/.local/share."""
    explicit = os.environ.get("CROSSINFER_STORE")
    if explicit:
        return Path(explicit).expanduser()
    # The XDG spec says a relative XDG_DATA_HOME is invalid and must be ignored.
    data_home = os.environ.get("XDG_DATA_HOME", "")
    base = Path(data_home) if os.path.isabs(data_home) else Path.home() / ".local" / "share"
    return base / "crossinfer" / "results.sqlite"


class ResultStore:
    """An SQLite file of benchmark results; open it with ``with ResultStore(path) as store:``.

    WAL journal, a busy timeout and BEGIN IMMEDIATE around every write let several processes
    add results at once without losing a row. Files that are not a crossinfer store, or come
    from a newer crossinfer, are refused and left untouched.
    """

    def __init__(self, path: Path | str | None = None, *, timeout_s: float = _DEFAULT_TIMEOUT_S):
        self.path = Path(path).expanduser() if path is not None else default_store_path()
        self._connection: sqlite3.Connection | None = None
        self._timeout_s = timeout_s
        self.journal_mode = ""  # "wal" once open, unless the filesystem refuses it
        _refuse_non_sqlite(self.path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"cannot create the directory of results store {self.path}: {exc}"
            ) from exc
        try:
            # timeout= is SQLite's busy_timeout: wait that long for another writer's lock.
            # isolation_level=None: no implicit transactions; every write opens its own
            # BEGIN IMMEDIATE, so the write lock is taken before anything is read.
            self._connection = sqlite3.connect(self.path, timeout=timeout_s, isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open results store {self.path}: {exc}") from exc
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ opening

    def _open(self) -> None:
        try:
            self._retry_busy(self._open_once)
        except sqlite3.DatabaseError as exc:
            raise self._unreadable(exc) from exc

    def _open_once(self) -> None:
        connection = self._live()
        # Everything that decides whether this file is ours is read before the first write:
        # switching to WAL rewrites the header, which a foreign or corrupt file must not get.
        version, tables = _read_schema(connection)
        self._check_schema(version, tables)
        mode = connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        # Filesystems without shared memory refuse WAL; the rollback journal still keeps
        # concurrent writers safe (BEGIN IMMEDIATE + busy timeout), only slower.
        self.journal_mode = str(mode).lower()
        if version != SCHEMA_VERSION:
            self._prepare_schema()

    def _retry_busy(self, step: Callable[[], object]) -> None:
        """Run `step` again while SQLite answers BUSY without waiting, up to the timeout.

        SQLite skips the busy handler where waiting could deadlock (a reader upgrading to a
        writer while another writer waits for it, as when several processes switch a new file
        to WAL at once); the step holds no lock between tries, so trying again is safe.
        """
        deadline = time.monotonic() + self._timeout_s
        while True:
            try:
                step()
                return
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc) or time.monotonic() >= deadline:
                    raise
                _rollback(self._live())
                time.sleep(random.uniform(0.005, 0.05))  # jitter: the racers fall out of step

    def _check_schema(self, version: int, tables: set[str]) -> None:
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"results store {self.path} was written by a newer crossinfer (schema {version}, "
                f"this one reads up to {SCHEMA_VERSION}): upgrade crossinfer or use --store to "
                "pick another file"
            )
        # An empty file at version 0 is a new store; anything else without our table is not ours.
        if "results" not in tables and (tables or version != 0):
            listed = ", ".join(sorted(tables)) or "none"
            raise StoreError(
                f"{self.path} is an SQLite database but not a crossinfer results store (schema "
                f"{version}, tables: {listed}); it was left as it is: use --store to pick "
                "another file"
            )

    def _prepare_schema(self) -> None:
        """Create or migrate the schema under the write lock; another process may have already."""
        with self._write() as connection:
            version, tables = _read_schema(connection)
            self._check_schema(version, tables)
            if not tables:
                _run_statements(connection, _SCHEMA)
            else:
                for from_version in range(version, SCHEMA_VERSION):
                    _MIGRATIONS[from_version](connection, self.path)
            connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _unreadable(self, exc: sqlite3.DatabaseError) -> StoreError:
        if isinstance(exc, sqlite3.OperationalError) and _is_busy(exc):
            return StoreError(
                f"results store {self.path} stayed locked by another process for "
                f"{self._timeout_s:g} s: {exc}"
            )
        if isinstance(exc, sqlite3.OperationalError):
            # Disk full, read-only file, I/O error: the file itself is not at fault.
            return StoreError(f"results store {self.path}: {exc}")
        return StoreError(
            f"results store {self.path} cannot be read: {exc}. The file is corrupt or not a "
            "crossinfer results store; it was left as it is: use --store to pick another file"
        )

    # ------------------------------------------------------------------ plumbing

    def _live(self) -> sqlite3.Connection:
        if self._connection is None:
            raise StoreError(f"results store {self.path} is closed")
        return self._connection

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        connection = self._live()
        try:
            self._retry_busy(lambda: connection.execute("BEGIN IMMEDIATE"))
        except sqlite3.DatabaseError as exc:
            raise self._unreadable(exc) from exc
        try:
            yield connection
        except BaseException:
            _rollback(connection)
            raise
        try:
            connection.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            _rollback(connection)
            raise self._unreadable(exc) from exc

    def _select(self, sql: str, parameters: Iterable[Any]) -> list[StoredResult]:
        try:
            rows = self._live().execute(sql, tuple(parameters)).fetchall()
        except sqlite3.DatabaseError as exc:
            raise self._unreadable(exc) from exc
        return [StoredResult(int(row[0]), self._rebuild(int(row[0]), row[1])) for row in rows]

    def _rebuild(self, row_id: int, text: str) -> BenchResult:
        try:
            return result_from_dict(json.loads(text))
        except (ValueError, TypeError, KeyError) as exc:
            raise StoreError(
                f"row {row_id} of results store {self.path} cannot be read back: {exc}"
            ) from exc

    # ------------------------------------------------------------------ public

    def add(self, result: BenchResult) -> int:
        """Store one result; returns its row id."""
        return self.add_many([result])[0]

    def add_many(self, results: Iterable[BenchResult]) -> list[int]:
        """Store several results in one transaction: all of them or, on error, none."""
        rows = [_row(result) for result in results]
        ids: list[int] = []
        try:
            with self._write() as connection:
                for row in rows:
                    cursor = connection.execute(_INSERT, row)
                    assert cursor.lastrowid is not None  # an INSERT into a rowid table sets it
                    ids.append(cursor.lastrowid)
        except sqlite3.DatabaseError as exc:
            raise self._unreadable(exc) from exc
        return ids

    def query(
        self,
        *,
        model_sha256: str | None = None,
        model_source: str | None = None,
        backend: str | None = None,
        device: str | None = None,
        scenario: str | None = None,
        limit: int | None = None,
    ) -> list[StoredResult]:
        """Results matching every filter given, newest first (by created_at, then by row id)."""
        if limit is not None and limit < 1:
            raise ValueError(f"limit={limit}: ask for at least one result, or None for all")
        filters = {
            "model_sha256": model_sha256,
            "model_source": model_source,
            "backend": backend,
            "device": device,
            "scenario": scenario,
        }
        given = {column: value for column, value in filters.items() if value is not None}
        where = " AND ".join(f"{column} = ?" for column in given) or "1"
        # LIMIT -1 is SQLite's "no limit".
        sql = f"SELECT id, result_json FROM results WHERE {where} {_NEWEST_FIRST} LIMIT ?"
        return self._select(sql, [*given.values(), -1 if limit is None else limit])

    def last_matching(self, result: BenchResult) -> StoredResult | None:
        """The newest stored run of the same configuration no later than `result`, not itself.

        Same configuration: model hash, backend, device, precision, scenario, batch size,
        settings and hardware fingerprint key; runtime versions may differ, since finding what
        an upgrade changed is what the comparison is for.
        """
        row = _row(result)
        values = dict(zip(_COLUMNS, row, strict=True))
        keys = (
            "model_sha256",
            "backend",
            "device",
            "precision",
            "scenario",
            "batch_size",
            "settings_json",
            "hardware_key",
        )
        where = " AND ".join(f"{column} = ?" for column in keys)
        sql = (
            f"SELECT id, result_json FROM results WHERE {where} AND created_at <= ? "
            f"AND result_json != ? {_NEWEST_FIRST} LIMIT 1"
        )
        found = self._select(
            sql, [*(values[k] for k in keys), values["created_at"], values["result_json"]]
        )
        return found[0] if found else None

    def count(self) -> int:
        """How many results the store holds."""
        try:
            return int(self._live().execute("SELECT COUNT(*) FROM results").fetchone()[0])
        except sqlite3.DatabaseError as exc:
            raise self._unreadable(exc) from exc

    def close(self) -> None:
        """Close the file; closing twice is harmless."""
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: types.TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ResultStore({str(self.path)!r})"


def find_baseline(store: ResultStore, result: BenchResult) -> StoredResult | None:
    """The newest earlier run of the same model, target, precision, scenario and batch size on
    the same hardware, whatever its settings: a change of threads is what --compare must catch.
    """
    key = fingerprint_key(result.hardware)
    for stored in store.query(
        model_sha256=result.model_sha256,
        backend=result.backend,
        device=result.device,
        scenario=result.scenario,
    ):
        old = stored.result
        if (
            old.precision == result.precision
            and old.batch_size == result.batch_size
            and fingerprint_key(old.hardware) == key
            and old.created_at <= result.created_at
        ):
            return stored
    return None


# --------------------------------------------------------------------------- schema


def _refuse_non_sqlite(path: Path) -> None:
    """Refuse a file that is not SQLite before SQLite touches it: it is left byte for byte."""
    if path.is_dir():
        raise StoreError(f"results store {path} is a directory: name a file with --store")
    try:
        with path.open("rb") as handle:
            head = handle.read(len(_SQLITE_MAGIC))
    except FileNotFoundError:
        return
    except OSError as exc:
        raise StoreError(f"cannot read results store {path}: {exc}") from exc
    # An empty file is what sqlite3 itself creates on first open: treat it as a new store.
    if head and head != _SQLITE_MAGIC:
        raise StoreError(
            f"{path} is not an SQLite database, so not a crossinfer results store; it was left "
            "as it is: use --store to pick another file, or move this one away"
        )


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None:
        return "locked" in str(exc)
    # The low byte is the primary code: SQLITE_BUSY_RECOVERY etc. are kinds of SQLITE_BUSY.
    return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def _rollback(connection: sqlite3.Connection) -> None:
    # SQLite rolls back by itself on some errors (disk full, I/O); a second ROLLBACK would
    # raise and hide the error that matters.
    if connection.in_transaction:
        connection.execute("ROLLBACK")


def _read_schema(connection: sqlite3.Connection) -> tuple[int, set[str]]:
    version = int(connection.execute("PRAGMA user_version").fetchone()[0])
    tables = {
        str(name)
        for (name,) in connection.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        )
    }
    return version, tables


def _run_statements(connection: sqlite3.Connection, script: str) -> None:
    # executescript() would COMMIT the open transaction first; one statement at a time keeps
    # the schema change inside BEGIN IMMEDIATE, so a crash leaves the old file whole.
    for statement in script.split(";"):
        if statement.strip():
            connection.execute(statement)


def _migrate_0_to_1(connection: sqlite3.Connection, path: Path) -> None:
    """v0 -> v1: add hardware_key, computed from each row's stored hardware fingerprint.

    v0 kept created_at as the result gave it; v1 orders by it, so it is rewritten in UTC.
    """
    connection.execute("ALTER TABLE results ADD COLUMN hardware_key TEXT NOT NULL DEFAULT ''")
    rows = connection.execute("SELECT id, created_at, result_json FROM results").fetchall()
    for row_id, created_at, text in rows:
        try:
            hardware = json.loads(text)["hardware"]
            key = fingerprint_key(hardware)
            moment = _sortable_utc(created_at)
        except (ValueError, TypeError, KeyError, StoreError) as exc:
            raise StoreError(
                f"cannot migrate results store {path} to schema 1: row {row_id} cannot be read "
                f"({exc}); the file was left as it was"
            ) from exc
        connection.execute(
            "UPDATE results SET hardware_key = ?, created_at = ? WHERE id = ?",
            (key, moment, row_id),
        )
    connection.execute("DROP INDEX IF EXISTS results_match")
    connection.execute(
        "CREATE INDEX results_match ON results "
        "(model_sha256, backend, device, scenario, hardware_key)"
    )
    connection.execute("CREATE INDEX IF NOT EXISTS results_created ON results (created_at)")


_MIGRATIONS: dict[int, Callable[[sqlite3.Connection, Path], None]] = {0: _migrate_0_to_1}


# --------------------------------------------------------------------------- rows


def _row(result: BenchResult) -> tuple[Any, ...]:
    try:
        settings_json = canonical_json(dict(result.settings))
        hardware_key = fingerprint_key(result.hardware)
        result_json = canonical_json(result.to_dict())
    except TypeError as exc:
        raise StoreError(f"result of {result.model_source} cannot be stored: {exc}") from exc
    return (
        _sortable_utc(result.created_at),
        result.model_sha256,
        result.model_source,
        result.backend,
        result.device,
        result.precision,
        result.scenario,
        result.batch_size,
        settings_json,
        hardware_key,
        result.throughput,
        result.latency.p99_ms,
        result.loadgen_result,
        result_json,
    )


def _sortable_utc(created_at: str) -> str:
    """created_at in one fixed UTC form, so text order in SQL is time order."""
    try:
        moment = datetime.fromisoformat(created_at)
    except ValueError as exc:
        raise StoreError(f"created_at {created_at!r} is not an ISO 8601 time") from exc
    if moment.tzinfo is None:
        # BenchResult.created_at is documented as UTC; a bare time is read as such.
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def result_from_dict(data: Mapping[str, Any]) -> BenchResult:
    """Rebuild a `BenchResult` from `BenchResult.to_dict()` (or its JSON), nested types too.

    Keys this crossinfer does not know (a newer one wrote them) are ignored; missing keys of
    fields that have defaults take the default.
    """
    result: BenchResult = _build(BenchResult, data)
    return result


def _build(cls: type[Any], data: Mapping[str, Any]) -> Any:
    if not isinstance(data, Mapping):
        raise TypeError(f"{cls.__name__} expects an object, got {type(data).__name__}")
    hints = get_type_hints(cls)
    values = {
        item.name: _convert(hints[item.name], data[item.name])
        for item in fields(cls)
        if item.name in data
    }
    return cls(**values)


def _convert(hint: Any, value: Any) -> Any:
    if value is None:
        return None
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        arms = [arm for arm in get_args(hint) if arm is not type(None)]
        return _convert(arms[0], value) if len(arms) == 1 else value
    if isinstance(hint, type) and is_dataclass(hint):
        return _build(hint, value)
    if origin is tuple:
        return tuple(value)
    if origin in (dict, Mapping) or hint is dict:
        return dict(value)
    return value
