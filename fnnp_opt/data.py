"""Datasets and the three disjoint uses of them: calibration, search and test.

The training file is split once, by ``split_seed``, into

* the *search split*: held out, scores candidates (never trained on, never calibrated on);
* the *train part*: everything else; fine-tuning and ABN calibration draw from it only.

The test file is loaded separately and is used only for the final report.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generator, Iterator, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from fnnp_opt.datasets import (  # noqa: F401  (re-exported: the formats live in fnnp_opt.datasets)
    DATASETS,
    ArraySource,
    DatasetInfo,
    FolderSource,
    Source,
    fingerprint,
    get_dataset_info,
    load_fashion_mnist,
    read_idx,
    resolve_dataset,
    write_idx,
)
from fnnp_opt.errors import DataError, UsageError

log = logging.getLogger(__name__)

Batch = tuple[torch.Tensor, torch.Tensor]


class EvalBatches(Protocol):
    """Evaluation batches in a fixed order, iterable any number of times, and their count (a list of batches is
    one)."""

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[Batch]: ...


class EvalSet(Protocol):
    """Images scored in a fixed order: the search split, the test set (:class:`TensorSet`, :class:`FolderSet`)."""

    def __len__(self) -> int: ...

    def batches(self, batch_size: int) -> EvalBatches:
        """Consecutive batches of ``batch_size`` images, in order."""
        ...


class TrainSet(Protocol):
    """Images trained on: what :func:`fnnp_opt.training.fit` and the abn-ft score draw batches from
    (:class:`TensorSet`, :class:`FolderSet`)."""

    def __len__(self) -> int: ...

    def shuffled(
        self, batch_size: int, generator: torch.Generator, augment: Augment | None = None
    ) -> Generator[Batch, None, None]:
        """One epoch of shuffled batches (the ragged last batch dropped), augmented when ``augment`` is given."""
        ...

    def subset(self, n: int, seed: int) -> TrainSet:
        """``n`` images drawn without replacement (seeded)."""
        ...


# --------------------------------------------------------------------------- tensors and splits


def _draw(size: int, n: int, seed: int) -> torch.Tensor:
    """Indices of ``min(n, size)`` items of ``size``, drawn without replacement with ``seed``."""
    return torch.randperm(size, generator=torch.Generator().manual_seed(seed))[: min(n, size)]


@dataclass
class TensorSet:
    """Normalised images (N, C, H, W) with integer labels, held in memory."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)

    def batches(self, batch_size: int) -> list[Batch]:
        """Split into consecutive batches, in order."""
        return [(self.x[i : i + batch_size], self.y[i : i + batch_size]) for i in range(0, len(self), batch_size)]

    def subset(self, n: int, seed: int) -> "TensorSet":
        """``n`` images drawn without replacement (seeded), held in memory once."""
        idx = _draw(len(self), n, seed)
        return TensorSet(self.x[idx], self.y[idx])

    def shuffled(
        self, batch_size: int, generator: torch.Generator, augment: "Augment | None" = None
    ) -> Generator[Batch, None, None]:
        """Yield one epoch of shuffled batches, augmented when ``augment`` is given."""
        order = torch.randperm(len(self), generator=generator)
        for i in range(0, len(order) - batch_size + 1, batch_size):  # drop the ragged last batch
            idx = order[i : i + batch_size]
            x = self.x[idx]
            yield (augment(x, generator) if augment else x), self.y[idx]


@dataclass(frozen=True)
class Augment:
    """Random crop after zero padding, plus an optional random horizontal flip, on a batch."""

    padding: int
    hflip: bool

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n, _, h, w = x.shape
        p = self.padding
        if p:
            padded = F.pad(x, (p, p, p, p)).permute(0, 2, 3, 1)  # N, H+2p, W+2p, C
            dy = torch.randint(0, 2 * p + 1, (n,), generator=generator)
            dx = torch.randint(0, 2 * p + 1, (n,), generator=generator)
            rows = (dy[:, None] + torch.arange(h))[:, :, None]
            cols = (dx[:, None] + torch.arange(w))[:, None, :]
            x = padded[torch.arange(n)[:, None, None], rows, cols].permute(0, 3, 1, 2).contiguous()
        if self.hflip:
            flip = torch.rand(n, generator=generator) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
        return x


@dataclass
class DataSplits:
    """Everything a study needs from a dataset, prepared once."""

    info: DatasetInfo
    train: TrainSet  # the train part: fine-tuning data, source of calibration batches
    search: EvalSet  # held out from the training file; scores candidates
    test: EvalSet  # the test file; final report only
    calibration: EvalBatches  # ABN batches drawn from the train part (re-iterable, fixed)
    train_idx: torch.Tensor  # indices of the train part in the training file
    search_idx: torch.Tensor  # indices of the search split in the training file, in its scoring order
    calib_idx: torch.Tensor  # indices of the calibration images in the training file
    fingerprint: str  # digest of the data and of the split parameters
    augment: Augment | None = field(default=None)  # batch augmentation of in-memory sets

    def search_batches(self, batch_size: int) -> EvalBatches:
        return self.search.batches(batch_size)

    def test_batches(self, batch_size: int) -> EvalBatches:
        return self.test.batches(batch_size)


def _normalise(images: np.ndarray, info: DatasetInfo) -> torch.Tensor:
    x = torch.from_numpy(images.copy()).float().div_(255.0)
    mean = torch.tensor(info.mean).view(1, -1, 1, 1)
    std = torch.tensor(info.std).view(1, -1, 1, 1)
    return (x - mean) / std


# --------------------------------------------------------------------------- image folders


def loader_workers() -> int:
    """Decoding processes for image folders: one per thread this process computes with (``--workers N`` gives each
    search process ``cores // N``), at most 8."""
    return min(8, os.cpu_count() or 1, torch.get_num_threads())


class _Images(torch.utils.data.Dataset):
    """Decodes and transforms the images of a :class:`FolderSource` at given indices."""

    def __init__(self, source: FolderSource, idx: np.ndarray, transform) -> None:
        self.source, self.idx, self.transform = source, idx, transform

    def __len__(self) -> int:
        return len(self.idx)

    def __getitem__(self, i: int):
        """Image ``i``; an image that cannot be decoded is skipped with a warning naming it, and the next
        one of this part (in order, wrapping around) stands in, so batches keep their size and a study
        never stops on a broken file."""
        from PIL import Image

        for step in range(len(self.idx)):
            k = int(self.idx[(i + step) % len(self.idx)])
            path = self.source.root / self.source.paths[k]
            try:
                with Image.open(path) as opened:
                    img = opened.convert("RGB")
            except (OSError, ValueError, SyntaxError) as exc:  # PIL's errors for broken and truncated files
                _warn_undecodable(path, exc)
                continue
            return self.transform(img), int(self.source.labels[k])
        raise DataError(f"no image of {self.source.root} could be decoded; replace the files with intact ones")


_UNDECODABLE: set[Path] = set()


def _warn_undecodable(path: Path, exc: Exception) -> None:
    if path not in _UNDECODABLE:  # once per file and process
        _UNDECODABLE.add(path)
        log.warning("skipping image %s: it cannot be decoded (%s); remove or replace it", path, exc)


class FolderSet:
    """Part of an image folder, decoded on the fly by worker processes.

    The same interface as :class:`TensorSet`: ordered batches with the evaluation
    transform (resize, centre crop), shuffled batches with the training one
    (random-resized crop, flip), both normalised.
    """

    def __init__(self, source: FolderSource, idx: np.ndarray, info: DatasetInfo, workers: int | None = None) -> None:
        self.source, self.idx, self.info = source, np.asarray(idx), info
        self.workers = loader_workers() if workers is None else workers

    def __len__(self) -> int:
        return len(self.idx)

    def subset(self, n: int, seed: int) -> "FolderSet":
        """``n`` images drawn without replacement (seeded), decoded on the fly like the rest."""
        return FolderSet(self.source, self.idx[_draw(len(self), n, seed).numpy()], self.info, self.workers)

    def _transform(self, train: bool):
        from torchvision import transforms as T

        size = self.info.image_size
        if train:
            return T.Compose(
                [
                    T.RandomResizedCrop(size),
                    T.RandomHorizontalFlip(),
                    T.ToTensor(),
                    T.Normalize(self.info.mean, self.info.std),
                ]
            )
        # evaluation: resize to 256/224 of the side and centre-crop (the standard ratio), kept as uint8
        return T.Compose([T.Resize(round(size / 0.875)), T.CenterCrop(size), T.PILToTensor()])

    def _loader(self, batch_size: int, train: bool, generator: torch.Generator | None = None):
        return torch.utils.data.DataLoader(
            _Images(self.source, self.idx, self._transform(train)),
            batch_size=batch_size,
            shuffle=train,
            drop_last=train,
            generator=generator,
            num_workers=self.workers,
            worker_init_fn=_end_with_parent,
            # forked, also inside a --workers search process (spawned, so its default would be to spawn: a fresh
            # interpreter importing torch for every abn-ft candidate's loader)
            multiprocessing_context="fork" if self.workers and sys.platform == "linux" else None,
        )

    def batches(self, batch_size: int) -> EvalBatches:
        """Consecutive batches in order, evaluation transform; iterable any number of times.

        The images are decoded once, on the first pass, and kept as uint8 tensors when they fit
        in ``CACHE_BYTES``, so scoring and calibrating many candidates decodes nothing more.
        """
        return _DecodedBatches(self, batch_size)

    def shuffled(
        self, batch_size: int, generator: torch.Generator, augment: "Augment | None" = None
    ) -> Generator[Batch, None, None]:
        """One epoch of shuffled, augmented batches (the ragged last batch dropped)."""
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        yield from _decoded(self._loader(batch_size, train=True, generator=torch.Generator().manual_seed(seed)))


def _decoded(loader: torch.utils.data.DataLoader) -> Iterator[Batch]:
    """The batches of ``loader``; a :class:`DataError` raised in one of its processes comes out as its own one line
    (the DataLoader re-raises it with the worker's traceback as its message)."""
    try:
        yield from loader
    except DataError as exc:
        lines = [line for line in str(exc).splitlines() if line.strip()]
        if len(lines) > 1 and lines[0].startswith("Caught "):
            raise DataError(lines[-1].split(": ", 1)[-1]) from None
        raise


def _end_with_parent(worker: int) -> None:
    """In a decoding process: be killed when the process it decodes for ends, even by SIGKILL (Linux's
    PR_SET_PDEATHSIG), so that no decoder outlives a killed search worker; elsewhere DataLoader's own watchdog
    ends it later."""
    parent = multiprocessing.parent_process()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if parent is not None and os.getppid() != parent.pid:  # it ended before the line above took effect
        os._exit(1)


CACHE_BYTES = 4 << 30  # decoded evaluation images kept in memory per split (uint8), at most


class _DecodedBatches:
    """Evaluation batches of a :class:`FolderSet`, normalised on the fly, decoded only once if they fit."""

    def __init__(self, folder: FolderSet, batch_size: int) -> None:
        self.folder, self.batch_size = folder, batch_size
        size = folder.info.image_size
        self.cache: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        self.cacheable = len(folder) * 3 * size * size <= CACHE_BYTES
        self.mean = torch.tensor(folder.info.mean).view(1, -1, 1, 1) * 255
        self.std = torch.tensor(folder.info.std).view(1, -1, 1, 1) * 255

    def __len__(self) -> int:
        return -(-len(self.folder) // self.batch_size)

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() - self.mean) / self.std

    def __iter__(self) -> Iterator[Batch]:
        if self.cache is not None:
            for x, y in self.cache:
                yield self._normalise(x), y
            return
        kept = []
        for x, y in _decoded(self.folder._loader(self.batch_size, train=False)):
            if self.cacheable:
                kept.append((x, y))
            yield self._normalise(x), y
        if self.cacheable and len(kept) == len(self):
            self.cache = kept


def split_indices(labels: np.ndarray, search_size: int | None, search_per_class: int | None, seed: int) -> np.ndarray:
    """Indices of the search split: ``search_per_class`` images of every class, or ``search_size`` at random.

    They come in one fixed shuffled order (seeded by ``seed``): the order every candidate is scored in, so
    that any prefix of the split, where early stopping ends a score, mixes the classes.
    """
    n = len(labels)
    if search_per_class is not None:
        rng = np.random.default_rng(seed)
        picked = []
        for c in np.unique(labels):
            members = np.flatnonzero(labels == c)
            if search_per_class >= len(members):
                raise UsageError(
                    f"--search-per-class {search_per_class} leaves nothing to train on in class {c} "
                    f"({len(members)} images); lower it"
                )
            picked.append(rng.permutation(members)[:search_per_class])
        return rng.permutation(np.concatenate(picked))
    if not search_size or not 0 < search_size < n:
        raise UsageError(f"--search-size must be in (0, {n}) for this training file, got {search_size}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[:search_size].numpy()


def load_splits(
    dataset: str,
    data_dir: Path | None = None,
    *,
    search_size: int | None = None,
    search_per_class: int | None = None,
    split_seed: int = 0,
    abn_batches: int = 100,
    abn_batch_size: int = 64,
    calib_seed: int = 0,
    image_size: int | None = None,
    limit_train: int | None = None,
    limit_test: int | None = None,
    workers: int | None = None,
) -> DataSplits:
    """Load ``dataset`` and build its disjoint search / train / calibration splits and the test set.

    The search split is ``search_per_class`` images per class, or else ``search_size`` images
    (both ``None``: the dataset's default). ``limit_train`` and ``limit_test`` keep only the
    first images of each file (for tests). ``workers`` decoding processes serve image folders.
    """
    info = resolve_dataset(dataset, data_dir, image_size)
    data_dir = Path(data_dir or info.default_dir)
    train_src, test_src = info.load(data_dir, info)
    if limit_train is not None or limit_test is not None:
        train_src, test_src = _limit(train_src, limit_train), _limit(test_src, limit_test)
    if search_size is None and search_per_class is None:
        search_size, search_per_class = info.search_size, info.search_per_class
    search_idx = split_indices(train_src.labels, search_size, search_per_class, split_seed)
    n = len(train_src.labels)
    train_idx = np.setdiff1d(np.arange(n), search_idx)
    need = abn_batches * abn_batch_size
    if abn_batches < 1 or abn_batch_size < 1 or need > len(train_idx):
        raise UsageError(
            f"--abn-batches x --abn-batch-size must be in [1, {len(train_idx)}] (the train part), "
            f"got {abn_batches} x {abn_batch_size} = {need}"
        )
    pick = torch.randperm(len(train_idx), generator=torch.Generator().manual_seed(calib_seed))[:need].numpy()
    calib_idx = train_idx[pick]

    train: TrainSet
    search: EvalSet
    test: EvalSet
    if info.folder:
        assert isinstance(train_src, FolderSource) and isinstance(test_src, FolderSource)  # what its loader returns
        train, search, calib = (FolderSet(train_src, i, info, workers) for i in (train_idx, search_idx, calib_idx))
        test = FolderSet(test_src, np.arange(len(test_src.labels)), info, workers)
        calibration = calib.batches(abn_batch_size)
        augment = None
    else:
        assert isinstance(train_src, ArraySource) and isinstance(test_src, ArraySource)  # what its loader returns
        x_all = _normalise(train_src.images, info)
        y_all = torch.from_numpy(train_src.labels.astype(np.int64))
        train = TensorSet(x_all[train_idx], y_all[train_idx])
        search = TensorSet(x_all[search_idx], y_all[search_idx])
        test = TensorSet(_normalise(test_src.images, info), torch.from_numpy(test_src.labels.astype(np.int64)))
        calibration = TensorSet(x_all[calib_idx], y_all[calib_idx]).batches(abn_batch_size)
        augment = Augment(info.crop_padding, info.hflip)
    split = f"{dataset}|{search_size}|{split_seed}|{abn_batches}|{abn_batch_size}|{calib_seed}"
    if search_per_class is not None or info.folder:
        split += f"|{search_per_class}|{info.image_size}"
    return DataSplits(
        info=info,
        train=train,
        search=search,
        test=test,
        calibration=calibration,
        train_idx=torch.from_numpy(train_idx),
        search_idx=torch.from_numpy(search_idx),
        calib_idx=torch.from_numpy(calib_idx),
        fingerprint=fingerprint([train_src, test_src], split),
        augment=augment,
    )


def _limit(source: Source, n: int | None) -> Source:
    if n is None:
        return source
    if isinstance(source, ArraySource):
        return ArraySource(source.images[:n], source.labels[:n])
    return FolderSource(source.root, source.paths[:n], source.labels[:n], source.classes)
