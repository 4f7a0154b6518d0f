"""Prune a network that is not a classifier, scored by your own metric: a small per-pixel segmentation network,
scored by mean intersection-over-union, with its head kept whole.

    python examples/dense_metric.py [--size 32] [--steps 150] [--trials 8]

The data are synthetic (bright discs on noise, the mask is the disc) so the script runs anywhere; put your own
model, loaders and metric in their place.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

import fnnp_opt


class SegNet(nn.Module):
    """Conv-BN-ReLU blocks and a 1x1 head: two classes per pixel."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())

        self.body = nn.Sequential(block(3, width), block(width, width), block(width, width), block(width, width))
        self.head = nn.Conv2d(width, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def discs(n: int, size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` noisy images (n, 3, size, size) with a bright disc each, and its mask (n, size, size)."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    centre = torch.rand(n, 2, generator=generator) * size
    radius = 3 + torch.rand(n, generator=generator) * size / 4
    mask = ((yy - centre[:, 0, None, None]) ** 2 + (xx - centre[:, 1, None, None]) ** 2) < radius[:, None, None] ** 2
    x = torch.randn(n, 3, size, size, generator=generator) * 0.5 + mask[:, None].float()
    return x, mask.long()


def mean_iou(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Mean over the two classes of |prediction ∩ truth| / |prediction ∪ truth|, over all pixels of ``batches``."""
    inter, union = torch.zeros(2), torch.zeros(2)
    with torch.no_grad():
        for x, mask in batches:
            pred = model(x).argmax(1)
            for c in (0, 1):
                inter[c] += ((pred == c) & (mask == c)).sum()
                union[c] += ((pred == c) | (mask == c)).sum()
    return float((inter / union.clamp(min=1)).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--trials", type=int, default=8)
    args = ap.parse_args()

    g = torch.Generator().manual_seed(0)
    train = [discs(16, args.size, g) for _ in range(20)]
    held_out = [discs(16, args.size, g) for _ in range(4)]

    torch.manual_seed(0)
    model = SegNet()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(args.steps):  # the user's own training
        x, mask = train[step % len(train)]
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), mask).backward()
        opt.step()
    model.eval()
    print(f"base: mIoU {mean_iou(model, held_out):.3f}")

    result = fnnp_opt.search(
        model,
        torch.zeros(1, 3, args.size, args.size),
        calibration=[x for x, _ in train],  # images alone: ABN needs no labels
        evaluation=lambda net: mean_iou(net, held_out),  # any metric, higher is better
        ignored_layers=[model.head],  # the two output classes stay
        budget="0.4",
        n_trials=args.trials,
    )
    net = result.build()
    uniform = result.baseline.value if result.baseline is not None else float("nan")
    print(
        f"pruned to {result.best.user_attrs['flops_ratio']:.0%} of the FLOPs: mIoU {mean_iou(net, held_out):.3f} "
        f"after ABN (uniform L1: {uniform:.3f}); channels kept {result.plan.channels}"
    )
    assert net.head.out_channels == 2


if __name__ == "__main__":
    main()
