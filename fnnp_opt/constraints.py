"""How a strategy meets the FLOPs budget: constraint modes, the penalty, and projection into the window.

Every candidate's FLOPs are checked before it is evaluated; one outside the window
is never scored with adaptive BN. The modes differ only in what the sampler is told:

* ``reject``: the trial is pruned (no value). Random and QMC ignore it; TPE learns
  from pruned trials.
* ``penalize``: the trial completes with the value ``-PENALTY * violation``, below
  every feasible score, so value-driven samplers (CMA-ES) are pulled into the window.
* ``constrain``: the trial completes with the same value and Optuna's constraint
  ``violation > 0`` (``trial.set_constraint``), which TPE, GP and NSGA-II rank first.

``violation`` is the distance from the window, as a fraction of the base FLOPs: 0 inside,
0.03 for a candidate 3% of the base above the window's top.

``--fit-budget`` moves each draw along the path 0 -> draw -> R (every ratio scaled toward
0, or toward R) by the smallest step that enters the window, so no draw is rejected.
"""

from __future__ import annotations

from typing import Callable

from fnnp_opt.errors import UsageError
from fnnp_opt.flops import Budget
from fnnp_opt.options import Constraint, Objective, Sampler

PENALTY = 1.0  # value = ABN accuracy - PENALTY * violation; an infeasible candidate's accuracy counts as 0

_DEFAULT = {
    Sampler.random: Constraint.reject,
    Sampler.qmc: Constraint.reject,
    Sampler.tpe: Constraint.reject,
    Sampler.cmaes: Constraint.penalize,
    Sampler.gp: Constraint.constrain,
    Sampler.nsga2: Constraint.constrain,
}

# why a sampler cannot use a mode
_UNSUPPORTED = {
    (Sampler.random, Constraint.penalize): "random sampling ignores values",
    (Sampler.random, Constraint.constrain): "random sampling ignores constraints",
    (Sampler.qmc, Constraint.penalize): "QMC ignores values",
    (Sampler.qmc, Constraint.constrain): "QMC ignores constraints",
    (Sampler.cmaes, Constraint.constrain): "CMA-ES ignores constraints",
    (Sampler.cmaes, Constraint.reject): "CMA-ES learns nothing from rejected draws, so its generations never fill",
}


def default_constraint(sampler: Sampler) -> Constraint:
    """The mode each sampler works best with."""
    return _DEFAULT[sampler]


def check_combination(sampler: Sampler, mode: Constraint, objective: Objective, fit_budget: bool) -> None:
    """Raise :class:`UsageError` for a sampler, mode and objective that do not work together."""
    if objective is Objective.pareto:
        if sampler is Sampler.cmaes:
            raise UsageError("--objective pareto needs a multi-objective sampler; CMA-ES has one objective. Use nsga2")
        if mode is Constraint.penalize:
            raise UsageError("--constraint penalize has no meaning with two objectives; use constrain or reject")
        if fit_budget:
            raise UsageError("--fit-budget projects onto one budget; --objective pareto searches a range. Drop one")
    reason = _UNSUPPORTED.get((sampler, mode))
    if reason and not (fit_budget and mode is Constraint.reject):  # nothing is rejected when every draw fits
        good = sorted(m.value for m in Constraint if (sampler, m) not in _UNSUPPORTED)
        raise UsageError(
            f"--sampler {sampler.value} cannot use --constraint {mode.value}: {reason}; "
            f"use --constraint {' or '.join(good)}" + (" or --fit-budget" if mode is Constraint.reject else "")
        )


def violation(budget: Budget, macs: float) -> float:
    """How far ``macs`` lies outside the window, as a fraction of the base FLOPs (0 inside)."""
    return max(budget.low - macs, macs - budget.high, 0) / budget.base


def penalized(violation_: float) -> float:
    """The value of an infeasible candidate in the penalize and constrain modes."""
    return -PENALTY * violation_


def along(ratios: dict[str, float], t: float, max_rate: float) -> dict[str, float]:
    """The point ``t`` in [-1, 1] of the path from all zeros (-1) through ``ratios`` (0) to all R (1)."""
    if t >= 0:
        return {k: r + t * (max_rate - r) for k, r in ratios.items()}
    return {k: r * (1 + t) for k, r in ratios.items()}


def fit_to_budget(
    ratios: dict[str, float], macs_of: Callable[[dict[str, float]], float], budget: Budget, max_rate: float
) -> tuple[dict[str, float], float]:
    """Move ``ratios`` by the smallest step along :func:`along` that lands in the window; return (ratios, t).

    FLOPs do not rise along the path, so bisection finds the step. When the window holds
    no point of this path (its FLOPs jump over it), the closest point is returned.
    """
    macs = macs_of(ratios)
    if budget.contains(macs):
        return ratios, 0.0
    if macs > budget.high:  # prune more: the smallest t > 0 with FLOPs <= high
        inside, outside = 1.0, 0.0
        ok = lambda m: m <= budget.high  # noqa: E731
    else:  # prune less: the largest t < 0 with FLOPs >= low
        inside, outside = -1.0, 0.0
        ok = lambda m: m >= budget.low  # noqa: E731
    for _ in range(30):
        mid = (inside + outside) / 2
        if ok(macs_of(along(ratios, mid, max_rate))):
            inside = mid
        else:
            outside = mid
        if abs(inside - outside) < 1e-6:
            break
    return along(ratios, inside, max_rate), inside


def uniform_ratio(macs_of: Callable[[float], float], target: float, max_rate: float) -> float:
    """The one ratio for every group whose FLOPs come closest to ``target`` (FLOPs fall as it rises)."""
    lo, hi = 0.0, max_rate
    for _ in range(30):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if macs_of(mid) > target else (lo, mid)
    return min((lo, hi), key=lambda r: abs(macs_of(r) - target))


def uniform_strategy(
    cost_of: Callable[[dict[str, float]], float],
    roots: list[str],
    target: float,
    window: tuple[float, float],
    max_rate: float,
) -> tuple[dict[str, float] | None, tuple[float, float]]:
    """The uniform L1 strategy ({root: ratio}) whose cost comes closest to ``target`` inside ``window``.

    One ratio for every group, when one lands in the window. Kept channels are whole numbers and groups of
    one size change together, so on a small network the cost can jump over the window at one ratio; then the
    groups that change there change one at a time (smallest cost step first), and the first such plan in the
    window is the strategy: every group still within one channel step of the same ratio. Returns
    ``(strategy, (cost just above the jump, cost just below))``; the strategy is None when even that skips the
    window (the pair then says where the uniform costs lie). The cost falls as ratios rise.
    """
    low, high = window

    def at(r: float) -> dict[str, float]:
        return dict.fromkeys(roots, r)

    ratio = uniform_ratio(lambda r: cost_of(at(r)), target, max_rate)
    for r in (round(ratio, 6), ratio):  # six digits read better, where they keep the plan in the window
        if low <= cost_of(at(r)) <= high:
            return at(r), (cost_of(at(r)), cost_of(at(r)))
    above, below = 0.0, max_rate  # cost(above) > high >= cost(below)
    for _ in range(50):
        mid = (above + below) / 2
        above, below = (mid, below) if cost_of(at(mid)) > high else (above, mid)
    plan, start = at(above), cost_of(at(above))
    costs = (start, cost_of(at(below)))
    steps = sorted((start - cost_of(plan | {k: below}), k) for k in roots)
    for step, k in steps:
        if step <= 0:
            continue
        plan[k] = below
        cost = cost_of(plan)
        if cost <= high:
            return (plan if cost >= low else None), costs
    return None, costs
