"""What a candidate must meet (constraints) and what tune maximizes or minimizes (the objective).

Every miss is a Violation that says which limit, the value, and by how much it misses.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from crossinfer.errors import UsageError
from crossinfer.hardware.catalog import Price
from crossinfer.turns import NOISE_PCT


class Objective(enum.StrEnum):
    THROUGHPUT = "throughput"  # samples/s, higher is better
    LATENCY = "latency"  # p99 ms, lower is better
    COST = "cost"  # USD per million inferences, lower is better
    ENERGY = "energy"  # joules per inference, lower is better

    @property
    def higher_is_better(self) -> bool:
        return self is Objective.THROUGHPUT

    @property
    def unit(self) -> str:
        return {
            Objective.THROUGHPUT: "samples/s",
            Objective.LATENCY: "ms p99",
            Objective.COST: "USD per million inferences",
            Objective.ENERGY: "J per inference",
        }[self]

    @classmethod
    def parse(cls, text: str) -> Objective:
        try:
            return cls(text.lower())
        except ValueError:
            raise UsageError(
                f"--objective '{text}' is not one of {', '.join(o.value for o in cls)}"
            ) from None


@dataclass(frozen=True)
class Metrics:
    """What one measurement of one candidate gave (Offline, quick LoadGen run, child process)."""

    throughput: float  # samples/s
    p50_ms: float  # per batch run: the compute time a request waits for at this batch size
    p99_ms: float
    percentiles_ms: Mapping[str, float]  # "min", "p50", "p90", "p95", "p99", "p99.9", "max"
    peak_rss_mb: float  # the measuring child's peak resident memory
    energy_j_per_inference: float | None
    energy_method: str  # how it was measured, or "not measured: <why>"
    accuracy: float | None = None
    accuracy_drop: float | None = None
    loadgen_result: str = ""
    stable: bool = True
    store_id: int | None = None
    resumed: bool = False  # read back from the results store, not measured in this run
    notes: tuple[str, ...] = ()
    runs: int = 1  # measurements averaged into these figures
    load_avg: float | None = None  # the machine's 1-minute load average after the measurement
    repeats_disagree: bool = False  # two runs further apart than either run's own spread
    # session set-up before the first result: load or convert, then each input shape's first
    # call (compile or CUDA graph capture); None: not known
    compile_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "throughput": self.throughput,
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
            "percentiles_ms": dict(self.percentiles_ms),
            "peak_rss_mb": self.peak_rss_mb,
            "energy_j_per_inference": self.energy_j_per_inference,
            "energy_method": self.energy_method,
            "accuracy": self.accuracy,
            "accuracy_drop": self.accuracy_drop,
            "loadgen_result": self.loadgen_result,
            "stable": self.stable,
            "store_id": self.store_id,
            "resumed": self.resumed,
            "runs": self.runs,
            "load_avg": self.load_avg,
            "repeats_disagree": self.repeats_disagree,
            "compile_s": self.compile_s,
            "notes": list(self.notes),
        }


def repeat_spread(first: Metrics, second: Metrics) -> float:
    """How far apart two runs may be and still be one figure: the larger of the noise floor
    and either run's own spread (p99 over p50: a run whose batches vary by 30% cannot promise
    its mean to better than that)."""
    own = [m.p99_ms / m.p50_ms for m in (first, second) if m.p50_ms > 0]
    return max([1 + NOISE_PCT / 100, *own])


def merge_metrics(first: Metrics, second: Metrics) -> Metrics:
    """Two measurements of one candidate as one: the mean of each figure, the larger memory.

    When their throughputs are further apart than `repeat_spread` allows, the mean would be a
    figure neither run saw: the slower run's figures stand (what a deployment must survive),
    flagged, with both figures and the load average at each in the notes.
    """
    fast, slow = sorted((first, second), key=lambda m: m.throughput, reverse=True)
    apart = fast.throughput / slow.throughput if slow.throughput > 0 else float("inf")
    allowed = repeat_spread(first, second)
    runs = first.runs + second.runs
    if apart > allowed:
        loads = [m.load_avg for m in (first, second)]
        at_load = f" (load {loads[0]:.1f} and {loads[1]:.1f})" if None not in loads else ""
        return dataclasses.replace(
            slow,
            peak_rss_mb=max(first.peak_rss_mb, second.peak_rss_mb),
            compile_s=_larger(first.compile_s, second.compile_s),
            stable=False,
            resumed=first.resumed and second.resumed,
            runs=runs,
            repeats_disagree=True,
            notes=(
                *second.notes,
                f"repeats disagree: {first.throughput:,.1f} and {second.throughput:,.1f} "
                f"samples/s{at_load} are {apart:.2f}x apart, beyond the {allowed:.2f}x the runs' "
                "own spread allows: the slower run's figures are kept; measure again on a quiet "
                "machine",
            ),
        )

    def mean(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else (a + b) / 2

    return dataclasses.replace(
        second,
        throughput=(first.throughput + second.throughput) / 2,
        p50_ms=(first.p50_ms + second.p50_ms) / 2,
        p99_ms=(first.p99_ms + second.p99_ms) / 2,
        percentiles_ms={
            k: (v + first.percentiles_ms[k]) / 2
            for k, v in second.percentiles_ms.items()
            if k in first.percentiles_ms
        },
        peak_rss_mb=max(first.peak_rss_mb, second.peak_rss_mb),
        # the larger: a second compile may read the first's cache, a fresh deployment cannot
        compile_s=_larger(first.compile_s, second.compile_s),
        energy_j_per_inference=mean(first.energy_j_per_inference, second.energy_j_per_inference),
        stable=first.stable and second.stable,
        resumed=first.resumed and second.resumed,
        runs=runs,
        load_avg=_larger(first.load_avg, second.load_avg),
        notes=(
            *second.notes,
            f"mean of {runs} runs: {first.throughput:,.1f} and "
            f"{second.throughput:,.1f} samples/s ({apart:.2f}x apart, within the {allowed:.2f}x "
            "the runs' own spread allows)",
        ),
    )


def _larger(a: float | None, b: float | None) -> float | None:
    return max(a, b) if a is not None and b is not None else a if b is None else b


@dataclass(frozen=True)
class Violation:
    """One constraint a candidate misses, by how much."""

    constraint: str  # "max_p99_ms", "max_accuracy_drop", "max_memory_mb"
    value: float
    limit: float
    text: str  # "p99 42.1 ms > 30 ms allowed (+40%)"

    @property
    def excess(self) -> float:
        """How far over, as a fraction of the limit: what "nearest" is ranked by."""
        return (self.value - self.limit) / self.limit if self.limit > 0 else float("inf")


@dataclass(frozen=True)
class Constraints:
    max_p99_ms: float | None = None
    max_accuracy_drop: float | None = None  # top-1, as a fraction (0.01 = 1 point)
    max_memory_mb: float | None = None

    def __post_init__(self) -> None:
        for name in ("max_p99_ms", "max_memory_mb"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise UsageError(f"--{name.replace('_', '-')} must be positive, got {value}")
        if self.max_accuracy_drop is not None and not 0 <= self.max_accuracy_drop < 1:
            raise UsageError(
                f"--max-accuracy-drop is a fraction in [0, 1) (0.01 = one point), got "
                f"{self.max_accuracy_drop}"
            )

    def violations(self, metrics: Metrics) -> list[Violation]:
        found = []
        if self.max_p99_ms is not None and metrics.p99_ms > self.max_p99_ms:
            found.append(
                Violation(
                    "max_p99_ms",
                    metrics.p99_ms,
                    self.max_p99_ms,
                    f"p99 {metrics.p99_ms:.2f} ms > {self.max_p99_ms:g} ms allowed "
                    f"(+{_pct(metrics.p99_ms, self.max_p99_ms)})",
                )
            )
        if self.max_accuracy_drop is not None:
            drop = metrics.accuracy_drop
            if drop is None:
                found.append(
                    Violation(
                        "max_accuracy_drop",
                        float("inf"),
                        self.max_accuracy_drop,
                        "accuracy not measured (no labelled set reached this candidate)",
                    )
                )
            elif drop > self.max_accuracy_drop + 1e-12:
                found.append(
                    Violation(
                        "max_accuracy_drop",
                        drop,
                        self.max_accuracy_drop,
                        f"accuracy drops {drop * 100:.2f} points > {self.max_accuracy_drop * 100:.2f} "
                        f"allowed (+{(drop - self.max_accuracy_drop) * 100:.2f} points)",
                    )
                )
        if self.max_memory_mb is not None and metrics.peak_rss_mb > self.max_memory_mb:
            found.append(
                Violation(
                    "max_memory_mb",
                    metrics.peak_rss_mb,
                    self.max_memory_mb,
                    f"peak memory {metrics.peak_rss_mb:,.0f} MB > {self.max_memory_mb:,.0f} MB "
                    f"allowed (+{_pct(metrics.peak_rss_mb, self.max_memory_mb)})",
                )
            )
        return found

    def to_dict(self) -> dict[str, float | None]:
        return {
            "max_p99_ms": self.max_p99_ms,
            "max_accuracy_drop": self.max_accuracy_drop,
            "max_memory_mb": self.max_memory_mb,
        }

    def describe(self) -> str:
        parts = []
        if self.max_p99_ms is not None:
            parts.append(f"p99 <= {self.max_p99_ms:g} ms")
        if self.max_accuracy_drop is not None:
            parts.append(f"accuracy drop <= {self.max_accuracy_drop * 100:g} points")
        if self.max_memory_mb is not None:
            parts.append(f"peak memory <= {self.max_memory_mb:g} MB")
        return ", ".join(parts) or "none"


@dataclass(frozen=True)
class Scorer:
    """Turns Metrics into the objective's value; cost needs a price, energy a measurement."""

    objective: Objective
    price: Price | None = None
    notes: tuple[str, ...] = field(default=())

    def value(self, metrics: Metrics) -> float | None:
        """The objective's value, or None when it cannot be computed for this candidate."""
        if self.objective is Objective.THROUGHPUT:
            return metrics.throughput
        if self.objective is Objective.LATENCY:
            return metrics.p99_ms
        if self.objective is Objective.COST:
            if self.price is None or metrics.throughput <= 0:
                return None
            return cost_per_million(self.price.per_hour, metrics.throughput)
        return metrics.energy_j_per_inference

    def better(self, a: float, b: float) -> bool:
        return a > b if self.objective.higher_is_better else a < b

    def ratio(self, value: float, best: float) -> float:
        """How good `value` is next to `best`, as a fraction of it (1.0 = as good)."""
        if self.objective.higher_is_better:
            return value / best if best else 0.0
        return best / value if value else 0.0


def cost_per_million(price_per_hour: float, throughput: float) -> float:
    """USD per million inferences on a machine of that price, fully busy at that throughput."""
    return price_per_hour / (throughput * 3600.0) * 1e6


def _pct(value: float, limit: float) -> str:
    return f"{(value - limit) / limit * 100:.0f}%"
