"""The choices of a run that several layers share (samplers, constraint modes, objectives and scores), and the
checks of single option values that more than the configuration runs (a base model's training checks them too).

A leaf: it imports nothing of fnnp-opt but its errors, so the study code (:mod:`fnnp_opt.search`,
:mod:`fnnp_opt.constraints`), the method (:mod:`fnnp_opt.finetune`) and the configuration
(:mod:`fnnp_opt.config`, which re-exports these names) all take them from here.
"""

from __future__ import annotations

import math
import os
from enum import Enum
from typing import Sequence

from fnnp_opt.errors import UsageError, option


class Sampler(str, Enum):
    """Optuna samplers for the strategy vector."""

    random = "random"  # uniform random search: the paper's choice
    tpe = "tpe"  # tree-structured Parzen estimator (multivariate)
    cmaes = "cmaes"  # CMA evolution strategy
    qmc = "qmc"  # scrambled Sobol points: random search that fills the space evenly
    gp = "gp"  # Gaussian-process Bayesian optimisation (its ask() slows down past ~200 trials)
    nsga2 = "nsga2"  # NSGA-II genetic search; the sampler of --objective pareto


BASELINES = ("uniform", "global", "sensitivity")  # the strategies a study can queue first, in queue order
IMPORTANCES = ("magnitude", "lamp", "taylor")  # Torch-Pruning criteria of the global baseline's ranking
DEFAULT_IMPORTANCE = "magnitude"  # the global baseline's criterion where none is asked for
DEFAULT_SENSITIVITY_STEPS = 4  # the sensitivity curves' grid where none is asked for
MAX_SENSITIVITY_STEPS = 20  # grid points per group of the sensitivity curves: each is one ABN evaluation per group


def check_sensitivity_steps(steps: object) -> int:
    """``--sensitivity-steps`` (``sensitivity_steps=``): a whole number from 1 to :data:`MAX_SENSITIVITY_STEPS`.

    Raises:
        UsageError: anything else.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_SENSITIVITY_STEPS:
        raise UsageError(
            f"{option('sensitivity_steps')} must be a whole number from 1 to {MAX_SENSITIVITY_STEPS} (each step is "
            f"one ABN evaluation per layer group), got {steps!r}; the default, 4, is enough for a monotone curve"
        )
    return steps


def parse_baselines(text: str | Sequence[str]) -> tuple[str, ...]:
    """``--baselines``' value (``uniform,global,sensitivity``, ``none``, or a sequence) as names in queue order
    (:mod:`fnnp_opt.baselines`).

    Raises:
        UsageError: an unknown name.
    """
    if not isinstance(text, str) and not (
        isinstance(text, (list, tuple)) and all(isinstance(n, str) for n in text)
    ):
        raise UsageError(
            f"{option('baselines')} takes names like 'uniform,global' (a string or a list of them), got "
            f"{type(text).__name__} {text!r}"
        )
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text)]
    if not any(names):
        raise UsageError(
            f"{option('baselines')} names no strategy, got {text!r}; pass {option('baselines', 'none')} for uniform L1 "
            f"only, or e.g. {option('baselines', 'uniform,global')}"
        )
    if "none" in names and len([n for n in names if n]) > 1:
        raise UsageError(f"{option('baselines')} none means uniform L1 only: drop the other names, got {text!r}")
    names = [n for n in names if n and n != "none"]
    unknown = [n for n in names if n not in BASELINES]
    if unknown:
        raise UsageError(
            f"{option('baselines')} takes {', '.join(BASELINES)} (comma-separated) or none, got {unknown[0]!r}; "
            f"e.g. {option('baselines', ','.join(BASELINES))}"
        )
    return tuple(b for b in BASELINES if b in names)


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


def check_split(search_size: int | None, search_per_class: int | None, image_size: int | None = None) -> None:
    """Raise :class:`UsageError` unless the search split's size (``--search-size`` or ``--search-per-class``, not
    both) and ``--image-size`` are whole numbers >= 1 where given."""
    for name, value in (
        ("search-size", search_size),
        ("search-per-class", search_per_class),
        ("image-size", image_size),
    ):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise UsageError(f"--{name} must be a whole number >= 1, got {value!r}")
    if search_size is not None and search_per_class is not None:
        raise UsageError("--search-size and --search-per-class both size the search split; pass one of them")


def check_lr(lr: float) -> None:
    """Raise :class:`UsageError` unless the peak learning rate ``lr`` is positive and finite."""
    if not lr > 0 or not math.isfinite(lr):
        raise UsageError(
            f"{option('lr')} must be positive and finite, got {lr}; pass a value such as {option('lr', 0.02)}"
        )


def check_seed(seed: int, name: str = "seed") -> None:
    """Raise :class:`UsageError` unless ``seed`` (the setting ``name``) is a whole number in [0, 2**32) (what NumPy's
    generators take)."""
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**32:
        raise UsageError(f"{option(name)} must be a whole number in [0, 2**32), got {seed!r}")


def check_batch_fits(batch_size: int, train_images: int) -> None:
    """Raise :class:`UsageError` when a batch of ``batch_size`` is larger than the ``train_images`` (an epoch would
    have no step: the loader drops the last, partial batch)."""
    if batch_size > train_images:
        raise UsageError(
            f"--batch-size {batch_size} is larger than the train part's {train_images} images, so an epoch would "
            f"have no step; pass --batch-size {min(128, train_images)} or less"
        )


def env_seconds(name: str, default: float) -> float:
    """The interval in seconds that environment variable ``name`` sets, or ``default`` where it is unset or empty.

    Raise :class:`UsageError` unless it is a positive, finite number. fnnp-opt's tests set such variables (the
    storage's ``FNNP_HEARTBEAT_S``, ``FNNP_GRACE_S`` and ``FNNP_POLL_S``) to run their kill and resume cases in
    seconds; a user has no need to."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (value > 0 and math.isfinite(value)):
        raise UsageError(f"{name} must be a positive number of seconds, got {text!r}; unset it for {default:g} s")
    return value


def env_whole_seconds(name: str, default: int) -> int:
    """:func:`env_seconds` for an interval Optuna takes in whole seconds (its heartbeats)."""
    value = float(env_seconds(name, default))
    if not value.is_integer():
        raise UsageError(f"{name} must be a whole number of seconds, got {value:g}; unset it for {default} s")
    return int(value)
