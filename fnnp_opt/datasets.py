"""The datasets fnnp-opt reads, in their published on-disk formats, from local files only.

* ``fashion-mnist``: the four IDX files (optionally gzipped), Debian's ``dataset-fashion-mnist``;
* ``cifar10`` / ``cifar100``: the "python version" pickled batches;
* ``imagenet``: an ImageFolder tree, ``train/<wnid>/*.JPEG`` and ``val/<wnid>/*.JPEG``;
* ``folder``: any ImageFolder tree, ``train/<class>/*`` and ``val/<class>/*`` (or ``test/``).

Each loader returns the training file and the test file as :class:`Source` objects;
:mod:`fnnp_opt.data` splits them. Nothing is ever downloaded.
"""

from __future__ import annotations

import gzip
import hashlib
import pickle
import struct
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np

from fnnp_opt.errors import DataError, UsageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp", ".tif", ".tiff")


@dataclass(frozen=True)
class ArraySource:
    """A whole file held in memory: uint8 images (N, C, H, W) and integer labels."""

    images: np.ndarray
    labels: np.ndarray  # as stored in the file (hashed as such, so study fingerprints stay stable)

    def digest(self, h) -> None:
        h.update(np.ascontiguousarray(self.images).tobytes())
        h.update(np.ascontiguousarray(self.labels).tobytes())


@dataclass(frozen=True)
class FolderSource:
    """Image files listed from an ImageFolder tree, decoded on demand."""

    root: Path
    paths: tuple[str, ...]  # relative to root
    labels: np.ndarray
    classes: tuple[str, ...]

    def digest(self, h) -> None:  # the file list and sizes: hashing every image would take hours on ImageNet
        for rel, label in zip(self.paths, self.labels.tolist()):
            h.update(f"{rel}|{label}|{(self.root / rel).stat().st_size}\n".encode())


Source = ArraySource | FolderSource


@dataclass(frozen=True)
class DatasetInfo:
    """What fnnp-opt knows about a dataset."""

    name: str  # registry key, e.g. "fashion-mnist"
    in_channels: int  # image channels
    num_classes: int  # label count (for image folders: found in the tree; 0 until then)
    image_size: int  # side of the square network input
    mean: tuple[float, ...]  # per-channel normalisation mean
    std: tuple[float, ...]  # per-channel normalisation std
    default_dir: str  # where the files are looked for by default
    how_to_get: str  # remedy printed when the files are missing
    load: Callable[[Path, "DatasetInfo"], tuple[Source, Source]]  # (training file, test file)
    folder: bool = False  # an ImageFolder tree, decoded on the fly (else arrays in memory)
    crop_padding: int = 0  # arrays: padding of the random-crop augmentation
    hflip: bool = True  # random horizontal flips are a valid augmentation
    search_size: int = 5000  # images held out from train to score candidates (the default)
    search_per_class: int | None = None  # ... or this many per class (ImageNet: the paper's 10)


# --------------------------------------------------------------------------- IDX (Fashion-MNIST)


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


_FMNIST_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}


def _need_dir(data_dir: Path, info: DatasetInfo) -> None:
    if not data_dir.is_dir():
        raise DataError(f"{info.name} folder {data_dir} does not exist; {info.how_to_get}")


def load_fashion_mnist(data_dir: Path) -> dict[str, np.ndarray]:
    """Load the four Fashion-MNIST arrays from ``data_dir``."""
    info = DATASETS["fashion-mnist"]
    _need_dir(data_dir, info)
    arrays = {}
    for key, stem in _FMNIST_FILES.items():
        path = next((p for p in (data_dir / f"{stem}.gz", data_dir / stem) if p.is_file()), None)
        if path is None:
            raise DataError(f"{info.name} file {stem}[.gz] is missing from {data_dir}; {info.how_to_get}")
        arrays[key] = read_idx(path)
    for part in ("train", "test"):
        x, y = arrays[f"{part}_x"], arrays[f"{part}_y"]
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise DataError(f"{info.name} {part} images {x.shape} and labels {y.shape} do not match in {data_dir}")
    return arrays


def _fmnist_sources(data_dir: Path, info: DatasetInfo) -> tuple[Source, Source]:
    a = load_fashion_mnist(data_dir)
    train, test = (ArraySource(a[f"{p}_x"][:, None], a[f"{p}_y"]) for p in ("train", "test"))
    return train, test


# --------------------------------------------------------------------------- CIFAR pickles


class _ArraysOnly(pickle.Unpickler):
    """Unpickles the CIFAR batches' dicts, lists and numpy arrays, and refuses any other object."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 store raw bytes
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def read_cifar_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR "python version" batch: (uint8 images N x 3 x 32 x 32, int64 labels)."""
    try:
        with open(path, "rb") as f:
            batch = _ArraysOnly(f, encoding="bytes").load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError) as exc:
        raise DataError(f"{path} could not be read ({exc}); replace it with the batch file of the CIFAR archive")
    if not isinstance(batch, dict):
        raise DataError(f"{path} is not a CIFAR batch (a pickled dict); replace it with the archive's file")
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if "data" not in batch or label_key not in batch:
        raise DataError(f"{path} has no 'data' and {label_key!r} entries; is it a batch of the right CIFAR?")
    data = np.asarray(batch["data"], dtype=np.uint8)
    labels = np.asarray(batch[label_key], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(labels):
        raise DataError(f"{path}: data {data.shape} and labels {labels.shape} are not CIFAR's N x 3072 and N")
    return data.reshape(-1, 3, 32, 32), labels


def write_cifar_batch(path: Path, images: np.ndarray, labels: np.ndarray, label_key: str = "labels") -> None:
    """Write images (N x 3 x 32 x 32 uint8) as a CIFAR "python version" batch (bytes keys, as published)."""
    data = np.ascontiguousarray(images, dtype=np.uint8).reshape(len(images), 3072)
    batch = {b"batch_label": b"fnnp-opt", b"data": data, label_key.encode(): [int(v) for v in labels]}
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=2)


def _cifar_dir(data_dir: Path, sub: str, info: DatasetInfo) -> Path:
    _need_dir(data_dir, info)
    return data_dir / sub if (data_dir / sub).is_dir() else data_dir


def _cifar_sources(files: tuple[list[str], list[str]], sub: str, label_key: str):
    def load(data_dir: Path, info: DatasetInfo) -> tuple[Source, Source]:
        folder = _cifar_dir(data_dir, sub, info)
        parts = []
        for names in files:
            missing = [n for n in names if not (folder / n).is_file()]
            if missing:
                raise DataError(f"{info.name} files {missing} are missing from {folder}; {info.how_to_get}")
            xs, ys = zip(*(read_cifar_batch(folder / n, label_key) for n in names))
            parts.append(ArraySource(np.concatenate(xs), np.concatenate(ys)))
        return parts[0], parts[1]

    return load


# --------------------------------------------------------------------------- image folders


def _list_classes(folder: Path) -> list[str]:
    return sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


def _folder_part(root: Path, part: str, classes: list[str], info: DatasetInfo) -> FolderSource:
    index = {c: i for i, c in enumerate(classes)}
    base = root / part
    paths, labels = [], []
    for name in _list_classes(base):
        if name not in index:
            raise DataError(
                f"{info.name}: class folder {base / name} has no counterpart in {root / 'train'}; "
                "every evaluation class must be a training class"
            )
        files = sorted(p for p in (base / name).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        if not files and part == "train":  # it would still be a class, one the network never sees
            raise DataError(
                f"{info.name}: class folder {base / name} holds no image ({', '.join(IMAGE_EXTENSIONS)}); add its "
                "images or remove the folder"
            )
        paths += [str(p.relative_to(root)) for p in files]
        labels += [index[name]] * len(files)
    if not paths:
        raise DataError(f"{info.name}: no images under {base}/<class>/; {info.how_to_get}")
    return FolderSource(root, tuple(paths), np.asarray(labels, dtype=np.int64), tuple(classes))


def folder_classes(data_dir: Path, info: DatasetInfo) -> list[str]:
    """The class names of an ImageFolder tree: the sub-folders of ``train/``."""
    _need_dir(data_dir, info)
    if not (data_dir / "train").is_dir():
        raise DataError(f"{info.name}: {data_dir} has no train/ folder; {info.how_to_get}")
    classes = _list_classes(data_dir / "train")
    if len(classes) < 2:
        raise DataError(f"{info.name}: {data_dir / 'train'} needs at least two class folders, found {len(classes)}")
    return classes


def _folder_sources(data_dir: Path, info: DatasetInfo) -> tuple[Source, Source]:
    classes = folder_classes(data_dir, info)
    test_part = next((p for p in ("val", "test") if (data_dir / p).is_dir()), None)
    if test_part is None:
        raise DataError(f"{info.name}: {data_dir} has no val/ (or test/) folder; {info.how_to_get}")
    return _folder_part(data_dir, "train", classes, info), _folder_part(data_dir, test_part, classes, info)


# --------------------------------------------------------------------------- registry

_CIFAR_HOWTO = (
    "on a machine with internet access, download {archive} from https://www.cs.toronto.edu/~kriz/cifar.html, "
    "extract it here or pass --data-dir pointing at the extracted {sub}/ folder"
)
_FOLDER_HOWTO = "put images in {dir}/train/<class>/ and {dir}/val/<class>/ (one folder per class), or pass --data-dir"


def _cifar(name, classes, mean, std, sub, archive, files, label_key) -> DatasetInfo:
    """A CIFAR dataset: 3 x 32 x 32 pickled batches, pad-4 random crop and flip."""
    return DatasetInfo(
        name=name,
        in_channels=3,
        num_classes=classes,
        image_size=32,
        mean=mean,
        std=std,
        default_dir=f"data/{sub}",
        how_to_get=_CIFAR_HOWTO.format(archive=archive, sub=sub),
        load=_cifar_sources(files, sub, label_key),
        crop_padding=4,
    )


def _image_folder(name: str, classes: int, default_dir: str, how_to_get: str) -> DatasetInfo:
    """An ImageFolder tree with ImageNet's statistics, 224 px, 10 images per class held out."""
    return DatasetInfo(
        name=name,
        in_channels=3,
        num_classes=classes,
        image_size=224,
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        default_dir=default_dir,
        how_to_get=how_to_get,
        load=_folder_sources,
        folder=True,
        search_per_class=10,
    )


DATASETS: dict[str, DatasetInfo] = {
    "fashion-mnist": DatasetInfo(
        name="fashion-mnist",
        in_channels=1,
        num_classes=10,
        image_size=28,
        mean=(0.2860,),
        std=(0.3530,),
        default_dir="/usr/share/datasets/fashion-mnist",
        how_to_get="install it with `apt-get install dataset-fashion-mnist` "
        "or pass --data-dir pointing at a folder with the four IDX files",
        load=_fmnist_sources,
        crop_padding=2,
    ),
    "cifar10": _cifar(
        "cifar10",
        10,
        (0.4914, 0.4822, 0.4465),
        (0.2470, 0.2435, 0.2616),
        "cifar-10-batches-py",
        "cifar-10-python.tar.gz",
        ([f"data_batch_{i}" for i in range(1, 6)], ["test_batch"]),
        "labels",
    ),
    "cifar100": _cifar(
        "cifar100",
        100,
        (0.5071, 0.4865, 0.4409),
        (0.2673, 0.2564, 0.2762),
        "cifar-100-python",
        "cifar-100-python.tar.gz",
        (["train"], ["test"]),
        "fine_labels",
    ),
    "imagenet": _image_folder(
        "imagenet",
        1000,
        "data/imagenet",
        _FOLDER_HOWTO.format(dir="data/imagenet")
        + " (ILSVRC2012: the validation images sorted into their class folders)",
    ),
    "folder": _image_folder("folder", 0, "data/folder", _FOLDER_HOWTO.format(dir="<--data-dir>")),
}


def get_dataset_info(name: str) -> DatasetInfo:
    """Return the registry entry for ``name`` or raise :class:`UsageError`."""
    if name not in DATASETS:
        raise UsageError(f"unknown dataset {name!r}; choose one of: {', '.join(sorted(DATASETS))}")
    return DATASETS[name]


def resolve_dataset(name: str, data_dir: Path | None = None, image_size: int | None = None) -> DatasetInfo:
    """The dataset's entry with what depends on its files: the class count of an image folder, the input size."""
    info = get_dataset_info(name)
    if image_size is not None and image_size != info.image_size:
        if not info.folder:
            raise UsageError(
                f"--image-size {image_size}: {name} images are {info.image_size}px and are not resized; "
                "--image-size applies to image folders (imagenet, folder)"
            )
        if image_size < 8:
            raise UsageError(f"--image-size must be at least 8 pixels, got {image_size}")
        info = replace(info, image_size=image_size)
    if info.folder:
        root = Path(data_dir or info.default_dir)
        if root.is_dir() or info.num_classes == 0:  # ImageNet's 1000 stands in until its files are there
            info = replace(info, num_classes=len(folder_classes(root, info)))
    return info


def fingerprint(parts: list[Source], extra: str) -> str:
    h = hashlib.sha256()
    for part in parts:
        part.digest(h)
    h.update(extra.encode())
    return h.hexdigest()[:16]
