"""From measurements to a recommendation: the pick, the Pareto front, and a reason for every
candidate that is not the pick (which constraint and by how much, or how far behind it is).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from crossinfer.tune.constraints import Constraints, Metrics, Scorer, Violation
from crossinfer.tune.in_turns import TurnsDecision
from crossinfer.tune.pareto import dominated_by, pareto_front
from crossinfer.tune.space import Candidate, Space
from crossinfer.tune.strategies import SearchOutcome

PICK, FEASIBLE, REJECTED, FAILED, NOT_MEASURED = (
    "pick",
    "meets constraints",
    "rejected",
    "failed",
    "not measured",
)
NEAREST = 3


@dataclass(frozen=True)
class CandidateResult:
    candidate: Candidate
    status: str  # PICK, FEASIBLE, REJECTED, FAILED, NOT_MEASURED
    metrics: Metrics | None = None
    value: float | None = None  # the objective's value
    violations: tuple[Violation, ...] = ()
    on_front: bool = False
    reasons: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return self.candidate.key

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.candidate.to_dict(),
            "status": self.status,
            "metrics": self.metrics.to_dict() if self.metrics else None,
            "value": self.value,
            "violations": [v.text for v in self.violations],
            "on_front": self.on_front,
            "reasons": list(self.reasons),
        }


@dataclass(frozen=True)
class Recommendation:
    scorer: Scorer
    constraints: Constraints
    results: tuple[CandidateResult, ...]
    pick: CandidateResult | None
    front: tuple[str, ...]  # candidate keys on the Pareto front
    front_axes: tuple[str, ...]
    nearest: tuple[CandidateResult, ...] = ()  # when nothing meets the constraints
    notes: tuple[str, ...] = field(default=())

    def result(self, key: str) -> CandidateResult:
        for result in self.results:
            if result.key == key:
                return result
        raise KeyError(key)

    def to_dict(self) -> dict[str, Any]:
        return {
            "objective": self.scorer.objective.value,
            "constraints": self.constraints.to_dict(),
            "pick": self.pick.key if self.pick else None,
            "front": list(self.front),
            "front_axes": list(self.front_axes),
            "nearest": [r.key for r in self.nearest],
            "notes": list(self.notes),
            "candidates": [r.to_dict() for r in self.results],
        }


def rank_for(constraints: Constraints, scorer: Scorer) -> Any:
    """The ordering a search strategy climbs: feasible before infeasible, then the objective;
    among infeasible ones the smaller total excess over the limits."""

    def rank(metrics: Metrics) -> tuple[float, float]:
        missed = constraints.violations(metrics)
        value = scorer.value(metrics)
        if not missed and value is not None:
            return (1.0, value if scorer.objective.higher_is_better else -value)
        return (0.0, -min(_total_excess(missed), 1e9))

    return rank


def recommend(
    space: Space,
    outcome: SearchOutcome,
    constraints: Constraints,
    scorer: Scorer,
    failures: Mapping[str, str] | None = None,
) -> Recommendation:
    failures = failures or {}
    measured = {k: m for k, m in outcome.measured.items() if m is not None}
    values = {k: scorer.value(m) for k, m in measured.items()}
    missed = {k: tuple(constraints.violations(m)) for k, m in measured.items()}
    feasible = [k for k in measured if not missed[k] and values[k] is not None]
    pick_key = _best(feasible, values, measured, scorer)
    turns = outcome.turns
    if turns is not None and turns.pick in feasible:
        pick_key = turns.pick  # the rounds in turns outrank the separate runs
    else:
        turns = None

    axes, points, ups = _front_points(measured, values, scorer, constraints)
    front = tuple(pareto_front(points, ups))
    results = []
    pick: CandidateResult | None = None
    by_key = {c.key: c for c in space.candidates}
    for candidate in space.candidates:
        key = candidate.key
        if key not in outcome.measured:
            reason = outcome.skipped.get(key, "not measured")
            results.append(CandidateResult(candidate, NOT_MEASURED, reasons=(reason,)))
            continue
        metrics = measured.get(key)
        if metrics is None:
            why = failures.get(key, "the measurement failed")
            results.append(
                CandidateResult(candidate, FAILED, reasons=(f"measurement failed: {why}",))
            )
            continue
        value = values[key]
        if key == pick_key:
            status = PICK
            reasons: tuple[str, ...] = (
                f"best {scorer.objective.value} of the candidates that meet the constraints",
            )
            if turns is not None:
                reasons = (f"{reasons[0]}, decided in turns", turns.summary())
        elif missed[key]:
            status = REJECTED
            reasons = tuple(v.text for v in missed[key])
        elif value is None:
            status = REJECTED
            reasons = (_no_value(scorer, metrics),)
        else:
            status = FEASIBLE
            assert pick_key is not None  # there is a feasible candidate: the pick exists
            reasons = _behind(
                candidate,
                metrics,
                value,
                pick_key,
                values,
                scorer,
                points,
                ups,
                by_key,
                measured,
                turns,
            )
            if turns is not None and key in turns.keys:
                reasons = (turns.verdict_text(key), *reasons[1:])
            elif turns is not None and scorer.better(value, values[pick_key] or 0.0):
                reasons = (
                    f"{reasons[0]} in one run; the pick was decided in turns among the best "
                    f"{len(turns.keys)}, which this one was not among when they were chosen",
                    *reasons[1:],
                )
        result = CandidateResult(
            candidate, status, metrics, value, missed[key], key in front, reasons
        )
        results.append(result)
        if status == PICK:
            pick = result
    nearest: tuple[CandidateResult, ...] = ()
    notes: list[str] = list(scorer.notes)
    if turns is not None:
        notes.append(
            f"final ranking decided in turns: the best {len(turns.keys)} that meet the "
            f"constraints measured in {turns.rounds} rounds, the order reversed each round"
            f"{turns.load_text()}; {turns.pick} picked; each one's verdict is in its reasons"
        )
    if pick is None and measured:
        ranked = sorted(
            (r for r in results if r.status == REJECTED),
            key=lambda r: (_total_excess(r.violations), -(r.value or 0.0)),
        )
        nearest = tuple(ranked[:NEAREST])
        notes.append(
            f"no candidate meets the constraints ({constraints.describe()}): the nearest "
            f"{len(nearest)} are listed with what they miss"
        )
    return Recommendation(
        scorer=scorer,
        constraints=constraints,
        results=tuple(results),
        pick=pick,
        front=front,
        front_axes=axes,
        nearest=nearest,
        notes=tuple(notes),
    )


def _best(
    keys: list[str],
    values: Mapping[str, float | None],
    measured: Mapping[str, Metrics],
    scorer: Scorer,
) -> str | None:
    if not keys:
        return None
    sign = 1.0 if scorer.objective.higher_is_better else -1.0
    # ties on the objective go to the lower p99
    return max(keys, key=lambda k: (sign * (values[k] or 0.0), -measured[k].p99_ms))


def _front_points(
    measured: Mapping[str, Metrics],
    values: Mapping[str, float | None],
    scorer: Scorer,
    constraints: Constraints,
) -> tuple[tuple[str, ...], dict[str, tuple[float, ...]], tuple[bool, ...]]:
    """Axes: the objective, p99 latency (unless it is the objective), and each constrained
    figure (memory, accuracy drop)."""
    axes = [scorer.objective.value]
    ups = [scorer.objective.higher_is_better]
    if scorer.objective.value != "latency":
        axes.append("p99_ms")
        ups.append(False)
    if constraints.max_memory_mb is not None:
        axes.append("peak_rss_mb")
        ups.append(False)
    if constraints.max_accuracy_drop is not None:
        axes.append("accuracy_drop")
        ups.append(False)
    points: dict[str, tuple[float, ...]] = {}
    for key, metrics in measured.items():
        value = values[key]
        if value is None:
            continue
        row = [value]
        for axis in axes[1:]:
            figure = getattr(metrics, axis)
            row.append(math.inf if figure is None else float(figure))
        points[key] = tuple(row)
    return tuple(axes), points, tuple(ups)


def _behind(
    candidate: Candidate,
    metrics: Metrics,
    value: float,
    pick_key: str,
    values: Mapping[str, float | None],
    scorer: Scorer,
    points: Mapping[str, tuple[float, ...]],
    ups: tuple[bool, ...],
    by_key: Mapping[str, Candidate],
    measured: Mapping[str, Metrics],
    turns: TurnsDecision | None = None,
) -> tuple[str, ...]:
    best = values[pick_key]
    assert best is not None
    objective = scorer.objective
    reasons = [
        f"{objective.value} {_fmt(value)} {objective.unit}: {scorer.ratio(value, best):.2f}x "
        f"as good as the pick's {_fmt(best)}"
    ]
    beaten_by = dominated_by(candidate.key, points, ups)
    if not beaten_by and candidate.key in points:
        reasons.append("on the Pareto front: it trades the objective for a lower p99 or memory")
    slower = _slower_than_fp32(candidate, metrics, by_key, measured, turns)
    if slower:
        reasons.append(slower)
    return tuple(reasons)


def _slower_than_fp32(
    candidate: Candidate,
    metrics: Metrics,
    by_key: Mapping[str, Candidate],
    measured: Mapping[str, Metrics],
    turns: TurnsDecision | None = None,
) -> str:
    """ "INT8 slower here" when this precision lost to FP32 at the same setting, with the cause
    optimize named (no VNNI, ConvInteger, casts around FP16 kernels)."""
    variant = candidate.variant
    if variant.recipe == "fp32":
        return ""
    for key, other in by_key.items():
        if (
            other.variant.target == variant.target
            and other.variant.recipe == "fp32"
            and other.batch_size == candidate.batch_size
            and other.knobs == candidate.knobs
            and key in measured
        ):
            if turns is not None and {key, candidate.key} <= set(turns.keys):
                # both ran in tune's own turns: that verdict (the first reason) is the
                # evidence, not optimize's rounds at another setting
                return ""
            fp32 = measured[key].throughput
            if fp32 > 0 and metrics.throughput < fp32 * 0.95:
                ratio = metrics.throughput / fp32
                if variant.speed_verdict in ("faster", "within noise"):
                    # two separate runs against optimize's rounds in turns: the turns are the
                    # better evidence, so no cause is claimed for what may be noise
                    return (
                        f"{variant.recipe.upper()} measured {ratio:.2f}x the FP32 throughput at "
                        f"the same setting, but {variant.speed_verdict} when optimize measured "
                        "the two in turns: the difference is likely the machine's load"
                    )
                cause = "; ".join(n.split(": ", 1)[-1] for n in variant.notes) or (
                    "the runtime's kernels for it are slower on this machine"
                )
                return (
                    f"{variant.recipe.upper()} slower here: {ratio:.2f}x the FP32 "
                    f"throughput at the same setting ({cause})"
                )
    return ""


def _no_value(scorer: Scorer, metrics: Metrics) -> str:
    if scorer.objective.value == "energy":
        return f"energy per inference unknown: {metrics.energy_method}"
    if scorer.objective.value == "cost":
        return "cost unknown: no price per hour (name --instance or --price-per-hour)"
    return f"no {scorer.objective.value} figure"


def _total_excess(violations: tuple[Violation, ...] | list[Violation]) -> float:
    return sum(min(v.excess, 1e6) for v in violations)


def _fmt(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"
