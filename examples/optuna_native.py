"""Run the pruning search in your own Optuna study: your sampler (TPE here), your storage, your callbacks.

    python examples/optuna_native.py [--storage sqlite:///prune.db] [--trials 12]

The model is a small CNN of your own, trained here for a moment on Fashion-MNIST images held as plain tensors
(Debian's dataset-fashion-mnist); stand in your own. The study stays in the storage: reopen it with the stock
``optuna`` command or optuna-dashboard.
"""

from __future__ import annotations

import argparse
import gzip
from pathlib import Path

import numpy as np
import optuna
import torch
from torch import nn

import fnnp_opt

FMNIST = Path("/usr/share/datasets/fashion-mnist")


def small_cnn() -> nn.Sequential:
    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

    return nn.Sequential(
        *block(1, 32),
        *block(32, 64),
        nn.MaxPool2d(2),
        *block(64, 64),
        nn.MaxPool2d(2),
        *block(64, 64),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, 10),
    )


def images(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` Fashion-MNIST training images, normalised, and their labels."""
    with gzip.open(FMNIST / "train-images-idx3-ubyte.gz") as f:
        x = np.frombuffer(f.read(), np.uint8, offset=16)[: n * 784].reshape(n, 1, 28, 28)
    with gzip.open(FMNIST / "train-labels-idx1-ubyte.gz") as f:
        y = np.frombuffer(f.read(), np.uint8, offset=8)[:n]
    x = torch.tensor(x, dtype=torch.float32) / 255
    return (x - 0.2860) / 0.3530, torch.tensor(y, dtype=torch.long)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--storage", default="sqlite:///prune.db")
    ap.add_argument("--study-name", default="small-cnn-half")
    ap.add_argument("--trials", type=int, default=12)
    args = ap.parse_args()

    x, y = images(4096)
    train = [(x[i : i + 64], y[i : i + 64]) for i in range(0, 3072, 64)]
    held_out = [(x[i : i + 128], y[i : i + 128]) for i in range(3072, 4096, 128)]  # never trained on
    torch.manual_seed(0)
    model = small_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for xb, yb in train * 2:  # your own training: two epochs
        opt.zero_grad()
        nn.functional.cross_entropy(model(xb), yb).backward()
        opt.step()
    model.eval()
    calibration = [xb for xb, _ in train[:8]]

    problem = fnnp_opt.Problem(model, torch.zeros(1, 1, 28, 28), budget="0.5", max_rate=0.7)
    # fit_budget: every draw is moved into the FLOPs window, so each of the n_trials is scored
    objective = fnnp_opt.Objective(problem, calibration, held_out, calibration_batches=4, fit_budget=True)
    study = optuna.create_study(
        study_name=args.study_name,
        storage=args.storage,
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=0, multivariate=True),
        load_if_exists=True,
    )
    problem.enqueue_uniform(study)  # trial 0: uniform L1, the baseline to beat

    def report(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:  # a callback of your own
        if trial.value is not None:
            print(f"trial {trial.number}: {trial.value:.4f} at {trial.user_attrs['flops_ratio']:.1%} of the FLOPs")

    study.optimize(objective, n_trials=args.trials, callbacks=[report])
    best = objective.best(study)
    net = objective.build(best)
    print(
        f"best: trial {best.number}, ABN accuracy {best.value:.4f}, {sum(p.numel() for p in net.parameters())} "
        f"parameters (base {sum(p.numel() for p in model.parameters())})"
    )


if __name__ == "__main__":
    main()
