"""Datasets and the three disjoint uses of them: calibration, search and test.

The training file is split once, by ``split_seed``, into

* the *search split*: held out, scores candidates (never trained on, never calibrated on);
* the *train part*: everything else; fine-tuning and ABN calibration draw from it only.

The test file is loaded separately and is used only for the final report.
"""

from __future__ import annotations

import gzip
import hashlib
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from fnnp_opt.errors import DataError, UsageError

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class DatasetInfo:
    """What fnnp-opt knows about a dataset."""

    name: str  # registry key, e.g. "fashion-mnist"
    in_channels: int  # image channels
    num_classes: int  # label count
    image_size: int  # side of the square input
    mean: tuple[float, ...]  # per-channel normalisation mean
    std: tuple[float, ...]  # per-channel normalisation std
    default_dir: str  # where the files are looked for by default
    crop_padding: int  # padding for the random-crop training augmentation
    hflip: bool  # whether random horizontal flips are a valid augmentation
    how_to_get: str  # remedy printed when the files are missing


DATASETS: dict[str, DatasetInfo] = {
    "fashion-mnist": DatasetInfo(
        name="fashion-mnist",
        in_channels=1,
        num_classes=10,
        image_size=28,
        mean=(0.2860,),
        std=(0.3530,),
        default_dir="/usr/share/datasets/fashion-mnist",
        crop_padding=2,
        hflip=True,
        how_to_get="install it with `apt-get install dataset-fashion-mnist` "
        "or pass --data-dir pointing at a folder with the four IDX files",
    ),
}

_FMNIST_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}


def get_dataset_info(name: str) -> DatasetInfo:
    """Return the registry entry for ``name`` or raise :class:`UsageError`."""
    if name not in DATASETS:
        raise UsageError(f"unknown dataset {name!r}; choose one of: {', '.join(sorted(DATASETS))}")
    return DATASETS[name]


# --------------------------------------------------------------------------- IDX files


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed) into a uint8 array."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"{path} could not be read ({exc}); replace it with an intact IDX file") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path} is not an unsigned-byte IDX file (bad magic number)")
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise DataError(f"{path} holds {data.size} bytes but its header promises shape {dims}; it is truncated")
    return data.reshape(dims)


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as an IDX file; gzip-compressed when ``path`` ends in .gz."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(header + array.tobytes())


def _find(data_dir: Path, stem: str, info: DatasetInfo) -> Path:
    for candidate in (data_dir / f"{stem}.gz", data_dir / stem):
        if candidate.is_file():
            return candidate
    raise DataError(f"{info.name} file {stem}[.gz] is missing from {data_dir}; {info.how_to_get}")


def load_fashion_mnist(data_dir: Path) -> dict[str, np.ndarray]:
    """Load the four Fashion-MNIST arrays from ``data_dir``."""
    info = DATASETS["fashion-mnist"]
    if not data_dir.is_dir():
        raise DataError(f"{info.name} folder {data_dir} does not exist; {info.how_to_get}")
    arrays = {k: read_idx(_find(data_dir, stem, info)) for k, stem in _FMNIST_FILES.items()}
    for part in ("train", "test"):
        x, y = arrays[f"{part}_x"], arrays[f"{part}_y"]
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise DataError(f"{info.name} {part} images {x.shape} and labels {y.shape} do not match in {data_dir}")
    return arrays


# --------------------------------------------------------------------------- tensors and splits


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

    def shuffled(
        self, batch_size: int, generator: torch.Generator, augment: "Augment | None" = None
    ) -> Iterator[Batch]:
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
    train: TensorSet  # the train part: fine-tuning data, source of calibration batches
    search: TensorSet  # held out from the training file; scores candidates
    test: TensorSet  # the test file; final report only
    calibration: list[Batch]  # ABN batches drawn from the train part
    train_idx: torch.Tensor  # indices of the train part in the training file
    search_idx: torch.Tensor  # indices of the search split in the training file
    calib_idx: torch.Tensor  # indices of the calibration images in the training file
    fingerprint: str  # digest of the data and of the split parameters
    augment: Augment = field(default=Augment(0, False))

    def search_batches(self, batch_size: int) -> list[Batch]:
        return self.search.batches(batch_size)

    def test_batches(self, batch_size: int) -> list[Batch]:
        return self.test.batches(batch_size)


def _normalise(images: np.ndarray, info: DatasetInfo) -> torch.Tensor:
    x = torch.from_numpy(images.copy()).float().div_(255.0)
    if x.ndim == 3:
        x = x.unsqueeze(1)
    mean = torch.tensor(info.mean).view(1, -1, 1, 1)
    std = torch.tensor(info.std).view(1, -1, 1, 1)
    return (x - mean) / std


def load_splits(
    dataset: str,
    data_dir: Path | None = None,
    *,
    search_size: int = 5000,
    split_seed: int = 0,
    abn_batches: int = 100,
    abn_batch_size: int = 64,
    calib_seed: int = 0,
    limit_train: int | None = None,
    limit_test: int | None = None,
) -> DataSplits:
    """Load ``dataset`` and build its disjoint search / train / calibration splits and the test set.

    ``limit_train`` and ``limit_test`` keep only the first images of each file (for tests).
    """
    info = get_dataset_info(dataset)
    data_dir = Path(data_dir or info.default_dir)
    arrays = load_fashion_mnist(data_dir)
    train_x, train_y = arrays["train_x"][:limit_train], arrays["train_y"][:limit_train]
    test_x, test_y = arrays["test_x"][:limit_test], arrays["test_y"][:limit_test]
    n = len(train_y)
    if not 0 < search_size < n:
        raise UsageError(f"--search-size must be in (0, {n}) for {dataset}, got {search_size}")
    need = abn_batches * abn_batch_size
    if abn_batches < 1 or abn_batch_size < 1 or need > n - search_size:
        raise UsageError(
            f"--abn-batches x --abn-batch-size must be in [1, {n - search_size}] (the train part), "
            f"got {abn_batches} x {abn_batch_size} = {need}"
        )
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(split_seed))
    search_idx, train_idx = perm[:search_size].sort().values, perm[search_size:].sort().values
    pick = torch.randperm(len(train_idx), generator=torch.Generator().manual_seed(calib_seed))[:need]
    calib_idx = train_idx[pick]

    x_all = _normalise(train_x, info)
    y_all = torch.from_numpy(train_y.astype(np.int64))
    train = TensorSet(x_all[train_idx], y_all[train_idx])
    search = TensorSet(x_all[search_idx], y_all[search_idx])
    test = TensorSet(_normalise(test_x, info), torch.from_numpy(test_y.astype(np.int64)))
    calib = TensorSet(x_all[calib_idx], y_all[calib_idx]).batches(abn_batch_size)

    h = hashlib.sha256()
    for arr in (train_x, train_y, test_x, test_y):
        h.update(np.ascontiguousarray(arr).tobytes())
    h.update(f"{dataset}|{search_size}|{split_seed}|{abn_batches}|{abn_batch_size}|{calib_seed}".encode())
    return DataSplits(
        info=info,
        train=train,
        search=search,
        test=test,
        calibration=calib,
        train_idx=train_idx,
        search_idx=search_idx,
        calib_idx=calib_idx,
        fingerprint=h.hexdigest()[:16],
        augment=Augment(info.crop_padding, info.hflip),
    )
