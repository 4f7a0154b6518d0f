"""Prune a torchvision ResNet-18 of your own, trained on your own image folder, with your own training loop.

    python examples/resnet18_folder.py IMAGE_FOLDER [--size 64] [--epochs 2] [--trials 10] [--out pruned-r18]

IMAGE_FOLDER holds train/<class>/*.jpg and val/<class>/*.jpg (torchvision's ImageFolder layout). The script
trains the base briefly (stand in your own trained weights), searches the per-layer ratios for half the FLOPs,
fine-tunes the winner with the same loop, saves it, and reloads it into a fresh ``resnet18``.
"""

from __future__ import annotations

import argparse

import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader, random_split
from torchvision import transforms

import fnnp_opt


def train(model: nn.Module, loader: DataLoader, epochs: int, lr: float = 0.05) -> None:
    """The user's own training loop."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    model.train()
    for _ in range(epochs):
        for x, y in loader:
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, loader: DataLoader) -> float:
    model.eval()
    hits = seen = 0
    for x, y in loader:
        hits += int((model(x).argmax(1) == y).sum())
        seen += len(y)
    return hits / seen


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--out", default="pruned-r18")
    args = ap.parse_args()

    tf = transforms.Compose([transforms.Resize((args.size, args.size)), transforms.ToTensor()])
    train_set = torchvision.datasets.ImageFolder(f"{args.folder}/train", tf)
    val_set = torchvision.datasets.ImageFolder(f"{args.folder}/val", tf)
    classes = len(train_set.classes)
    # candidates are scored on images held out from training; the val folder is kept for the final report
    fit_part, held_out = random_split(train_set, [0.8, 0.2], generator=torch.Generator().manual_seed(0))
    train_loader = DataLoader(fit_part, batch_size=16, shuffle=True)
    calibration = DataLoader(fit_part, batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(1))
    search_split = DataLoader(held_out, batch_size=32)

    model = torchvision.models.resnet18(num_classes=classes)
    train(model, train_loader, args.epochs)
    print(f"base: val accuracy {accuracy(model, DataLoader(val_set, batch_size=32)):.3f}")

    result = fnnp_opt.search(
        model,
        torch.zeros(1, 3, args.size, args.size),
        calibration=calibration,
        evaluation=search_split,
        budget="0.5",
        n_trials=args.trials,
        ignored_layers=[model.fc],
        calibration_batches=5,
    )
    print(
        f"winner: trial {result.best.number}, score {result.best.value:.3f} "
        f"(uniform L1: {result.baseline.value if result.baseline else float('nan'):.3f})"
    )

    net = result.build()
    train(net, train_loader, args.epochs, lr=0.01)
    print(f"pruned: val accuracy {accuracy(net, DataLoader(val_set, batch_size=32)):.3f}")

    fnnp_opt.save(net, args.out, result.plan)
    loaded = fnnp_opt.load(args.out, model=torchvision.models.resnet18(num_classes=classes))
    x = torch.randn(2, 3, args.size, args.size)
    assert torch.equal(net(x), loaded(x)), "the reloaded network must compute what was saved"
    print(f"saved to {args.out} and reloaded: identical outputs")


if __name__ == "__main__":
    main()
