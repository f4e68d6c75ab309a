"""How tune walks the space: `exhaustive` measures every candidate; `quick` screens each variant
at one setting, steps a variant that misses a constraint there down to smaller batch sizes, then
hill-climbs batch size and knobs from the best two variants in turns (as Triton Model Analyzer's
quick mode climbs), within a budget of measurements. A backend option such as torch's mode (each
setting a compile) is changed only at the batch size a variant's climb starts from: the mode is
screened there once, then the batch sizes climbed in the winning mode. Unmeasured candidates keep
the reason.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from crossinfer.errors import UsageError
from crossinfer.tune.constraints import Metrics, merge_metrics
from crossinfer.tune.space import Candidate, Space, Variant

if TYPE_CHECKING:
    from crossinfer.tune.in_turns import TurnsDecision

STRATEGIES = ("quick", "exhaustive")

Measure = Callable[[Candidate], Metrics | None]  # None: it could not be measured (error kept)
# larger is better: (1, objective) for a feasible candidate, (0, -excess) for one that misses
Rank = Callable[[Metrics], tuple[float, float]]
_FAILED = (-1.0, 0.0)
# quick screens only the variants whose earlier batch-1 latency is within this factor of the
# fastest's: a runtime five times slower at batch 1 rarely wins at any batch size. 3x was too
# tight: one batch-1 run at two threads says little about one thread x two instances at batch
# 32 on a loaded machine (ResNet-50 here: ORT INT8 was 3.7x OpenVINO BF16 at batch 1, and won)
PRIOR_CUTOFF = 5.0
# quick climbs this many variants at once, taking turns (see _climb_together)
CLIMB_WIDTH = 2


@dataclass
class SearchOutcome:
    """What a strategy measured (in order) and why it left the rest alone."""

    strategy: str
    measured: dict[str, Metrics | None] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    budget: int | None = None
    path: list[str] = field(default_factory=list)  # quick: the climb's moves, start to end
    confirmed: list[str] = field(default_factory=list)  # measured twice: the mean counts
    turns: TurnsDecision | None = None  # the best few measured in turns (tune.in_turns)


def search(
    strategy: str,
    space: Space,
    measure: Measure,
    rank: Rank,
    *,
    budget: int | None = None,
    latency_first: bool = False,
    seed: Sequence[Candidate] = (),
    confirm: int = 0,
) -> SearchOutcome:
    """Run a strategy, then measure its `confirm` best candidates again; `seed` candidates are
    measured first (the naive default, to compare with)."""
    if strategy == "exhaustive":
        outcome = exhaustive(space, measure, seed=seed)
    elif strategy == "quick":
        outcome = quick(space, measure, rank, budget=budget, latency_first=latency_first, seed=seed)
    else:
        raise UsageError(f"--strategy '{strategy}' is not one of {', '.join(STRATEGIES)}")
    confirm_best(outcome, space, measure, rank, count=confirm)
    return outcome


def confirm_best(
    outcome: SearchOutcome, space: Space, measure: Measure, rank: Rank, *, count: int
) -> None:
    """Measure the `count` best candidates once more and rank them on the mean of both runs;
    then, while the best is one that ran once (the others fell back when measured again), measure
    it again too, up to `count` more times.

    One short run on a shared machine can be lucky or unlucky by a factor of two; a pick that
    rests on two runs is less often a fluke (successive halving's last round, in miniature).
    """
    by_key = {c.key: c for c in space.candidates}

    def ranked() -> list[str]:
        found = [(k, m) for k, m in outcome.measured.items() if m is not None and k in by_key]
        found.sort(key=lambda item: rank(item[1]), reverse=True)
        return [k for k, _ in found]

    def again(key: str) -> None:
        first = outcome.measured[key]
        second = measure(by_key[key])
        outcome.confirmed.append(key)
        if first is not None and second is not None:
            outcome.measured[key] = merge_metrics(first, second)

    for key in ranked()[:count]:
        again(key)
    for _ in range(count):
        order = ranked()
        if not order or order[0] in outcome.confirmed:
            return
        again(order[0])


def exhaustive(space: Space, measure: Measure, *, seed: Sequence[Candidate] = ()) -> SearchOutcome:
    outcome = SearchOutcome("exhaustive", budget=len(space))
    for candidate in [*seed, *space.candidates]:
        if candidate.key not in outcome.measured:
            outcome.measured[candidate.key] = measure(candidate)
    return outcome


def default_budget(space: Space) -> int:
    """A quarter of the space, but never fewer than one screen per variant, two climbs, and the
    other backend option settings (torch's modes) of the variants climbed at once: without them
    a GPU tune could end before it tried torch.compile."""
    variants = space.variants()
    options = max((len({k.options for k in space.knobs_of(v)}) for v in variants), default=1)
    least = len(variants) + 2 + CLIMB_WIDTH * (options - 1)
    return max(least, math.floor(len(space) / 4))


def quick(
    space: Space,
    measure: Measure,
    rank: Rank,
    *,
    budget: int | None = None,
    latency_first: bool = False,
    seed: Sequence[Candidate] = (),
) -> SearchOutcome:
    """Screen every variant at its anchor (the middle batch size, or the smallest for a latency
    objective, with the backend's first knob setting); step a variant that misses a constraint
    there down towards the smallest batch size (`_step_down`), dropping it if it misses even
    there; then hill-climb the best variants in turns."""
    budget = budget if budget is not None else default_budget(space)
    if budget < 1:
        raise UsageError(
            f"the quick strategy needs a budget of at least 1 measurement, got {budget}"
        )
    outcome = SearchOutcome("quick", budget=budget)
    sizes = space.batch_sizes
    anchor_batch = sizes[0] if latency_first else sizes[(len(sizes) - 1) // 2]

    def score(candidate: Candidate) -> tuple[float, float]:
        metrics = outcome.measured.get(candidate.key)
        return rank(metrics) if metrics is not None else _FAILED

    def take(candidate: Candidate) -> bool:
        if candidate.key in outcome.measured:
            return True
        if len(outcome.measured) >= budget:
            return False
        outcome.measured[candidate.key] = measure(candidate)
        return True

    for candidate in seed:
        take(candidate)
    anchors: dict[str, Candidate] = {}
    screened, unscreened = _screen(space.variants())
    for variant in screened:
        first = space.find(variant, anchor_batch, space.knobs_of(variant)[0])
        if first is not None and take(first):
            anchors[variant.key] = first
    dropped = _step_down(space, anchors, take, score, outcome)
    # climbers in order of their best point so far: a stepped-down variant by its smaller batch
    order = sorted(
        (a for a in anchors.values() if a.variant.key not in dropped),
        key=lambda a: score(_best_of(space, a, outcome, score)),
        reverse=True,
    )
    # where each variant's climb starts: the only batch size at which it tries other options
    screen_batch = {a.variant.key: _best_of(space, a, outcome, score).batch_size for a in order}
    climbed = _climb_together(space, order, take, score, outcome, budget, screen_batch)
    best = order[0] if order else None
    missing = {a.variant.key for a in order if _misses(score(_best_of(space, a, outcome, score)))}
    for candidate in space.candidates:
        if candidate.key in outcome.measured:
            continue
        if candidate.variant.key in unscreened:
            outcome.skipped[candidate.key] = unscreened[candidate.variant.key]
            continue
        if candidate.variant.key in dropped:
            outcome.skipped[candidate.key] = dropped[candidate.variant.key]
            continue
        screened_at = screen_batch.get(candidate.variant.key)
        if candidate.variant.key in climbed and screened_at not in (None, candidate.batch_size):
            best_here = _best_of(space, anchors[candidate.variant.key], outcome, score)
            if candidate.knobs.options != best_here.knobs.options:
                outcome.skipped[candidate.key] = (
                    f"not measured: quick tries a variant's backend options (each a compile) "
                    f"at batch {screened_at} only, then climbs batch sizes with the best there "
                    f"({best_here.knobs.label})"
                )
                continue
        outcome.skipped[candidate.key] = _why_skipped(
            candidate,
            anchors,
            climbed,
            best,
            score,
            len(outcome.measured) >= budget,
            budget,
            missing,
        )
    return outcome


def _screen(variants: list[Variant]) -> tuple[list[Variant], dict[str, str]]:
    """The variants worth a screening measurement: those whose batch-1 latency seen before the
    search (optimize's own check, or check's warm run) is within PRIOR_CUTOFF of the fastest,
    fastest first; the others keep the figure that ruled them out."""
    known = [v for v in variants if v.prior_latency_ms is not None]
    if not known:
        return variants, {}
    fastest = min(known, key=lambda v: v.prior_latency_ms or 0.0)
    best = fastest.prior_latency_ms or 0.0
    screened = [v for v in variants if v.prior_latency_ms is None]
    left_out: dict[str, str] = {}
    for variant in sorted(known, key=lambda v: v.prior_latency_ms or 0.0):
        latency = variant.prior_latency_ms or 0.0
        if latency <= PRIOR_CUTOFF * best:
            screened.append(variant)
        else:
            left_out[variant.key] = (
                f"not measured: not screened: batch-1 latency {latency:.1f} ms in "
                f"{variant.prior_source}, {latency / best:.1f}x the fastest variant's "
                f"({fastest.key}, {best:.1f} ms; quick screens within {PRIOR_CUTOFF:g}x)"
            )
    return screened, left_out


def _step_down(
    space: Space,
    anchors: dict[str, Candidate],
    take: Callable[[Candidate], bool],
    score: Callable[[Candidate], tuple[float, float]],
    outcome: SearchOutcome,
) -> dict[str, str]:
    """Measure each variant whose screening point misses a constraint at smaller batch sizes
    (same knobs), nearest miss first, until one meets the constraints or the smallest size
    missed too. Returns the variants dropped (they miss at the smallest size), with the reason.

    Why: p99 and memory grow with the batch, so a miss at the screening batch says little about
    batch 1; without this, a machine on which every variant missed a p99 bound at batch 8 never
    measured a faster runtime or precision at the batch size that could meet it. The next size
    tried is the largest below batch / (1 + excess): p99 scales about linearly with the batch,
    a little less at small batches (fixed per-run cost), hence stepping on until it meets.
    """
    sizes = space.batch_sizes
    dropped: dict[str, str] = {}
    missing = [a for a in anchors.values() if _misses(score(a))]
    for anchor in sorted(missing, key=score, reverse=True):
        at = anchor
        while _misses(score(at)):
            i = sizes.index(at.batch_size)
            if i == 0:
                dropped[anchor.variant.key] = (
                    f"not measured: dropped: this variant misses the constraints down to batch "
                    f"{at.batch_size} ({at.key}), and larger batches only add latency and memory"
                )
                break
            wanted = at.batch_size / (1.0 - score(at)[1])
            below = [s for s in sizes[:i] if s <= wanted] or [sizes[0]]
            step = space.find(at.variant, below[-1], at.knobs)
            if step is None or not take(step):
                break  # out of budget: the skipped reasons say so
            at = step
            if outcome.measured.get(at.key) is None:
                break  # failed to run: nothing to step on from
    return dropped


def _misses(rank: tuple[float, float]) -> bool:
    """Measured, but missing a constraint by a figure that a smaller batch can lower; a miss by
    no excess (an objective that cannot be valued) is not one a batch size changes."""
    return rank != _FAILED and rank[0] == 0.0 and rank[1] < 0.0


def _climb_together(
    space: Space,
    order: list[Candidate],
    take: Callable[[Candidate], bool],
    score: Callable[[Candidate], tuple[float, float]],
    outcome: SearchOutcome,
    budget: int,
    screen_batch: dict[str, int],
) -> list[str]:
    """Hill-climb CLIMB_WIDTH variants at once, one measurement each in turn, from their anchors
    (best first); a variant whose best point has every neighbour measured is at its peak and
    hands its turn to the next variant. Returns the variants climbed, best first.

    Why turns: one climb at a time spent the whole budget on the variant that screened best, and
    one short screening run on a shared machine can rank the two best variants the wrong way
    round (BERT-base here: OpenVINO BF16 and FP16 screen within 1% of each other).
    """
    waiting = [a for a in order if score(a) != _FAILED]
    active: list[Candidate] = []
    started: list[Candidate] = []
    while len(outcome.measured) < budget:
        while len(active) < CLIMB_WIDTH and waiting:
            active.append(waiting.pop(0))
            started.append(active[-1])
        if not active:
            break
        for anchor in list(active):
            current = _best_of(space, anchor, outcome, score)
            step = next(
                (
                    n
                    for n in _neighbours(space, current, screen_batch.get(anchor.variant.key))
                    if n.key not in outcome.measured
                ),
                None,
            )
            if step is None:
                active.remove(anchor)
            elif not take(step):
                break
    ends = {a.key: _best_of(space, a, outcome, score) for a in started}
    started.sort(key=lambda a: score(ends[a.key]), reverse=True)
    outcome.path.extend(f"{a.key} -> {ends[a.key].key}" for a in started)
    return [a.variant.key for a in started]


def _best_of(
    space: Space,
    anchor: Candidate,
    outcome: SearchOutcome,
    score: Callable[[Candidate], tuple[float, float]],
) -> Candidate:
    """The best measured candidate of the anchor's variant (the anchor when nothing beats it)."""
    mine = [
        c
        for c in space.candidates
        if c.variant.key == anchor.variant.key and c.key in outcome.measured
    ]
    return max(mine, key=score, default=anchor)


def _neighbours(space: Space, at: Candidate, screen_batch: int | None = None) -> list[Candidate]:
    """One step along each axis: the next smaller and larger batch size, every other knob setting.

    With `screen_batch` (quick's climb), the settings with other backend options come first at
    that batch size and are left out at any other: the modes are screened where the climb
    starts, then batch sizes climbed in the best (another mode is another compile, and a mode
    that lost at one batch size seldom wins at the next).
    """
    sizes = space.batch_sizes
    i = sizes.index(at.batch_size)
    options_first: list[Candidate] = []
    found: list[Candidate] = []
    for j in (i + 1, i - 1):
        if 0 <= j < len(sizes):
            step = space.find(at.variant, sizes[j], at.knobs)
            if step is not None:
                found.append(step)
    for knobs in space.knobs_of(at.variant):
        if knobs == at.knobs:
            continue
        other_options = knobs.options != at.knobs.options
        if other_options and screen_batch not in (None, at.batch_size):
            continue
        step = space.find(at.variant, at.batch_size, knobs)
        if step is not None:
            (options_first if other_options and screen_batch is not None else found).append(step)
    return options_first + found


def _why_skipped(
    candidate: Candidate,
    anchors: dict[str, Candidate],
    climbed: list[str],
    best: Candidate | None,
    score: Callable[[Candidate], tuple[float, float]],
    exhausted: bool,
    budget: int,
    missing: set[str],
) -> str:
    variant: Variant = candidate.variant
    anchor = anchors.get(variant.key)
    if anchor is None:
        return f"not measured: quick's budget of {budget} measurements ran out before this variant"
    if variant.key in climbed:
        if exhausted:
            return f"not measured: quick's budget of {budget} measurements ran out during the climb"
        return "not measured: off the hill-climb's path (no step towards it improved the objective)"
    if score(anchor) == _FAILED:
        return f"not measured: this variant failed at its screening point ({anchor.key})"
    if exhausted and variant.key in missing:
        return (
            f"not measured: screened at {anchor.key}, which missed the constraints; quick's "
            f"budget of {budget} measurements ran out before a smaller batch size met them"
        )
    lead = f" than {best.key}" if best is not None else ""
    why = f"screened at {anchor.key}, which ranked lower{lead}"
    if exhausted:
        why += f"; the budget of {budget} measurements went to better variants"
    return f"not measured: {why}"
