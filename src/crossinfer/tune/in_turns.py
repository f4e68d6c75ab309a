"""tune's final ranking, decided on measurements in turns rather than on separate runs.

One short run per candidate on a shared machine can rank two candidates the wrong way round
(issue 13: one step measured 0.90x and 1.38x two minutes apart). So the best few candidates
that meet the constraints (by the search's separate runs) are measured again in turns, A B C
then C B A, so that a drift in the machine's load falls on all of them alike, and the pick is
read from the rounds: a candidate beats another only when the median ratio of their rounds
clears the noise floor and every round agrees on the direction (`crossinfer.turns.judge_ratios`).
Candidates within noise of the best are a tie, and the tie is broken by a stated secondary
criterion: the lower p99 per batch run (for the latency objective, the higher throughput), then
the lower memory, then the simpler setting (fewer instances, smaller batch). The 1-minute load
average is kept with every round.

This takes the place of measuring the best candidates once more and averaging (`confirm_best`):
the same number of candidates, one run more each, and a verdict instead of a mean.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import reduce
from typing import Any

from crossinfer.tune.constraints import Metrics, merge_metrics, repeat_spread
from crossinfer.tune.space import Candidate, Space
from crossinfer.tune.strategies import Measure, Rank, SearchOutcome
from crossinfer.turns import SpeedVerdict, TurnsComparison, load_average

TURN_ROUNDS = 2  # A B C, then C B A: each candidate's rounds see the same load drift
# a candidate further behind the leader than this on the separate runs is not measured in turns:
# one run's noise on a loaded 2-core machine reached about 1.5x (issue 13: 0.90x and 1.38x), so
# beyond it the turns would only cost time; a leader with no one this close is measured once
# more instead (confirm_best), which flags a lucky run
CLOSE = 1.5

# the objective as a figure where larger is better (throughput; 1 / p99, 1 / cost, 1 / joules)
Goodness = Callable[[Metrics], float | None]


@dataclass(frozen=True)
class TurnsDecision:
    """The best few candidates measured in turns, and the pick read from their rounds."""

    objective: str  # "throughput", "latency", "cost" or "energy"
    leader: str  # the best on the search's separate runs
    keys: tuple[str, ...]  # measured in every round, in the search's order (leader first)
    goodness: Mapping[str, tuple[float, ...]]  # per candidate, per round: larger is better
    load_avg: tuple[float, ...]  # 1-minute load average after each round
    pick: str
    # "": the pick beat every other beyond noise; else which candidates tied and how it was broken
    tie_break: str
    failed: Mapping[str, str]  # candidates that failed in a round: left out of the decision

    @property
    def rounds(self) -> int:
        return len(self.goodness[self.pick])

    def load_text(self) -> str:
        """ ", load 2.1-2.4" (the 1-minute load average after each round), or ""."""
        return _loads(self.load_avg)

    def against_pick(self, key: str) -> TurnsComparison:
        """`key` against the pick, round by round: ratio > 1 means `key` was better."""
        return TurnsComparison(self.goodness[self.pick], self.goodness[key], self.load_avg)

    def verdict_text(self, key: str) -> str:
        """E.g. "0.97x the pick's throughput in turns (rounds 0.93x-1.01x, 2 in turns, load 2.1-2.4):
        within noise"."""
        comparison = self.against_pick(key)
        verdict = comparison.verdict
        word = verdict.value
        if (
            self.objective not in ("throughput", "latency")
            and verdict is not SpeedVerdict.WITHIN_NOISE
        ):
            word = "better" if verdict is SpeedVerdict.FASTER else "worse"
        return (
            f"{comparison.ratio:.2f}x the pick's {self.objective} in turns "
            f"({comparison.spread()}): {word}"
        )

    def summary(self) -> str:
        """One line for the pick's reasons and the notes."""
        others = [k for k in self.keys if k != self.pick]
        text = (
            f"measured in turns with {', '.join(others)} ({len(self.goodness[self.pick])} rounds"
            f"{_loads(self.load_avg)})"
        )
        if self.tie_break:
            text += f"; {self.tie_break}"
        else:
            text += f"; better than {'each' if len(others) > 1 else 'it'} beyond noise"
        if self.pick != self.leader:
            text += f"; the separate runs had ranked {self.leader} first"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {
            "objective": self.objective,
            "leader": self.leader,
            "pick": self.pick,
            "keys": list(self.keys),
            "rounds": {k: list(v) for k, v in self.goodness.items()},
            "goodness": "the objective per round, larger is better (throughput, else 1 / figure)",
            "load_avg": list(self.load_avg),
            "tie_break": self.tie_break,
            "against_pick": {
                k: {**self.against_pick(k).to_dict(), "text": self.verdict_text(k)}
                for k in self.keys
                if k != self.pick
            },
            "failed": dict(self.failed),
        }


def turn_group(
    outcome: SearchOutcome,
    space: Space,
    rank: Rank,
    goodness: Goodness,
    width: int,
    close: float = CLOSE,
) -> list[str]:
    """The `width` best measured candidates that meet the constraints and are within `close` of
    the best one's objective, best first."""
    keys = {c.key for c in space.candidates}
    feasible = [
        (key, metrics)
        for key, metrics in outcome.measured.items()
        if metrics is not None
        and key in keys
        and rank(metrics)[0] == 1.0
        and (goodness(metrics) or 0.0) > 0
    ]
    feasible.sort(key=lambda item: rank(item[1]), reverse=True)
    if not feasible:
        return []
    best = goodness(feasible[0][1]) or 0.0
    near = [key for key, m in feasible if (goodness(m) or 0.0) * close >= best]
    return near[:width]


def decide_in_turns(
    outcome: SearchOutcome,
    space: Space,
    measure: Measure,
    goodness: Goodness,
    group: Sequence[str],
    *,
    objective: str,
    rounds: int = TURN_ROUNDS,
    say: Callable[[str], None] = lambda _text: None,
    load: Callable[[], float | None] = load_average,
) -> TurnsDecision | None:
    """Measure `group` (best first, from `turn_group`) in `rounds` rounds, alternating the order;
    replace each one's figures with its turns' (their mean, or the slower when they disagree);
    set and return `outcome.turns`. None when fewer than two ran in every round (the separate
    runs then stand)."""
    by_key = {c.key: c for c in space.candidates}
    runs: dict[str, list[Metrics]] = {key: [] for key in group}
    failed: dict[str, str] = {}
    loads: list[float] = []
    for index in range(rounds):
        order = list(group) if index % 2 == 0 else list(reversed(group))
        say(f"turns: round {index + 1} of {rounds}: {', '.join(order)}")
        for key in order:
            if key in failed:
                continue
            metrics = measure(by_key[key])
            if metrics is None or (goodness(metrics) or 0.0) <= 0:
                failed[key] = f"failed in round {index + 1} of the turns"
                continue
            runs[key].append(metrics)
        current = load()
        if current is not None:
            loads.append(current)
    complete = [key for key in group if key not in failed]
    if len(complete) < 2:
        say("turns: fewer than two candidates ran in every round; the separate runs stand")
        return None
    good = {key: tuple(goodness(m) or 0.0 for m in runs[key]) for key in complete}
    merged = {key: _merged(outcome.measured[key], runs[key], loads) for key in complete}
    pick, tie_break = _pick(complete, good, merged, tuple(loads), objective, by_key)
    decision = TurnsDecision(
        objective=objective,
        leader=group[0],
        keys=tuple(complete),
        goodness=good,
        load_avg=tuple(loads),
        pick=pick,
        tie_break=tie_break,
        failed=failed,
    )
    outcome.measured.update(merged)
    outcome.turns = decision
    for key in complete:
        if key != pick:
            say(f"turns: {key}: {decision.verdict_text(key)}")
    say(f"turns: pick {pick}: {decision.summary()}")
    return decision


def _pick(
    keys: list[str],
    good: Mapping[str, tuple[float, ...]],
    merged: Mapping[str, Metrics],
    loads: tuple[float, ...],
    objective: str,
    by_key: Mapping[str, Candidate],
) -> tuple[str, str]:
    """The best by median; the candidates within noise of it tie, broken by `secondary`. A tied
    candidate that another beats beyond noise is not picked (the best itself never is)."""

    def against(a: str, b: str) -> SpeedVerdict:
        return TurnsComparison(good[a], good[b], loads).verdict  # b against a

    best = max(keys, key=lambda k: statistics.median(good[k]))
    tied = [k for k in keys if k == best or against(best, k) is SpeedVerdict.WITHIN_NOISE]
    if len(tied) == 1:
        return best, ""

    def secondary(key: str) -> tuple[float, ...]:
        m, c = merged[key], by_key[key]
        first = -m.throughput if objective == "latency" else m.p99_ms
        return (first, m.peak_rss_mb, c.knobs.instances, c.batch_size)

    left = sorted(tied, key=secondary)
    passed_over = []
    while True:
        pick = left[0]
        if not any(against(pick, k) is SpeedVerdict.FASTER for k in keys if k != pick):
            break
        passed_over.append(left.pop(0))
    others = [k for k in tied if k != pick]
    if objective == "latency":
        figures = ", ".join(f"{merged[k].throughput:,.1f}" for k in others)
        rule = f"the higher throughput ({merged[pick].throughput:,.1f} samples/s against {figures})"
    else:
        figures = ", ".join(f"{merged[k].p99_ms:.2f}" for k in others)
        rule = f"the lower p99 per batch run ({merged[pick].p99_ms:.2f} ms against {figures})"
    skipped = (
        f" ({', '.join(passed_over)} passed over: another beat it beyond noise)"
        if passed_over
        else ""
    )
    return pick, (
        f"{len(tied)} within noise of each other in turns: picked by {rule}, then lower memory, "
        f"then fewer instances and the smaller batch{skipped}"
    )


def _merged(separate: Metrics | None, turns: list[Metrics], loads: list[float]) -> Metrics:
    """The turns' runs as one figure (mean, or the slower run flagged when they disagree), with
    the search's own run checked against it: a repeat that disagrees beyond the runs' spread is
    flagged, with both figures and their load averages."""
    merged = reduce(merge_metrics, turns)
    merged = dataclasses.replace(
        merged,
        load_avg=max(loads) if loads else merged.load_avg,
        notes=(
            *merged.notes,
            f"measured in turns: {', '.join(f'{m.throughput:,.1f}' for m in turns)} samples/s"
            f"{_loads(tuple(loads))}",
        ),
    )
    if separate is None or separate.throughput <= 0 or merged.repeats_disagree:
        return merged
    fast, slow = sorted((separate.throughput, merged.throughput), reverse=True)
    apart = fast / slow if slow > 0 else float("inf")
    allowed = repeat_spread(separate, merged)
    if apart <= allowed:
        return merged
    at = f" (load {separate.load_avg:.1f})" if separate.load_avg is not None else ""
    return dataclasses.replace(
        merged,
        stable=False,
        repeats_disagree=True,
        notes=(
            *merged.notes,
            f"repeats disagree: the search's run, {separate.throughput:,.1f} samples/s{at}, and "
            f"the turns' {merged.throughput:,.1f} samples/s are {apart:.2f}x apart, beyond the "
            f"{allowed:.2f}x the runs' own spread allows: the turns' figures are kept; measure "
            "again on a quiet machine",
        ),
    )


def _loads(loads: tuple[float, ...]) -> str:
    if not loads:
        return ""
    low, high = min(loads), max(loads)
    return f", load {low:.1f}" + (f"-{high:.1f}" if high - low >= 0.05 else "")
