"""The choices of a run that several layers share: samplers, constraint modes, objectives and scores.

A leaf: it imports nothing of fnnp-opt, so the study code (:mod:`fnnp_opt.search`,
:mod:`fnnp_opt.constraints`) and the configuration (:mod:`fnnp_opt.config`, which re-exports these
names) both take them from here.
"""

from __future__ import annotations

from enum import Enum


class Sampler(str, Enum):
    """Optuna samplers for the strategy vector."""

    random = "random"  # uniform random search: the paper's choice
    tpe = "tpe"  # tree-structured Parzen estimator (multivariate)
    cmaes = "cmaes"  # CMA evolution strategy
    qmc = "qmc"  # scrambled Sobol points: random search that fills the space evenly
    gp = "gp"  # Gaussian-process Bayesian optimisation (its ask() slows down past ~200 trials)
    nsga2 = "nsga2"  # NSGA-II genetic search; the sampler of --objective pareto


class Constraint(str, Enum):
    """How a candidate outside the FLOPs window is reported to the sampler (it is never ABN-evaluated)."""

    reject = "reject"  # TrialPruned: no value; samplers that learn from pruned trials (TPE) still see it
    penalize = "penalize"  # a COMPLETE trial valued -penalty x violation, below every feasible score
    constrain = "constrain"  # a COMPLETE trial with Optuna's constraint = violation (TPE, GP, NSGA-II use it)


class Objective(str, Enum):
    """What the study optimises."""

    accuracy = "accuracy"  # ABN accuracy inside one FLOPs window (the paper)
    pareto = "pareto"  # (ABN accuracy up, FLOPs down) over a FLOPs range: one study serves every budget


class Score(str, Enum):
    """What a trial's value is."""

    abn = "abn"  # adaptive-BN accuracy on the search split (the paper)
    abn_ft = "abn-ft"  # ABN, then --score-steps SGD steps on a copy, then accuracy on the search split
