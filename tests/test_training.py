from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import fnnp_opt.training as ft
from fnnp_opt.data import load_splits
from fnnp_opt.training import FitConfig, fit
from fnnp_opt.models import create_model


@pytest.fixture(scope="module")
def train_part(small_fmnist):
    s = load_splits("fashion-mnist", small_fmnist, search_size=2488, abn_batches=1, abn_batch_size=8)
    return s.train, s.augment  # 512 images


@pytest.fixture(scope="module")
def two_batches(train_part):
    """The first 128 images of :func:`train_part` (two batches of 64): enough for what a fit stores and resumes."""
    from fnnp_opt.data import TensorSet

    train, aug = train_part
    return TensorSet(train.x[:128], train.y[:128]), aug


def test_fit_lowers_the_loss(train_part):
    train, aug = train_part
    torch.manual_seed(0)
    model = create_model("resnet20", 1, 10)
    losses = fit(model, train, FitConfig(epochs=3, lr=0.05, batch_size=64), augment=aug)
    assert len(losses) == 3 and losses[-1] < losses[0]
    assert not model.training


def test_resume_after_an_interruption_is_exact(two_batches, tmp_path, monkeypatch):
    train, aug = two_batches
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


def test_checkpoint_of_another_run_is_ignored(two_batches, tmp_path):
    train, aug = two_batches
    ckpt = tmp_path / "ft.pt"
    fit(create_model("resnet20", 1, 10), train, FitConfig(epochs=1, batch_size=64), checkpoint=ckpt, tag="a")
    losses = fit(create_model("resnet20", 1, 10), train, FitConfig(epochs=1, batch_size=64), checkpoint=ckpt, tag="b")
    assert len(losses) == 1  # trained afresh instead of resuming a different run


@pytest.mark.parametrize("content", [b"garbage, not a checkpoint", "a list"])
def test_an_unreadable_checkpoint_is_ignored_with_a_warning_and_replaced(two_batches, tmp_path, caplog, content):
    train, aug = two_batches
    ckpt = tmp_path / "ft.pt"
    if content == "a list":
        torch.save([1, 2], ckpt)
    else:
        ckpt.write_bytes(content)
    cfg = FitConfig(epochs=1, batch_size=64)
    losses = fit(create_model("resnet20", 1, 10), train, cfg, augment=aug, checkpoint=ckpt, tag="a")
    assert len(losses) == 1  # trained from the first epoch
    assert any(f"ignoring {ckpt}" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)
    assert torch.load(ckpt, weights_only=True)["epoch"] == 1  # the next epoch's checkpoint replaced it


def test_a_checkpoint_the_system_cannot_read_is_refused_and_left_alone(tmp_path, monkeypatch):
    import errno

    from fnnp_opt.errors import CheckpointError

    ckpt = tmp_path / "ft.pt"
    ckpt.write_bytes(b"epochs of work")

    def io_error(*args, **kwargs):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(torch, "load", io_error)
    with pytest.raises(CheckpointError, match=r"cannot be read \(Input/output error\); make it readable"):
        ft._read_checkpoint(ckpt, torch.device("cpu"))
    assert ckpt.read_bytes() == b"epochs of work"


def _pair(seed: int = 0):
    torch.manual_seed(seed)
    init = create_model("resnet20", 1, 10).state_dict()
    a, b = create_model("resnet20", 1, 10), create_model("resnet20", 1, 10)
    a.load_state_dict(init)
    b.load_state_dict(init)
    return a, b


def test_distillation_with_weight_zero_equals_plain_fine_tuning(two_batches, base_model):
    train, aug = two_batches
    cfg = FitConfig(epochs=1, lr=0.05, batch_size=64)
    plain, distilled = _pair()
    teacher_before = {k: v.clone() for k, v in base_model.state_dict().items()}
    fit(plain, train, cfg, augment=aug)
    fit(distilled, train, cfg, augment=aug, teacher=base_model, distill=ft.Distill(temperature=4.0, weight=0.0))
    for (k, v), w in zip(plain.state_dict().items(), distilled.state_dict().values()):
        assert torch.equal(v, w), k  # bit for bit: the teacher's forward passes change nothing
    assert all(torch.equal(v, base_model.state_dict()[k]) for k, v in teacher_before.items())  # teacher untouched


def test_distillation_pulls_the_student_toward_the_teacher(train_part, base_model):
    """A pruned copy of the teacher, fine-tuned on random labels: cross-entropy learns the noise and drifts
    away from the teacher; the KL term alone ignores the labels and follows the teacher (about 2x closer)."""
    from fnnp_opt.data import TensorSet
    from fnnp_opt.evaluate import calibrate_bn
    from fnnp_opt.prune import Pruner

    train, aug = train_part
    noise = TensorSet(train.x, torch.randint(0, 10, (len(train.y),), generator=torch.Generator().manual_seed(0)))
    pruner = Pruner(base_model, torch.zeros(1, 1, 28, 28), "fc")
    start = pruner.prune({g.root: 0.5 for g in pruner.groups})
    calibrate_bn(start, [(train.x[i : i + 64], train.y[i : i + 64]) for i in range(0, 512, 64)])
    plain, distilled = copy.deepcopy(start), copy.deepcopy(start)
    cfg = FitConfig(epochs=2, lr=0.005, batch_size=64)
    fit(plain, noise, cfg, augment=aug)
    fit(distilled, noise, cfg, augment=aug, teacher=base_model, distill=ft.Distill(temperature=1.0, weight=1.0))
    x = train.x[:256]
    with torch.no_grad():
        target = torch.softmax(base_model.eval()(x), 1)

        def kl(m):
            return torch.nn.functional.kl_div(torch.log_softmax(m.eval()(x), 1), target, reduction="batchmean")

        assert kl(distilled) < 0.7 * kl(plain), (kl(distilled), kl(plain))


def test_distill_loss_is_cross_entropy_plus_scaled_kl():
    torch.manual_seed(0)
    s, t, y = torch.randn(8, 10), torch.randn(8, 10), torch.randint(0, 10, (8,))
    d = ft.Distill(temperature=2.0, weight=0.25)
    ce = torch.nn.functional.cross_entropy(s, y)
    p_t = torch.softmax(t / 2, 1)
    kl = (p_t * (p_t.log() - torch.log_softmax(s / 2, 1))).sum(1).mean()
    assert torch.allclose(ft.distill_loss(s, y, t, d), 0.75 * ce + 0.25 * 4 * kl, atol=1e-6)
    assert torch.equal(ft.distill_loss(s, y, None, None), ce)


PRUNED_RESNET20 = """
import sys
import torch
from fnnp_opt.data import TensorSet
from fnnp_opt.training import FitConfig, fit
from fnnp_opt.models import default_checkpoint, load_model
from fnnp_opt.prune import Pruner

model, _ = load_model("resnet20", 1, 10, default_checkpoint("resnet20", "fashion-mnist"))
roots = ["conv1", "layer1.0.conv1", "layer1.1.conv1", "layer1.2.conv1", "layer2.0.conv1", "layer2.0.shortcut.0",
         "layer2.1.conv1", "layer2.2.conv1", "layer3.0.conv1", "layer3.0.shortcut.0", "layer3.1.conv1",
         "layer3.2.conv1"]
removed = dict(zip(roots, map(int, sys.argv[1].split(","))))
net = Pruner(model, torch.zeros(1, 1, 28, 28), "fc").prune_counts(removed)
g = torch.Generator().manual_seed(0)
data = TensorSet(torch.randn(128 * 30, 1, 28, 28, generator=g), torch.randint(0, 10, (128 * 30,), generator=g))
fit(net, data, FitConfig(1, 0.02, 128, seed=0))
print("trained")
"""
# channels removed per group of candidates of a 15% ResNet-20 search (R 0.8): 3-channel layers; a 6 -> 11
# shortcut at stride 2
THIN_NET = "13,5,4,0,18,17,23,18,7,49,48,44"
NARROW_SHORTCUT = "10,9,11,8,7,21,20,25,44,46,15,41"


STRIDED_1X1 = """
import torch
from torch import nn
from fnnp_opt.data import TensorSet
from fnnp_opt.training import FitConfig, fit

torch.manual_seed(0)
net = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 11, 1, stride=2), nn.Flatten(),
                    nn.Linear(11 * 14 * 14, 10))
g = torch.Generator().manual_seed(0)
data = TensorSet(torch.randn(64 * 30, 1, 28, 28, generator=g), torch.randint(0, 10, (64 * 30,), generator=g))
fit(net, data, FitConfig(1, 0.02, 64, seed=0))
print("trained")
"""


@pytest.mark.system
@pytest.mark.parametrize(
    "argv",
    [["-c", PRUNED_RESNET20, THIN_NET], ["-c", PRUNED_RESNET20, NARROW_SHORTCUT], ["-c", STRIDED_1X1]],
    ids=["resnet20-3-channels", "resnet20-6-to-11-shortcut", "strided-1x1-6-to-11"],
)
def test_thin_networks_train_without_crashing(argv):
    """Thin pruned networks on which oneDNN's CPU backward corrupted the heap or divided by zero (glibc abort,
    SIGFPE) within 30 steps, in either memory format; they now train through torch's own kernels."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_CHECK_": "3"}
    proc = subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0 and "trained" in proc.stdout, proc.stderr[-2000:]


def test_only_thin_networks_leave_onednn():
    cpu = torch.device("cpu")

    def net(cin, k, stride, cout=16):
        return nn.Sequential(nn.Conv2d(1, cin, 3), nn.Conv2d(cin, cout, k, stride=stride))

    assert ft.onednn_unsafe(net(6, 1, 2), cpu)
    assert ft.onednn_unsafe(net(7, 1, (2, 2)), cpu)
    assert ft.onednn_unsafe(net(8, 3, 1, cout=3), cpu)  # a 3-channel layer
    assert not ft.onednn_unsafe(net(8, 1, 2), cpu)  # 8 input channels
    assert not ft.onednn_unsafe(net(6, 1, 1), cpu)  # stride 1
    assert not ft.onednn_unsafe(net(6, 3, 2), cpu)  # 3x3
    assert not ft.onednn_unsafe(net(6, 1, 2), torch.device("cuda"))
