"""Run a model the ways fnnp-opt will run it, once, on a copy, when it is loaded (before any data is read).

A study scores networks in eval mode in channels-last layout (accuracy, the latency timings),
recomputes their BN statistics with only the normalisation layers in train mode (adaptive BN),
and fine-tunes deep copies of them in train mode with backward passes. A model whose forward
runs in eval mode in NCHW may still break in one of those; :func:`first_failure` finds which,
so that the run is refused in one line naming it instead of failing after the data is read.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from fnnp_opt.errors import describe

EVAL, CHANNELS_LAST, CALIBRATION, TRAIN = "eval", "channels-last", "calibration", "train"
RUNS = (EVAL, CHANNELS_LAST, CALIBRATION, TRAIN)  # in the order a study runs them
COPY = "copy"  # the run of a :class:`Failure` to deep-copy the model

_HOW = {
    EVAL: "eval mode",
    CHANNELS_LAST: "eval mode in channels-last layout (how fnnp-opt scores and times networks)",
    CALIBRATION: "eval mode with its normalisation layers in train mode (how adaptive BN runs it)",
    TRAIN: "train mode with a backward pass (how fnnp-opt fine-tunes networks)",
}
_REMEDY = {
    COPY: "fnnp-opt prunes and fine-tunes deep copies of it: keep what cannot be copied (locks, open files, "
    "generators) out of its attributes",
    EVAL: "make its forward() run in eval mode in PyTorch",
    CHANNELS_LAST: "make its forward() work on channels-last tensors (torch.flatten or .reshape instead of .view)",
    CALIBRATION: "make its forward() run in eval mode with only its normalisation layers in train mode",
    TRAIN: "make it trainable in PyTorch: forward() in train mode and loss.backward() must run (an in-place "
    "operation on a tensor autograd saved, such as x += y after a ReLU, is a common cause)",
}
_OUTPUT_REMEDY = "make forward() return one logits tensor in every mode (wrap the model; see docs/models.md)"


@dataclass(frozen=True)
class Failure:
    """How a model failed when run as fnnp-opt runs it."""

    run: str  # one of :data:`RUNS`, or :data:`COPY`
    where: str  # " in module 'x'", " in the forward() of Net itself", or "" (unknown, or not in a forward)
    error: str  # the exception in brief, or what the output was
    output: bool = False  # it ran but did not return the logits
    backward: bool = False  # the backward pass failed

    @property
    def how(self) -> str:
        """The way fnnp-opt ran the model, in words."""
        return _HOW[self.run]

    @property
    def place(self) -> str:
        """Where it failed, in words: `` in module 'x'``, `` in the backward pass``, or ""."""
        return " in the backward pass" if self.backward else self.where

    def refusal(self, subject: str) -> str:
        """One line for :class:`~fnnp_opt.errors.ModelError`: ``subject`` (``model 'x'``) fails, why, and the
        remedy."""
        if self.run == COPY:
            return f"{subject} cannot be deep-copied ({self.error}); {_REMEDY[COPY]}"
        remedy = _OUTPUT_REMEDY if self.output else _REMEDY[self.run] + " (see docs/models.md)"
        place = f",{self.place}" if self.place else ""
        return f"{subject} fails in {self.how}{place} ({self.error}); {remedy}"


def runs_until(run: str) -> tuple[str, ...]:
    """The runs of :data:`RUNS` up to ``run`` (only ``eval`` for a run that is not one of them)."""
    return RUNS[: RUNS.index(run) + 1] if run in RUNS else (EVAL,)


def brief(exc: BaseException) -> str:
    """``Type: first line`` of an exception, at most 200 characters of its message."""
    return describe(exc, 200)


class Tracker:
    """Which module a forward pass is inside, to name the one that raised."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.stack: list[str] = []  # the modules whose forward is running, outermost first
        self._handles = []
        for name, m in model.named_modules():
            self._handles.append(m.register_forward_pre_hook(self._enter(name)))
            self._handles.append(m.register_forward_hook(self._leave))

    def _enter(self, name: str):
        def hook(module, args) -> None:
            self.stack.append(name)

        return hook

    def _leave(self, module, args, out) -> None:
        self.stack.pop()

    def where(self) -> str:
        """`` in module 'x'`` (the innermost running), `` in the forward() of Net itself``, or ""."""
        if not self.stack:
            return ""
        m = self.stack[-1]
        return f" in module {m!r}" if m else f" in the forward() of {type(self.model).__name__} itself"

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


@contextmanager
def tracked(model: nn.Module) -> Iterator[Tracker]:
    """A :class:`Tracker` on ``model`` for the duration of the block."""
    tracker = Tracker(model)
    try:
        yield tracker
    finally:
        tracker.remove()


class _WrongOutput(Exception):
    """The model ran but did not return the logits."""


class _InBackward(Exception):
    """The backward pass raised ``exc``."""

    def __init__(self, exc: Exception) -> None:
        super().__init__(str(exc))
        self.exc = exc


def _logits(out: object, want: tuple[int, ...]) -> torch.Tensor:
    if not isinstance(out, torch.Tensor):
        raise _WrongOutput(f"it returned a {type(out).__name__}, not one logits tensor {want}")
    if tuple(out.shape) != want:
        raise _WrongOutput(f"it returned a tensor of shape {tuple(out.shape)}, not logits {want}")
    return out


def _run(model: nn.Module, run: str, x: torch.Tensor, classes: tuple[int, ...]) -> None:
    """Run ``model`` on ``x`` once as a study does in ``run``."""
    from fnnp_opt.evaluate import calibration_mode
    from fnnp_opt.kernels import onednn_unsafe, without_onednn

    want = (x.shape[0], *classes)
    if run == EVAL:
        with torch.inference_mode():  # as accuracy() runs it
            _logits(model.eval()(x), want)
    elif run == CHANNELS_LAST:
        model.eval().to(memory_format=torch.channels_last)
        with torch.inference_mode():
            _logits(model(x.contiguous(memory_format=torch.channels_last)), want)
        model.to(memory_format=torch.contiguous_format)
    elif run == CALIBRATION:
        calibration_mode(model)
        with torch.no_grad():  # as calibrate_bn() runs it
            _logits(model(x), want)
    else:  # as fit() runs it: channels-last unless the network must leave oneDNN
        unsafe = onednn_unsafe(model, torch.device("cpu"))
        layout = torch.contiguous_format if unsafe else torch.channels_last
        model.train().to(memory_format=layout)
        with without_onednn() if unsafe else nullcontext():
            logits = _logits(model(x.contiguous(memory_format=layout)), want)
            # a classifier's loss; any other output (a dense prediction) backpropagates a scalar of its values
            flat = logits.dim() == 2
            loss = F.cross_entropy(logits, torch.zeros(len(x), dtype=torch.long)) if flat else logits.float().square().mean()
            try:
                loss.backward()
            except Exception as exc:
                raise _InBackward(exc) from exc
        model.zero_grad(set_to_none=True)
        model.eval().to(memory_format=torch.contiguous_format)


def first_failure(
    model: nn.Module,
    example: torch.Tensor,
    classes: tuple[int, ...],
    runs: tuple[str, ...] = RUNS,
    copied: bool = False,
) -> Failure | None:
    """The first of ``runs`` in which ``model`` fails on ``example``'s shape, or None when it runs in all.

    ``classes`` is the shape of one sample's logits (``(10,)``). The model is deep-copied first (a
    failure to copy is reported too) unless ``copied`` says it is a copy already, which is then
    changed (its BN statistics, its mode). The calibration and train runs use a batch of two: train-mode
    BN needs more than one value per channel.
    """
    if not copied:
        try:
            model = copy.deepcopy(model)
        except Exception as exc:
            return Failure(COPY, "", brief(exc))
    pair = example[:1].expand(2, *example.shape[1:]).clone()
    for run in runs:
        with tracked(model) as tracker, torch.random.fork_rng(devices=[]):  # dropout draws leave the seed alone
            try:
                _run(model, run, pair if run in (CALIBRATION, TRAIN) else example, classes)
            except _WrongOutput as exc:
                return Failure(run, "", str(exc), output=True)
            except _InBackward as exc:
                return Failure(run, "", brief(exc.exc), backward=True)
            except Exception as exc:
                return Failure(run, tracker.where(), brief(exc))
    return None
