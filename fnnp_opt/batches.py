"""The user's own data as fnnp-opt's batches: any iterable of ``x`` or ``(x, y)`` batches (a DataLoader, a list).

fnnp-opt's own datasets (:mod:`fnnp_opt.data`) are read from files; the Python API takes what the user already
has. These adapters hold only what the method needs: a fixed list of batches for ABN calibration and scoring
(every candidate must see the same images), and a train set that :func:`fnnp_opt.training.fit` can iterate.
"""

from __future__ import annotations

from typing import Generator, Iterable, Sized

import torch

from fnnp_opt.data import Augment, Batch
from fnnp_opt.errors import UsageError

_NO_LABELS = torch.zeros(0, dtype=torch.long)


def as_batch(batch: object, argument: str) -> Batch:
    """``batch`` as ``(x, y)``: ``x`` alone (calibration needs no labels; ``y`` is then empty), a pair, or a
    longer tuple whose first two items are ``x`` and ``y`` (a dataset that also yields paths or masks).

    Raises :class:`UsageError` naming ``argument`` when ``batch`` holds no tensor ``x``.
    """
    if isinstance(batch, torch.Tensor):
        return batch, _NO_LABELS
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        y = batch[1] if len(batch) > 1 and isinstance(batch[1], torch.Tensor) else _NO_LABELS
        return batch[0], y
    if isinstance(batch, dict):
        raise UsageError(
            f"{argument} yields dicts (keys {sorted(batch)[:4]}); pass batches as tensors x or tuples (x, y), e.g. "
            "wrap the loader: ((b['image'], b['label']) for b in loader)"
        )
    raise UsageError(f"{argument} yields a {type(batch).__name__}, not a tensor x or a tuple (x, y) of tensors")


def take(batches: Iterable, n: int | None, argument: str, labels: bool = False) -> list[Batch]:
    """The first ``n`` batches of ``batches`` (all with ``n`` None), held as a list so that every candidate sees the
    same images. ``labels``: each batch must hold ``y`` (top-1 accuracy needs it).

    Raises :class:`UsageError` naming ``argument`` when ``batches`` is not iterable, is empty or, with ``labels``,
    has a batch without labels.
    """
    try:
        it = iter(batches)
    except TypeError:
        raise UsageError(
            f"{argument} must be an iterable of batches (a DataLoader, a list of tensors or (x, y) tuples), got a "
            f"{type(batches).__name__}"
        ) from None
    out: list[Batch] = []
    for batch in it:
        if n is not None and len(out) >= n:
            break
        x, y = as_batch(batch, argument)
        if labels and y.numel() == 0:
            raise UsageError(f"{argument} yields batches without labels; top-1 accuracy needs (x, y) batches")
        out.append((x, y))
    if not out:
        raise UsageError(f"{argument} yields no batch; pass at least one")
    return out


class LoaderSet:
    """A DataLoader (or any re-iterable of ``(x, y)`` batches) as a train set of :func:`fnnp_opt.training.fit`.

    Each epoch iterates the loader once, in its own order, batch size and augmentation; ``batch_size``,
    ``generator`` and ``augment`` of :meth:`shuffled` are not used (the loader decides them). ``len()`` is
    ``steps x batch_size``, so that ``fit`` plans its learning-rate schedule over the loader's steps.
    """

    def __init__(self, loader: Iterable, batch_size: int) -> None:
        try:
            if not isinstance(loader, Sized):  # a generator, an iterator
                raise TypeError
            self.steps = len(loader)  # also a TypeError: a DataLoader of an IterableDataset without a length
        except TypeError:
            raise UsageError(
                f"train_loader must have a length (a DataLoader or a list of batches), got a {type(loader).__name__}"
            ) from None
        if self.steps == 0:
            raise UsageError("train_loader yields no batch; pass at least one")
        self.loader, self.batch_size = loader, batch_size

    def __len__(self) -> int:
        return self.steps * self.batch_size

    def shuffled(
        self, batch_size: int, generator: torch.Generator, augment: Augment | None = None
    ) -> Generator[Batch, None, None]:
        for batch in self.loader:
            x, y = as_batch(batch, "train_loader")
            if y.numel() == 0:
                raise UsageError("train_loader yields batches without labels; the fine-tune needs (x, y) batches")
            yield x, y

    def subset(self, n: int, seed: int) -> "LoaderSet":
        """The loader's first batches holding at least ``n`` images (the short fine-tune of abn-ft), in memory."""
        held = take(self.loader, -(-n // self.batch_size), "train", labels=True)
        return LoaderSet(held, self.batch_size)
