"""Search strategies on a constructed space with a known objective surface: exhaustive measures
everything; quick stays within its budget, finds the peak of a unimodal surface, and says why it
left each candidate alone."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from crossinfer.backends.base import Precision, Target
from crossinfer.errors import UsageError
from crossinfer.tune.constraints import Constraints, Metrics, Objective, Scorer
from crossinfer.tune.recommend import rank_for
from crossinfer.tune.space import Candidate, Knobs, Space, Variant, build_space
from crossinfer.tune.strategies import default_budget, exhaustive, quick, search

BATCHES = (1, 2, 4, 8, 16, 32, 64)
KNOBS = [Knobs(), Knobs(threads=1, instances=2), Knobs(threads=1)]
# throughput factor of each variant: int8 the best, fp16 a loser
SPEED = {"fp32": 1.0, "int8": 2.5, "fp16": 0.6, "bf16": 1.6}


def _variant(recipe: str) -> Variant:
    return Variant(
        target=Target("onnxruntime", "cpu"),
        recipe=recipe,
        precision=Precision.FP32,
        model_path=Path(f"/m/{recipe}.onnx"),
        model_sha256=recipe,
    )


def _space() -> Space:
    return build_space(
        [_variant(r) for r in SPEED],
        BATCHES,
        batchable=True,
        cores=2,
        knobs={"onnxruntime": KNOBS},
    )


def _surface(candidate: Candidate) -> Metrics:
    """Throughput peaks at batch 16 and the second knob setting; p99 grows with the batch."""
    batch_term = math.exp(-((math.log2(candidate.batch_size) - 4) ** 2) / 4)
    knob_term = {0: 1.0, 1: 1.3, 2: 0.7}[KNOBS.index(candidate.knobs)]
    throughput = 100 * SPEED[candidate.variant.recipe] * batch_term * knob_term
    p99 = candidate.batch_size * 2.0 / SPEED[candidate.variant.recipe]
    return Metrics(
        throughput=throughput,
        p50_ms=p99 / 2,
        p99_ms=p99,
        percentiles_ms={},
        peak_rss_mb=100.0,
        energy_j_per_inference=None,
        energy_method="not measured",
    )


class _Counter:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, candidate: Candidate) -> Metrics:
        self.calls.append(candidate.key)
        return _surface(candidate)


def _rank(constraints: Constraints | None = None):  # type: ignore[no-untyped-def]
    return rank_for(constraints or Constraints(), Scorer(Objective.THROUGHPUT))


def _best_key(space: Space, constraints: Constraints | None = None) -> str:
    rank = _rank(constraints)
    return max(space.candidates, key=lambda c: rank(_surface(c))).key


def test_space_is_variants_x_batches_x_knobs() -> None:
    space = _space()
    assert len(space) == 4 * len(BATCHES) * len(KNOBS)
    assert len({c.key for c in space.candidates}) == len(space)
    assert space.batch_sizes == BATCHES


def test_exhaustive_measures_every_candidate_once() -> None:
    space = _space()
    counter = _Counter()
    outcome = exhaustive(space, counter)
    assert sorted(counter.calls) == sorted(c.key for c in space.candidates)
    assert not outcome.skipped


def test_quick_finds_the_peak_within_a_quarter_of_the_space() -> None:
    space = _space()
    counter = _Counter()
    outcome = quick(space, counter, _rank())
    assert len(counter.calls) == len(set(counter.calls))  # nothing measured twice
    assert len(outcome.measured) <= default_budget(space) <= len(space) // 4
    assert _best_key(space) in outcome.measured
    assert _best_key(space) == "onnxruntime:cpu/int8/batch 16/1 threads, x2 instances"
    # every candidate is either measured or has a reason
    assert set(outcome.measured) | set(outcome.skipped) == {c.key for c in space.candidates}
    assert outcome.path[0].endswith("int8/batch 16/1 threads, x2 instances")
    # the two best-screened variants climb in turns, one measurement each
    climbs = [k.split("/")[1] for k in list(outcome.measured)[4:10]]
    assert climbs == ["int8", "bf16"] * 3


def test_quick_climbs_the_runner_up_too_and_says_why_others_were_left() -> None:
    space = _space()
    outcome = quick(space, _Counter(), _rank(), budget=10)
    assert {k.split("/")[1] for k in list(outcome.measured)[4:]} == {"int8", "bf16"}
    fp16 = outcome.skipped["onnxruntime:cpu/fp16/batch 64/default threads"]
    assert fp16.startswith("not measured: screened at onnxruntime:cpu/fp16/batch 8")
    assert "budget of 10 measurements went to better variants" in fp16


def test_quick_respects_constraints_while_climbing() -> None:
    space = _space()
    limits = Constraints(max_p99_ms=10.0)  # int8 (p99 = batch * 0.8) stops at batch 8
    outcome = quick(space, _Counter(), _rank(limits))
    assert _best_key(space, limits) == "onnxruntime:cpu/int8/batch 8/1 threads, x2 instances"
    assert _best_key(space, limits) in outcome.measured


def test_quick_budget_is_a_hard_limit_and_says_so() -> None:
    space = _space()
    counter = _Counter()
    outcome = quick(space, counter, _rank(), budget=2)
    assert len(counter.calls) == 2
    reasons = set(outcome.skipped.values())
    assert any("budget of 2 measurements ran out" in r for r in reasons)


def test_seeded_candidates_are_measured_first_and_counted() -> None:
    space = _space()
    naive = space.candidates[0]
    counter = _Counter()
    search("quick", space, counter, _rank(), budget=5, seed=[naive])
    assert counter.calls[0] == naive.key and len(counter.calls) == 5


def test_failed_measurements_are_not_climbed_from() -> None:
    space = _space()

    def flaky(candidate: Candidate) -> Metrics | None:
        return None if candidate.variant.recipe == "int8" else _surface(candidate)

    outcome = quick(space, flaky, _rank())
    assert all(
        not k.startswith("onnxruntime:cpu/int8/") or m is None for k, m in outcome.measured.items()
    )
    assert "bf16" in outcome.path[0]
    skipped = outcome.skipped["onnxruntime:cpu/int8/batch 1/default threads"]
    assert "failed at its screening point" in skipped


def test_unknown_strategy_is_refused() -> None:
    with pytest.raises(UsageError, match="--strategy 'random'"):
        search("random", _space(), _Counter(), _rank())


def test_fixed_batch_models_keep_batch_one_only() -> None:
    space = build_space([_variant("fp32")], (1, 8), batchable=False, cores=2)
    assert {c.batch_size for c in space.candidates} == {1}
    assert space.pruned[0].what == "batch 8" and "fixed batch dimension" in space.pruned[0].reason
    # the default knob grid of each backend; an unknown backend gets its defaults only
    assert [c.knobs for c in space.candidates] == [Knobs(), Knobs(threads=1, instances=2)]


def test_quick_does_not_screen_variants_far_slower_before_the_search() -> None:
    import dataclasses

    variants = [
        dataclasses.replace(_variant(r), prior_latency_ms=ms, prior_source="optimize's check")
        for r, ms in (("fp32", 10.0), ("int8", 4.0), ("fp16", 30.0), ("bf16", None))
    ]
    space = build_space(variants, BATCHES, batchable=True, cores=2, knobs={"onnxruntime": KNOBS})
    outcome = quick(space, _Counter(), _rank())
    assert not any(k.startswith("onnxruntime:cpu/fp16/") for k in outcome.measured)
    reason = outcome.skipped["onnxruntime:cpu/fp16/batch 1/default threads"]
    assert "batch-1 latency 30.0 ms in optimize's check, 7.5x the fastest" in reason
    assert any(k.startswith("onnxruntime:cpu/fp32/") for k in outcome.measured)  # 2.5x: screened
    # no figure before the search: screened all the same
    assert any(k.startswith("onnxruntime:cpu/bf16/") for k in outcome.measured)


def test_confirmation_measures_the_best_again_and_keeps_the_mean() -> None:
    space = _space()
    counter = _Counter()
    outcome = search("quick", space, counter, _rank(), budget=10, confirm=2)
    assert len(counter.calls) == 12 and len(outcome.measured) == 10
    assert len(outcome.confirmed) == 2 and set(outcome.confirmed) <= set(outcome.measured)
    for key in outcome.confirmed:
        merged = outcome.measured[key]
        assert merged is not None and merged.runs == 2
        assert "mean of 2 runs" in merged.notes[-1]


def test_merge_takes_means_and_the_larger_memory() -> None:
    from crossinfer.tune.constraints import merge_metrics

    first = _surface(_space().candidates[0])  # p99 twice p50: runs may be 2x apart
    second = dataclasses_replace(first, throughput=first.throughput * 1.5, peak_rss_mb=300.0)
    merged = merge_metrics(first, second)
    assert merged.throughput == pytest.approx(first.throughput * 1.25)
    assert merged.peak_rss_mb == 300.0 and merged.runs == 2
    assert not merged.repeats_disagree
    assert "(1.50x apart, within the 2.00x the runs' own spread allows)" in merged.notes[-1]


def test_repeats_that_disagree_beyond_their_spread_are_flagged_not_averaged() -> None:
    from crossinfer.tune.constraints import merge_metrics

    base = _surface(_space().candidates[0])
    tight = dataclasses_replace(base, p50_ms=10.0, p99_ms=11.0)  # its own spread: 1.10x
    first = dataclasses_replace(tight, throughput=61.7, load_avg=1.2)
    second = dataclasses_replace(tight, throughput=6.7, p50_ms=90.0, p99_ms=99.0, load_avg=7.9)
    merged = merge_metrics(first, second)
    assert merged.repeats_disagree and not merged.stable and merged.runs == 2
    assert merged.throughput == 6.7 and merged.p99_ms == 99.0  # the slower run stands
    assert merged.notes[-1].startswith(
        "repeats disagree: 61.7 and 6.7 samples/s (load 1.2 and 7.9) are 9.21x apart, beyond "
        "the 1.10x the runs' own spread allows"
    )


def dataclasses_replace(metrics: Metrics, **changes: float) -> Metrics:
    import dataclasses

    return dataclasses.replace(metrics, **changes)  # type: ignore[arg-type]


def test_a_pick_that_ran_once_is_confirmed_when_the_confirmed_ones_fall_back() -> None:
    space = build_space([_variant("fp32")], (1, 2, 4), batchable=True, cores=1)
    keys = [c.key for c in space.candidates]
    runs: dict[str, int] = {}
    first_run = {keys[0]: 100.0, keys[1]: 90.0, keys[2]: 80.0}

    def lucky_once(candidate: Candidate) -> Metrics:
        runs[candidate.key] = runs.get(candidate.key, 0) + 1
        base = _surface(candidate)
        # keys[0] was lucky the first time: 100, then 20 (mean 60)
        value = first_run[candidate.key] if runs[candidate.key] == 1 else 20.0
        if candidate.key != keys[0] and runs[candidate.key] > 1:
            value = first_run[candidate.key]
        return dataclasses_replace(base, throughput=value)

    outcome = search("exhaustive", space, lucky_once, _rank(), confirm=1)
    # keys[0] confirmed first (mean 60); keys[1] (90, once) became the best: confirmed too
    assert outcome.confirmed == [keys[0], keys[1]]
    assert outcome.measured[keys[1]].runs == 2  # type: ignore[union-attr]


# p99 of one batch run = overhead + per-sample time x batch size (ms), scaled by the knob setting:
# what a runtime on a slow CPU looks like against a 100 ms bound
LATENCY = {"int8": (10.0, 60.0), "fp32": (150.0, 100.0), "bf16": (80.0, 10.0)}
KNOB_LATENCY = {0: 1.0, 1: 1.6, 2: 1.8}
P99_BOUND = Constraints(max_p99_ms=100.0)


def _slow_machine(candidate: Candidate) -> Metrics:
    overhead, per_sample = LATENCY[candidate.variant.recipe]
    knob = KNOBS.index(candidate.knobs)
    p99 = (overhead + per_sample * candidate.batch_size) * KNOB_LATENCY[knob]
    instances = candidate.knobs.instances
    return Metrics(
        throughput=1000.0 * candidate.batch_size * instances / p99,
        p50_ms=p99 * 0.9,
        p99_ms=p99,
        percentiles_ms={},
        peak_rss_mb=100.0,
        energy_j_per_inference=None,
        energy_method="not measured",
    )


def _slow_space(recipes: tuple[str, ...]) -> Space:
    return build_space(
        [_variant(r) for r in recipes],
        BATCHES,
        batchable=True,
        cores=2,
        knobs={"onnxruntime": KNOBS},
    )


def test_quick_steps_a_variant_down_to_the_batch_that_meets_the_p99_bound() -> None:
    from crossinfer.tune.recommend import recommend

    space = _slow_space(("int8", "fp32"))
    calls: list[str] = []

    def measure(candidate: Candidate) -> Metrics:
        calls.append(candidate.key)
        return _slow_machine(candidate)

    # both variants miss 100 ms at the screening batch (8); a budget that leaves no room to climb
    outcome = quick(space, measure, _rank(P99_BOUND), budget=4)
    int8_1 = "onnxruntime:cpu/int8/batch 1/default threads"
    fp32_1 = "onnxruntime:cpu/fp32/batch 1/default threads"
    # screen both, then the nearer miss (int8: 490 ms) first; each goes straight to batch 1
    assert calls == [
        "onnxruntime:cpu/int8/batch 8/default threads",
        "onnxruntime:cpu/fp32/batch 8/default threads",
        int8_1,
        fp32_1,
    ]
    rec = recommend(space, outcome, P99_BOUND, Scorer(Objective.THROUGHPUT))
    assert rec.pick is not None and rec.pick.key == int8_1
    assert rec.pick.metrics is not None and rec.pick.metrics.p99_ms == pytest.approx(70.0)
    # fp32 misses even at batch 1 (250 ms): dropped, its larger batches keep the reason
    assert [v.text for v in rec.result(fp32_1).violations] == [
        "p99 250.00 ms > 100 ms allowed (+150%)"
    ]
    reason = outcome.skipped["onnxruntime:cpu/fp32/batch 2/default threads"]
    assert reason == (
        "not measured: dropped: this variant misses the constraints down to batch 1 "
        f"({fp32_1}), and larger batches only add latency and memory"
    )
    assert all(r == reason for k, r in outcome.skipped.items() if "/fp32/" in k)


def test_a_dropped_variant_is_not_climbed_and_the_rest_climb_from_their_feasible_point() -> None:
    space = _slow_space(("int8", "fp32"))
    outcome = quick(space, _slow_machine, _rank(P99_BOUND))  # the default budget: room to climb
    fp32 = [k for k in outcome.measured if "/fp32/" in k]
    assert fp32 == [
        "onnxruntime:cpu/fp32/batch 8/default threads",
        "onnxruntime:cpu/fp32/batch 1/default threads",
    ]
    # int8 climbed on from batch 1, where it stays: batch 2 (130 ms) and the other knobs at
    # batch 1 (112 and 126 ms) miss; the path runs from its screening point
    assert outcome.path == [
        "onnxruntime:cpu/int8/batch 8/default threads -> "
        "onnxruntime:cpu/int8/batch 1/default threads"
    ]
    assert {
        "onnxruntime:cpu/int8/batch 2/default threads",
        "onnxruntime:cpu/int8/batch 1/1 threads, x2 instances",
        "onnxruntime:cpu/int8/batch 1/1 threads",
    } <= set(outcome.measured)


def test_quick_steps_down_again_when_the_first_step_still_misses() -> None:
    # bf16's p99 is mostly a fixed cost (80 + 10 x batch): halving the batch does not halve it
    space = _slow_space(("bf16",))
    calls: list[str] = []

    def measure(candidate: Candidate) -> Metrics:
        calls.append(candidate.key)
        return _slow_machine(candidate)

    outcome = quick(space, measure, _rank(P99_BOUND), budget=3)
    # 160 ms at batch 8 (+60%: try batch 4), 120 ms at batch 4 (+20%: try batch 2), 100 ms meets
    assert [k.split("/")[2] for k in calls] == ["batch 8", "batch 4", "batch 2"]
    assert outcome.measured[calls[-1]].p99_ms == pytest.approx(100.0)  # type: ignore[union-attr]
    assert not any("dropped" in r for r in outcome.skipped.values())


def test_budget_that_runs_out_while_stepping_down_says_so() -> None:
    space = _slow_space(("bf16",))
    outcome = quick(space, _slow_machine, _rank(P99_BOUND), budget=2)
    assert len(outcome.measured) == 2
    reason = outcome.skipped["onnxruntime:cpu/bf16/batch 1/default threads"]
    assert reason == (
        "not measured: screened at onnxruntime:cpu/bf16/batch 8/default threads, which missed "
        "the constraints; quick's budget of 2 measurements ran out before a smaller batch size "
        "met them"
    )
