"""FLOPs counting with thop, and the budget window.

thop counts multiply-accumulates (MACs); following the pruning literature (and the
EagleEye paper) fnnp-opt calls them FLOPs. "62.23M FLOPs" means 62.23M MACs.
"""

from __future__ import annotations

import contextlib
import io
import re
from dataclasses import dataclass, replace
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn

from fnnp_opt.errors import BudgetError, option

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
    """The window a candidate's cost must land in: FLOPs (MACs), or latency in ms."""

    base: float  # the unpruned model's cost: MACs (int), or measured ms
    target: float  # the cost asked for
    low: float  # smallest accepted cost
    high: float  # largest accepted cost

    ranged: bool = False  # a range searched by --objective pareto, not target +- tolerance
    unit: str = "FLOPs"  # what the numbers count: "FLOPs" (MACs), or "ms" of measured latency (--latency)

    def contains(self, cost: float) -> bool:
        return self.low <= cost <= self.high

    def fmt(self, cost: float) -> str:
        """A cost in this budget's unit, for people: 31.64M, or 0.412 ms."""
        return human(cost) if self.unit == "FLOPs" else f"{cost:.3g} ms"

    @property
    def option(self) -> str:
        """The flag (or, from Python, the argument) that sets this budget."""
        return option("flops" if self.unit == "FLOPs" else "latency")

    def describe(self) -> str:
        f = self.fmt
        if self.ranged:
            return (
                f"range [{f(self.low)}, {f(self.high)}] = "
                f"[{self.low / self.base:.1%}, {self.high / self.base:.1%}] of {f(self.base)}"
            )
        share = f"{self.target / self.base:.1%}"
        return f"{f(self.target)} ({share} of {f(self.base)}), window [{f(self.low)}, {f(self.high)}]"


def parse_flops(text: str, base: float) -> int:
    """Parse ``--flops``: a fraction of the base (``0.5``) or an absolute count (``62.23M``, ``2G``)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([kKmMgGtT]?)\s*", str(text))
    if not m:
        raise BudgetError(
            f"{option('flops')} must be a fraction of the base like 0.5 or a count like 62.23M or 2G, got {text!r}"
        )
    value, suffix = float(m.group(1)), m.group(2).upper()
    if value <= 0:
        raise BudgetError(f"{option('flops')} must be positive, got {text!r}")
    if not suffix and value <= 1.0:
        target = value * base
    elif not suffix and value < 1000:
        raise BudgetError(
            f"{option('flops')} {text!r} is neither a fraction in (0, 1) nor a count; write 0.5 for half, or 62.23M"
        )
    else:
        target = value * _SUFFIX[suffix]
    if target > base:
        raise BudgetError(
            f"{option('flops')} {text!r} ({human(target)}) is above the base model's {human(base)}; ask for less than the base"
        )
    return int(round(target))


def check_tolerance(tolerance: float) -> None:
    """Raise :class:`BudgetError` unless ``tolerance`` (the window's half-width, as a fraction of the base) lies
    in (0, 1)."""
    if not 0.0 < tolerance < 1.0:
        raise BudgetError(f"{option('flops_tolerance')} must be in (0, 1) (a fraction of the base FLOPs), got {tolerance}")


def make_budget(text: str, tolerance: float, base: float) -> Budget:
    """The window target ± tolerance x base, clipped to [0, base]; ``LOW:HIGH`` gives that range as is."""
    if ":" not in str(text):
        check_tolerance(tolerance)
    budget = make_window(text, tolerance, base, parse_flops, "0.2:0.8")
    if not budget.ranged and budget.target >= base:
        raise BudgetError(
            f"{option('flops')} {text!r} keeps all of the base model's {human(base)}: nothing to prune; pass a "
            "fraction below 1 like 0.5"
        )
    return replace(budget, low=int(budget.low), high=int(budget.high))


def make_window(
    text: str, tolerance: float, base: float, parse: Callable[[str, float], float], example: str, unit: str = "FLOPs"
) -> Budget:
    """A :class:`Budget` in ``unit`` from ``text``: a target (``parse(text, base)``) ± tolerance x base, clipped
    to [0, base], or a range ``LOW:HIGH`` as is. ``example`` is a valid range, for the error message."""
    name = option("flops" if unit == "FLOPs" else "latency")
    if ":" in str(text):
        low_text, _, high_text = str(text).partition(":")
        low, high = parse(low_text, base), parse(high_text, base)
        if low >= high:
            raise BudgetError(f"{name} {text}: a range LOW:HIGH needs LOW < HIGH, like {name} {example}")
        return Budget(base, high, low, high, ranged=True, unit=unit)
    target = parse(text, base)
    slack = tolerance * base
    return Budget(base, target, max(0, target - slack), min(base, target + slack), unit=unit)


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

    total_ops: torch.Tensor | int  # the rule's count

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
        self.base = count(base, input_shape)[0]  # thop's MACs of the unpruned model
        self.exact = self.analytic({}) == self.base

    def macs(self, removed: dict[str, int]) -> int:
        """thop's MACs of the base model with ``removed[root]`` channels pruned from each group.

        Analytic when the model passed the constructor's check, else pruned and counted by thop.
        """
        if self.exact:
            return self.analytic(removed)
        return count(self._probe(removed), self.input_shape)[0]

    def analytic(self, removed: dict[str, int]) -> int:
        """The analytic count (see the class docstring)."""
        return sum(self._ops(module, x, y, x_base) for _, module, x, y, x_base in self.layers(removed))

    def layers(self, removed: dict[str, int]) -> Iterator[tuple[str, nn.Module, tuple, tuple, tuple]]:
        """(name, base module, input shape, output shape, base input shape) of every call thop counts, at the
        pruned sizes of the plan ``removed`` ({root: channels removed}); shapes have batch 1."""
        for name, calls in self._base.items():
            module = self._modules[name]
            for i, (x, y) in enumerate(calls):
                dx, dy = np.zeros(len(x), dtype=np.int64), np.zeros(len(y), dtype=np.int64)
                for root, n in removed.items():
                    moved = self._delta[root].get(name) if n else None
                    if moved:
                        dx += n * moved[i][0]
                        dy += n * moved[i][1]
                yield (
                    name,
                    module,
                    tuple(int(v) for v in np.subtract(x, dx)),
                    tuple(int(v) for v in np.subtract(y, dy)),
                    x,
                )

    @staticmethod
    def _ops(module: nn.Module, x: tuple, y: tuple, x_base: tuple) -> int:
        rule = _rule(module)
        xm, ym = torch.empty(x, device="meta"), torch.empty(y, device="meta")
        if isinstance(module, nn.modules.conv._ConvNd):
            groups = module.groups
            if groups > 1 and groups == x_base[1]:  # depthwise: the groups shrink with the channels
                groups = x[1]
            weight = torch.empty((y[1], x[1] // groups, *module.kernel_size), device="meta")
            stand = _Stand(weight=weight, groups=groups, bias=module.bias, transposed=module.transposed)
        elif isinstance(module, nn.Linear):
            stand = _Stand(in_features=x[-1], out_features=y[-1], bias=module.bias)
        else:
            stand = _Stand(**{k: v for k, v in vars(module).items() if not k.startswith("_")})
        rule(stand, (xm,), ym)
        return int(stand.total_ops)
