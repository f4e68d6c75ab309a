"""Constraints, objectives and the recommendation on constructed results: the pick, the reason
given for every other candidate, and the nearest candidates when nothing meets the limits."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from crossinfer.backends.base import Precision, Target
from crossinfer.errors import UsageError
from crossinfer.hardware.catalog import Price
from crossinfer.tune.constraints import (
    Constraints,
    Metrics,
    Objective,
    Scorer,
    cost_per_million,
)
from crossinfer.tune.recommend import FAILED, FEASIBLE, NOT_MEASURED, PICK, REJECTED, recommend
from crossinfer.tune.space import Knobs, Variant, build_space
from crossinfer.tune.strategies import SearchOutcome


def metrics(
    throughput: float, p99: float, *, memory: float = 100.0, drop: float | None = 0.0
) -> Metrics:
    return Metrics(
        throughput=throughput,
        p50_ms=p99 / 2,
        p99_ms=p99,
        percentiles_ms={"p50": p99 / 2, "p99": p99},
        peak_rss_mb=memory,
        energy_j_per_inference=None,
        energy_method="not measured: test",
        accuracy=None if drop is None else 0.9 - drop,
        accuracy_drop=drop,
    )


def variant(recipe: str, notes: tuple[str, ...] = (), drop: float = 0.0) -> Variant:
    return Variant(
        target=Target("onnxruntime", "cpu"),
        recipe=recipe,
        precision=Precision.FP32,
        model_path=Path(f"/models/{recipe}.onnx"),
        model_sha256=recipe * 8,
        accuracy_drop=drop,
        notes=notes,
    )


def test_violations_say_which_limit_and_by_how_much() -> None:
    limits = Constraints(max_p99_ms=30.0, max_accuracy_drop=0.01, max_memory_mb=500.0)
    found = limits.violations(metrics(10.0, 42.0, memory=600.0, drop=0.025))
    assert [v.constraint for v in found] == ["max_p99_ms", "max_accuracy_drop", "max_memory_mb"]
    assert found[0].text == "p99 42.00 ms > 30 ms allowed (+40%)"
    assert "2.50 points > 1.00 allowed (+1.50 points)" in found[1].text
    assert "600 MB > 500 MB allowed (+20%)" in found[2].text
    assert limits.violations(metrics(10.0, 30.0, memory=500.0, drop=0.01)) == []


def test_accuracy_limit_without_a_measurement_is_a_miss_not_a_pass() -> None:
    found = Constraints(max_accuracy_drop=0.01).violations(metrics(1.0, 1.0, drop=None))
    assert len(found) == 1 and "not measured" in found[0].text


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_p99_ms": 0.0}, "--max-p99-ms must be positive"),
        ({"max_memory_mb": -5.0}, "--max-memory-mb must be positive"),
        ({"max_accuracy_drop": 1.5}, "fraction"),
    ],
)
def test_bad_limits_are_refused(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        Constraints(**kwargs)


def test_objectives_and_cost() -> None:
    m = metrics(200.0, 5.0)
    assert Scorer(Objective.THROUGHPUT).value(m) == 200.0
    assert Scorer(Objective.LATENCY).value(m) == 5.0
    assert Scorer(Objective.COST).value(m) is None  # no price: never guessed
    price = Price(0.36, "--price-per-hour 0.36")
    # 0.36 USD/h at 200/s: 720,000 inferences an hour -> 0.5 USD per million
    assert Scorer(Objective.COST, price).value(m) == pytest.approx(0.5)
    assert cost_per_million(0.36, 200.0) == pytest.approx(0.5)
    assert Scorer(Objective.ENERGY).value(m) is None
    with pytest.raises(UsageError, match="--objective 'speed'"):
        Objective.parse("speed")


def _space_and_outcome(  # type: ignore[no-untyped-def]
    measured: dict[tuple[str, int], Metrics | None], int8_speed: str = "slower"
):
    int8 = variant("int8", notes=("0.8x: this CPU has no AVX512-VNNI",))
    variants = [variant("fp32"), dataclasses.replace(int8, speed_verdict=int8_speed)]
    space = build_space(variants, (1, 8), batchable=True, cores=1, knobs={"onnxruntime": [Knobs()]})
    outcome = SearchOutcome("exhaustive")
    for candidate in space.candidates:
        key = (candidate.variant.recipe, candidate.batch_size)
        if key in measured:
            outcome.measured[candidate.key] = measured[key]
        else:
            outcome.skipped[candidate.key] = "not measured: skipped by the test"
    return space, outcome


def test_pick_is_the_best_feasible_and_every_other_candidate_has_a_reason() -> None:
    space, outcome = _space_and_outcome(
        {
            ("fp32", 1): metrics(50.0, 20.0),
            ("fp32", 8): metrics(120.0, 70.0),  # fastest, but misses the p99 limit
            ("int8", 1): metrics(40.0, 25.0),  # slower than FP32 at the same setting
            ("int8", 8): None,  # crashed
        }
    )
    rec = recommend(
        space,
        outcome,
        Constraints(max_p99_ms=60.0),
        Scorer(Objective.THROUGHPUT),
        failures={"onnxruntime:cpu/int8/batch 8/default threads": "crashed: SIGSEGV"},
    )
    assert rec.pick is not None and rec.pick.key == "onnxruntime:cpu/fp32/batch 1/default threads"
    by = {r.key: r for r in rec.results}
    fast = by["onnxruntime:cpu/fp32/batch 8/default threads"]
    assert fast.status == REJECTED and "p99 70.00 ms > 60 ms allowed (+17%)" in fast.reasons[0]
    int8 = by["onnxruntime:cpu/int8/batch 1/default threads"]
    assert int8.status == FEASIBLE
    assert "0.80x as good as the pick's 50.00" in int8.reasons[0]
    assert any(
        "INT8 slower here: 0.80x the FP32" in r and "no AVX512-VNNI" in r for r in int8.reasons
    )
    crashed = by["onnxruntime:cpu/int8/batch 8/default threads"]
    assert crashed.status == FAILED and "SIGSEGV" in crashed.reasons[0]
    assert rec.pick.status == PICK and rec.pick.on_front
    assert fast.on_front  # the fastest is a trade-off, even though it misses the limit
    assert not int8.on_front  # FP32 batch 1 beats it on both axes


def test_nothing_feasible_lists_the_nearest_and_what_they_miss() -> None:
    space, outcome = _space_and_outcome(
        {
            ("fp32", 1): metrics(50.0, 20.0),
            ("fp32", 8): metrics(120.0, 70.0),
            ("int8", 1): metrics(40.0, 12.0),
        }
    )
    rec = recommend(space, outcome, Constraints(max_p99_ms=10.0), Scorer(Objective.THROUGHPUT))
    assert rec.pick is None
    assert [r.key for r in rec.nearest] == [
        "onnxruntime:cpu/int8/batch 1/default threads",  # +20%
        "onnxruntime:cpu/fp32/batch 1/default threads",  # +100%
        "onnxruntime:cpu/fp32/batch 8/default threads",  # +600%
    ]
    assert "p99 12.00 ms > 10 ms allowed (+20%)" in rec.nearest[0].violations[0].text
    assert any("no candidate meets the constraints" in n for n in rec.notes)
    skipped = rec.result("onnxruntime:cpu/int8/batch 8/default threads")
    assert skipped.status == NOT_MEASURED and "skipped by the test" in skipped.reasons[0]


def test_latency_objective_picks_the_lowest_p99() -> None:
    space, outcome = _space_and_outcome(
        {("fp32", 1): metrics(50.0, 20.0), ("int8", 1): metrics(40.0, 12.0)}
    )
    rec = recommend(space, outcome, Constraints(), Scorer(Objective.LATENCY))
    assert rec.pick is not None and rec.pick.key == "onnxruntime:cpu/int8/batch 1/default threads"


def test_cost_without_a_price_rejects_with_the_reason() -> None:
    space, outcome = _space_and_outcome({("fp32", 1): metrics(50.0, 20.0)})
    rec = recommend(space, outcome, Constraints(), Scorer(Objective.COST))
    assert rec.pick is None
    only = rec.result("onnxruntime:cpu/fp32/batch 1/default threads")
    assert only.status == REJECTED and "no price per hour" in only.reasons[0]


def test_no_cause_is_claimed_for_a_gap_that_turns_called_noise() -> None:
    space, outcome = _space_and_outcome(
        {("fp32", 1): metrics(50.0, 20.0), ("int8", 1): metrics(40.0, 25.0)},
        int8_speed="within noise",
    )
    rec = recommend(space, outcome, Constraints(), Scorer(Objective.THROUGHPUT))
    int8 = {r.key: r for r in rec.results}["onnxruntime:cpu/int8/batch 1/default threads"]
    assert not any("slower here" in r for r in int8.reasons)
    assert any(
        r == "INT8 measured 0.80x the FP32 throughput at the same setting, but within noise when "
        "optimize measured the two in turns: the difference is likely the machine's load"
        for r in int8.reasons
    )
