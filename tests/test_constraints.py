from __future__ import annotations

import pytest

from fnnp_opt.config import Constraint, Objective, Sampler, resolve
from fnnp_opt.constraints import (
    along,
    check_combination,
    default_constraint,
    fit_to_budget,
    penalized,
    uniform_ratio,
    uniform_strategy,
    violation,
)
from fnnp_opt.errors import UsageError
from fnnp_opt.flops import Budget

BUDGET = Budget(base=1000, target=500, low=480, high=520)


def _linear_macs(ratios):  # FLOPs fall linearly in every ratio: a stand-in with a known answer
    return round(1000 - 1000 * sum(ratios.values()) / len(ratios))


def test_violation_is_the_distance_from_the_window_over_the_base():
    assert violation(BUDGET, 500) == 0 and violation(BUDGET, 480) == 0 and violation(BUDGET, 520) == 0
    assert violation(BUDGET, 550) == pytest.approx(0.03)
    assert violation(BUDGET, 400) == pytest.approx(0.08)
    assert penalized(0.03) < penalized(0.01) < 0  # below every feasible accuracy, and graded


def test_along_runs_from_zero_through_the_draw_to_r():
    r = {"a": 0.2, "b": 0.4}
    assert along(r, 0.0, 0.6) == r
    assert along(r, -1.0, 0.6) == {"a": 0.0, "b": 0.0}
    assert along(r, 1.0, 0.6) == pytest.approx({"a": 0.6, "b": 0.6})
    assert along(r, 0.5, 0.6) == pytest.approx({"a": 0.4, "b": 0.5})


@pytest.mark.parametrize("draw", [{"a": 0.0, "b": 0.1}, {"a": 0.6, "b": 0.6}, {"a": 0.55, "b": 0.05}])
def test_fit_to_budget_lands_every_draw_in_the_window(draw):
    fitted, step = fit_to_budget(draw, _linear_macs, BUDGET, 0.6)
    assert BUDGET.contains(_linear_macs(fitted))
    assert all(0.0 <= r <= 0.6 for r in fitted.values())
    # the smallest move: it stops at the window's nearer edge
    macs = _linear_macs(fitted)
    assert (macs >= 515) if _linear_macs(draw) > 520 else (macs <= 485)


def test_fit_to_budget_leaves_a_draw_in_the_window_alone():
    draw = {"a": 0.5, "b": 0.5}
    assert fit_to_budget(draw, _linear_macs, BUDGET, 0.6) == (draw, 0.0)


def test_uniform_ratio_hits_the_target():
    r = uniform_ratio(lambda x: _linear_macs({"a": x}), 500, 0.6)
    assert r == pytest.approx(0.5, abs=1e-3)


def _stepped_macs(ratios):  # three groups of 4 channels: each keeps 4 - round(4r), worth 100 FLOPs a channel
    return sum(100 * (4 - round(4 * r)) for r in ratios.values())  # 1200 unpruned


@pytest.mark.parametrize(
    "target, window, expect",
    [
        (900, (880, 920), {900}),  # one ratio lands: every group at it
        (700, (680, 720), {700}),  # between 800 and 500 one ratio jumps; groups one at a time land on 700
        (650, (640, 660), None),  # no plan within one channel step of one ratio lands: none, said plainly
    ],
)
def test_the_uniform_strategy_lands_in_the_window_or_is_none(target, window, expect):
    plan, (above, below) = uniform_strategy(_stepped_macs, ["a", "b", "c"], target, window, 0.9)
    if expect is None:
        assert plan is None and above > window[1] and below < window[0]  # where the uniform costs jump over it
        return
    assert {_stepped_macs(plan)} == expect and all(0 <= r <= 0.9 for r in plan.values())
    ratios = sorted(plan.values())
    kept = sorted(4 - round(4 * r) for r in ratios)
    assert kept[-1] - kept[0] <= 1  # every group within one channel step of the others


def test_defaults_suit_each_sampler():
    assert default_constraint(Sampler.random) is Constraint.reject
    assert default_constraint(Sampler.cmaes) is Constraint.penalize
    assert default_constraint(Sampler.gp) is Constraint.constrain
    assert default_constraint(Sampler.nsga2) is Constraint.constrain
    for s in Sampler:  # every default is a supported combination
        check_combination(s, default_constraint(s), Objective.accuracy, False)


@pytest.mark.parametrize(
    "sampler, mode, objective, fit, message",
    [
        (Sampler.random, Constraint.constrain, Objective.accuracy, False, "ignores constraints"),
        (Sampler.qmc, Constraint.penalize, Objective.accuracy, False, "ignores values"),
        (Sampler.cmaes, Constraint.constrain, Objective.accuracy, False, "CMA-ES ignores constraints"),
        (Sampler.cmaes, Constraint.reject, Objective.accuracy, False, "generations never fill.*--fit-budget"),
        (Sampler.cmaes, Constraint.penalize, Objective.pareto, False, "multi-objective sampler"),
        (Sampler.nsga2, Constraint.penalize, Objective.pareto, False, "two objectives"),
        (Sampler.nsga2, Constraint.constrain, Objective.pareto, True, "--fit-budget projects onto one budget"),
    ],
)
def test_unsupported_combinations_fail_clearly(sampler, mode, objective, fit, message):
    with pytest.raises(UsageError, match=message):
        check_combination(sampler, mode, objective, fit)


def test_cmaes_may_reject_when_every_draw_is_fitted():
    check_combination(Sampler.cmaes, Constraint.reject, Objective.accuracy, True)


def test_config_resolves_modes_and_ranges():
    assert resolve(sampler="cmaes").resolved_constraint() is Constraint.penalize
    assert resolve(sampler="tpe", constraint="constrain").resolved_constraint() is Constraint.constrain
    assert resolve(objective="pareto", sampler="nsga2").flops == "0.2:0.8"
    with pytest.raises(UsageError, match="pareto searches a FLOPs range"):
        resolve(objective="pareto", flops="0.5")
    with pytest.raises(UsageError, match="is a range"):
        resolve(flops="0.2:0.5")
    with pytest.raises(UsageError, match="unknown constraint"):
        resolve(constraint="soft")
