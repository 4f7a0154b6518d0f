"""FLOPs counting with thop, and the budget window.

thop counts multiply-accumulates (MACs); following the pruning literature (and the
EagleEye paper) fnnp-opt calls them FLOPs. "62.23M FLOPs" means 62.23M MACs.
"""

from __future__ import annotations

import contextlib
import io
import re
from dataclasses import dataclass

import torch
from torch import nn

from fnnp_opt.errors import BudgetError

_SUFFIX = {"": 1.0, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}


@torch.no_grad()
def count(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[int, int]:
    """Return (MACs, params) of ``model`` for one input of ``input_shape`` (with batch dim 1)."""
    import thop

    was_training = model.training
    model.eval()
    x = torch.zeros(*input_shape, device=next(model.parameters()).device)
    with contextlib.redirect_stdout(io.StringIO()):  # thop prints notes for unknown modules
        macs, params = thop.profile(model, inputs=(x,), verbose=False)
    model.train(was_training)
    return int(macs), int(params)


def human(n: float) -> str:
    """Format a count with a K/M/G suffix, e.g. 31.64M."""
    for suffix, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{suffix}"
    return f"{n:.0f}"


@dataclass(frozen=True)
class Budget:
    """The FLOPs window a candidate must land in."""

    base: int  # MACs of the unpruned model
    target: int  # MACs asked for
    low: int  # smallest accepted MACs
    high: int  # largest accepted MACs

    def contains(self, macs: int) -> bool:
        return self.low <= macs <= self.high

    def describe(self) -> str:
        return (
            f"{human(self.target)} ({self.target / self.base:.1%} of {human(self.base)}), "
            f"window [{human(self.low)}, {human(self.high)}]"
        )


def parse_flops(text: str, base: int) -> int:
    """Parse ``--flops``: a fraction of the base (``0.5``) or an absolute count (``62.23M``, ``2G``)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([kKmMgGtT]?)\s*", str(text))
    if not m:
        raise BudgetError(f"--flops must be a fraction of the base like 0.5 or a count like 62.23M or 2G, got {text!r}")
    value, suffix = float(m.group(1)), m.group(2).upper()
    if value <= 0:
        raise BudgetError(f"--flops must be positive, got {text!r}")
    if not suffix and value <= 1.0:
        target = value * base
    elif not suffix and value < 1000:
        raise BudgetError(
            f"--flops {text!r} is neither a fraction in (0, 1] nor a count; write 0.5 for half, or 62.23M"
        )
    else:
        target = value * _SUFFIX[suffix]
    if target > base:
        raise BudgetError(
            f"--flops {text!r} ({human(target)}) is above the base model's {human(base)}; ask for less than the base"
        )
    return int(round(target))


def make_budget(text: str, tolerance: float, base: int) -> Budget:
    """The window target ± tolerance x base, clipped to [0, base]."""
    if not 0.0 < tolerance < 1.0:
        raise BudgetError(f"--flops-tolerance must be in (0, 1) (a fraction of the base FLOPs), got {tolerance}")
    target = parse_flops(text, base)
    slack = tolerance * base
    return Budget(base, target, int(max(0, target - slack)), int(min(base, target + slack)))
