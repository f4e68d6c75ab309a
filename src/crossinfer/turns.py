"""Speed verdicts that noise cannot flip: A and B measured in turns, one ratio per round, and the
verdict read from the ratios' spread; "within noise" is a verdict of its own.

Each round runs A then B, the next B then A (ABBA), so a drift in machine load during the
measurement falls on both sides alike. The 1-minute load average is kept with every round.
"""

from __future__ import annotations

import enum
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

NOISE_PCT = 5.0  # a median change within this is not called faster or slower
ROUNDS = 3


class SpeedVerdict(enum.StrEnum):
    FASTER = "faster"
    SLOWER = "slower"
    WITHIN_NOISE = "within noise"


def judge_ratios(ratios: Sequence[float], noise_pct: float = NOISE_PCT) -> SpeedVerdict:
    """Faster only when the median ratio clears the noise floor and every round agrees on the
    direction; slower likewise; anything else (rounds on both sides of 1x) is within noise."""
    if not ratios:
        return SpeedVerdict.WITHIN_NOISE
    median = statistics.median(ratios)
    if median >= 1 + noise_pct / 100 and min(ratios) > 1:
        return SpeedVerdict.FASTER
    if median <= 1 - noise_pct / 100 and max(ratios) < 1:
        return SpeedVerdict.SLOWER
    return SpeedVerdict.WITHIN_NOISE


@dataclass(frozen=True)
class TurnsComparison:
    """B against A measured in turns: samples/s of each per round, and the load at each round."""

    a_rates: tuple[float, ...]
    b_rates: tuple[float, ...]
    load_avg: tuple[float, ...]  # 1-minute load average after each round; empty where unknown
    noise_pct: float = NOISE_PCT

    @property
    def ratios(self) -> tuple[float, ...]:
        return tuple(b / a for a, b in zip(self.a_rates, self.b_rates, strict=True))

    @property
    def ratio(self) -> float:
        return statistics.median(self.ratios)

    @property
    def verdict(self) -> SpeedVerdict:
        return judge_ratios(self.ratios, self.noise_pct)

    @property
    def b_throughput(self) -> float:
        return statistics.median(self.b_rates)

    def spread(self) -> str:
        """E.g. "rounds 1.21x-1.52x, 3 in turns, load 1.9-2.3"."""
        low, high = min(self.ratios), max(self.ratios)
        text = f"rounds {low:.2f}x-{high:.2f}x, {len(self.ratios)} in turns"
        if self.load_avg:
            lo, hi = min(self.load_avg), max(self.load_avg)
            text += f", load {lo:.1f}" + (f"-{hi:.1f}" if hi - lo >= 0.05 else "")
        return text

    def describe(self) -> str:
        """E.g. "1.38x (rounds 1.21x-1.52x, 3 in turns, load 1.9-2.3): faster"."""
        return f"{self.ratio:.2f}x ({self.spread()}): {self.verdict.value}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "a_rates": list(self.a_rates),
            "b_rates": list(self.b_rates),
            "ratios": list(self.ratios),
            "ratio": self.ratio,
            "verdict": self.verdict.value,
            "load_avg": list(self.load_avg),
            "noise_pct": self.noise_pct,
        }


def load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:  # not every platform has one
        return None


def measure_in_turns(
    run_a: Callable[[], object],
    run_b: Callable[[], object],
    *,
    samples_a: int,
    samples_b: int,
    seconds_per_turn: float,
    rounds: int = ROUNDS,
    clock: Callable[[], float] = time.perf_counter,
    load: Callable[[], float | None] = load_average,
) -> TurnsComparison:
    """Run A and B in turns (ABBA order), `rounds` times; each turn's rate is samples / the
    median run time. `clock` and `load` are parameters so that the logic is testable."""
    a_rates: list[float] = []
    b_rates: list[float] = []
    loads: list[float] = []
    for index in range(rounds):
        order = [("a", run_a), ("b", run_b)]
        if index % 2:
            order.reverse()
        for side, fn in order:
            samples = samples_a if side == "a" else samples_b
            rate = samples / statistics.median(_times(fn, seconds_per_turn, clock))
            (a_rates if side == "a" else b_rates).append(rate)
        current = load()
        if current is not None:
            loads.append(current)
    return TurnsComparison(tuple(a_rates), tuple(b_rates), tuple(loads))


def _times(fn: Callable[[], object], seconds: float, clock: Callable[[], float]) -> list[float]:
    times: list[float] = []
    deadline = clock() + seconds
    while len(times) < 3 or (clock() < deadline and len(times) < 1000):
        start = clock()
        fn()
        times.append(clock() - start)
    return times
