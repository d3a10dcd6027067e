"""Significance of an accuracy difference on one shared test set.

- McNemar's exact test: of the test images exactly one of two models gets right,
  is the split between the two further from half and half than chance allows?
  The p-value is the two-sided binomial test of that split at p = 0.5
  (``scipy.stats.binomtest``). It is exact at any count.
- A paired bootstrap 95% confidence interval of the accuracy difference: the
  test images are resampled with replacement, the same images for both models,
  and the percentile interval of the difference is reported (``scipy.stats.bootstrap``).
- For seed groups, Welch's t-test on the per-seed test accuracies tests whether
  the difference is larger than the spread between seeds.

Correctness is passed as boolean arrays of shape (models, images): one row for a
single model, one row per seed for a group.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

SIGNIFICANCE_LEVEL = 0.05
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0  # fixed, so a report and the app show the same interval for the same runs
CONFIDENCE_LEVEL = 0.95


@dataclass
class McNemarResult:
    a_only: int  # images A gets right and B gets wrong
    b_only: int  # images B gets right and A gets wrong
    p_value: float
    pairs: int = 1  # model pairs whose counts were summed: matched seeds, or a single model with each seed


def mcnemar(a_correct: np.ndarray, b_correct: np.ndarray) -> McNemarResult:
    """Run McNemar's exact test on paired correctness.

    For groups (several rows each), the discordant counts of the seed pairs
    matched by position (row 0 with row 0, ...) are summed before the test, so
    every row of the smaller group is used once. A single model (one row) is
    paired with every seed of a group.
    """
    a_rows, b_rows = _rows(a_correct), _rows(b_correct)
    if a_rows.shape[1] != b_rows.shape[1]:
        raise ValueError(f"both models need results on the same test images, got {a_rows.shape[1]} and {b_rows.shape[1]}")
    pairs = max(len(a_rows), len(b_rows)) if min(len(a_rows), len(b_rows)) == 1 else min(len(a_rows), len(b_rows))
    a_rows, b_rows = _repeat_single(a_rows, pairs)[:pairs], _repeat_single(b_rows, pairs)[:pairs]
    a_only = int(np.sum(a_rows & ~b_rows))
    b_only = int(np.sum(~a_rows & b_rows))
    discordant = a_only + b_only
    p_value = 1.0 if discordant == 0 else float(stats.binomtest(a_only, discordant, 0.5).pvalue)
    return McNemarResult(a_only=a_only, b_only=b_only, p_value=min(p_value, 1.0), pairs=pairs)


def bootstrap_difference(
    a_correct: np.ndarray, b_correct: np.ndarray, *, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED
) -> tuple[float, float, float]:
    """Return (difference, ci_low, ci_high): A's accuracy minus B's with a paired 95% bootstrap interval.

    A group's accuracy on a resample is the mean of its seeds' accuracies, so per
    image the difference is A's fraction of correct seeds minus B's.
    """
    a_rows, b_rows = _rows(a_correct), _rows(b_correct)
    if a_rows.shape[1] != b_rows.shape[1]:
        raise ValueError(f"both models need results on the same test images, got {a_rows.shape[1]} and {b_rows.shape[1]}")
    per_image = a_rows.mean(axis=0) - b_rows.mean(axis=0)  # (images,) in [-1, 1]
    difference = float(per_image.mean())
    if np.all(per_image == per_image[0]):
        return difference, difference, difference  # every resample has the same mean; scipy rejects such data
    result = stats.bootstrap(
        (per_image,), np.mean, n_resamples=resamples, confidence_level=CONFIDENCE_LEVEL, method="percentile",
        vectorized=True, batch=200, rng=np.random.default_rng(seed),
    )
    return difference, float(result.confidence_interval.low), float(result.confidence_interval.high)


def seed_t_test(a_accuracies: list[float], b_accuracies: list[float]) -> float | None:
    """Return Welch's two-sided t-test p-value on per-seed accuracies, or None with fewer than 2 seeds a side."""
    if len(a_accuracies) < 2 or len(b_accuracies) < 2:
        return None
    if np.ptp(a_accuracies) == 0 and np.ptp(b_accuracies) == 0:
        return 1.0 if np.mean(a_accuracies) == np.mean(b_accuracies) else 0.0  # no spread: the t statistic is undefined
    return float(stats.ttest_ind(a_accuracies, b_accuracies, equal_var=False).pvalue)


def mean_and_std(values: list[float]) -> tuple[float, float]:
    """Return the mean and the sample standard deviation (ddof 1; 0 for a single value)."""
    array = np.asarray(values, dtype=np.float64)
    return float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else 0.0


def _repeat_single(rows: np.ndarray, count: int) -> np.ndarray:
    return np.repeat(rows, count, axis=0) if len(rows) == 1 else rows


def _rows(correct: np.ndarray) -> np.ndarray:
    rows = np.asarray(correct, dtype=bool)
    return rows[None, :] if rows.ndim == 1 else rows
