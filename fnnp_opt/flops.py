"""FLOPs counting with thop, and the budget window.

thop counts multiply-accumulates (MACs); following the pruning literature (and the
EagleEye paper) fnnp-opt calls them FLOPs. "62.23M FLOPs" means 62.23M MACs.
"""

from __future__ import annotations

import contextlib
import io
import re
from dataclasses import dataclass

import numpy as np
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

    ranged: bool = False  # a range searched by --objective pareto, not target +- tolerance

    def contains(self, macs: int) -> bool:
        return self.low <= macs <= self.high

    def describe(self) -> str:
        if self.ranged:
            return (
                f"range [{human(self.low)}, {human(self.high)}] = "
                f"[{self.low / self.base:.1%}, {self.high / self.base:.1%}] of {human(self.base)}"
            )
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


def check_tolerance(tolerance: float) -> None:
    """Raise :class:`BudgetError` unless ``tolerance`` (the window's half-width, as a fraction of the base) lies
    in (0, 1)."""
    if not 0.0 < tolerance < 1.0:
        raise BudgetError(f"--flops-tolerance must be in (0, 1) (a fraction of the base FLOPs), got {tolerance}")


def make_budget(text: str, tolerance: float, base: int) -> Budget:
    """The window target ± tolerance x base, clipped to [0, base]; ``LOW:HIGH`` gives that range as is."""
    if ":" in str(text):
        low_text, _, high_text = str(text).partition(":")
        low, high = parse_flops(low_text, base), parse_flops(high_text, base)
        if low >= high:
            raise BudgetError(f"--flops {text}: a range LOW:HIGH needs LOW < HIGH, like 0.2:0.8")
        return Budget(base, high, low, high, ranged=True)
    check_tolerance(tolerance)
    target = parse_flops(text, base)
    slack = tolerance * base
    return Budget(base, target, int(max(0, target - slack)), int(min(base, target + slack)))


# --------------------------------------------------------------------------- analytic count


def _rule(module: nn.Module):
    """thop's counting rule for a module type (its MRO walked like thop does), or None."""
    from thop.profile import register_hooks
    from thop.vision.basic_hooks import zero_ops

    for cls in type(module).__mro__:
        if cls in register_hooks:
            rule = register_hooks[cls]
            return None if rule is zero_ops else rule
    return None


def _trace(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, list[tuple[tuple, tuple]]]:
    """(input shape, output shape) of every call of every module that thop counts."""
    calls: dict[str, list[tuple[tuple, tuple]]] = {}
    hooks = []
    for name, m in model.named_modules():
        if _rule(m) is None:
            continue

        def hook(mod, args, out, name=name):
            calls.setdefault(name, []).append((tuple(args[0].shape), tuple(out.shape)))

        hooks.append(m.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(*input_shape, device=next(model.parameters()).device))
    finally:
        for h in hooks:
            h.remove()
    return calls


class _Stand:
    """The attributes a thop rule reads from a conv or linear layer, at pruned sizes."""

    def __init__(self, **attrs) -> None:
        self.__dict__.update(attrs, total_ops=0)


class FlopsModel:
    """thop's MAC count of a pruned network, computed from its channel plan without a forward pass.

    One traced forward of the base model gives every counted layer's input and output
    shapes; pruning one channel of each group shows how much each group removes from
    each of those shapes. A plan (channels removed per group) then gives every layer's
    shapes, and thop's own rules, applied to those shapes, give the count. Removing
    ``n`` channels is assumed to remove ``n`` times the one-channel change (true for
    convs, BN, pools and flatten-then-linear); the constructor checks the whole model
    against thop, and the tests check random plans.
    """

    def __init__(self, base: nn.Module, input_shape: tuple[int, ...], probe, units: dict[str, int]) -> None:
        """``probe(counts)`` must return the base model pruned by ``{root: channels removed}``.

        ``units`` maps each group to the channels its probe removes: 1, or the group count of
        a grouped conv it feeds (such a group is cut in whole multiples of it).
        """
        self.input_shape = tuple(input_shape)
        self._probe = probe
        self._modules = dict(base.named_modules())
        self._base = _trace(base, input_shape)
        self._delta: dict[str, dict[str, list[tuple[np.ndarray, np.ndarray]]]] = {}
        for root, unit in units.items():
            shapes = _trace(probe({root: unit}), input_shape)
            self._delta[root] = {}
            for name, calls in self._base.items():
                moved = [
                    (np.subtract(x, x1) // unit, np.subtract(y, y1) // unit)
                    for (x, y), (x1, y1) in zip(calls, shapes.get(name, []))
                ]
                if any(dx.any() or dy.any() for dx, dy in moved):
                    self._delta[root][name] = moved
        self.exact = self.analytic({}) == count(base, input_shape)[0]

    def macs(self, removed: dict[str, int]) -> int:
        """thop's MACs of the base model with ``removed[root]`` channels pruned from each group.

        Analytic when the model passed the constructor's check, else pruned and counted by thop.
        """
        if self.exact:
            return self.analytic(removed)
        return count(self._probe(removed), self.input_shape)[0]

    def analytic(self, removed: dict[str, int]) -> int:
        """The analytic count (see the class docstring)."""
        total = 0
        for name, calls in self._base.items():
            module = self._modules[name]
            for i, (x, y) in enumerate(calls):
                dx, dy = np.zeros(len(x), dtype=np.int64), np.zeros(len(y), dtype=np.int64)
                for root, n in removed.items():
                    moved = self._delta[root].get(name) if n else None
                    if moved:
                        dx += n * moved[i][0]
                        dy += n * moved[i][1]
                total += self._ops(module, tuple(np.subtract(x, dx)), tuple(np.subtract(y, dy)), x)
        return total

    @staticmethod
    def _ops(module: nn.Module, x: tuple, y: tuple, x_base: tuple) -> int:
        rule = _rule(module)
        xm, ym = torch.empty(x, device="meta"), torch.empty(y, device="meta")
        if isinstance(module, nn.modules.conv._ConvNd):
            groups = module.groups
            if groups > 1 and groups == x_base[1]:  # depthwise: the groups shrink with the channels
                groups = x[1]
            weight = torch.empty((y[1], x[1] // groups, *module.kernel_size), device="meta")
            module = _Stand(weight=weight, groups=groups, bias=module.bias, transposed=module.transposed)
        elif isinstance(module, nn.Linear):
            module = _Stand(in_features=x[-1], out_features=y[-1], bias=module.bias)
        else:
            module = _Stand(**{k: v for k, v in vars(module).items() if not k.startswith("_")})
        rule(module, (xm,), ym)
        return int(module.total_ops)
