"""The baseline allocations (fnnp_opt.baselines): Torch-Pruning's global ranking and per-layer sensitivity, as ratio
vectors of the search space, and their place as the first trials of every study."""

from __future__ import annotations

import copy
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch
import torch_pruning as tp

import fnnp_opt
from fnnp_opt import optuna_private
from fnnp_opt.baselines import Allocation, GlobalRanking, Sensitivity, sensitivity_allocation, sensitivity_curves
from fnnp_opt.constraints import violation
from fnnp_opt.data import DATASETS
from fnnp_opt.errors import ModelError, UsageError
from fnnp_opt.evaluate import abn_accuracy
from fnnp_opt.flops import make_budget
from fnnp_opt.models import create_model
from fnnp_opt.optimize import warn_if_baselines_fill
from fnnp_opt.problem import Problem

from conftest import SMALL_RUN, without
import usermodels

REPO = Path(__file__).resolve().parents[1]


def _resnet20(budget: str = "0.5", max_rate: float = 0.95) -> Problem:
    torch.manual_seed(0)
    return Problem(create_model("resnet20", 1, 10), torch.zeros(1, 1, 28, 28), budget=budget, max_rate=max_rate)


@pytest.mark.parametrize("ratio", [0.2, 0.4])
def test_global_ranking_keeps_the_channels_torch_prunings_global_pruning_keeps(ratio):
    problem = _resnet20()
    ranking = GlobalRanking(problem)
    reference = copy.deepcopy(problem.model)
    pruner = tp.pruner.BasePruner(
        reference,
        problem.example,
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        global_pruning=True,
        pruning_ratio=ratio,
        ignored_layers=[reference.fc],
    )
    pruner.step()
    k = ranking.positions - int(ranking.positions * (1 - ratio))  # Torch-Pruning's count of removed channels
    removed = ranking.removed(k)
    kept = {g.root: g.channels - removed[g.root] for g in problem.pruner.groups}
    assert kept == {g.root: reference.get_submodule(g.root).out_channels for g in problem.pruner.groups}
    assert len(set(kept.values())) > 3  # an allocation, not one ratio everywhere


def test_global_allocation_lands_in_the_window_and_moves_only_when_it_must():
    problem = _resnet20("0.3", max_rate=0.8)
    a = GlobalRanking(problem).allocation(problem.budget.target)
    assert problem.budget.contains(a.cost) and a.fit_step == 0.0
    assert max(a.ratios.values()) <= 0.8 and min(a.ratios.values()) >= 0.0
    assert a.cost <= problem.budget.target  # the fewest channels cut that meet the target
    tight = _resnet20("0.3", max_rate=0.75)  # R caps the most-cut groups: the ranking alone overshoots the window
    b = GlobalRanking(tight).allocation(tight.budget.target)
    assert tight.budget.contains(b.cost) and max(b.ratios.values()) <= 0.75


def test_taylor_and_lamp_rank_differently_and_taylor_needs_labelled_batches(small_fmnist_batches):
    problem = _resnet20("0.5", max_rate=0.8)
    ratios = {
        name: GlobalRanking(problem, name, small_fmnist_batches).allocation(problem.budget.target).ratios
        for name in ("magnitude", "lamp", "taylor")
    }
    assert ratios["magnitude"] != ratios["lamp"] and ratios["magnitude"] != ratios["taylor"]
    assert all(p.grad is None for p in problem.model.parameters())  # the gradients are not left on the base
    with pytest.raises(UsageError, match="taylor.*needs labelled"):
        GlobalRanking(problem, "taylor")
    with pytest.raises(UsageError, match="must be one of magnitude, lamp, taylor, got 'l1'"):
        GlobalRanking(problem, "l1")


def test_a_group_torch_pruning_cannot_score_is_one_line_naming_it(monkeypatch):
    problem = _resnet20()
    monkeypatch.setattr(tp.importance.GroupMagnitudeImportance, "__call__", lambda self, group: None)
    with pytest.raises(ModelError) as err:
        GlobalRanking(problem)
    message = str(err.value)
    assert "\n" not in message and "group 'conv1'" in message and "cannot be ranked globally" in message
    assert "drop 'global' from --baselines" in message


@pytest.fixture(scope="module")
def small_fmnist_batches(fmnist_arrays):
    info = DATASETS["fashion-mnist"]
    x = (
        torch.from_numpy(fmnist_arrays["train_x"][:512].copy()).float().div(255).unsqueeze(1) - info.mean[0]
    ) / info.std[0]
    y = torch.from_numpy(fmnist_arrays["train_y"][:512].copy()).long()
    return [(x[i : i + 64], y[i : i + 64]) for i in range(0, 512, 64)]


@pytest.mark.integration
def test_sensitivity_curves_are_monotone_and_the_allocation_meets_the_budget(base_model, small_fmnist_batches):
    problem = Problem(base_model, torch.zeros(1, 1, 28, 28), budget="0.4", max_rate=0.8)
    calib, search = small_fmnist_batches[:4], small_fmnist_batches[4:]
    curves = sensitivity_curves(problem, lambda m: abn_accuracy(m, calib, search, "cpu"), steps=3)
    assert curves.evaluations == 3 * len(problem.space) + 1
    assert curves.ratios == pytest.approx([0.0, 0.8 / 3, 1.6 / 3, 0.8])
    for root, drops in curves.drops.items():
        assert drops[0] == 0.0 and all(b >= a for a, b in zip(drops, drops[1:])), root
    assert any(d[-1] > 0.05 for d in curves.drops.values())  # some group matters
    assert len({d[-1] for d in curves.drops.values()}) > 2  # and they differ
    a = sensitivity_allocation(problem, curves, problem.budget.target)
    assert problem.budget.contains(a.cost) and a.strategy == "sensitivity"
    # the most sensitive group at R keeps more channels than the least sensitive
    order = sorted(curves.drops, key=lambda r: curves.drops[r][-1])
    assert a.ratios[order[0]] >= a.ratios[order[-1]]
    for bad in (0, 21, 2.5, True):
        with pytest.raises(UsageError, match=f"--sensitivity-steps must be a whole number from 1 to 20 .*got {bad!r}"):
            sensitivity_curves(problem, lambda m: 0.0, steps=bad)


def test_a_flat_sensitivity_curve_does_not_make_the_allocation_jump_past_the_target(base_model):
    problem = Problem(base_model, torch.zeros(1, 1, 28, 28), budget="0.5", max_rate=0.8, tolerance=0.1)
    roots = [d.root for d in problem.space.dims]
    # half the groups lose nothing up to 0.4 then 0.5; the others 0.3 from 0.4 on, flat to R: they all jump at 0.3
    drops = {r: ([0.0, 0.0, 0.5] if i % 2 else [0.0, 0.3, 0.3]) for i, r in enumerate(roots)}
    curves = Sensitivity([0.0, 0.4, 0.8], drops, base=0.9, evaluations=0, seconds=0.0)
    cost_of = lambda ratios: problem.cost(problem.pruner.counts(ratios))  # noqa: E731
    before, after = cost_of(curves.at(0.3 - 1e-6)), cost_of(curves.at(0.3))
    target = (before + after) / 2  # inside the jump: the budget's target
    problem.budget = make_budget(target / problem.budget.base, 0.05, problem.budget.base)
    a = sensitivity_allocation(problem, curves, problem.budget.target)
    assert after < target - 0.02 * problem.budget.base  # the threshold alone would land over 2% below it
    # not over the target, and nearer it than the threshold alone by more than half (kept channels are whole)
    assert after + (target - after) / 2 < a.cost <= target
    below, above = curves.at(0.3), curves.at(0.3 - 1e-6)
    assert all(min(above[r], below[r]) - 1e-9 <= a.ratios[r] <= max(above[r], below[r]) + 1e-9 for r in roots)


def test_a_baseline_equal_to_uniform_l1_is_still_queued_and_not_computed_again(base_model, monkeypatch):
    import fnnp_opt.problem as problem_module

    problem = Problem(base_model, torch.zeros(1, 1, 28, 28), budget="0.5", max_rate=0.6)
    study = optuna.create_study(direction="maximize")
    problem.enqueue_uniform(study)
    (uniform,) = study.get_trials(deepcopy=False)
    fixed = optuna_private.fixed_params(uniform)  # a queued trial's parameters
    plan = {d.root: fixed[d.param] for d in problem.space.dims}
    made = []

    def same_as_uniform(p, strategies, *args, **kwargs):  # an allocation that lands on uniform L1's plan
        made.append(strategies)
        return [Allocation("sensitivity", plan, p.cost(p.pruner.counts(plan)), evaluations=13)]

    monkeypatch.setattr(problem_module, "allocations", same_as_uniform)
    problem.enqueue_baselines(study, "sensitivity", score=lambda m: 0.0)
    held = [t.user_attrs.get("strategy") for t in study.get_trials(deepcopy=False)]
    assert held == ["uniform", "sensitivity"]  # the study holds it, though Optuna would skip an equal plan
    problem.enqueue_baselines(study, "sensitivity", score=lambda m: 0.0)  # a resume
    assert made == [["sensitivity"]] and len(study.trials) == 2


def test_a_global_cut_that_jumps_over_the_window_keeps_the_nearest_plan():
    torch.manual_seed(0)
    problem = Problem(usermodels.group_norm(), torch.zeros(1, 1, 28, 28), budget="0.7", tolerance=0.05, max_rate=0.8)
    ranking = GlobalRanking(problem)
    costs = [problem.cost(problem.pruner.counts(ranking.ratios(k))) for k in range(ranking.positions + 1)]
    assert not any(problem.budget.contains(c) for c in costs)  # GroupNorm's groups move in steps past the window
    a = ranking.allocation(problem.budget.target)
    assert 0 < violation(problem.budget, a.cost) <= min(violation(problem.budget, c) for c in costs)


def test_the_python_api_queues_every_baseline_once_on_a_user_model(small_fmnist_batches, tmp_path, caplog):
    torch.manual_seed(0)
    model = usermodels.group_norm()
    calib, search = small_fmnist_batches[:2], small_fmnist_batches[2:4]
    kwargs = dict(
        calibration=calib, evaluation=search, budget="0.45", n_trials=5, calibration_batches=2, tolerance=0.06
    )
    url = f"sqlite:///{tmp_path}/s.db"
    result = fnnp_opt.search(
        model, torch.zeros(1, 1, 28, 28), storage=url, baselines="uniform,global,sensitivity", **kwargs
    )
    assert list(result.baselines) == ["uniform", "global", "sensitivity"]
    assert [result.baselines[s].number for s in ("uniform", "global", "sensitivity")] == [0, 1, 2]
    cost = result.baselines["sensitivity"].user_attrs["baseline_cost"]
    assert cost["evaluations"] == 4 * len(result.problem.space) + 1 and cost["seconds"] > 0
    with caplog.at_level(logging.WARNING, logger="fnnp_opt"):
        again = fnnp_opt.search(
            model,
            torch.zeros(1, 1, 28, 28),
            storage=url,
            baselines="uniform,global,sensitivity",
            global_importance="lamp",
            sensitivity_steps=3,
            **{**kwargs, "n_trials": 7},
        )
    strategies = [t.user_attrs.get("strategy") for t in again.study.trials]
    assert sorted(s for s in strategies if s) == ["global", "sensitivity", "uniform"]
    said = [r.getMessage() for r in caplog.records if "the resumed study keeps it" in r.getMessage()]
    assert len(said) == 2  # the stored baselines are kept, and the run says they differ from what was asked
    assert "global_importance='magnitude', not global_importance='lamp'" in said[0]
    assert "sensitivity_steps=4, not sensitivity_steps=3" in said[1]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fnnp_opt"):  # no setting asked: the study's own, without a word
        fnnp_opt.search(model, torch.zeros(1, 1, 28, 28), storage=url, baselines="uniform,global,sensitivity", **kwargs)
    assert not [r for r in caplog.records if "the resumed study keeps it" in r.getMessage()]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fnnp_opt"):
        plain = fnnp_opt.search(model, torch.zeros(1, 1, 28, 28), baselines="none", global_importance="lamp", **kwargs)
    assert list(plain.baselines) == ["uniform"]
    said = [r.getMessage() for r in caplog.records]
    assert "global_importance='lamp' has no effect: the global baseline is not queued (add it to baselines=)" in said
    default = fnnp_opt.search(model, torch.zeros(1, 1, 28, 28), **kwargs)
    assert list(default.baselines) == ["uniform", "global"]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fnnp_opt"):  # GroupNorm's eights: no uniform plan in 0.5 +- 0.05
        bare = fnnp_opt.search(model, torch.zeros(1, 1, 28, 28), **kwargs | {"budget": "0.5", "tolerance": 0.05})
    assert bare.baseline is None and "uniform" not in bare.baselines
    said = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("no uniform L1 strategy lands in the window") and "tolerance=" in m for m in said), said
    with pytest.raises(UsageError, match=r"baselines= takes uniform, global, sensitivity .* got 'lamp'"):
        fnnp_opt.search(model, torch.zeros(1, 1, 28, 28), baselines="uniform,lamp", **kwargs)
    with caplog.at_level(logging.WARNING, logger="fnnp_opt"):  # more baselines than n_trials: each is evaluated
        full = fnnp_opt.search(
            model, torch.zeros(1, 1, 28, 28), baselines="uniform,global,sensitivity", **kwargs | {"n_trials": 2}
        )
    assert list(full.baselines) == ["uniform", "global", "sensitivity"]
    assert len([t for t in full.study.trials if t.state.name == "COMPLETE"]) == 3
    said = [r.getMessage() for r in caplog.records]
    assert any("3 baseline trials" in m and "take all n_trials=2" in m for m in said), said


def _strategies(db: Path, *states: optuna.trial.TrialState) -> list[str]:
    """The baseline strategies of the study's trials (in ``states``; all but failed ones when none are given: a
    trial killed while running fails on resume, and its retry is queued)."""
    summaries = optuna.get_all_study_summaries(f"sqlite:///{db}")
    study = optuna.load_study(study_name=summaries[0].study_name, storage=f"sqlite:///{db}")
    trials = study.get_trials(deepcopy=False, states=states or None)
    return [t.user_attrs["strategy"] for t in trials if t.user_attrs.get("strategy") and t.state.name != "FAIL"]


@pytest.mark.system
def test_baselines_resume_after_kill_9_without_being_queued_again(small_fmnist, tmp_path):
    db = tmp_path / "s.db"
    args = [
        *without(SMALL_RUN, "--n-trials", "--epochs"),
        "--n-trials",
        "12",
        "--epochs",
        "0",
        "--baselines",
        "uniform,global,sensitivity",
        "--data-dir",
        str(small_fmnist),
        "--storage",
        f"sqlite:///{db}",
        "--output",
        str(tmp_path / "out"),
    ]
    cmd = [sys.executable, "-m", "fnnp_opt.cli", "run", *args]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:  # kill once the baselines are queued and the search has begun
            if db.exists():
                try:
                    if {"global", "sensitivity"} <= set(_strategies(db)):
                        break
                except Exception:  # noqa: BLE001  (the study is still being made)
                    pass
            time.sleep(0.2)
        else:
            pytest.fail("the baselines were never queued")
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert sorted(_strategies(db)) == ["global", "sensitivity", "uniform"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(_strategies(db)) == ["global", "sensitivity", "uniform"]  # resumed, not queued again
    assert sorted(_strategies(db, optuna.trial.TrialState.COMPLETE)) == ["global", "sensitivity", "uniform"]
    # (a baseline killed while running is retried under a new trial number; the line keeps the queue's order)
    line = r"baselines by ABN accuracy: uniform \(trial \d+\) [\d.]+, global \(trial \d+\) [\d.]+, sensitivity \(trial"
    assert re.search(line, " ".join(done.stdout.split())), done.stdout


@pytest.mark.integration
def test_queued_baselines_never_pass_r_and_bad_values_are_one_line(base_model, small_fmnist_batches):
    problem = Problem(base_model, torch.zeros(1, 1, 28, 28), budget="0.3", max_rate=0.6)
    study = optuna.create_study(direction="maximize")
    problem.enqueue_uniform(study)
    calib, search = small_fmnist_batches[:2], small_fmnist_batches[2:4]
    made = problem.enqueue_baselines(
        study, "global,sensitivity", score=lambda m: abn_accuracy(m, calib, search, "cpu"), steps=4
    )
    assert [a.strategy for a in made] == ["global", "sensitivity"]
    queued = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("strategy") in ("global", "sensitivity")]
    assert len(queued) == 2 and all(0.0 <= v <= 0.6 for t in queued for v in t.params.values())
    bad = [(torch.zeros(4, 1, 28, 28), torch.full((4,), 105))]
    with pytest.raises(UsageError, match=r"^--global-importance taylor takes gradients .* \(IndexError"):
        GlobalRanking(problem, "taylor", bad)
    with pytest.raises(UsageError, match="none means uniform L1 only"):
        problem.enqueue_baselines(study, "none,global")


def test_a_pareto_range_queues_each_baseline_per_target_and_says_when_they_fill_n_trials(base_model, caplog):
    problem = Problem(base_model, torch.zeros(1, 1, 28, 28), budget="0.3:0.7", max_rate=0.8)
    study = optuna.create_study(directions=["maximize", "minimize"])
    problem.enqueue_uniform(study)
    problem.enqueue_baselines(study, "global")
    held = [t.user_attrs.get("strategy") for t in study.get_trials(deepcopy=False)]
    assert held.count("global") == held.count("uniform") == len(problem.targets()) == 5
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fnnp_opt"):
        warn_if_baselines_fill(study, 11)
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
        warn_if_baselines_fill(study, 10)
    (said,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert "10 baseline trials (5 uniform, 5 global) take all --n-trials 10" in said and "--baselines uniform" in said
