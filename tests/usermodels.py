"""Tiny user models (``--model usermodels:<name>``) that replay failures reported for other pruning tools."""

from __future__ import annotations

import threading

import torch
from torch import nn


def _body(norm=None) -> list[nn.Module]:
    layers = [nn.Conv2d(1, 16, 3, padding=1)]
    layers += [norm(16)] if norm else []
    layers += [nn.ReLU(), nn.Conv2d(16, 32, 3, 2, 1)]
    layers += [norm(32)] if norm else []
    return layers + [nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()]


def no_norm(num_classes: int = 10) -> nn.Module:
    """Convs and ReLUs only: nothing for ABN to recompute."""
    return nn.Sequential(*_body(), nn.Linear(32, num_classes))


def untracked_bn(num_classes: int = 10) -> nn.Module:
    """BatchNorm with track_running_stats=False: it always normalises with the batch's statistics."""
    return nn.Sequential(*_body(lambda c: nn.BatchNorm2d(c, track_running_stats=False)), nn.Linear(32, num_classes))


def bn1d_head(num_classes: int = 10) -> nn.Module:
    """A BatchNorm1d in the head: one value per channel in a batch of one image."""
    return nn.Sequential(
        *_body(nn.BatchNorm2d), nn.Linear(32, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, num_classes)
    )


class _TwoOutputs(nn.Module):
    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.body = nn.Sequential(*_body(nn.BatchNorm2d))
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        emb = self.body(x)
        return self.fc(emb), emb


def tuple_out(num_classes: int = 10) -> nn.Module:
    """A forward that returns (logits, embedding)."""
    return _TwoOutputs(num_classes)


def needs_width(width: int, in_channels: int = 1, num_classes: int = 10) -> nn.Module:
    """A builder with a required argument fnnp-opt cannot give."""
    return nn.Sequential(nn.Conv2d(in_channels, width, 3), nn.Flatten(), nn.LazyLinear(num_classes))


class _Shared(nn.Module):
    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.block = nn.Module()
        self.block.conv = nn.Conv2d(16, 32, 3, 2, 1)
        self.shared = self.block.conv  # the same conv, registered under a second name
        self.bn2, self.fc = nn.BatchNorm2d(32), nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.shared(x)))
        return self.fc(x.mean((2, 3)))


def shared_conv(num_classes: int = 10) -> nn.Module:
    """One conv stored as ``self.shared`` and ``self.block.conv``."""
    return _Shared(num_classes)


def group_norm(num_classes: int = 10) -> nn.Module:
    """GroupNorm(8, C) after each conv: channels must stay a multiple of 8."""
    return nn.Sequential(*_body(lambda c: nn.GroupNorm(8, c)), nn.Linear(32, num_classes))


class _FixedWidth(nn.Module):
    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.stem, self.bn = nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.mid, self.bn2 = nn.Conv2d(16, 32, 3, 2, 1), nn.BatchNorm2d(32)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.stem(x)))
        x = torch.relu(self.bn2(self.mid(x)))
        return self.fc(x.reshape(x.shape[0], 32, -1).mean(2))  # the width 32 is written into forward()


def fixed_width(num_classes: int = 10) -> nn.Module:
    """A forward that hard-codes one layer's width: that layer cannot be pruned, the others can."""
    return _FixedWidth(num_classes)


def lazy_head(num_classes: int = 10) -> nn.Module:
    """A LazyLinear classifier: its weight has no shape until a batch (or a checkpoint) gives it one."""
    return nn.Sequential(*_body(nn.BatchNorm2d), nn.LazyLinear(num_classes))


class _Calibrated(nn.Module):
    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.body, self.fc = nn.Sequential(*_body(nn.BatchNorm2d)), nn.Linear(32, num_classes)
        self.temperature = 1.0

    def get_extra_state(self) -> dict:
        return {"temperature": self.temperature}

    def set_extra_state(self, state: dict) -> None:
        self.temperature = state["temperature"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x)) / self.temperature


def extra_state(num_classes: int = 10) -> nn.Module:
    """A module whose state dict holds a value that is not a tensor (``_extra_state``: its temperature)."""
    return _Calibrated(num_classes)


class _Normalised(nn.Module):
    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(0.2860), persistent=False)  # not in the state dict
        self.net = nn.Sequential(*_body(nn.BatchNorm2d), nn.Linear(32, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x - self.mean)


def non_persistent(num_classes: int = 10) -> nn.Module:
    """A buffer registered with persistent=False: the model has it, its state dict does not."""
    return _Normalised(num_classes)


class _Holder(nn.Module):
    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.module = nn.Sequential(*_body(nn.BatchNorm2d), nn.Linear(32, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)


def module_holder(num_classes: int = 10) -> nn.Module:
    """The network kept as ``self.module``: every key of its own state dict starts with ``module.``."""
    return _Holder(num_classes)


# --------------------------------------------------------------------------- forwards that break when a group is cut


class _Split(nn.Module):
    """``expand`` makes 32 channels that forward() splits with sizes taken from the configured widths."""

    def __init__(self, num_classes: int, widths: tuple[int, int] = (16, 16)) -> None:
        super().__init__()
        self.widths = widths
        self.stem, self.bn = nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.expand, self.bn2 = nn.Conv2d(16, sum(widths), 1), nn.BatchNorm2d(sum(widths))
        self.left, self.right = nn.Conv2d(widths[0], 16, 3, 2, 1), nn.Conv2d(widths[1], 16, 3, 2, 1)
        self.act, self.fc = nn.ReLU(), nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn(self.stem(x)))
        a, b = torch.split(self.act(self.bn2(self.expand(x))), list(self.widths), 1)
        return self.fc(torch.cat([self.left(a), self.right(b)], 1).mean((2, 3)))


def split_widths(num_classes: int = 10) -> nn.Module:
    """torch.split with sizes from the configured widths: the group 'expand' cannot be cut."""
    return _Split(num_classes)


class _Chunk(_Split):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn(self.stem(x)))
        a, b = self.act(self.bn2(self.expand(x))).chunk(2, 1)
        return self.fc(torch.cat([self.left(a), self.right(b)], 1).mean((2, 3)))


def chunk_halves(num_classes: int = 10) -> nn.Module:
    """chunk(2) into fixed halves: cutting 'expand' unevenly breaks the forward."""
    return _Chunk(num_classes)


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.conv(x)))


class _TwoBreakers(nn.Module):
    """Two groups whose cut breaks forward(): 'block1' (a split by its configured width) and 'f2' (a view)."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.width = 16
        self.block0, self.block1 = _Block(1, 16), _Block(16, 2 * self.width, 2)
        self.block2 = _Block(self.width, 16)
        self.f2 = nn.Conv2d(16, 8, 3, 2, 1)
        self.fc = nn.Linear(8 * 7 * 7, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block1(self.block0(x))
        a, b = x.split(self.width, 1)
        x = self.block2(a + b)
        return self.fc(torch.relu(self.f2(x)).reshape(x.shape[0], 8 * 7 * 7))


def two_breakers(num_classes: int = 10) -> nn.Module:
    """Cutting 'block1' breaks a split and cutting 'f2' a hard-coded reshape; the other groups prune."""
    return _TwoBreakers(num_classes)


class _ViewFlatten(nn.Module):
    def __init__(self, num_classes: int, fixed: bool) -> None:
        super().__init__()
        self.fixed = fixed
        self.block0, self.block1 = _Block(1, 8, 2), _Block(8, 16, 2)
        self.fc = nn.Linear(16 * 7 * 7, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block1(self.block0(x))
        return self.fc(torch.flatten(x, 1) if self.fixed else x.view(x.size(0), -1))


def view_flatten(num_classes: int = 10, fixed: bool = False) -> nn.Module:
    """LeNet's ``x.view(x.size(0), -1)``: fine in NCHW, but there is no such view of a channels-last map
    (``fixed``: torch.flatten)."""
    return _ViewFlatten(num_classes, fixed)


class _InplaceAdd(nn.Module):
    def __init__(self, num_classes: int, fixed: bool) -> None:
        super().__init__()
        self.fixed = fixed
        self.block0, self.block1, self.act = _Block(1, 16, 2), _Block(16, 16), nn.ReLU()
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = self.block0(x)
        x = self.act(self.block1.bn(self.block1.conv(skip)))
        if self.fixed:
            x = x + skip
        else:
            x += skip  # overwrites the ReLU's output, which its backward needs
        return self.fc(x.mean((2, 3)))


def inplace_add(num_classes: int = 10, fixed: bool = False) -> nn.Module:
    """``x += skip`` after a ReLU: eval runs, a backward pass does not (``fixed``: ``x = x + skip``)."""
    return _InplaceAdd(num_classes, fixed)


class _AuxInTrain(nn.Module):
    def __init__(self, num_classes: int, fixed: bool) -> None:
        super().__init__()
        self.fixed = fixed
        self.body = nn.Sequential(*_body(nn.BatchNorm2d))
        self.fc, self.aux = nn.Linear(32, num_classes), nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        x = self.body(x)
        if self.training and not self.fixed:
            return self.fc(x), self.aux(x)
        return self.fc(x)


def aux_in_train(num_classes: int = 10, fixed: bool = False) -> nn.Module:
    """GoogLeNet's habit: (logits, auxiliary logits) in train mode, the logits alone in eval mode."""
    return _AuxInTrain(num_classes, fixed)


class _Uncopyable(nn.Module):
    def __init__(self, num_classes: int, fixed: bool) -> None:
        super().__init__()
        self.body, self.fc = nn.Sequential(*_body(nn.BatchNorm2d)), nn.Linear(32, num_classes)
        self.lock = None if fixed else threading.Lock()  # a deep copy cannot copy a lock

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x))


def uncopyable(num_classes: int = 10, fixed: bool = False) -> nn.Module:
    """A module holding a lock, which copy.deepcopy cannot copy (``fixed``: no lock)."""
    return _Uncopyable(num_classes, fixed)


# --------------------------------------------------------------------------- grouped and depthwise convolutions


class _Grouped(nn.Module):
    """stem -> ``mid`` (groups ``groups``) -> ``head``; ``mid`` is depthwise when groups == its input channels."""

    def __init__(
        self, num_classes: int, cin: int, cout: int, groups: int, residual: bool = False, head: bool = True
    ) -> None:
        super().__init__()
        self.residual = residual
        self.stem, self.bn = nn.Conv2d(1, cin, 3, padding=1, bias=False), nn.BatchNorm2d(cin)
        self.mid, self.bn2 = nn.Conv2d(cin, cout, 3, 1, 1, groups=groups, bias=False), nn.BatchNorm2d(cout)
        self.head, self.bn3 = (nn.Conv2d(cout, 32, 1, 2, bias=False), nn.BatchNorm2d(32)) if head else (None, None)
        self.fc = nn.Linear(32 if head else cout, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.stem(x)))
        y = torch.relu(self.bn2(self.mid(x)))
        x = y + x if self.residual else y
        if self.head is not None:
            x = torch.relu(self.bn3(self.head(x)))
        return self.fc(x.mean((2, 3)))


def depthwise(num_classes: int = 10) -> nn.Module:
    """A depthwise conv (groups == channels)."""
    return _Grouped(num_classes, 16, 16, 16)


def depthwise_x2(num_classes: int = 10) -> nn.Module:
    """A depthwise conv with channel multiplier 2: 16 groups of 1 input and 2 outputs."""
    return _Grouped(num_classes, 16, 32, 16)


def depthwise_x2_into_fc(num_classes: int = 10) -> nn.Module:
    """The same, its output pooled straight into the classifier: the stem is the only group before it."""
    return _Grouped(num_classes, 16, 32, 16, head=False)


def grouped_x2(num_classes: int = 10) -> nn.Module:
    """A grouped conv with multiplier 2: 4 groups of 4 inputs and 8 outputs."""
    return _Grouped(num_classes, 16, 32, 4)


def resnext(num_classes: int = 10) -> nn.Module:
    """A ResNeXt-style residual: a grouped 3x3 (8 groups) whose output is added to its input."""
    return _Grouped(num_classes, 32, 32, 8, residual=True)


class _CatGrouped(nn.Module):
    """Two convs concatenated into a grouped conv: each group of ``mix`` reads one conv's channels, so
    neither conv's cut is the grouped conv's alone."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(1, 16, 3, padding=1), nn.Conv2d(1, 16, 3, padding=1)
        self.mix, self.bn = nn.Conv2d(32, 32, 3, 2, 1, groups=4), nn.BatchNorm2d(32)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.cat([torch.relu(self.a(x)), torch.relu(self.b(x))], 1)
        return self.fc(torch.relu(self.bn(self.mix(x))).mean((2, 3)))


def cat_grouped(num_classes: int = 10) -> nn.Module:
    """A grouped conv fed by a concatenation of two separately cut convs."""
    return _CatGrouped(num_classes)
