"""Shared fixtures: small real Fashion-MNIST copies and the shipped base model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fnnp_opt.data import DATASETS, load_fashion_mnist, write_idx
from fnnp_opt.models import default_checkpoint, load_model

SYSTEM_DIR = Path(DATASETS["fashion-mnist"].default_dir)


@pytest.fixture(scope="session")
def fmnist_arrays() -> dict[str, np.ndarray]:
    """The real Fashion-MNIST arrays (from Debian's dataset-fashion-mnist)."""
    return load_fashion_mnist(SYSTEM_DIR)


@pytest.fixture(scope="session")
def small_fmnist(tmp_path_factory, fmnist_arrays) -> Path:
    """A folder with the first 3,000 training and 1,000 test images of the real data, as gzipped IDX."""
    folder = tmp_path_factory.mktemp("fmnist-small")
    sizes = {"train": 3000, "t10k": 1000}
    for part, key in (("train", "train"), ("t10k", "test")):
        n = sizes[part]
        write_idx(folder / f"{part}-images-idx3-ubyte.gz", fmnist_arrays[f"{key}_x"][:n])
        write_idx(folder / f"{part}-labels-idx1-ubyte.gz", fmnist_arrays[f"{key}_y"][:n])
    return folder


@pytest.fixture(scope="session")
def shipped_checkpoint() -> Path:
    path = default_checkpoint("resnet20", "fashion-mnist")
    assert path is not None, "the package must ship resnet20-fashion-mnist.safetensors"
    return path


@pytest.fixture()
def base_model(shipped_checkpoint) -> torch.nn.Module:
    model, _ = load_model("resnet20", 1, 10, shipped_checkpoint)
    return model


# Options that make `fnnp-opt run` take seconds on the small copy.
SMALL_RUN = [
    "--n-trials",
    "2",
    "--abn-batches",
    "4",
    "--abn-batch-size",
    "32",
    "--search-size",
    "300",
    "--epochs",
    "1",
    "--batch-size",
    "128",
    "--flops-tolerance",
    "0.05",
    "--device",
    "cpu",
]
