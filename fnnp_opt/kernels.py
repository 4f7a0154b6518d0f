"""Which CPU kernels a network may train with: oneDNN's convolution backward breaks on some thin pruned networks."""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

THIN = 4  # a conv with fewer output channels trains outside oneDNN (below)
NARROW_STRIDED_1X1 = 8  # ... and so does a strided 1x1 conv with fewer input channels


def onednn_unsafe(model: nn.Module, device: torch.device) -> bool:
    """Whether training ``model`` on CPU must leave oneDNN: a network with a conv of fewer than :data:`THIN`
    output channels, or a strided 1x1 conv of fewer than :data:`NARROW_STRIDED_1X1` input channels.

    oneDNN's CPU convolution backward (torch 2.14.1) corrupts the heap or divides by zero on such thin pruned
    networks (candidates of a 15% ResNet-20 search at R 0.8: a 6 -> 11 shortcut at stride 2 over 28 x 28; layers
    kept at 3 channels), killing the process; the contiguous format does not avoid it, since a 1x1 conv's weight
    is laid out as channels-last either way. Those networks train through torch's own kernels, 3-10x slower;
    every other network keeps oneDNN. ``tests/test_training.py`` trains both cases.
    """
    return device.type == "cpu" and any(
        isinstance(m, nn.modules.conv._ConvNd)
        and (
            m.out_channels < THIN
            or (all(k == 1 for k in m.kernel_size) and max(m.stride) > 1 and m.in_channels < NARROW_STRIDED_1X1)
        )
        for m in model.modules()
    )


@contextmanager
def without_onednn() -> Iterator[None]:
    """Run the block with oneDNN's CPU kernels off (torch's own kernels instead)."""
    with warnings.catch_warnings():  # the flag's setter warns about Intel-GPU TF32, on every CPU
        warnings.simplefilter("ignore", UserWarning)
        with torch.backends.mkldnn.flags(enabled=False):
            yield
