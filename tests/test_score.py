from __future__ import annotations

import copy

import pytest
import torch

from fnnp_opt.data import load_splits
from fnnp_opt.evaluate import accuracy, calibrate_bn
from fnnp_opt.score import Scorer, ShortFinetune, abn_ft_key, rescore


@pytest.fixture(scope="module")
def splits(small_fmnist):
    return load_splits("fashion-mnist", small_fmnist, search_size=500, abn_batches=4, abn_batch_size=32)


def _scorer(splits, steps=6, seed=0):
    short = ShortFinetune(steps, lr=0.02, batch_size=32, weight_decay=5e-4, seed=seed)
    return Scorer.build(short, splits.train, splits.search_batches(250), splits.augment)


def test_the_short_fine_tune_trains_a_copy_only(splits, base_model):
    from fnnp_opt.prune import Pruner

    example = torch.zeros(1, 1, 28, 28)
    pruned = Pruner(base_model, example, "fc").prune({g.root: 0.5 for g in Pruner(base_model, example, "fc").groups})
    calibrate_bn(pruned, splits.calibration)
    before = copy.deepcopy(pruned.state_dict())
    abn = accuracy(pruned, splits.search_batches(250))
    score = _scorer(splits)(pruned)
    after = pruned.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BN statistics alike
    assert accuracy(pruned, splits.search_batches(250)) == abn
    assert score != abn and 0.0 <= score <= 1.0


def test_every_candidate_sees_the_same_images_and_the_score_is_reproducible(splits, base_model):
    a, b = _scorer(splits), _scorer(splits)
    assert torch.equal(a.images.x, b.images.x) and len(a.images) == 6 * 32
    assert not torch.equal(a.images.x, _scorer(splits, seed=1).images.x)
    m1, m2 = copy.deepcopy(base_model), copy.deepcopy(base_model)
    assert rescore(m1, splits.calibration, a) == rescore(m2, splits.calibration, b)


def test_the_short_fine_tune_raises_a_broken_candidate(splits, base_model):
    """After ABN a heavily pruned network sits near chance; a few steps recover part of its accuracy."""
    from fnnp_opt.prune import Pruner

    example = torch.zeros(1, 1, 28, 28)
    pruner = Pruner(base_model, example, "fc")
    pruned = pruner.prune({g.root: 0.6 for g in pruner.groups})
    calibrate_bn(pruned, splits.calibration)
    abn = accuracy(pruned, splits.search_batches(250))
    assert _scorer(splits, steps=30)(pruned) > abn + 0.1  # measured: 0.15 -> 0.41


def test_the_attribute_name_carries_the_steps():
    assert abn_ft_key(100) == "abn_ft100"


def test_a_scores_short_fine_tune_logs_no_epoch_line_and_a_fine_tune_does(splits, base_model, caplog):
    """Off a terminal each fine-tune epoch is an INFO line; a score's 100-step fine-tune per candidate is not one."""
    import logging

    from fnnp_opt.training import FitConfig, fit

    with caplog.at_level(logging.INFO, logger="fnnp_opt"):
        _scorer(splits, steps=2)(copy.deepcopy(base_model))
        assert not [r for r in caplog.records if r.getMessage().startswith("epoch ")]
        fit(copy.deepcopy(base_model), splits.train.subset(64, 0), FitConfig(epochs=1, batch_size=32))
    epochs = [r for r in caplog.records if r.getMessage().startswith("epoch ")]
    assert [(r.levelno, r.getMessage().split(":")[0]) for r in epochs] == [(logging.INFO, "epoch 1/1")]
