"""Speed verdicts read from rounds in turns, with a fake clock: no wall-clock time is asserted."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from crossinfer.turns import (
    SpeedVerdict,
    TurnsComparison,
    judge_ratios,
    measure_in_turns,
)


class FakeClock:
    """Time moves only when a fake run says how long it took."""

    def __init__(self) -> None:
        self.now = 0.0
        self.calls: list[str] = []

    def __call__(self) -> float:
        return self.now

    def runner(self, name: str, costs: Iterator[float]) -> Callable[[], None]:
        def run() -> None:
            self.calls.append(name)
            self.now += next(costs)

        return run


def _constant(value: float) -> Iterator[float]:
    while True:
        yield value


def test_twice_as_fast_in_every_round_is_faster() -> None:
    clock = FakeClock()
    result = measure_in_turns(
        clock.runner("a", _constant(0.010)),
        clock.runner("b", _constant(0.005)),
        samples_a=8,
        samples_b=8,
        seconds_per_turn=0.1,
        rounds=3,
        clock=clock,
        load=lambda: 1.5,
    )
    assert result.a_rates == pytest.approx((800.0,) * 3)
    assert result.b_rates == pytest.approx((1600.0,) * 3)
    assert result.ratio == pytest.approx(2.0) and result.verdict is SpeedVerdict.FASTER
    assert result.load_avg == (1.5, 1.5, 1.5)
    assert result.describe() == "2.00x (rounds 2.00x-2.00x, 3 in turns, load 1.5): faster"


def test_turns_alternate_abba() -> None:
    clock = FakeClock()
    measure_in_turns(
        clock.runner("a", _constant(0.5)),
        clock.runner("b", _constant(0.5)),
        samples_a=1,
        samples_b=1,
        seconds_per_turn=0.0,  # the minimum, three runs a turn
        rounds=2,
        clock=clock,
        load=lambda: None,
    )
    turns = [clock.calls[i] for i in range(0, len(clock.calls), 3)]
    assert turns == ["a", "b", "b", "a"]


def test_a_load_spike_in_one_round_makes_it_within_noise_not_faster() -> None:
    # B is as fast as A, but during round 2 the machine was busy while B ran
    clock = FakeClock()
    b_costs = iter([0.010] * 3 + [0.030] * 3 + [0.010] * 3)
    a_costs = iter([0.010] * 3 + [0.010] * 3 + [0.010] * 3)
    loads = iter([1.0, 6.0, 1.2])
    result = measure_in_turns(
        clock.runner("a", a_costs),
        clock.runner("b", b_costs),
        samples_a=1,
        samples_b=1,
        seconds_per_turn=0.0,
        rounds=3,
        clock=clock,
        load=lambda: next(loads),
    )
    assert result.ratios == pytest.approx((1.0, 1 / 3, 1.0))
    assert result.verdict is SpeedVerdict.WITHIN_NOISE
    assert "load 1.0-6.0" in result.describe()


@pytest.mark.parametrize(
    ("ratios", "verdict"),
    [
        ((1.38, 1.30, 1.41), SpeedVerdict.FASTER),
        ((0.90, 1.38, 1.20), SpeedVerdict.WITHIN_NOISE),  # the ViT: rounds disagree
        ((1.03, 1.04, 1.02), SpeedVerdict.WITHIN_NOISE),  # agree, but under the noise floor
        ((0.80, 0.85, 0.90), SpeedVerdict.SLOWER),
        ((0.80, 0.85, 1.01), SpeedVerdict.WITHIN_NOISE),
        ((), SpeedVerdict.WITHIN_NOISE),
    ],
)
def test_judge_ratios(ratios: tuple[float, ...], verdict: SpeedVerdict) -> None:
    assert judge_ratios(ratios) is verdict


def test_comparison_to_dict_keeps_every_round() -> None:
    data = TurnsComparison((100.0, 110.0), (150.0, 154.0), (2.0, 2.5)).to_dict()
    assert data["ratios"] == pytest.approx([1.5, 1.4])
    assert data["verdict"] == "faster" and data["load_avg"] == [2.0, 2.5]
