from __future__ import annotations

import pytest
import torch

from fnnp_opt.data import load_splits
from fnnp_opt.evaluate import NonFiniteError, abn_accuracy, accuracy, accuracy_in_steps, calibrate_bn, norm_layers


@pytest.fixture(scope="module")
def splits(small_fmnist):
    return load_splits("fashion-mnist", small_fmnist, search_size=500, abn_batches=8, abn_batch_size=32)


def test_abn_changes_only_bn_running_stats(base_model, splits):
    before = {k: v.clone() for k, v in base_model.state_dict().items()}
    momenta = [m.momentum for m in norm_layers(base_model)]
    base_model.eval()
    calibrate_bn(base_model, splits.calibration)
    after = base_model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed, "ABN must recompute the statistics"
    assert all(k.endswith(("running_mean", "running_var", "num_batches_tracked")) for k in changed)
    assert any(k.endswith("running_mean") for k in changed)
    assert [m.momentum for m in norm_layers(base_model)] == momenta
    assert not base_model.training  # mode given back


def test_abn_is_the_cumulative_average_of_the_batches(base_model, splits):
    calibrate_bn(base_model, splits.calibration)
    bn = base_model.bn1
    means = torch.stack([base_model.conv1(x).detach().mean((0, 2, 3)) for x, _ in splits.calibration])
    assert torch.allclose(bn.running_mean, means.mean(0), atol=1e-5)


def test_abn_recovers_a_pruned_net(base_model, splits):
    from fnnp_opt.prune import Pruner

    pruner = Pruner(base_model, torch.zeros(1, 1, 28, 28), "fc")
    pruned = pruner.prune({g.root: 0.1 for g in pruner.groups})
    search = splits.search_batches(250)
    pbn = accuracy(pruned, search)
    abn = abn_accuracy(pruned, splits.calibration, search)
    assert abn > pbn + 0.1  # stale statistics mislead; recomputed ones do not


def test_accuracy_matches_a_manual_count(base_model, splits):
    batches = splits.search_batches(100)
    with torch.no_grad():
        hits = sum(int((base_model(x).argmax(1) == y).sum()) for x, y in batches)
    base_model.train()
    assert accuracy(base_model, batches) == hits / 500
    assert base_model.training


def test_non_finite_statistics_are_reported(base_model, splits):
    with torch.no_grad():
        base_model.conv1.weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteError):
        calibrate_bn(base_model, splits.calibration)


def _stochastic_net(track: bool = True) -> torch.nn.Module:
    """conv -> stochastic depth (a whole sample's branch dropped in training) -> BN -> dropout -> fc."""
    from torchvision.ops import StochasticDepth

    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1),
        StochasticDepth(0.5, "row"),
        torch.nn.BatchNorm2d(8, track_running_stats=track),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Dropout(0.5),
        torch.nn.Linear(8, 10),
    )


def test_abn_calibrates_the_network_that_is_scored(splits):
    """Stochastic depth before BN: the statistics are those of the eval-mode network, exactly."""
    model = _stochastic_net().eval()
    torch.manual_seed(1)
    calibrate_bn(model, splits.calibration)
    bn = model[2]
    with torch.no_grad():
        feats = [model[0](x) for x, _ in splits.calibration]
    mean = torch.stack([f.mean((0, 2, 3)) for f in feats]).mean(0)
    var = torch.stack([f.var((0, 2, 3)) for f in feats]).mean(0)  # unbiased per batch, as BN keeps it
    assert torch.allclose(bn.running_mean, mean, atol=1e-5)
    assert torch.allclose(bn.running_var, var, rtol=1e-4)
    first = bn.running_var.clone()
    torch.manual_seed(2)  # another draw of the train-only randomness changes nothing
    calibrate_bn(model, splits.calibration)
    assert torch.equal(bn.running_var, first)
    assert not any(m.training for m in model.modules())  # the mode is given back


def test_abn_leaves_layers_without_running_stats_alone(splits):
    """BatchNorm(track_running_stats=False) always uses batch statistics: nothing to recompute, no crash."""
    model = _stochastic_net(track=False)
    assert norm_layers(model) == []
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calibrate_bn(model, splits.calibration)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert 0.0 <= abn_accuracy(model, splits.calibration, splits.search_batches(250)) <= 1.0


def test_a_model_comes_out_of_scoring_as_trainable_as_it_went_in(base_model, splits):
    # scoring runs under inference mode; a layout change there would turn the parameters into inference tensors,
    # which can neither be trained nor traced again
    search = splits.search_batches(256)[:1]
    accuracy(base_model, search, "cpu")
    accuracy_in_steps(base_model, search, "cpu", 1, lambda step, acc: False)
    assert not any(p.is_inference() for p in base_model.parameters())
    loss = base_model(search[0][0][:4]).sum()
    loss.backward()
    assert base_model.conv1.weight.grad is not None
