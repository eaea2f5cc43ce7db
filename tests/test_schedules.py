"""Tests for hookloop.schedules against fastai's values."""

import pytest

from hookloop.schedules import (
    SchedCos,
    SchedExp,
    SchedLin,
    SchedNo,
    SchedPoly,
    combine_scheds,
    combined_cos,
)

POSITIONS = [0.0, 0.25, 0.5, 0.75, 1.0]


def values(sched):
    return [sched(p) for p in POSITIONS]


def test_lin_moves_evenly_from_start_to_end():
    assert values(SchedLin(0, 2)) == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0], abs=1e-5)


def test_cos_is_half_cosine_from_start_to_end():
    # 1 + cos(pi * 0.75) = 1 - sqrt(2)/2 = 0.29289
    expected = [0.0, 0.29289, 1.0, 1.70711, 2.0]
    assert values(SchedCos(0, 2)) == pytest.approx(expected, abs=1e-5)


def test_cos_can_decrease():
    assert values(SchedCos(2, 0)) == pytest.approx([2.0, 1.70711, 1.0, 0.29289, 0.0], abs=1e-5)


def test_no_stays_at_start():
    assert values(SchedNo(3, 7)) == pytest.approx([3.0, 3.0, 3.0, 3.0, 3.0], abs=1e-5)


def test_exp_doubles_each_quarter_from_1_to_16():
    assert values(SchedExp(1, 16)) == pytest.approx([1.0, 2.0, 4.0, 8.0, 16.0], abs=1e-5)


def test_exp_midpoint_is_geometric_mean():
    assert SchedExp(1, 2)(0.5) == pytest.approx(1.41421, abs=1e-5)


def test_poly_follows_pos_to_the_power():
    # 2 * pos**2
    expected = [0.0, 0.125, 0.5, 1.125, 2.0]
    assert values(SchedPoly(0, 2, 2)) == pytest.approx(expected, abs=1e-5)


def test_combine_scheds_gives_each_schedule_its_local_pos():
    # Up 0 -> 1 over the first half, down 1 -> 0 over the second.
    sched = combine_scheds([0.5, 0.5], [SchedLin(0, 1), SchedLin(1, 0)])
    assert values(sched) == pytest.approx([0.0, 0.5, 1.0, 0.5, 0.0], abs=1e-5)


def test_combine_scheds_at_pos_1_uses_last_schedule_at_its_end():
    sched = combine_scheds([0.5, 0.5], [SchedLin(0, 1), SchedLin(10, 20)])
    assert sched(1.0) == pytest.approx(20.0, abs=1e-5)


def test_combine_scheds_skips_zero_width_segment():
    sched = combine_scheds([0.0, 1.0], [SchedNo(9, 9), SchedLin(0, 1)])
    assert values(sched) == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0], abs=1e-5)


def test_combine_scheds_accepts_pcts_with_float_rounding():
    # sum([0.1] * 10) is 0.9999999999999999, not 1.
    sched = combine_scheds([0.1] * 10, [SchedLin(i, i + 1) for i in range(10)])
    assert [sched(p) for p in (0.0, 0.95, 1.0)] == pytest.approx([0.0, 9.5, 10.0], abs=1e-5)


def test_combined_cos_warms_up_then_anneals():
    # Cos 0.5 -> 1 over the first quarter, then cos 1 -> 0; pos 0.5 is a third of the way
    # through the second segment: 1 - (1 + cos(2pi/3)) / 2 = 0.75.
    sched = combined_cos(0.25, 0.5, 1, 0)
    assert values(sched) == pytest.approx([0.5, 1.0, 0.75, 0.25, 0.0], abs=1e-5)


def test_combined_cos_inside_warmup():
    # Local pos 0.4 in cos 0.5 -> 1: 0.5 + (1 + cos(0.6 pi)) * 0.25 = 0.67275
    assert combined_cos(0.25, 0.5, 1, 0)(0.1) == pytest.approx(0.67275, abs=1e-5)


def test_repr_shows_arguments():
    assert repr(SchedPoly(0, 2, 2)) == "SchedPoly(start=0, end=2, power=2)"


def test_combine_scheds_rejects_pcts_not_summing_to_1():
    with pytest.raises(ValueError, match=r"pcts.*sum"):
        combine_scheds([0.5, 0.4], [SchedLin(0, 1), SchedLin(1, 0)])


def test_combine_scheds_rejects_negative_pct():
    with pytest.raises(ValueError, match=r"pcts\[0\]=-0\.5"):
        combine_scheds([-0.5, 1.5], [SchedLin(0, 1), SchedLin(1, 0)])


def test_combine_scheds_rejects_length_mismatch():
    with pytest.raises(ValueError, match=r"len\(pcts\)=1.*len\(scheds\)=2"):
        combine_scheds([1.0], [SchedLin(0, 1), SchedLin(1, 0)])


def test_combine_scheds_rejects_empty():
    with pytest.raises(ValueError, match="pcts"):
        combine_scheds([], [])


@pytest.mark.parametrize("start", [0, -1.0])
def test_exp_rejects_non_positive_start(start):
    with pytest.raises(ValueError, match=f"start={start}"):
        SchedExp(start, 1)


def test_exp_rejects_non_positive_end():
    with pytest.raises(ValueError, match="end=0"):
        SchedExp(1, 0)


def test_poly_rejects_non_positive_power():
    with pytest.raises(ValueError, match="power=0"):
        SchedPoly(0, 1, 0)


def test_combined_cos_rejects_pct_above_1():
    with pytest.raises(ValueError, match="pct=1.5"):
        combined_cos(1.5, 0, 1, 0)
