from __future__ import annotations

import optuna
import pytest
import torch

from fnnp_opt.errors import UsageError
from fnnp_opt.prune import Pruner
from fnnp_opt.space import SearchSpace


@pytest.fixture()
def space(base_model):
    return SearchSpace.from_groups(Pruner(base_model, torch.zeros(1, 1, 28, 28), "fc").groups, 0.6)


def test_parameter_names_are_readable_and_stable(space):
    params = [d.param for d in space.dims]
    assert params[:2] == ["ratio.conv1+layer1.residual", "ratio.layer1.0.conv1"]
    assert "ratio.layer2.residual" in params and "ratio.layer3.2.conv1" in params
    assert len(set(params)) == len(params) == 12


def test_suggest_within_bounds_and_roundtrip(space):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(5):
        trial = study.ask()
        ratios = space.suggest(trial)
        assert all(0.0 <= r <= 0.6 for r in ratios.values())
        assert space.from_params(trial.params) == ratios


@pytest.mark.parametrize("bad", [0.0, 1.0, 1.2, -0.1])
def test_max_rate_outside_open_interval(base_model, bad):
    with pytest.raises(UsageError, match=r"--max-rate must be in \(0, 1\)"):
        SearchSpace.from_groups([], bad)


def test_fingerprint_tracks_the_bound(base_model):
    groups = Pruner(base_model, torch.zeros(1, 1, 28, 28), "fc").groups
    assert SearchSpace.from_groups(groups, 0.6).fingerprint() != SearchSpace.from_groups(groups, 0.7).fingerprint()
