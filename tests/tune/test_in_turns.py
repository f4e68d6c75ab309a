"""tune's final ranking in turns, with measurements made up (no runtime, no clock): a candidate
that led on one lucky run but not in turns is not picked as faster; within noise is a verdict of
its own, broken by the lower p99; the load average is kept with the rounds; a repeat that
disagrees with the search's run beyond the spread is flagged. One real tune (ONNX Runtime, a
zoo model) decides in turns end to end."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from crossinfer.backends.base import Precision, Target
from crossinfer.model import load_model
from crossinfer.tune.constraints import Constraints, Metrics, Objective, Scorer
from crossinfer.tune.in_turns import decide_in_turns, turn_group
from crossinfer.tune.recommend import FEASIBLE, PICK, rank_for, recommend
from crossinfer.tune.runner import TuneConfig, tune
from crossinfer.tune.space import Candidate, Space, Variant, build_space
from crossinfer.tune.strategies import exhaustive

RANK = rank_for(Constraints(), Scorer(Objective.THROUGHPUT))


def _space() -> tuple[Space, list[str]]:
    variant = Variant(
        target=Target("onnxruntime", "cpu"),
        recipe="fp32",
        precision=Precision.FP32,
        model_path=Path("/m/fp32.onnx"),
        model_sha256="fp32",
    )
    space = build_space([variant], (1, 2, 4), batchable=True, cores=1)
    return space, [c.key for c in space.candidates]


def _metrics(throughput: float, p99_ms: float = 11.0, load: float | None = None) -> Metrics:
    return Metrics(
        throughput=throughput,
        p50_ms=10.0,  # p99 over p50 1.10: the runs' own spread
        p99_ms=p99_ms,
        percentiles_ms={},
        peak_rss_mb=100.0,
        energy_j_per_inference=None,
        energy_method="not measured",
        load_avg=load,
    )


class Script:
    """Measurements in the order asked for: the search's separate runs, then the turns."""

    def __init__(self, separate: dict[str, Metrics], turns: dict[str, list[Metrics]]) -> None:
        self.separate = separate
        self.turns = {k: iter(v) for k, v in turns.items()}
        self.calls: list[str] = []

    def search(self, candidate: Candidate) -> Metrics:
        return self.separate[candidate.key]

    def in_turns(self, candidate: Candidate) -> Metrics:
        self.calls.append(candidate.key)
        return next(self.turns[candidate.key])


def _loads(*values: float) -> Iterator[float]:
    yield from values


def _decide(script: Script, space: Space, width: int = 2):  # type: ignore[no-untyped-def]
    outcome = exhaustive(space, script.search)
    group = turn_group(outcome, space, RANK, lambda m: m.throughput, width)
    loads = _loads(1.5, 2.5, 3.5)
    decision = decide_in_turns(
        outcome,
        space,
        script.in_turns,
        lambda m: m.throughput,
        group,
        objective="throughput",
        rounds=2,
        load=lambda: next(loads),
    )
    return outcome, group, decision


def test_faster_in_one_run_but_within_noise_in_turns_is_not_picked_as_faster() -> None:
    space, (a, b, c) = _space()
    # b led the search on one lucky run (120 against 100); in turns the two are level, and a
    # has the lower p99
    script = Script(
        {a: _metrics(100.0), b: _metrics(120.0), c: _metrics(60.0)},
        {
            a: [_metrics(100.0, p99_ms=10.5), _metrics(100.0, p99_ms=10.5)],
            b: [_metrics(101.0, p99_ms=12.0), _metrics(99.0, p99_ms=12.0)],
        },
    )
    outcome, group, decision = _decide(script, space)
    assert group == [b, a]  # the best two by the separate runs, best first
    outcome_c = exhaustive(space, script.search)
    # c, 2x behind the leader on its one run, is no contender: not measured in turns
    assert turn_group(outcome_c, space, RANK, lambda m: m.throughput, 3) == [b, a]
    assert script.calls == [b, a, a, b]  # in turns: B A, then A B
    assert decision is not None and outcome.turns is decision
    assert decision.leader == b and decision.pick == a
    assert decision.load_avg == (1.5, 2.5)  # one load average per round
    assert decision.against_pick(b).ratios == pytest.approx((1.01, 0.99))
    assert decision.verdict_text(b) == (
        "1.00x the pick's throughput in turns (rounds 0.99x-1.01x, 2 in turns, load 1.5-2.5): "
        "within noise"
    )
    assert decision.tie_break.startswith(
        "2 within noise of each other in turns: picked by the lower p99 per batch run "
        "(10.50 ms against 12.00)"
    )
    # the search's figures give way to the turns' (the mean of the two rounds)
    assert outcome.measured[b] is not None and outcome.measured[b].throughput == 100.0
    assert outcome.measured[b].runs == 2

    rec = recommend(space, outcome, Constraints(), Scorer(Objective.THROUGHPUT))
    assert rec.pick is not None and rec.pick.key == a
    assert rec.pick.reasons[0].endswith("decided in turns")
    assert "the separate runs had ranked " + b + " first" in rec.pick.reasons[1]
    b_result = rec.result(b)
    assert b_result.status == FEASIBLE
    assert b_result.reasons[0].endswith("within noise") and "faster" not in b_result.reasons[0]
    assert any("final ranking decided in turns" in n for n in rec.notes)


def test_slower_in_turns_loses_the_lead_it_had_on_one_run() -> None:
    space, (a, b, c) = _space()
    script = Script(
        {a: _metrics(100.0), b: _metrics(120.0), c: _metrics(60.0)},
        {a: [_metrics(100.0), _metrics(104.0)], b: [_metrics(80.0), _metrics(82.0)]},
    )
    _, _, decision = _decide(script, space)
    assert decision is not None and decision.pick == a and decision.tie_break == ""
    assert decision.verdict_text(b).endswith(": slower")
    assert decision.summary().endswith(f"the separate runs had ranked {b} first")


def test_faster_in_every_round_keeps_the_pick() -> None:
    space, (a, b, c) = _space()
    script = Script(
        {a: _metrics(100.0), b: _metrics(120.0), c: _metrics(110.0)},
        {
            a: [_metrics(100.0), _metrics(98.0)],
            b: [_metrics(118.0), _metrics(121.0)],
            c: [_metrics(110.0), _metrics(97.0)],  # one round each way: within noise of a
        },
    )
    outcome, group, decision = _decide(script, space, width=3)
    assert group == [b, c, a] and script.calls == [b, c, a, a, c, b]
    assert decision is not None and decision.pick == b and decision.tie_break == ""
    assert decision.verdict_text(a).endswith(": slower")
    rec = recommend(space, outcome, Constraints(), Scorer(Objective.THROUGHPUT))
    assert rec.pick is not None and rec.pick.key == b and rec.result(a).status == FEASIBLE
    assert rec.result(b).status == PICK


def test_a_tied_candidate_that_another_beats_beyond_noise_is_passed_over() -> None:
    space, (a, b, c) = _space()
    # a: the best median (110); b and c each within noise of it (their rounds straddle a's),
    # but b beats c in both rounds by 10%; c has the lowest p99, so it is passed over for b
    script = Script(
        {a: _metrics(120.0), b: _metrics(110.0), c: _metrics(100.0)},
        {
            a: [_metrics(100.0, p99_ms=12.0), _metrics(120.0, p99_ms=12.0)],
            b: [_metrics(115.0, p99_ms=11.0), _metrics(100.0, p99_ms=11.0)],
            c: [_metrics(105.0, p99_ms=10.0), _metrics(90.0, p99_ms=10.0)],
        },
    )
    _, group, decision = _decide(script, space, width=3)
    assert group == [a, b, c] and decision is not None
    # per round, whatever the order within it (a b c, then c b a)
    assert script.calls == [a, b, c, c, b, a]
    assert decision.goodness[c] == (105.0, 90.0)
    assert decision.pick == b
    assert decision.tie_break == (
        "3 within noise of each other in turns: picked by the lower p99 per batch run (11.00 ms "
        "against 12.00, 10.00), then lower memory, then fewer instances and the smaller batch "
        f"({c} passed over: another beat it beyond noise)"
    )
    assert decision.verdict_text(c).endswith(": slower")


def test_a_repeat_that_disagrees_with_the_search_beyond_the_spread_is_flagged() -> None:
    space, (a, b, c) = _space()
    # the "61.7 and 6.7 samples/s": the search's run and the turns a factor 9 apart
    script = Script(
        {a: _metrics(50.0, load=1.2), b: _metrics(61.7, load=1.2), c: _metrics(5.0)},
        {a: [_metrics(7.5), _metrics(7.5)], b: [_metrics(6.7), _metrics(6.7)]},
    )
    outcome, _, decision = _decide(script, space)
    assert decision is not None and decision.pick == a  # 7.5 against 6.7, both rounds
    flagged = outcome.measured[b]
    assert flagged is not None and flagged.repeats_disagree and not flagged.stable
    assert flagged.notes[-1].startswith(
        "repeats disagree: the search's run, 61.7 samples/s (load 1.2), and the turns' 6.7 "
        "samples/s are 9.21x apart, beyond the 1.10x the runs' own spread allows"
    )
    assert flagged.load_avg == 2.5  # the larger load average of the rounds


def test_a_candidate_that_fails_in_a_round_is_left_out_of_the_decision() -> None:
    space, (a, b, c) = _space()
    outcome = exhaustive(space, lambda cand: _metrics({a: 100.0, b: 120.0, c: 90.0}[cand.key]))
    group = turn_group(outcome, space, RANK, lambda m: m.throughput, 2)

    def b_fails(candidate: Candidate) -> Metrics | None:
        return None if candidate.key == b else _metrics(100.0)

    decision = decide_in_turns(
        outcome, space, b_fails, lambda m: m.throughput, group, objective="throughput"
    )
    assert decision is None and outcome.turns is None
    assert outcome.measured[b] is not None and outcome.measured[b].throughput == 120.0


def test_an_int8_twin_in_the_same_turns_is_judged_by_them_not_by_optimize() -> None:
    def variant(recipe: str, verdict: str) -> Variant:
        return Variant(
            target=Target("onnxruntime", "cpu"),
            recipe=recipe,
            precision=Precision.FP32,
            model_path=Path(f"/m/{recipe}.onnx"),
            model_sha256=recipe,
            speed_verdict=verdict,
        )

    space = build_space(
        [variant("fp32", ""), variant("int8", "within noise")], (8,), batchable=True, cores=1
    )
    fp32, int8 = (c.key for c in space.candidates)
    script = Script(
        {fp32: _metrics(63.0), int8: _metrics(45.0)},
        {fp32: [_metrics(75.0), _metrics(112.0)], int8: [_metrics(46.0), _metrics(37.0)]},
    )
    outcome, _, decision = _decide(script, space)
    assert decision is not None and decision.pick == fp32
    reasons = recommend(space, outcome, Constraints(), Scorer(Objective.THROUGHPUT)).result(int8)
    assert reasons.reasons[0].endswith(": slower")
    # optimize's "within noise ... likely the machine's load" would contradict the turns here
    assert not any("when optimize measured" in r for r in reasons.reasons)
    # outside the turns, optimize's rounds are still the better evidence than one run each
    rec = recommend(
        space, exhaustive(space, script.search), Constraints(), Scorer(Objective.THROUGHPUT)
    )
    assert any("when optimize measured" in r for r in rec.result(int8).reasons)


def test_a_real_tune_decides_in_turns(tmp_path: Path) -> None:
    """ONNX Runtime on zoo:mlp: the best two candidates measured in turns, fresh."""
    config = TuneConfig(
        backends=("onnxruntime",),
        precisions=("fp32",),
        batch_sizes=(1,),
        strategy="exhaustive",
        measure_ms=200,
        timeout_s=120,
        confirm=2,
        turn_rounds=2,
        turn_within=100.0,  # whatever the two measured apart on their separate runs
    )
    events: list[str] = []
    result = tune(
        load_model("zoo:mlp"), config, out_dir=tmp_path, store=None, on_event=events.append
    )
    decision = result.outcome.turns
    assert decision is not None and len(decision.keys) == 2
    assert all(len(rounds) == 2 and min(rounds) > 0 for rounds in decision.goodness.values())
    assert len(decision.load_avg) == 2 and min(decision.load_avg) >= 0
    for key in decision.keys:
        metrics = result.outcome.measured[key]
        assert metrics is not None and metrics.runs == 2
        assert any(n.startswith("measured in turns: ") for n in metrics.notes)
    pick = result.recommendation.pick
    assert pick is not None and pick.key == decision.pick
    assert pick.reasons[0].endswith("decided in turns")
    other = next(k for k in decision.keys if k != decision.pick)
    verdict = result.recommendation.result(other).reasons[0]
    assert verdict.endswith((": slower", ": within noise")) and "in turns (rounds" in verdict
    assert any(e.startswith("turns: round 2 of 2") for e in events)
    data = json.loads((tmp_path / "tune.json").read_text())
    assert data["turns"]["pick"] == decision.pick and len(data["turns"]["load_avg"]) == 2
    assert data["turns"]["against_pick"][other]["text"] == verdict
    assert data["runs"] == len(result.space) + 4  # every candidate once, then two in two rounds
