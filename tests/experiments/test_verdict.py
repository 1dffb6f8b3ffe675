"""The shared verdict rule on synthetic per-seed results: inside-spread differences and comparisons of two failures are
never "reproduced"."""

import math

import pytest

from sherman.experiments.verdict import NOT_REPRODUCED, NOT_TESTABLE, PARTLY, REPRODUCED, compare, overall, reaches


def test_clear_effect_outside_spread_is_reproduced():
    v = compare([0.80, 0.82, 0.81], [0.60, 0.61, 0.62], min_effect=0.05)
    # paired differences 0.20, 0.21, 0.19: mean 0.20, sd 0.01, s.e. 0.01/sqrt(3); 2 s.e. = 0.011547
    assert v.verdict == REPRODUCED and v.effect == pytest.approx(0.20) and v.spread == pytest.approx(2 * 0.01 / math.sqrt(3))


def test_difference_inside_the_seed_spread_is_not_reproduced():
    # paired differences +0.30, -0.20, +0.05: mean 0.05 >= min_effect, but sd 0.25 -> 2 s.e. = 0.2887 > 0.05
    v = compare([0.9, 0.4, 0.65], [0.6, 0.6, 0.6], min_effect=0.05)
    assert v.verdict == NOT_REPRODUCED and "inside the seed spread" in v.reason
    assert v.spread == pytest.approx(2 * 0.25 / math.sqrt(3))


def test_wrong_direction_is_not_reproduced():
    assert compare([0.5, 0.5, 0.51], [0.7, 0.7, 0.71], min_effect=0.0).verdict == NOT_REPRODUCED


def test_small_but_real_effect_is_partly():
    v = compare([0.61, 0.62, 0.63], [0.60, 0.61, 0.62], min_effect=0.05)  # +0.01 each seed: sd 0, spread 0
    assert v.verdict == PARTLY and v.effect == pytest.approx(0.01)


def test_two_failures_are_not_testable():
    # vibevoice at the quick budget: diffusion PER 0.948 vs regression 1.034 (ground truth 0.007); PER >= 0.5 = unintelligible
    v = compare([0.948], [1.034], min_effect=0.05, higher_is_better=False, fail_at=0.5)
    assert v.verdict == NOT_TESTABLE and "two failures" in v.reason
    # asyncthink generalization: accuracy 0.00 vs 0.00
    assert compare([0.0, 0.0, 0.0], [0.0, 0.0, 0.0], min_effect=0.05, fail_at=0.0).verdict == NOT_TESTABLE
    # one failed arm is a real comparison
    assert compare([0.3, 0.32, 0.31], [0.0, 0.0, 0.0], min_effect=0.05, fail_at=0.0).verdict == REPRODUCED


def test_two_arms_at_the_ceiling_are_not_testable():
    # asyncthink at full: every method answers every question (accuracy 1.0 on each seed)
    v = compare([1.0, 1.0, 1.0], [1.0, 1.0, 1.0], min_effect=0.02, fail_at=0.0, ceiling=1.0)
    assert v.verdict == NOT_TESTABLE and "ceiling" in v.reason and v.effect == 0.0
    # one arm below the ceiling is a real comparison: +0.10 +- 2 * sqrt(var([0.1, 0.1, 0.1]) / 3) = +0.10 +- 0
    assert compare([1.0, 1.0, 1.0], [0.9, 0.9, 0.9], min_effect=0.02, ceiling=1.0).verdict == REPRODUCED
    assert compare([0.9, 0.9, 0.9], [1.0, 1.0, 1.0], min_effect=0.02, ceiling=1.0).verdict == NOT_REPRODUCED
    # lower-is-better: both at the floor value 0 (the best) -> not testable
    assert compare([0.0, 0.0], [0.0, 0.0], min_effect=0.1, higher_is_better=False, ceiling=0.0).verdict == NOT_TESTABLE


def test_one_seed_is_at_most_partly():
    assert compare([0.9], [0.5], min_effect=0.1).verdict == PARTLY
    assert compare([0.52], [0.5], min_effect=0.1).verdict == NOT_REPRODUCED


def test_lower_is_better_and_unpaired():
    v = compare([1.0, 1.1], [2.0, 2.1, 2.2], min_effect=0.5, higher_is_better=False)
    # effect = 2.1 - 1.05 = 1.05; s.e. = sqrt(0.005/2 + 0.01/3) = 0.07638; 2 s.e. = 0.15275
    assert v.verdict == REPRODUCED and v.effect == pytest.approx(1.05) and v.spread == pytest.approx(2 * math.sqrt(0.005 / 2 + 0.01 / 3))


def test_never_reproduced_inside_spread_property():
    """Over many synthetic seed sets: whenever the mean difference is within 2 s.e., the verdict is not 'reproduced'."""
    import random

    rng = random.Random(0)
    for _ in range(2000):
        n = rng.choice([2, 3, 5])
        a = [rng.gauss(0.5, rng.choice([0.01, 0.1, 0.3])) for _ in range(n)]
        b = [rng.gauss(0.5 + rng.uniform(-0.2, 0.2), 0.1) for _ in range(n)]
        v = compare(a, b, min_effect=rng.choice([0.0, 0.02, 0.1]))
        if v.effect <= v.spread:
            assert v.verdict == NOT_REPRODUCED
        if v.verdict == REPRODUCED:
            assert v.effect > v.spread


def test_reaches():
    assert reaches([0.98, 0.985, 0.99], 0.9).verdict == REPRODUCED
    assert reaches([0.985], 0.9).verdict == PARTLY  # one seed: no spread
    assert reaches([0.95, 0.6, 0.99], 0.9).verdict == NOT_REPRODUCED  # mean 0.847
    assert reaches([0.92, 0.89, 0.93], 0.9).verdict == PARTLY  # mean 0.9133 within 2 s.e. (0.0240)


def test_overall():
    assert overall([REPRODUCED, REPRODUCED]) == REPRODUCED
    assert overall([REPRODUCED, NOT_REPRODUCED]) == PARTLY
    assert overall([NOT_TESTABLE, NOT_REPRODUCED]) == NOT_REPRODUCED
    assert overall([NOT_TESTABLE, NOT_TESTABLE]) == NOT_TESTABLE
    assert overall([PARTLY, NOT_TESTABLE]) == PARTLY
    with pytest.raises(ValueError):
        overall(["maybe"])
