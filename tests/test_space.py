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


def test_resnet50_has_the_papers_structure_37_ratios():
    """Internal convs searchable one by one, each stage's residual channels shared, the stem on its own."""
    from fnnp_opt.models import create_model, find_classifier

    model = create_model("resnet50", 3, 1000)
    x = torch.zeros(1, 3, 224, 224)
    space = SearchSpace.from_groups(Pruner(model, x, find_classifier(model, x, 1000)).groups, 0.7)
    names = [d.name for d in space.dims]
    assert len(space) == 37  # EagleEye's ResNet-50 strategy has 37 rates
    internal = [n for n in names if n.endswith((".conv1", ".conv2")) and n.startswith("layer")]
    assert len(internal) == 32  # conv1 and conv2 of 16 bottlenecks; conv3 writes the residual channels
    shared = {d.name: d for d in space.dims if d.coupled}
    assert set(shared) == {f"layer{i}.residual" for i in range(1, 5)}
    assert [len(shared[f"layer{i}.residual"].producers) for i in range(1, 5)] == [4, 5, 7, 4]  # conv3s + projection
    assert "conv1" in names and "fc" not in " ".join(n for d in space.dims for n in d.producers)
