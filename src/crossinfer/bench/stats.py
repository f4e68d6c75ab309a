"""Statistics of benchmark runs: latency percentiles, window stability and regression decisions.

Pure functions over numbers and `BenchResult`s; nothing here runs a model or touches a file.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from crossinfer.bench.result import BenchResult, LatencyStats, Stability

_NS_PER_MS = 1_000_000


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The nearest-rank q-quantile (0 <= q <= 1) of values sorted in ascending order.

    Nearest rank: the value at index ``ceil(q * n) - 1``, the smallest sample with at least a
    fraction q of all samples at or below it; it is always a measured value, never interpolated.
    For 1..100 it gives p50 = 50, p90 = 90, p99 = 99, p99.9 = 100. LoadGen's own summary
    (``PerformanceSummary::ProcessLatencies``) indexes ``floor(q * n)`` instead, one rank higher
    whenever q * n is a whole number (p50 of 1..100 = 51); see `loadgen_percentile`.
    """
    _check_quantile(q)
    if not sorted_values:
        raise ValueError("percentile of no values: at least one sample is needed")
    # round() first: 0.07 * 100 is 7.000000000000001 in binary floating point, whose ceil is 8.
    rank = math.ceil(round(q * len(sorted_values), 9))
    return float(sorted_values[max(rank - 1, 0)])


def loadgen_percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-quantile as MLPerf LoadGen's summary computes it: the value at index floor(q * n).

    Use it to reproduce the figures of an mlperf_log_summary.txt exactly; `percentile` is the
    convention crossinfer reports.
    """
    _check_quantile(q)
    if not sorted_values:
        raise ValueError("percentile of no values: at least one sample is needed")
    index = math.floor(round(q * len(sorted_values), 9))
    return float(sorted_values[min(index, len(sorted_values) - 1)])


def _check_quantile(q: float) -> None:
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile {q!r} is outside [0, 1]: write p99 as 0.99")


def latency_stats(latencies_ns: Sequence[int]) -> LatencyStats:
    """Percentiles (nearest rank, see `percentile`), mean, min and max in ms of latencies in ns."""
    if not latencies_ns:
        raise ValueError("no latencies to summarise: the run completed no queries")
    values = sorted(latencies_ns)
    if values[0] < 0:
        raise ValueError(f"negative latency {values[0]} ns: the clock readings are inconsistent")
    ms = [value / _NS_PER_MS for value in values]
    return LatencyStats(
        count=len(ms),
        # Summing the integers keeps the mean exact before the one division.
        mean_ms=sum(values) / len(values) / _NS_PER_MS,
        p50_ms=percentile(ms, 0.50),
        p90_ms=percentile(ms, 0.90),
        p95_ms=percentile(ms, 0.95),
        p99_ms=percentile(ms, 0.99),
        p999_ms=percentile(ms, 0.999),
        min_ms=ms[0],
        max_ms=ms[-1],
    )


def run_spread_pct(values: Sequence[float]) -> float:
    """(max - min) / mean of the values, in percent: 0.0 for one value, or when all are zero.

    This is the spread `Stability.spread_pct` records and `compare_results` allows for.
    """
    if not values:
        raise ValueError("spread of no values: at least one measurement is needed")
    low, high = min(values), max(values)
    if low < 0:
        raise ValueError(f"negative measurement {low}: throughputs and latencies are >= 0")
    mean = math.fsum(values) / len(values)
    if mean == 0.0:
        return 0.0
    return (high - low) / mean * 100.0


def stability(
    window_throughputs: Sequence[float], *, threshold_pct: float = 10.0, windows: int = 3
) -> Stability:
    """Whether the last `windows` measurement windows agree within `threshold_pct`.

    perf_analyzer's rule: look at the last 3 windows and call the run stable when they agree
    within 10%. perf_analyzer tests max / min - 1 <= threshold; crossinfer tests the spread
    (max - min) / mean that `Stability.spread_pct` records, so the verdict and the figure shown
    next to it always agree. Ours is a little more lenient: at 10% it accepts max / min up to
    1.11 where perf_analyzer stops at 1.10.
    With fewer windows than asked for the run is not stable; the spread is then that of the
    windows there are (0.0 for one or none).
    """
    if windows < 2:
        raise ValueError(f"windows={windows}: stability compares at least 2 windows")
    if threshold_pct < 0:
        raise ValueError(f"threshold_pct={threshold_pct}: a spread threshold is >= 0")
    throughputs = tuple(float(value) for value in window_throughputs)
    last = throughputs[-windows:]
    spread = run_spread_pct(last) if last else 0.0
    if len(throughputs) < windows:
        return Stability(
            stable=False,
            window_throughputs=throughputs,
            spread_pct=spread,
            threshold_pct=threshold_pct,
            note=f"only {len(throughputs)} of the {windows} windows needed to judge stability",
        )
    stable = spread <= threshold_pct
    verdict = "within" if stable else "beyond"
    return Stability(
        stable=stable,
        window_throughputs=throughputs,
        spread_pct=spread,
        threshold_pct=threshold_pct,
        note=f"last {windows} windows spread {spread:.1f}%, {verdict} the {threshold_pct:g}% asked for",
    )


# --------------------------------------------------------------------------- regressions


@dataclass(frozen=True)
class Comparison:
    """One metric of a new run against the stored run it is compared with."""

    metric: str  # "throughput" or "p99 latency"
    old: float
    new: float
    ratio: float  # new / old; nan when old is 0
    change_pct: float  # (new - old) / old in percent; nan when old is 0
    allowed_pct: float  # a change up to this, either way, is noise
    regressed: bool
    improved: bool
    reason: str


_Direction = Literal["higher", "lower"]


def compare_results(
    new: BenchResult, old: BenchResult, *, min_allowed_pct: float = 5.0
) -> list[Comparison]:
    """Compare throughput (higher is better) and p99 latency (lower is better) of two runs.

    The change allowed either way is the larger of `min_allowed_pct` and the larger of the two
    runs' window spreads (`stability.spread_pct`). The larger rather than the sum: a run's
    figure averages all its windows, so it moves less than its windows do, and the noisier run's
    spread already covers both; a sum would let a real 10% loss pass between two 5%-noisy runs.
    p99 has no windows of its own, and a tail figure moves more than a mean from run to run
    (it rests on the few slowest queries), so it is allowed twice the throughput's change.
    """
    if min_allowed_pct < 0:
        raise ValueError(f"min_allowed_pct={min_allowed_pct}: an allowed change is >= 0")
    spread = max(new.stability.spread_pct, old.stability.spread_pct)
    allowed = max(min_allowed_pct, spread)
    return [
        _compare("throughput", new.throughput, old.throughput, "higher", allowed, spread, "/s"),
        _compare(
            "p99 latency",
            new.latency.p99_ms,
            old.latency.p99_ms,
            "lower",
            2 * allowed,
            spread,
            " ms",
        ),
    ]


def _compare(
    metric: str,
    new: float,
    old: float,
    better: _Direction,
    allowed_pct: float,
    spread_pct: float,
    unit: str,
) -> Comparison:
    figures = f"{metric} {_number(new)}{unit} vs {_number(old)}{unit}"
    if old <= 0:
        return Comparison(
            metric=metric,
            old=old,
            new=new,
            ratio=math.nan,
            change_pct=math.nan,
            allowed_pct=allowed_pct,
            regressed=False,
            improved=False,
            reason=f"{figures}: the earlier run has no {metric} to compare with",
        )
    change = (new - old) / old * 100.0
    worse = change < -allowed_pct if better == "higher" else change > allowed_pct
    better_now = change > allowed_pct if better == "higher" else change < -allowed_pct
    if allowed_pct > spread_pct:
        limit = f"the allowed {allowed_pct:.1f}% (run-to-run spread {spread_pct:.1f}%)"
    else:
        limit = f"the run-to-run spread of {spread_pct:.1f}%"
    if worse:
        reason = f"{figures} ({change:+.1f}%), beyond {limit}"
    elif better_now:
        reason = f"{figures} ({change:+.1f}%), improved beyond {limit}"
    else:
        reason = f"{figures} ({change:+.1f}%), within {limit}"
    return Comparison(
        metric=metric,
        old=old,
        new=new,
        ratio=new / old,
        change_pct=change,
        allowed_pct=allowed_pct,
        regressed=worse,
        improved=better_now,
        reason=reason,
    )


def _number(value: float) -> str:
    # One decimal for figures of 10 and up (41.2/s, 12.4 ms); 3 significant digits below.
    return f"{value:.1f}" if abs(value) >= 10 else f"{value:.3g}"
