"""The one-call allocations a user would try before a search, as ratio vectors of fnnp-opt's search space.

* ``uniform``: the same ratio in every group (uniform L1), :meth:`fnnp_opt.problem.Problem.uniform_strategies`.
* ``global``: Torch-Pruning's global ranking. Every channel of every searched group gets the group importance of
  Torch-Pruning (``magnitude``: the L2 norm of its weights in every coupled layer, mean-normalised per group, as
  Torch-Pruning's examples prune; ``lamp``: LAMP scores; ``taylor``: |weight x gradient| over a few labelled
  batches), all channels are ranked together, and the least important are removed until the budget's target holds
  (Torch-Pruning's ``BasePruner(global_pruning=True)`` with a threshold stepped to a MACs target). No group loses
  more than R of its channels. Cost: one importance pass; no evaluation.
* ``sensitivity``: per-layer sensitivity allocation, as NVIDIA ModelOpt's FastNAS does it. Each group is shrunk
  alone to ``steps`` ratios up to R and scored with BN statistics re-estimated (the study's adaptive-BN score on
  the search split), which gives one curve of score drop per group, made monotone; then one threshold of
  tolerated drop is bisected until the budget's target holds, and each group takes the largest ratio whose drop
  stays under it. Cost: groups x steps + 1 evaluations.

Each allocation is ``{group root: ratio}`` with ratios in [0, R]; where it falls outside the budget window (whole
channel counts, or the cap R), it is moved into the window along :func:`fnnp_opt.constraints.fit_to_budget`'s path.
Studies queue them after uniform L1 as their first trials, marked with the user attribute ``strategy``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import nn

from fnnp_opt.constraints import fit_to_budget, violation
from fnnp_opt.errors import ModelError, UsageError, describe, option
from fnnp_opt.options import DEFAULT_IMPORTANCE, DEFAULT_SENSITIVITY_STEPS, IMPORTANCES, check_sensitivity_steps
from fnnp_opt.progress import NULL, Progress

log = logging.getLogger(__name__)


@dataclass
class Allocation:
    """One baseline's ratio vector and what it cost to compute."""

    strategy: str  # "global" or "sensitivity"
    ratios: dict[str, float]  # {group root: ratio in [0, R]}, inside the budget window unless ``fitted`` failed
    cost: float  # the budget's cost of ``ratios`` (MACs, or predicted ms under a latency budget)
    evaluations: int = 0  # candidate evaluations it took (sensitivity: groups x steps + 1)
    seconds: float = 0.0  # wall time to compute it
    fit_step: float = 0.0  # the step along fit_to_budget's path that moved it into the window (0: none)
    detail: dict = field(default_factory=dict)  # importance criterion; sensitivity threshold

    def attrs(self) -> dict:
        """What a study records of it, on its trial (``baseline_cost``): JSON-able."""
        return {"evaluations": self.evaluations, "seconds": round(self.seconds, 3), "fit_step": round(self.fit_step, 6)}


def _fit(problem, strategy: str, ratios: dict[str, float], target: float, **kw) -> Allocation:
    """``ratios`` moved into ``problem``'s window where they fall outside, as an :class:`Allocation`."""
    cost_of = lambda r: problem.cost(problem.pruner.counts(r))  # noqa: E731
    budget = problem.budget
    fitted, step = fit_to_budget(ratios, cost_of, budget, problem.space.max_rate)
    missed, was = violation(budget, cost_of(fitted)), violation(budget, cost_of(ratios))
    if missed > 0 and was <= missed:
        fitted, step = ratios, 0.0  # the path jumps over the window: keep the nearer plan (the warning names it)
    if step:
        log.info("%s baseline moved into the window (step %.4f along the path to all 0 or all R)", strategy, step)
    return Allocation(strategy, fitted, cost_of(fitted), fit_step=step, **kw)


def _bisect(removed_at: Callable[[int], dict[str, float]], cost_of, hi: int, target: float) -> int:
    """The smallest ``k`` in [0, hi] whose ratios ``removed_at(k)`` cost at most ``target`` (cost falls in k);
    ``hi`` when none does."""
    lo = 0
    if cost_of(removed_at(hi)) > target:
        return hi
    while lo < hi:
        mid = (lo + hi) // 2
        if cost_of(removed_at(mid)) <= target:
            hi = mid
        else:
            lo = mid + 1
    return lo


# --------------------------------------------------------------------------- global ranking


def _gradients(model: nn.Module, batches: Sequence) -> None:
    """Accumulate the gradients of the cross-entropy of ``batches`` ((x, y) pairs) on ``model``'s parameters."""
    model.zero_grad(set_to_none=True)
    device = next(model.parameters()).device
    for x, y in batches:
        loss = nn.functional.cross_entropy(model(x.to(device)), y.to(device))
        loss.backward()


class GlobalRanking:
    """Every searched channel of a :class:`~fnnp_opt.problem.Problem` ranked by one Torch-Pruning importance.

    Args:
        problem: the pruning problem (its groups are Torch-Pruning's).
        importance: ``magnitude``, ``lamp`` or ``taylor``.
        gradient_batches: labelled ``(x, y)`` batches of training data; ``taylor`` needs them (a few are enough).

    Raises:
        UsageError: an unknown importance, or ``taylor`` without batches.
        ModelError: Torch-Pruning cannot score a group (the message names it).
    """

    def __init__(self, problem, importance: str = "magnitude", gradient_batches: Sequence | None = None) -> None:
        import torch_pruning as tp

        if importance not in IMPORTANCES:
            raise UsageError(
                f"{option('global_importance')} must be one of {', '.join(IMPORTANCES)}, got {importance!r}"
            )
        if importance == "taylor" and not gradient_batches:
            raise UsageError(
                f"{option('global_importance', 'taylor')} scores channels by weight x gradient: it needs labelled "
                "training batches; use magnitude or lamp, or give it training data"
            )
        self.problem = problem
        self.importance = importance
        criterion = {
            "magnitude": lambda: tp.importance.GroupMagnitudeImportance(p=2),
            "lamp": lambda: tp.importance.LAMPImportance(p=2),
            "taylor": lambda: tp.importance.GroupTaylorImportance(),
        }[importance]()
        model, pruner = problem.model, problem.pruner
        was = model.training
        try:
            if gradient_batches and importance == "taylor":
                try:
                    _gradients(model.eval(), gradient_batches)
                except Exception as exc:  # noqa: BLE001  (the user's batches through the user's model)
                    raise UsageError(
                        f"{option('global_importance', 'taylor')} takes gradients of the cross-entropy of labelled "
                        f"(x, y) training batches, which fail here ({describe(exc)}); pass batches with class indices "
                        "below the model's outputs, or use magnitude or lamp"
                    ) from None
            # per group: one score per channel position (averaged over the blocks of a grouped conv, as
            # Torch-Pruning ranks them), and how many channels each position stands for
            self.scores: dict[str, torch.Tensor] = {}
            self.width: dict[str, int] = {}
            for g in pruner.groups:
                try:
                    with torch.no_grad():
                        imp = criterion(pruner.tp_groups[g.root])
                except Exception as exc:  # noqa: BLE001  (any failure inside Torch-Pruning's criterion)
                    raise ModelError(
                        f"Torch-Pruning's {importance} importance cannot rank group {g.root!r} ({describe(exc)}), so "
                        f"this model's channels cannot be ranked globally; drop 'global' from {option('baselines')}"
                    ) from None
                if imp is None or imp.numel() != g.channels or not torch.isfinite(imp).all():
                    raise ModelError(
                        f"Torch-Pruning's {importance} importance gave group {g.root!r} no finite score per channel, "
                        f"so this model's channels cannot be ranked globally; drop 'global' from {option('baselines')}"
                    )
                imp = imp.detach().double().cpu()
                self.scores[g.root] = imp.view(g.block, -1).mean(0) if g.block > 1 else imp
                self.width[g.root] = g.block
        finally:
            if importance == "taylor":
                model.zero_grad(set_to_none=True)
            model.train(was)
        self._all = torch.sort(torch.cat(list(self.scores.values()))).values

    @property
    def positions(self) -> int:
        """How many channel positions are ranked (a grouped conv's position stands for one channel per block)."""
        return len(self._all)

    def removed(self, k: int) -> dict[str, int]:
        """Channels each group loses when the ``k`` least important positions go (Torch-Pruning's threshold rule:
        every position scored at or below the k-th smallest score), capped at R of each group's channels."""
        if k <= 0:
            return {root: 0 for root in self.scores}
        threshold = self._all[min(k, len(self._all)) - 1]
        cap = self.problem.space.max_rate
        out = {}
        for g in self.problem.pruner.groups:
            n = int((self.scores[g.root] <= threshold).sum()) * self.width[g.root]
            out[g.root] = min(n, int(cap * g.channels))
        return out

    def ratios(self, k: int) -> dict[str, float]:
        """:meth:`removed` as ratios ({group root: share of its channels})."""
        channels = {g.root: g.channels for g in self.problem.pruner.groups}
        return {root: n / channels[root] for root, n in self.removed(k).items()}

    def allocation(self, target: float) -> Allocation:
        """The ranking cut at the fewest positions whose cost is at most ``target``, in the window."""
        t = time.perf_counter()
        p = self.problem
        cost_of = lambda r: p.cost(p.pruner.counts(r))  # noqa: E731
        k = _bisect(self.ratios, cost_of, self.positions, target)
        fits = [  # the cut and the one before it: a cut can jump over the window, the fit then keeps the nearer
            _fit(p, "global", self.ratios(n), target, detail={"importance": self.importance, "positions_removed": n})
            for n in dict.fromkeys([k, max(k - 1, 0)])
        ]
        best = min(fits, key=lambda a: violation(p.budget, a.cost))
        best.seconds = time.perf_counter() - t
        return best


# --------------------------------------------------------------------------- sensitivity


@dataclass
class Sensitivity:
    """Each group's score drop when it alone is pruned, at ``ratios`` (monotone: a larger ratio never drops less)."""

    ratios: list[float]  # the grid, 0 first
    drops: dict[str, list[float]]  # {group root: drop at each ratio of the grid}, drops[root][0] == 0
    base: float  # the unpruned model's score
    evaluations: int
    seconds: float

    def ratio_at(self, root: str, threshold: float) -> float:
        """The largest ratio of ``root``'s curve whose drop is at most ``threshold`` (linear between grid points)."""
        d, r = self.drops[root], self.ratios
        for i in range(1, len(r)):
            if d[i] > threshold:
                span = d[i] - d[i - 1]
                return r[i - 1] + (r[i] - r[i - 1]) * ((threshold - d[i - 1]) / span if span > 0 else 0.0)
        return r[-1]

    def at(self, threshold: float) -> dict[str, float]:
        return {root: self.ratio_at(root, threshold) for root in self.drops}


def sensitivity_curves(
    problem, score: Callable[[nn.Module], float], steps: int = 4, progress: Progress = NULL
) -> Sensitivity:
    """Score ``problem``'s model with each group alone pruned to ``R * s / steps`` (s = 1..steps).

    Args:
        score: ``score(model) -> float``, higher is better, of a pruned copy whose BN statistics are the base's
            (the study's adaptive-BN evaluation re-estimates them first).
        steps: grid points per group.

    Returns:
        The monotone curves: a drop is the running maximum of ``base - score`` along the grid, never below 0.
    """
    check_sensitivity_steps(steps)
    t = time.perf_counter()
    R = problem.space.max_rate
    grid = [R * s / steps for s in range(steps + 1)]
    groups = problem.pruner.groups
    with progress.task("sensitivity", len(groups) * steps + 1) as advance:
        base = float(score(problem.pruner.prune({})))
        advance(1)
        drops = {}
        for g in groups:
            curve, worst = [0.0], 0.0
            for r in grid[1:]:
                worst = max(worst, base - float(score(problem.pruner.prune({g.root: r}))))
                curve.append(worst)
                advance(1)
            drops[g.root] = curve
    seconds = time.perf_counter() - t
    log.info("sensitivity: %d groups x %d ratios scored in %.1f s", len(groups), steps, seconds)
    return Sensitivity(grid, drops, base, len(groups) * steps + 1, seconds)


def sensitivity_allocation(problem, curves: Sensitivity, target: float) -> Allocation:
    """The smallest tolerated drop whose allocation costs at most ``target`` (bisected), in the window."""
    p = problem
    cost_of = lambda r: p.cost(p.pruner.counts(r))  # noqa: E731
    lo, hi = 0.0, max([max(d) for d in curves.drops.values()] + [0.0]) + 1e-9
    if cost_of(curves.at(hi)) > target:  # every group at R: the fit below reports what it reaches
        threshold, ratios = hi, curves.at(hi)
    else:
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if cost_of(curves.at(mid)) <= target else (mid, hi)
        threshold, ratios = hi, _between(curves.at(lo), curves.at(hi), cost_of, target)
    return _fit(
        p,
        "sensitivity",
        ratios,
        target,
        evaluations=curves.evaluations,
        seconds=curves.seconds,
        detail={"threshold": round(threshold, 6), "steps": len(curves.ratios) - 1},
    )


def _between(above: dict[str, float], below: dict[str, float], cost_of, target: float) -> dict[str, float]:
    """The point nearest ``above`` on the segment from ``above`` (costs over ``target``) to ``below`` (at most
    ``target``) that costs at most ``target``: where a flat curve makes the threshold's allocation jump past the
    target, the groups that jump move only as far as the target needs (every ratio stays between its two values)."""
    mix = lambda s: {k: a + s * (below[k] - a) for k, a in above.items()}  # noqa: E731
    lo, hi = 0.0, 1.0
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if cost_of(mix(mid)) <= target else (mid, hi)
    return mix(hi)


# --------------------------------------------------------------------------- both


def allocations(
    problem,
    strategies: Sequence[str],
    targets: Sequence[float],
    score: Callable[[nn.Module], float] | None = None,
    importance: str | None = None,
    steps: int | None = None,
    gradient_batches: Sequence | None = None,
    progress: Progress = NULL,
) -> list[Allocation]:
    """The ``global`` and ``sensitivity`` allocations of ``strategies`` at each of ``targets`` (costs), in that
    order; ``uniform`` is :meth:`Problem.uniform_strategies`' and is skipped here. ``score`` is needed for
    ``sensitivity``; ``importance`` and ``steps`` None take :data:`~fnnp_opt.options.DEFAULT_IMPORTANCE` and
    :data:`~fnnp_opt.options.DEFAULT_SENSITIVITY_STEPS`."""
    out: list[Allocation] = []
    if "global" in strategies:
        ranking = GlobalRanking(problem, importance or DEFAULT_IMPORTANCE, gradient_batches)
        out += [ranking.allocation(t) for t in targets]
    if "sensitivity" in strategies:
        if score is None:
            raise UsageError("the sensitivity baseline scores each group alone: it needs the study's score")
        curves = sensitivity_curves(problem, score, steps or DEFAULT_SENSITIVITY_STEPS, progress)
        out += [sensitivity_allocation(problem, curves, t) for t in targets]
    return out
