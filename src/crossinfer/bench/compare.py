"""`bench --compare`: each new result against the newest earlier stored run it can be compared with.

The figures come from `bench.stats.compare_results`, what changed from `runner.settings_changes`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from crossinfer.bench.result import BenchResult
from crossinfer.bench.runner import settings_changes
from crossinfer.bench.stats import Comparison, compare_results
from crossinfer.store import ResultStore, find_baseline


@dataclass(frozen=True)
class StoredComparison:
    """One new result, the stored run it was compared with (None: nothing to compare with), the
    settings and versions that changed between them, and each metric's verdict."""

    result: BenchResult
    baseline_id: int | None
    changes: tuple[str, ...]
    comparisons: tuple[Comparison, ...]

    @property
    def regressions(self) -> int:
        return sum(c.regressed for c in self.comparisons)

    def to_dict(self) -> dict[str, Any]:
        return {
            "scenario": self.result.scenario,
            "batch_size": self.result.batch_size,
            "baseline_id": self.baseline_id,
            "changes": list(self.changes),
            "comparisons": [dataclasses.asdict(c) for c in self.comparisons],
        }


def compare_with_store(
    store: ResultStore, results: Sequence[BenchResult]
) -> list[StoredComparison]:
    """Each result against its baseline in `store` (call before adding the results to it)."""
    found = []
    for result in results:
        base = find_baseline(store, result)
        found.append(
            StoredComparison(
                result=result,
                baseline_id=base.id if base else None,
                changes=tuple(settings_changes(result, base.result)) if base else (),
                comparisons=tuple(compare_results(result, base.result)) if base else (),
            )
        )
    return found
