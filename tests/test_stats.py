"""McNemar's test, the bootstrap interval, the seed t-test and ensembles against values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from core.stats import bootstrap_difference, mcnemar, mean_and_std, seed_t_test


def correct_pairs(both: int, a_only: int, b_only: int, neither: int) -> tuple[np.ndarray, np.ndarray]:
    """Build paired correctness arrays with the given counts of each outcome."""
    a = [True] * both + [True] * a_only + [False] * b_only + [False] * neither
    b = [True] * both + [False] * a_only + [True] * b_only + [False] * neither
    return np.array(a), np.array(b)


def exact_two_sided(a_only: int, b_only: int) -> float:
    """McNemar's exact p-value: twice the smaller binomial tail at p = 1/2, at most 1."""
    n = a_only + b_only
    tail = sum(math.comb(n, k) for k in range(min(a_only, b_only) + 1)) / 2**n
    return min(1.0, 2 * tail)


def test_mcnemar_small_case_by_hand():
    a, b = correct_pairs(both=2, a_only=5, b_only=1, neither=1)

    result = mcnemar(a, b)

    assert (result.a_only, result.b_only) == (5, 1)
    assert result.p_value == pytest.approx(14 / 64)  # (C(6,0) + C(6,1)) / 2**6, doubled


@pytest.mark.parametrize("a_only, b_only", [(0, 3), (7, 7), (10, 2), (180, 38), (23, 45)])
def test_mcnemar_matches_binomial_formula(a_only, b_only):
    a, b = correct_pairs(both=9000, a_only=a_only, b_only=b_only, neither=40)

    assert mcnemar(a, b).p_value == pytest.approx(exact_two_sided(a_only, b_only), rel=1e-9)


def test_mcnemar_without_disagreement_is_one():
    a, b = correct_pairs(both=5, a_only=0, b_only=0, neither=3)

    assert mcnemar(a, b).p_value == 1.0


def test_mcnemar_sums_seed_pairs():
    a1, b1 = correct_pairs(both=3, a_only=2, b_only=0, neither=1)
    a2, b2 = correct_pairs(both=3, a_only=1, b_only=1, neither=1)
    a3, _ = correct_pairs(both=6, a_only=0, b_only=0, neither=0)  # an unmatched third seed of A is left out

    result = mcnemar(np.stack([a1, a2, a3]), np.stack([b1, b2]))

    assert (result.a_only, result.b_only) == (3, 1)
    assert result.p_value == pytest.approx(exact_two_sided(3, 1))


def test_mcnemar_pairs_single_model_with_every_seed():
    single, _ = correct_pairs(both=3, a_only=2, b_only=0, neither=1)
    _, seed1 = correct_pairs(both=3, a_only=2, b_only=0, neither=1)
    seed2 = np.ones(6, dtype=bool)  # right where the single model is, and on its one miss too

    forward = mcnemar(single, np.stack([seed1, seed2]))
    backward = mcnemar(np.stack([seed1, seed2]), single)

    assert (forward.a_only, forward.b_only, forward.pairs) == (2, 1, 2)
    assert (backward.a_only, backward.b_only, backward.pairs) == (1, 2, 2)
    assert forward.p_value == pytest.approx(exact_two_sided(2, 1))


def test_mcnemar_rejects_other_test_sets():
    with pytest.raises(ValueError, match="same test images"):
        mcnemar(np.ones(5, bool), np.ones(6, bool))


def test_bootstrap_constant_difference_is_exact():
    a, b = correct_pairs(both=0, a_only=4, b_only=0, neither=0)

    assert bootstrap_difference(a, b) == (1.0, 1.0, 1.0)


def test_bootstrap_two_images_by_hand():
    # Per image the difference is 1 and 0. A resample of two images has mean 0, 1/2 or 1
    # with probability 1/4, 1/2 and 1/4, so the 2.5% and 97.5% percentiles are 0 and 1.
    difference, low, high = bootstrap_difference(np.array([True, False]), np.array([False, False]))

    assert difference == 0.5
    assert (low, high) == (0.0, 1.0)


def test_bootstrap_width_matches_normal_approximation():
    rng = np.random.default_rng(3)
    a = rng.random(10000) < 0.99
    b = rng.random(10000) < 0.97
    per_image = a.astype(float) - b.astype(float)
    expected_half_width = 1.96 * per_image.std(ddof=1) / math.sqrt(len(per_image))

    difference, low, high = bootstrap_difference(a, b)

    assert difference == pytest.approx(per_image.mean())
    assert low < difference < high
    assert (high - low) / 2 == pytest.approx(expected_half_width, rel=0.1)


def test_bootstrap_is_reproducible():
    a, b = correct_pairs(both=50, a_only=9, b_only=3, neither=2)

    assert bootstrap_difference(a, b) == bootstrap_difference(a, b)


def test_bootstrap_group_uses_seed_fractions():
    # Two seeds of A: image 0 right in both, image 1 right in one. B gets both wrong.
    a = np.array([[True, True], [True, False]])
    b = np.array([False, False])

    difference, _, _ = bootstrap_difference(a, b)

    assert difference == pytest.approx((1.0 + 0.5) / 2)


def test_seed_t_test_by_hand():
    # Welch: means 2 and 5, variances 1 and 1, t = -3 / sqrt(2/3) = -3.674 with 4 degrees
    # of freedom, two-sided p = 0.02131 (t-table value).
    assert seed_t_test([1.0, 2.0, 3.0], [4.0, 5.0, 6.0]) == pytest.approx(0.02131, abs=5e-5)


def test_seed_t_test_needs_two_seeds_each():
    assert seed_t_test([0.98], [0.97, 0.975]) is None


def test_seed_t_test_without_spread():
    assert seed_t_test([0.9, 0.9], [0.9, 0.9]) == 1.0
    assert seed_t_test([0.9, 0.9], [0.8, 0.8]) == 0.0


def test_mean_and_std_sample_deviation():
    assert mean_and_std([0.97, 0.98, 0.99]) == pytest.approx((0.98, 0.01))
    assert mean_and_std([0.5]) == (0.5, 0.0)
