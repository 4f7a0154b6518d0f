"""Candidate scores: adaptive-BN accuracy (the paper's), and ABN followed by a short fine-tune (``abn-ft``).

ABN resets and recomputes the BatchNorm statistics of a pruned network, then measures its
accuracy on the held-out search split. Where a budget is aggressive, pruned networks sit near
chance after ABN and no statistics-only score ranks them well (docs/correlate.md). ``abn-ft``
then trains a *copy* of the calibrated candidate for a few SGD steps on the same seeded
train-part images for every candidate, and scores that copy on the search split: a cheap
proxy for the accuracy a full fine-tune reaches.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Protocol

from torch import nn

from fnnp_opt.data import Augment, EvalBatches, TrainSet
from fnnp_opt.evaluate import accuracy, calibrate_bn
from fnnp_opt.training import FitConfig, fit
from fnnp_opt.progress import NULL, Progress


def abn_ft_key(steps: int) -> str:
    """The trial attribute (and `correlate` column) of the abn-ft score after ``steps`` steps, e.g. ``abn_ft100``."""
    return f"abn_ft{steps}"


class ShortScore(Protocol):
    """A candidate's score after a short fine-tune of a copy (:class:`Scorer`, or the Python API's hook)."""

    @property
    def key(self) -> str:
        """The trial attribute that holds the score."""
        ...

    def __call__(self, calibrated: nn.Module, progress: Progress = NULL) -> float: ...


@dataclass(frozen=True)
class ShortFinetune:
    """The short fine-tune of ``abn-ft``: ``steps`` SGD steps of ``batch_size`` images, cosine from ``lr`` to 0."""

    steps: int
    lr: float
    batch_size: int
    weight_decay: float
    seed: int  # draws the images once per study and orders them: every candidate sees the same batches

    def fit_config(self) -> FitConfig:
        return FitConfig(
            epochs=1, lr=self.lr, batch_size=self.batch_size, weight_decay=self.weight_decay, seed=self.seed
        )

    def describe(self) -> str:
        """What must match for two abn-ft scores to be comparable."""
        return f"steps{self.steps}|lr{self.lr}|bs{self.batch_size}|wd{self.weight_decay}|seed{self.seed}"


@dataclass
class Scorer:
    """The abn-ft score of calibrated candidates; prepared once per study (the images are fixed)."""

    short: ShortFinetune
    images: TrainSet  # train-part images of the short fine-tune, ``steps * batch_size`` of them
    search: EvalBatches  # the held-out search split
    augment: Augment | None = None  # the training augmentation, also in the short fine-tune
    device: str = "cpu"
    measure: Callable[[nn.Module], float] | None = None  # the score of the fine-tuned copy; None: accuracy on search

    @property
    def key(self) -> str:
        """The trial attribute that holds this score."""
        return abn_ft_key(self.short.steps)

    @classmethod
    def build(
        cls,
        short: ShortFinetune,
        train: TrainSet,
        search: EvalBatches,
        augment: Augment | None = None,
        device: str = "cpu",
    ) -> "Scorer":
        """Draw the short fine-tune's ``steps * batch_size`` train-part images once (seeded by ``short.seed``)."""
        return cls(short, train.subset(short.steps * short.batch_size, short.seed), search, augment, device)

    def __call__(self, calibrated: nn.Module, progress: Progress = NULL) -> float:
        """Search-split accuracy of a copy of ``calibrated`` after the short fine-tune (train mode, real SGD).

        ``calibrated`` (a pruned network after ABN) is left unchanged.
        """
        student = copy.deepcopy(calibrated)
        fit(
            student,
            self.images,
            self.short.fit_config(),
            augment=self.augment,
            device=self.device,
            progress=progress,
            log_epochs=False,  # a score's short fine-tune: its loss is no news on the screen
        )
        return self.measure(student) if self.measure is not None else accuracy(student, self.search, self.device)


def rescore(model: nn.Module, calibration: EvalBatches, scorer: Scorer, progress: Progress = NULL) -> float:
    """abn-ft from scratch: ABN-calibrate ``model`` in place, then :class:`Scorer` a copy."""
    calibrate_bn(model, calibration, scorer.device, progress=progress)
    return scorer(model, progress)
