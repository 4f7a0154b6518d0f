"""Early stopping of a candidate's score: stop once it is clearly below the best candidate so far.

The search split is scored in fixed steps of about :data:`STEP_IMAGES` images, in one fixed
order for every candidate (the split is shuffled once, when it is drawn). After each step the
trial reports that step's accuracy to Optuna (``trial.report(accuracy, step)``), and the study's
pruner (:class:`WilcoxonStop`) compares the steps scored so far, pair by pair, with the same
steps of the study's best trial: a one-sided Wilcoxon signed-rank test at ``p <``
:data:`P_THRESHOLD`, and never while the candidate's mean step accuracy is at or above the best
trial's. A stopped candidate's value is its running accuracy over the images it saw (below the
best's by that rule, so it cannot win), recorded with ``images_scored`` and ``stopped_early``
on its trial; it counts as evaluated. The per-step accuracies are the trial's intermediate
values, so optuna-dashboard plots every candidate's steps.

Source: the rule of Optuna's :class:`~optuna.pruners.WilcoxonPruner` (optuna.pruners, since 3.6),
tested with SciPy's normal approximation. Optuna's own pruner lets SciPy choose, and SciPy
(>= 1.15) computes a sample of at most 13 differences with ties, which step accuracies of 256
images nearly always have, by an exact permutation test: 2**n sign flips, up to 2 s for one
step here, more than scoring the step. EagleEye (Li et al., ECCV 2020) scores every candidate on
the whole split.
"""

from __future__ import annotations

import numpy as np
import optuna

STEP_IMAGES = 256  # images per step: ~20 steps on the 5,000-image Fashion-MNIST search split
P_THRESHOLD = 0.1  # the one-sided p-value below which a candidate stops (Optuna's WilcoxonPruner's default)
MIN_STEPS = 4  # paired steps before a test: 4 all-lower steps give p ~ 0.05 (exact: 1/16)


def step_batches(batch_size: int) -> int:
    """Batches of ``batch_size`` images per step: :data:`STEP_IMAGES` rounded to whole batches, at least 1."""
    return max(1, round(STEP_IMAGES / batch_size))


class WilcoxonStop(optuna.pruners.BasePruner):
    """Prune a trial whose reported steps are, by a one-sided Wilcoxon signed-rank test at ``p < p_threshold``,
    below the same steps of the study's best trial (a maximised study), once ``min_steps`` pairs exist, and
    never while its mean step value is at or above the best trial's mean (Optuna's WilcoxonPruner's rule;
    zeros split, normal approximation)."""

    def __init__(self, p_threshold: float = P_THRESHOLD, min_steps: int = MIN_STEPS) -> None:
        if not 0.0 < p_threshold < 1.0 or min_steps < 2:
            raise ValueError(f"p_threshold must be in (0, 1) and min_steps >= 2, got {p_threshold}, {min_steps}")
        self.p_threshold, self.min_steps = p_threshold, min_steps

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        mine = trial.intermediate_values
        if len(mine) < self.min_steps or study.direction != optuna.study.StudyDirection.MAXIMIZE:
            return False
        try:
            best = study.best_trial
        except ValueError:  # nothing finished yet
            return False
        theirs = best.intermediate_values
        steps = sorted(set(mine) & set(theirs))
        if len(steps) < self.min_steps:  # e.g. a best trial stored before early stopping: no steps
            return False
        a, b = np.array([mine[s] for s in steps]), np.array([theirs[s] for s in steps])
        if not (np.isfinite(a).all() and np.isfinite(b).all()):
            return False
        if np.mean(list(mine.values())) >= np.mean(list(theirs.values())):
            return False
        diff = a - b
        if not diff.any():
            return False
        from scipy.stats import wilcoxon

        p = wilcoxon(diff, alternative="less", zero_method="zsplit", method="approx").pvalue
        return bool(p < self.p_threshold)


def make_pruner() -> optuna.pruners.BasePruner:
    """The study's pruner when scores stop early: :class:`WilcoxonStop` at :data:`P_THRESHOLD`."""
    return WilcoxonStop()


class Reporter:
    """The ``stop`` callback of :func:`fnnp_opt.evaluate.accuracy_in_steps` for one trial: reports each step's
    accuracy as the trial's intermediate value and asks the study's pruner whether to stop."""

    def __init__(self, trial: optuna.Trial) -> None:
        self.trial = trial

    def __call__(self, step: int, accuracy: float) -> bool:
        self.trial.report(accuracy, step)
        return self.trial.should_prune()
