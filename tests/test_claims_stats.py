"""The statistics and decision rule of `preftune claims` on inputs whose answer is known by hand."""
from __future__ import annotations

import math

import pytest

from preftune.claims.stats import (EXACT, FAILS, HOLDS, INCONCLUSIVE, NON_INFERIORITY, NOT_REPRODUCED, OPEN,
                                   REPRODUCED, SUPERIORITY, Interval, combine, judge, judge_part, paired, t_interval,
                                   t_quantile)


def test_t_quantiles_match_the_printed_table():
    # Student's t table, two-sided 95%: df 1 -> 12.706, df 4 -> 2.776, df 9 -> 2.262; large df -> 1.960
    assert t_quantile(0.95, 1) == pytest.approx(12.706, abs=1e-3)
    assert t_quantile(0.95, 4) == pytest.approx(2.776, abs=1e-3)
    assert t_quantile(0.95, 9) == pytest.approx(2.262, abs=1e-3)
    assert t_quantile(0.95, 10_000) == pytest.approx(1.960, abs=1e-3)


def test_t_interval_of_five_values_by_hand():
    values = [1.0, 2.0, 3.0, 4.0, 5.0]             # mean 3, sample std sqrt(2.5)
    interval = t_interval(values)
    half = 2.7764451 * math.sqrt(2.5) / math.sqrt(5)
    assert interval.mean == pytest.approx(3.0)
    assert interval.std == pytest.approx(math.sqrt(2.5))
    assert (interval.low, interval.high) == pytest.approx((3.0 - half, 3.0 + half), abs=1e-6)
    assert interval.n == 5


def test_one_value_gives_a_point_and_missing_values_are_an_error():
    assert t_interval([0.25]) == Interval(0.25, 0.25, 0.25, 0.0, 1)
    with pytest.raises(ValueError, match="at least one"):
        t_interval([])
    with pytest.raises(ValueError, match="non-finite"):
        t_interval([0.1, float("nan")])


def test_paired_differences_match_seeds_and_refuse_disjoint_ones():
    assert paired({1: 0.5, 2: 0.7, 3: 0.9}, {3: 0.4, 1: 0.5, 2: 0.2}) == pytest.approx([0.0, 0.5, 0.5])
    with pytest.raises(ValueError, match="no seed in common"):
        paired({1: 0.5}, {2: 0.5})


def iv(low: float, high: float) -> Interval:
    return Interval((low + high) / 2, low, high, 0.1, 5)


@pytest.mark.parametrize("low, high, expected", [
    (0.01, 0.20, HOLDS),        # above zero
    (-0.05, 0.15, OPEN),        # straddles zero, reaches the claimed size
    (-0.05, 0.015, FAILS),      # excludes every effect of at least delta = 0.02
    (-0.30, -0.10, FAILS),      # points the other way
    (0.001, 0.01, HOLDS),       # above zero, however small: the "excludes no effect"
])
def test_superiority_rule(low, high, expected):
    assert judge_part(iv(low, high), SUPERIORITY, 0.02) == expected


@pytest.mark.parametrize("low, high, expected", [
    (-0.01, 0.05, HOLDS),       # no worse than -delta
    (-0.05, 0.05, OPEN),
    (-0.09, -0.03, FAILS),      # worse than -delta for certain
])
def test_non_inferiority_rule(low, high, expected):
    assert judge_part(iv(low, high), NON_INFERIORITY, 0.02) == expected


def test_exact_parts_and_bad_inputs():
    assert judge_part(None, EXACT, 0.0, exact_holds=True) == HOLDS
    assert judge_part(None, EXACT, 0.0, exact_holds=False) == FAILS
    with pytest.raises(ValueError):
        judge_part(None, EXACT, 0.0)
    with pytest.raises(ValueError):
        judge_part(iv(0, 1), "bigger", 0.0)
    with pytest.raises(ValueError):
        judge_part(iv(0, 1), SUPERIORITY, -0.1)


def test_row_verdict_needs_every_part_and_any_failure_sinks_it():
    assert combine([HOLDS, HOLDS]) == REPRODUCED
    assert combine([HOLDS, OPEN]) == INCONCLUSIVE
    assert combine([HOLDS, OPEN, FAILS]) == NOT_REPRODUCED
    with pytest.raises(ValueError):
        combine([])


def test_judge_builds_the_interval_from_per_seed_effects():
    part = judge("gold reward: method - dpo", SUPERIORITY, 0.02, {1: 0.05, 2: 0.06, 3: 0.04, 4: 0.05, 5: 0.05})
    assert part.judgement == HOLDS and part.interval.n == 5 and part.interval.low > 0
    flat = judge("gold reward: method - dpo", SUPERIORITY, 0.02, {1: 0.01, 2: -0.01, 3: 0.0, 4: 0.005, 5: -0.005})
    assert flat.judgement == FAILS                      # tight around zero: no effect of the claimed size
    assert flat.as_dict()["per_seed"] == {"1": 0.01, "2": -0.01, "3": 0.0, "4": 0.005, "5": -0.005}
