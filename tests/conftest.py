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


@pytest.fixture(scope="session")
def postgres_url():
    """A throwaway PostgreSQL server on 127.0.0.1 (Debian's `postgresql`, which `.ci/run` installs)."""
    import glob
    import os
    import shutil
    import socket
    import subprocess
    import tempfile

    initdb = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        initdb = []
    if not initdb:
        if os.environ.get("CI"):
            pytest.fail("CI must run the PostgreSQL test: install postgresql and psycopg2-binary (see .ci/run)")
        pytest.skip("PostgreSQL server or psycopg2 not installed (apt-get install postgresql)")
    bindir = Path(initdb[-1]).parent
    root = Path(tempfile.mkdtemp(prefix="fnnp-pg-"))
    as_root = os.geteuid() == 0
    prefix = ["runuser", "-u", "postgres", "--"] if as_root else []
    if as_root:
        shutil.chown(root, "postgres")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    def pg(*args):
        subprocess.run([*prefix, *map(str, args)], check=True, capture_output=True)

    pg(bindir / "initdb", "-D", root / "data", "-A", "trust", "-U", "fnnp", "--no-sync")
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=off"
    pg(bindir / "pg_ctl", "-D", root / "data", "-l", root / "log", "-w", "-o", options, "start")
    try:
        pg(bindir / "createdb", "-h", "127.0.0.1", "-p", port, "-U", "fnnp", "fnnp")
        yield f"postgresql+psycopg2://fnnp@127.0.0.1:{port}/fnnp"
    finally:
        pg(bindir / "pg_ctl", "-D", root / "data", "-m", "immediate", "stop")
        shutil.rmtree(root, ignore_errors=True)
