from __future__ import annotations

import pytest
import torch

import fnnp_opt.finetune as ft
from fnnp_opt.data import load_splits
from fnnp_opt.finetune import FitConfig, fit
from fnnp_opt.models import create_model


@pytest.fixture(scope="module")
def train_part(small_fmnist):
    s = load_splits("fashion-mnist", small_fmnist, search_size=2488, abn_batches=1, abn_batch_size=8)
    return s.train, s.augment  # 512 images


def test_fit_lowers_the_loss(train_part):
    train, aug = train_part
    torch.manual_seed(0)
    model = create_model("resnet20", 1, 10)
    losses = fit(model, train, FitConfig(epochs=3, lr=0.05, batch_size=64), augment=aug)
    assert len(losses) == 3 and losses[-1] < losses[0]
    assert not model.training


def test_resume_after_an_interruption_is_exact(train_part, tmp_path, monkeypatch):
    train, aug = train_part
    cfg = FitConfig(epochs=2, lr=0.05, batch_size=64)
    torch.manual_seed(0)
    init = create_model("resnet20", 1, 10).state_dict()

    straight = create_model("resnet20", 1, 10)
    straight.load_state_dict(init)
    fit(straight, train, cfg, augment=aug)

    real_save = ft._save_atomic

    def save_then_die(obj, path):
        real_save(obj, path)
        raise KeyboardInterrupt

    interrupted = create_model("resnet20", 1, 10)
    interrupted.load_state_dict(init)
    ckpt = tmp_path / "ft.pt"
    monkeypatch.setattr(ft, "_save_atomic", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        fit(interrupted, train, cfg, augment=aug, checkpoint=ckpt, tag="t")
    monkeypatch.setattr(ft, "_save_atomic", real_save)
    assert torch.load(ckpt, weights_only=True)["epoch"] == 1

    resumed = create_model("resnet20", 1, 10)  # other random weights: the checkpoint replaces them
    losses = fit(resumed, train, cfg, augment=aug, checkpoint=ckpt, tag="t")
    assert len(losses) == 2
    for k, v in straight.state_dict().items():
        assert torch.equal(resumed.state_dict()[k], v), k


def test_checkpoint_of_another_run_is_ignored(train_part, tmp_path):
    train, aug = train_part
    ckpt = tmp_path / "ft.pt"
    fit(create_model("resnet20", 1, 10), train, FitConfig(epochs=1, batch_size=64), checkpoint=ckpt, tag="a")
    losses = fit(create_model("resnet20", 1, 10), train, FitConfig(epochs=1, batch_size=64), checkpoint=ckpt, tag="b")
    assert len(losses) == 1  # trained afresh instead of resuming a different run
