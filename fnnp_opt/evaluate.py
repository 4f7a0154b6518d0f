"""The one batch loop, plain accuracy, adaptive-BN calibration and latency."""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from torch import nn

from fnnp_opt.data import Batch, EvalBatches
from fnnp_opt.errors import FnnpError
from fnnp_opt.progress import NULL, Progress


class NonFiniteError(FnnpError):
    """Raised when a network produces NaN or inf (statistics or logits)."""


def to_device(batch: Batch, device: torch.device, memory_format=torch.contiguous_format) -> Batch:
    x, y = batch
    x = x.to(device, non_blocking=True).contiguous(memory_format=memory_format)
    return x, y.to(device, non_blocking=True)


def count_correct(logits: torch.Tensor, y: torch.Tensor) -> int:
    """Number of top-1 hits in a batch; raises :class:`NonFiniteError` on NaN/inf logits."""
    if not torch.isfinite(logits).all():
        raise NonFiniteError("the network produced NaN or inf logits")
    return int((logits.argmax(1) == y).sum())


def in_layout(model: nn.Module, memory_format: torch.memory_format) -> nn.Module:
    """Put ``model``'s parameters and buffers in ``memory_format``, as ordinary tensors even when called under
    ``torch.inference_mode`` (an inference tensor cannot be trained, nor traced again by Torch-Pruning: the
    user's model must come out of a scoring pass as trainable as it went in)."""
    with torch.inference_mode(False):
        return model.to(memory_format=memory_format)


def run_batches(
    model: nn.Module,
    batches: Iterable[Batch],
    device: torch.device,
    step: Callable[[torch.Tensor, torch.Tensor], None],
    progress: Progress = NULL,
    description: str = "",
    total: int | None = None,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> None:
    """Move each batch to ``device`` in ``memory_format``, call ``step(x, y)``, and report progress.

    The model's parameters are put in the same memory format, so the convolutions
    need no layout conversions.
    """
    in_layout(model, memory_format)
    with progress.task(description, total) as advance:
        for batch in batches:
            x, y = to_device(batch, device, memory_format)
            step(x, y)
            advance(1)


def _restoring_mode(fn):
    def wrapped(model: nn.Module, *args, **kwargs):
        was_training = model.training
        try:
            return fn(model, *args, **kwargs)
        finally:
            model.train(was_training)

    wrapped.__doc__, wrapped.__name__ = fn.__doc__, fn.__name__
    return wrapped


@_restoring_mode
@torch.inference_mode()
def accuracy(
    model: nn.Module,
    batches: EvalBatches,
    device: torch.device | str = "cpu",
    progress: Progress = NULL,
    description: str = "evaluate",
    amp: bool = False,
) -> float:
    """Top-1 accuracy of ``model`` in eval mode over ``batches``; ``amp``: under :func:`autocast` (CUDA only)."""
    model.eval()
    hits = seen = 0

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        nonlocal hits, seen
        hits += count_correct(model(x), y)
        seen += len(y)

    # inference is up to 2x faster in channels-last layout on CPUs (benchmarks/trial_cost.py)
    dev = torch.device(device)
    with autocast(dev, amp):
        run_batches(model, batches, dev, step, progress, description, len(batches), torch.channels_last)
    return hits / max(seen, 1)


@dataclass(frozen=True)
class Scored:
    """The outcome of :func:`accuracy_in_steps`."""

    accuracy: float  # top-1 accuracy over the images seen
    images: int  # images seen
    stopped: bool  # True when ``stop`` ended the pass before the last batch


@_restoring_mode
@torch.inference_mode()
def accuracy_in_steps(
    model: nn.Module,
    batches: Iterable[Batch],
    device: torch.device | str,
    step_batches: int,
    stop: Callable[[int, float], bool],
    amp: bool = False,
) -> Scored:
    """Top-1 accuracy of ``model`` in eval mode over ``batches`` in their order, step by step.

    A step is ``step_batches`` consecutive batches (the last may hold fewer). After each step,
    ``stop(step, accuracy_of_that_step)`` is called with the step's index (0, 1, ...); when it
    returns True before the last batch, the pass ends there. The steps are the same images for
    every model scored on the same ``batches``, so per-step accuracies pair across models (what
    a Wilcoxon signed-rank test needs). ``amp``: under :func:`autocast` (CUDA only).
    """
    model.eval()
    dev = torch.device(device)
    in_layout(model, torch.channels_last)
    hits = seen = step = step_hits = step_seen = in_step = 0
    it = iter(batches)
    batch = next(it, None)
    with autocast(dev, amp):
        while batch is not None:
            x, y = to_device(batch, dev, torch.channels_last)
            h = count_correct(model(x), y)
            hits, seen, step_hits, step_seen, in_step = (
                hits + h,
                seen + len(y),
                step_hits + h,
                step_seen + len(y),
                in_step + 1,
            )
            batch = next(it, None)
            if in_step == step_batches or batch is None:
                if stop(step, step_hits / step_seen) and batch is not None:
                    return Scored(hits / seen, seen, True)
                step, step_hits, step_seen, in_step = step + 1, 0, 0, 0
    return Scored(hits / max(seen, 1), seen, False)


def autocast(device: torch.device, enabled: bool = True):
    """bf16 autocast on a CUDA ``device`` that supports it (fp16 on older GPUs) when ``enabled``; elsewhere a
    no-op. Normalisation layers keep fp32 statistics under it."""
    if not enabled or device.type != "cuda":
        return nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def resident(batches: EvalBatches, device: torch.device | str) -> EvalBatches:
    """``batches`` held on a CUDA ``device`` once (moved there a single time, then reused by every candidate);
    on other devices, ``batches`` unchanged."""
    dev = torch.device(device)
    if dev.type != "cuda":
        return batches
    return [(x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)) for x, y in batches]


def chance_level(batches: Iterable[Batch]) -> float:
    """The accuracy of always guessing the commonest label of ``batches``: the floor a trained model beats."""
    labels = torch.cat([y for _, y in batches])
    return float(torch.bincount(labels).max()) / max(len(labels), 1)


def norm_layers(model: nn.Module) -> list[nn.modules.batchnorm._NormBase]:
    """The normalisation layers that keep running statistics: what adaptive BN recomputes.

    BatchNorm (any dimension, SyncBatchNorm) and InstanceNorm with ``track_running_stats=True``.
    A layer built with ``track_running_stats=False`` always normalises with its batch's statistics;
    it has nothing to recompute and is left out. An empty list means ABN changes nothing.
    """
    return [
        m
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats and m.running_mean is not None
    ]


@contextmanager
def bn_momentum(model: nn.Module, momentum: float | None, reset: bool = False):
    """Within the block, every layer of :func:`norm_layers` updates its statistics with ``momentum``
    (None: the cumulative average), after resetting them when ``reset``; the momenta are restored
    after. Yields those layers."""
    layers = norm_layers(model)
    saved = [m.momentum for m in layers]
    for m in layers:
        if reset:
            m.reset_running_stats()
        m.momentum = momentum
    try:
        yield layers
    finally:
        for m, mom in zip(layers, saved):
            m.momentum = mom


def calibration_mode(model: nn.Module) -> None:
    """Put ``model`` in eval mode except its :func:`norm_layers`, which collect statistics.

    The network then computes exactly what evaluation computes (dropout, stochastic depth and
    any other train-only behaviour off), so the statistics are those of the network that will
    be scored. Restore the mode with ``model.train(...)`` afterwards.
    """
    model.eval()
    for m in norm_layers(model):
        m.train()


@_restoring_mode
@torch.no_grad()
def calibrate_bn(
    model: nn.Module,
    batches: EvalBatches,
    device: torch.device | str = "cpu",
    momentum: float | None = None,
    progress: Progress = NULL,
    amp: bool = False,
) -> None:
    """Adaptive BN: reset the running statistics of every :func:`norm_layers` layer and recompute them.

    The network runs in eval mode with only those layers in train mode (:func:`calibration_mode`),
    without gradients, over ``batches``; only their buffers change. ``momentum=None`` gives the
    exact cumulative average over the batches; a float gives the usual exponential moving average.
    ``amp``: the passes run under :func:`autocast` (CUDA only); the statistics stay fp32.

    Raises:
        NonFiniteError: the recomputed statistics hold NaN or inf.
    """
    with bn_momentum(model, momentum, reset=True) as layers:
        calibration_mode(model)
        dev = torch.device(device)
        with autocast(dev, amp):
            run_batches(model, batches, dev, lambda x, y: model(x), progress, "ABN", len(batches))
    for m in layers:
        if not (torch.isfinite(m.running_mean).all() and torch.isfinite(m.running_var).all()):
            raise NonFiniteError("adaptive BN produced NaN or inf running statistics")


def abn_accuracy(
    model: nn.Module,
    calibration: EvalBatches,
    search: EvalBatches,
    device: torch.device | str = "cpu",
    progress: Progress = NULL,
) -> float:
    """Calibrate BN on ``calibration`` batches, then score on ``search`` batches."""
    calibrate_bn(model, calibration, device, progress=progress)
    return accuracy(model, search, device, progress, "score")
