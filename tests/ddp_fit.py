"""Short fine-tunes for tests/test_distributed.py, the same in one process and under torchrun.

``torchrun --standalone --nproc-per-node 2 tests/ddp_fit.py DATA_DIR OUT [RESUME]`` runs, in every process,
:func:`fit_tiny`, :func:`fit_pruned` (and, with RESUME, :func:`fit_pruned` from that epoch checkpoint) and
:func:`fit_unused`, and saves each process's result as ``OUT/<name>-rank<r>.pt`` (training losses and state dict).
Rank 0 also keeps a copy of every epoch checkpoint (``<checkpoint>.epoch<k>``) for the resume tests.
"""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path

import torch
from torch import nn

import fnnp_opt.training as ft
from fnnp_opt import distributed
from fnnp_opt.data import load_splits
from fnnp_opt.evaluate import calibrate_bn
from fnnp_opt.training import Distill, FitConfig, fit
from fnnp_opt.models import default_checkpoint, load_model
from fnnp_opt.prune import Pruner

TINY = FitConfig(epochs=2, lr=0.05, batch_size=45, seed=3)  # 45 images: 23 + 22 per process, uneven shares
# `fnnp-opt run`'s fine-tune, shorter: 2 steps of 128 images (64 per process) per epoch. At its lr of 0.02 the first
# steps of this freshly pruned network amplify float rounding about 100-fold per step; at 0.005 rounding moves the
# result by under 1% of the update, far below what per-process BN statistics change (11%), so tests tell them apart
PRUNED = FitConfig(epochs=2, lr=0.005, batch_size=128, seed=1)


def splits(data_dir: Path):
    """The 256-image train part of the small Fashion-MNIST copy, its augmentation and 64 calibration images."""
    return load_splits("fashion-mnist", data_dir, search_size=2744, abn_batches=2, abn_batch_size=32)


def tiny_net() -> nn.Module:
    """A small CNN without normalisation layers: with it, N processes compute what one does, to rounding."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, stride=2),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    )


def fit_tiny(s, checkpoint: Path | None = None) -> tuple[nn.Module, list[float]]:
    model = tiny_net()
    return model, fit(model, s.train, TINY, augment=s.augment, checkpoint=checkpoint, tag="tiny")


class AuxHead(nn.Module):
    """:func:`tiny_net` with an auxiliary head that ``forward`` never runs: the loss gives its parameters no
    gradient."""

    def __init__(self) -> None:
        super().__init__()
        self.net = tiny_net()
        self.aux = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def fit_unused(s) -> tuple[nn.Module, list[float]]:
    model = AuxHead()
    return model, fit(model, s.train, TINY, augment=s.augment, tag="unused")


class Ghost(nn.Module):
    """``model`` applied to ``parts`` consecutive slices of each batch (:func:`fnnp_opt.distributed.rows`) one by
    one: in one process, BatchNorm then normalises each slice with its own statistics, as each of ``parts``
    processes does under torchrun."""

    def __init__(self, model: nn.Module, parts: int) -> None:
        super().__init__()
        self.model, self.parts = model, parts

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.model(x[distributed.rows(len(x), r, self.parts)]) for r in range(self.parts)])


def pruned_net() -> tuple[nn.Module, nn.Module]:
    """``(the shipped ResNet-20, it pruned by 30% in every group (about 50% of its FLOPs) and ABN-calibrated)``."""
    base, _ = load_model("resnet20", 1, 10, default_checkpoint("resnet20", "fashion-mnist"))
    pruner = Pruner(base, torch.zeros(1, 1, 28, 28), "fc")
    return base, pruner.prune({g.root: 0.3 for g in pruner.groups})


def fit_pruned(s, checkpoint: Path | None = None, ghost: int = 1) -> tuple[nn.Module, list[float]]:
    """:func:`pruned_net` fine-tuned with distillation from the base (the fine-tune of `fnnp-opt run`); with
    ``ghost`` > 1, through :class:`Ghost` slices."""
    base, model = pruned_net()
    calibrate_bn(model, s.calibration)
    trained = Ghost(model, ghost) if ghost > 1 else model
    losses = fit(
        trained,
        s.train,
        PRUNED,
        augment=s.augment,
        checkpoint=checkpoint,
        tag="pruned",
        teacher=base,
        distill=Distill(),
    )
    return model, losses


_SAVE = ft._save_atomic


def keep_epoch_copies() -> None:
    """Make every epoch checkpoint also land in ``<checkpoint>.epoch<k>`` (until :func:`restore_save`)."""

    def save_and_copy(obj: dict, path: Path) -> None:
        _SAVE(obj, path)
        shutil.copy(path, path.with_name(f"{path.name}.epoch{obj['epoch']}"))

    ft._save_atomic = save_and_copy


def restore_save() -> None:
    ft._save_atomic = _SAVE


def main(data_dir: Path, out: Path, resume: Path | None) -> None:
    keep_epoch_copies()
    with distributed.session() as group:
        rank = group.rank if group is not None else 0
        s = splits(data_dir)
        runs = {"tiny": lambda: fit_tiny(s, out / "tiny.pt"), "pruned": lambda: fit_pruned(s, out / "pruned.pt")}
        if resume is not None:
            runs["resumed"] = lambda: fit_pruned(s, resume)
        runs["unused"] = lambda: fit_unused(s)
        for name, run in runs.items():
            model, losses = run()
            torch.save({"losses": losses, "state": model.state_dict()}, out / f"{name}-rank{rank}.pt")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")  # rank 0's log, on stderr
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]) if len(sys.argv) > 3 else None)
