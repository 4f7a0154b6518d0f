"""Rank correlation of candidate scores with their fine-tuned accuracy, with bootstrap intervals and noise.

Pure functions over arrays: no models, no data. :mod:`fnnp_opt.correlate` feeds them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

METRICS = ("pearson", "spearman", "kendall")


def coefficient(metric: str, x: np.ndarray, y: np.ndarray) -> float:
    """Pearson, Spearman or Kendall (tau-b) coefficient of ``x`` and ``y``; NaN when either is constant."""
    from scipy import stats

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan
    fn = {"pearson": stats.pearsonr, "spearman": stats.spearmanr, "kendall": stats.kendalltau}[metric]
    return float(fn(x, y)[0])


@dataclass(frozen=True)
class Coefficient:
    metric: str
    value: float
    low: float  # bootstrap 95% interval
    high: float


def with_interval(metric: str, x: np.ndarray, y: np.ndarray, resamples: int = 1000, seed: int = 0) -> Coefficient:
    """The coefficient and a percentile bootstrap 95% interval over the candidates."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    value = coefficient(metric, x, y)
    if math.isnan(value):
        return Coefficient(metric, value, math.nan, math.nan)
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(resamples):
        idx = rng.integers(0, len(x), len(x))
        c = coefficient(metric, x[idx], y[idx])
        if not math.isnan(c):
            draws.append(c)
    if not draws:
        return Coefficient(metric, value, math.nan, math.nan)
    low, high = np.percentile(draws, [2.5, 97.5])
    return Coefficient(metric, value, float(low), float(high))


@dataclass(frozen=True)
class Noise:
    """How much of the fine-tuned accuracies' spread across candidates is noise."""

    spread: float  # standard deviation of the ground truth across candidates
    seed_sd: float  # pooled standard deviation of one candidate's ground truth across fine-tune seeds (nan: none)
    binomial_se: float  # standard error of one accuracy from the evaluation set's size
    floor: float  # the larger of the two noises
    ratio: float  # spread / floor

    @property
    def ceiling(self) -> float:
        """The largest correlation any score can reach with a ground truth this noisy (Spearman's
        attenuation: the square root of the share of the spread's variance that is not noise)."""
        if math.isnan(self.ratio):
            return math.nan
        if self.ratio == 0:  # every candidate fine-tuned to the same accuracy: nothing for a score to rank
            return 0.0
        return math.sqrt(max(0.0, 1.0 - 1.0 / self.ratio**2))

    @property
    def within_noise(self) -> bool:
        """The spread is not clearly larger than the noise (less than twice it)."""
        return not self.ratio >= 2.0


def noise(truth: np.ndarray, repeats: list[np.ndarray], eval_images: int) -> Noise:
    """``truth``: each candidate's fine-tuned accuracy; ``repeats``: for some candidates, the accuracies
    of the same fine-tune under other seeds (including the first); ``eval_images``: the set it was scored on."""
    truth = np.asarray(truth, dtype=float)
    spread = float(np.std(truth, ddof=1)) if len(truth) > 1 else math.nan
    # pooled: the within-candidate variance, each candidate weighted by its degrees of freedom
    groups = [np.asarray(r, dtype=float) for r in repeats if len(r) > 1]
    dof = sum(len(r) - 1 for r in groups)
    seed_sd = math.sqrt(sum(float(np.sum((r - r.mean()) ** 2)) for r in groups) / dof) if dof else math.nan
    p = float(np.mean(truth)) if len(truth) else math.nan
    binomial = math.sqrt(p * (1 - p) / eval_images) if eval_images else math.nan
    known = [v for v in (seed_sd, binomial) if not math.isnan(v)]
    floor = max(known) if known else math.nan
    ratio = spread / floor if known and floor > 0 else math.nan
    return Noise(spread, seed_sd, binomial, floor, ratio)
