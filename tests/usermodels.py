"""Tiny user models (``--model usermodels:<name>``) that replay failures reported for other pruning tools."""

from __future__ import annotations

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
