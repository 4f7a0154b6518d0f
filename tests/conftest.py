"""Shared fixtures: small real Fashion-MNIST copies and the shipped base model."""

from __future__ import annotations

import re

from pathlib import Path

import numpy as np
import pytest
import torch

from fnnp_opt.data import DATASETS, load_fashion_mnist, write_idx
from fnnp_opt.models import default_checkpoint, load_model

SYSTEM_DIR = Path(DATASETS["fashion-mnist"].default_dir)


def pytest_addoption(parser):
    parser.addoption("--huge", action="store_true", help="also run the tests marked huge (`make test-all`)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--huge"):
        return
    skip = pytest.mark.skip(reason="a huge builder: its family's smaller members ran; `make test-all` runs it too")
    for item in items:
        if "huge" in item.keywords:
            item.add_marker(skip)


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


@pytest.fixture(scope="session")
def searched(tmp_path_factory, small_fmnist) -> Path:
    """``study.db``: a real study of `fnnp-opt run` with :data:`SMALL_RUN` and ``--epochs 0`` on the small copy,
    made once. A test copies it into its own folder before it reads it, resumes it or is refused by it."""
    from typer.testing import CliRunner

    from fnnp_opt.cli import app

    folder = tmp_path_factory.mktemp("searched")
    args = ["run", *SMALL_RUN, "--data-dir", str(small_fmnist), "--epochs", "0"]
    res = CliRunner().invoke(app, [*args, "--storage", f"sqlite:///{folder}/study.db", "--output", str(folder / "out")])
    assert res.exit_code == 0, res.output
    return folder / "study.db"


def study_folder(searched: Path, folder: Path) -> Path:
    """A copy of the :func:`searched` study's folder (database, ``artifacts/``, ``out/``) at ``folder``, recording
    the store beside it as a run made there records it; returns the database."""
    import shutil

    import optuna

    shutil.copytree(searched.parent, folder)
    db = folder / searched.name
    (name,) = optuna.get_all_study_names(f"sqlite:///{db}")
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{db}")
    study.set_user_attr("artifact_store", str((folder / "artifacts").resolve()))
    study.set_user_attr("artifact_storage", str(db.resolve()))  # the database the store was recorded beside
    return db


def without(args: list[str], *flags: str) -> list[str]:
    """``args`` with each of ``flags`` and the value after it left out."""
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a in flags:
            skip = True
        else:
            out.append(a)
    return out


# Options that make `fnnp-opt run` take seconds on the small copy.
SMALL_RUN = [
    "--workers",  # one search process: the tests stay in-process and fast (--workers 2 is tested on its own)
    "1",
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
    "--rerank",  # the default re-scores the top 5 with abn-ft: tests that mean it say so
    "0",
    "--baselines",  # two trials: uniform L1 and one draw (tests/test_baselines.py runs the default's global one)
    "uniform",
]


PG_PASSWORD = "Pw-of-fnnp-7f3a9c"  # the test server's password: it must never be shown, logged or stored


@pytest.fixture(scope="session")
def postgres_url():
    """A throwaway PostgreSQL server on 127.0.0.1 (Debian's `postgresql`, which `.ci/run` installs), with
    password authentication (scram-sha-256): the URL holds :data:`PG_PASSWORD`."""
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

    (root / "pw").write_text(PG_PASSWORD)
    if as_root:
        shutil.chown(root / "pw", "postgres")
    # TCP connections (fnnp-opt's) need the password; the server's own socket (createdb here) does not
    auth = ["--auth-host=scram-sha-256", "--auth-local=trust", f"--pwfile={root / 'pw'}"]
    pg(bindir / "initdb", "-D", root / "data", *auth, "-U", "fnnp", "--no-sync")
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=off"
    pg(bindir / "pg_ctl", "-D", root / "data", "-l", root / "log", "-w", "-o", options, "start")
    try:
        pg(bindir / "createdb", "-h", root, "-p", port, "-U", "fnnp", "fnnp")
        yield f"postgresql+psycopg2://fnnp:{PG_PASSWORD}@127.0.0.1:{port}/fnnp"
    finally:
        pg(bindir / "pg_ctl", "-D", root / "data", "-m", "immediate", "stop")
        shutil.rmtree(root, ignore_errors=True)


# --------------------------------------------------------------------------- tiny datasets in their real formats


def _images(rng: np.random.Generator, labels: np.ndarray, size: int) -> np.ndarray:
    """uint8 images N x 3 x size x size whose colour depends on the label (so classes are learnable)."""
    base = (labels[:, None, None, None] * 37 + np.arange(3)[None, :, None, None] * 60) % 256
    noise = rng.integers(0, 40, size=(len(labels), 3, size, size))
    return ((base + noise) % 256).astype(np.uint8)


@pytest.fixture(scope="session")
def tiny_cifar10(tmp_path_factory) -> Path:
    """cifar-10-batches-py/ with five data batches of 40 images and a test batch of 40, pickled as published."""
    from fnnp_opt.datasets import write_cifar_batch

    root = tmp_path_factory.mktemp("cifar10") / "cifar-10-batches-py"
    root.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = rng.integers(0, 10, 40)
        write_cifar_batch(root / name, _images(rng, labels, 32), labels)
    return root


@pytest.fixture(scope="session")
def tiny_cifar100(tmp_path_factory) -> Path:
    """cifar-100-python/ with a train file of 300 images and a test file of 100 (fine labels)."""
    from fnnp_opt.datasets import write_cifar_batch

    root = tmp_path_factory.mktemp("cifar100") / "cifar-100-python"
    root.mkdir()
    rng = np.random.default_rng(1)
    for name, n in (("train", 300), ("test", 100)):
        labels = rng.integers(0, 100, n)
        write_cifar_batch(root / name, _images(rng, labels, 32), labels, label_key="fine_labels")
    return root


def write_image_folder(root: Path, classes: list[str], per_class: dict[str, int], size: int = 40) -> Path:
    """An ImageFolder tree of JPEG files: root/<part>/<class>/<n>.JPEG."""
    from PIL import Image

    rng = np.random.default_rng(2)
    for part, n in per_class.items():
        for k, cls in enumerate(classes):
            folder = root / part / cls
            folder.mkdir(parents=True, exist_ok=True)
            labels = np.full(n, k)
            for i, img in enumerate(_images(rng, labels, size)):
                Image.fromarray(img.transpose(1, 2, 0)).save(folder / f"{cls}_{i}.JPEG", quality=90)
    return root


@pytest.fixture(scope="session")
def tiny_imagenet(tmp_path_factory) -> Path:
    """An ImageNet-layout tree: 3 wnid classes, 8 training and 3 validation JPEGs each."""
    classes = ["n01440764", "n01443537", "n01484850"]
    return write_image_folder(tmp_path_factory.mktemp("imagenet"), classes, {"train": 8, "val": 3})


def random_checkpoint(path: Path, model: str, in_channels: int, num_classes: int) -> Path:
    """Weights of ``model`` with random values, as safetensors (the recipes need a checkpoint)."""
    from safetensors.torch import save_file

    from fnnp_opt.export import unique_tensors
    from fnnp_opt.models import create_model

    torch.manual_seed(0)
    state = create_model(model, in_channels, num_classes).state_dict()
    save_file(unique_tensors(state), str(path))  # a module under two names is saved once
    return path


# Off a terminal (CliRunner, a pipe) the work done before an error is logged as timestamped INFO lines.
INFO_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ INFO ")


def message_lines(output: str) -> list[str]:
    """The non-empty lines of a command's output that are not INFO log lines: its message, or its error."""
    return [line for line in output.splitlines() if line.strip() and not INFO_LINE.match(line)]
