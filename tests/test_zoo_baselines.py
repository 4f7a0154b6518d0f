"""The global ranking and the sensitivity baseline on every built-in architecture and every torchvision builder
Torch-Pruning traces, but the largest members of each family (test_zoo.HEAVY: their smaller members here go through
the same code; the zoo tier prunes them in test_zoo.py)."""

from __future__ import annotations

import pytest
import torch

from fnnp_opt.baselines import GlobalRanking, sensitivity_allocation, sensitivity_curves
from fnnp_opt.models import create_model, list_models
from fnnp_opt.problem import Problem

from test_zoo import HEAVY, MIN_SIZE, PRUNABLE, UNTRACEABLE


def _agreement(model: torch.nn.Module, x: torch.Tensor):
    """A cheap score for the sensitivity curves: how close a pruned copy's logits stay to the base's on ``x``."""
    with torch.no_grad():
        reference = model.eval()(x)

    def score(pruned: torch.nn.Module) -> float:
        with torch.no_grad():
            return -float((pruned.eval()(x) - reference).pow(2).mean())

    return score


@pytest.mark.parametrize(
    "name", [*(m.name for m in list_models()), *(n for n in PRUNABLE if n not in UNTRACEABLE | HEAVY)]
)
def test_both_baselines_allocate_inside_the_window_on_every_architecture(name):
    torch.manual_seed(0)
    size = MIN_SIZE.get(name, 32)
    model = create_model(name, 3, 10).eval()
    problem = Problem(model, torch.zeros(1, 3, size, size), budget="0.5", max_rate=0.8, tolerance=0.05)
    target = problem.budget.target
    glob = GlobalRanking(problem).allocation(target)
    curves = sensitivity_curves(problem, _agreement(model, torch.randn(2, 3, size, size)), steps=1)
    sens = sensitivity_allocation(problem, curves, target)
    for a in (glob, sens):
        assert set(a.ratios) == {d.root for d in problem.space.dims}
        assert all(0.0 <= r <= 0.8 + 1e-9 for r in a.ratios.values())
        # inside the window, or (whole channel counts) the study leaves it out and says so
        inside = problem.budget.contains(a.cost)
        assert inside or abs(a.cost - target) / problem.budget.base < 0.15, (a.strategy, a.cost / problem.budget.base)
    assert curves.evaluations == len(problem.space) + 1
