"""The correlation statistics against scipy, on known data."""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

from fnnp_opt.correlation import coefficient, noise, with_interval


def test_coefficients_match_scipy_on_known_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=40)
    y = 0.6 * x + rng.normal(scale=0.5, size=40)
    assert coefficient("pearson", x, y) == stats.pearsonr(x, y)[0]
    assert coefficient("spearman", x, y) == stats.spearmanr(x, y)[0]
    assert coefficient("kendall", x, y) == stats.kendalltau(x, y)[0]
    assert coefficient("spearman", x, x**3) == 1.0  # monotone: perfect rank correlation
    assert math.isnan(coefficient("spearman", x, np.ones(40)))  # a constant ground truth ranks nothing


def test_bootstrap_interval_brackets_the_value_and_narrows_with_more_candidates():
    rng = np.random.default_rng(1)
    small, large = [], []
    for n, store in ((10, small), (200, large)):
        x = rng.normal(size=n)
        y = 0.7 * x + rng.normal(scale=0.7, size=n)
        c = with_interval("spearman", x, y, resamples=500)
        assert c.low <= c.value <= c.high
        store.append(c.high - c.low)
    assert large[0] < small[0]


def test_noise_compares_the_spread_with_seeds_and_the_binomial_error():
    truth = np.array([0.90, 0.91, 0.92, 0.93, 0.94])
    repeats = [np.array([0.90, 0.902, 0.898])]
    n = noise(truth, repeats, eval_images=10000)
    assert n.spread == np.std(truth, ddof=1)
    assert n.seed_sd == np.std(repeats[0], ddof=1)
    assert math.isclose(n.binomial_se, math.sqrt(0.92 * 0.08 / 10000))
    assert n.floor == max(n.seed_sd, n.binomial_se) and not n.within_noise
    assert math.isclose(n.ceiling, math.sqrt(1 - (n.floor / n.spread) ** 2))  # noise caps any correlation
    two = [np.array([0.90, 0.91, 0.92]), np.array([0.80, 0.81])]  # pooled over 2 + 1 degrees of freedom
    pooled = noise(truth, two, eval_images=10000).seed_sd
    assert math.isclose(pooled, math.sqrt((2 * 0.01**2 + 0.5 * 0.01**2) / 3))
    flat = noise(np.array([0.915, 0.916, 0.914]), [np.array([0.915, 0.905])], eval_images=5000)
    assert flat.within_noise  # a spread smaller than one seed's wobble: the choice hardly matters
    assert flat.ceiling == 0.0


def test_candidates_that_all_fine_tune_alike_have_a_ceiling_of_zero():
    """A ground truth with no spread (every candidate the same accuracy, not 0 or 1) leaves nothing to rank: the
    ceiling is 0 and the spread within noise (it divided by zero)."""
    n = noise(np.array([0.5, 0.5, 0.5]), [np.array([0.5, 0.5])], eval_images=9)
    assert n.ceiling == 0.0 and n.within_noise
