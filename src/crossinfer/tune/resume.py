"""Resuming a tune: a candidate already measured on this machine, with these runtime versions, is
read back from the results store instead of measured again (what a Ctrl-C run leaves is kept).
"""

from __future__ import annotations

from collections.abc import Mapping, Set
from typing import Any

from crossinfer.bench.fingerprint import fingerprint_key
from crossinfer.bench.result import BenchResult
from crossinfer.store import ResultStore, StoredResult
from crossinfer.tune.space import Candidate

SCENARIO = "offline"


def candidate_settings(candidate: Candidate) -> dict[str, Any]:
    """The settings a bench row records for this candidate (bench's own keys)."""
    knobs = candidate.knobs
    return {
        "threads": knobs.threads,
        "streams": knobs.streams,
        "performance_hint": knobs.performance_hint,
        "instances": knobs.instances,
    }


def matches(
    result: BenchResult,
    candidate: Candidate,
    *,
    hardware_key: str,
    versions: Mapping[str, str],
) -> bool:
    """Same model file, target, precision, batch and knobs, quick length, machine and versions."""
    settings = candidate_settings(candidate)
    return (
        result.model_sha256 == candidate.variant.model_sha256
        and result.backend == candidate.variant.target.backend
        and result.device == candidate.variant.target.device
        and result.precision == candidate.variant.precision.value
        and result.scenario == SCENARIO
        and result.batch_size == candidate.batch_size
        and all(result.settings.get(k) == v for k, v in settings.items())
        # rows stored before backend options were recorded ran with none
        and dict(result.settings.get("options") or {}) == candidate.knobs.extra
        and not result.compliant  # a quick-length run, as tune measures
        and fingerprint_key(result.hardware) == hardware_key
        and dict(result.runtime_versions) == dict(versions)
    )


def find_stored(
    store: ResultStore,
    candidate: Candidate,
    *,
    hardware_key: str,
    versions: Mapping[str, str],
    exclude: Set[int] = frozenset(),
) -> StoredResult | None:
    """The newest stored measurement of exactly this candidate not in `exclude` (the rows this
    tune has already used: a confirming run needs another), or None."""
    for stored in store.query(
        model_sha256=candidate.variant.model_sha256,
        backend=candidate.variant.target.backend,
        device=candidate.variant.target.device,
        scenario=SCENARIO,
    ):
        if stored.id not in exclude and matches(
            stored.result, candidate, hardware_key=hardware_key, versions=versions
        ):
            return stored
    return None
