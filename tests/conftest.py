"""The suite's tiers (which tests `make test` and `make test-all` run), and shared fixtures: small real
Fashion-MNIST copies, the shipped base model, a study of a whole run, tiny datasets of other formats."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterator

# fnnp-opt's storage intervals (fnnp_opt/storage.py), shortened for this process and every process a test starts,
# before anything imports the storage: a killed worker's trial is retried after 4 s of silence instead of 8, and a
# worker waiting for a slot looks again every 0.25 s. A value set in the environment is kept.
for _name, _value in (("FNNP_HEARTBEAT_S", "1"), ("FNNP_GRACE_S", "4"), ("FNNP_POLL_S", "0.25")):
    os.environ.setdefault(_name, _value)

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from fnnp_opt.data import DATASETS, load_fashion_mnist, write_idx  # noqa: E402
from fnnp_opt.models import default_checkpoint, load_model  # noqa: E402

SYSTEM_DIR = Path(DATASETS["fashion-mnist"].default_dir)


# --------------------------------------------------------------------------- tiers

# Every test has exactly one tier. Plain `pytest` (`make test`) runs the unit tier; `-m TIER` (or an expression such
# as `-m "not zoo"`) picks others, and naming a test file or a test runs all of its tests whatever their tier.
# `make test-all` runs every tier.
TIERS = {
    "unit": "in-process, no subprocess, no socket, seconds each: plain `pytest` and `make test`",
    "integration": "in-process pipelines (whole runs, searches, fine-tunes) on small data; no subprocess, no socket",
    "system": "processes, signals, torchrun, PostgreSQL, servers, other OS users",
    "zoo": "the largest torchvision builders and recipes that differ from a shipped one by their budget alone",
}
# pytest-timeout's limit per test of each tier, so a slow test cannot creep into the unit tier; the others' stop a
# hang, with room for a busy machine. A unit test's own time counts (its shared session and module fixtures are made
# once for many); in the others, its fixtures' too.
TIMEOUT_S = {"unit": 30, "integration": 900, "system": 1800, "zoo": 1800}
# The tier of each module's tests; a test marked with a tier of its own (@pytest.mark.system, or a parameter's
# marks) keeps it. A new test module needs a line here, or a tier mark on each of its tests.
MODULE_TIERS = {
    "test_api": "unit",
    "test_api_docs": "unit",
    "test_artifacts": "unit",
    "test_attributes_docs": "unit",
    "test_bad_input": "unit",
    "test_baselines": "unit",
    "test_benchmark_stamp": "system",
    "test_cli": "unit",
    "test_cli_docs": "unit",
    "test_cli_imports": "unit",
    "test_config": "unit",
    "test_constraints": "unit",
    "test_correlate": "integration",
    "test_correlation": "unit",
    "test_dashboard": "system",
    "test_data": "unit",
    "test_dataset_kinds": "integration",
    "test_datasets": "unit",
    "test_distributed": "unit",
    "test_docs_site": "unit",
    "test_early_stop": "unit",
    "test_evaluate": "unit",
    "test_examples": "system",
    "test_export": "unit",
    "test_flops": "unit",
    "test_gpu_check": "system",
    "test_journal": "unit",
    "test_latency": "unit",
    "test_layers": "unit",
    "test_models": "unit",
    "test_optimize": "unit",
    "test_optuna_private": "unit",
    "test_paths": "unit",
    "test_probe": "unit",
    "test_progress": "unit",
    "test_prune": "unit",
    "test_quality_benchmark": "unit",
    "test_readme": "unit",
    "test_recipes": "unit",
    "test_redact": "unit",
    "test_report": "integration",
    "test_rerank": "integration",
    "test_score": "unit",
    "test_space": "unit",
    "test_storage": "unit",
    "test_tiers": "unit",
    "test_training": "unit",
    "test_typecheck": "system",
    "test_workers": "system",
    "test_zoo": "integration",
    "test_zoo_baselines": "integration",
}


def tier_of(item: pytest.Item) -> str:
    """The one tier of ``item``: its own tier mark, else its module's line in :data:`MODULE_TIERS`; raise
    :class:`pytest.UsageError` where it has none or several."""
    marked = {m.name for m in item.iter_markers() if m.name in TIERS}
    if len(marked) > 1:
        raise pytest.UsageError(f"{item.nodeid} is marked {sorted(marked)}: a test has exactly one tier")
    if marked:
        return marked.pop()
    module = item.path.stem
    if module not in MODULE_TIERS:
        raise pytest.UsageError(
            f"{item.nodeid} has no tier: give {module} a line in MODULE_TIERS (tests/conftest.py) or mark the test "
            f"with one of {', '.join(TIERS)}"
        )
    return MODULE_TIERS[module]


def _names_tests(config: pytest.Config) -> bool:
    """Whether the command line names test files or tests (not only folders): those run whatever their tier."""
    return any("::" in arg or Path(arg.split("::")[0]).is_file() for arg in config.args)


@pytest.hookimpl(tryfirst=True)  # before `-m` selects by the marks added here
def pytest_collection_modifyitems(config, items):
    timeout = config.pluginmanager.hasplugin("timeout")
    default = not config.option.markexpr and not _names_tests(config)
    keep, drop = [], []
    for item in items:
        tier = tier_of(item)
        if item.get_closest_marker(tier) is None:  # its module's tier
            item.add_marker(getattr(pytest.mark, tier))
        if timeout and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(TIMEOUT_S[tier], func_only=tier == "unit"))
        (keep if tier == "unit" or not default else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
    # the longest modules first (LONGEST, then by tier: zoo, system, ...), each kept whole: test processes that take
    # whole modules (`pytest -n 2 --dist loadscope`, as the Makefile runs them: a module fixture is made once) then
    # end together, instead of one finishing a long module alone
    rank = {tier: len(LONGEST) + i for i, tier in enumerate(reversed(TIERS))}
    first: dict[Path, int] = {}
    for item in keep:
        known = LONGEST.index(item.path.stem) if item.path.stem in LONGEST else len(rank) + len(LONGEST)
        first[item.path] = min(first.get(item.path, known), known, rank[tier_of(item)])
    items[:] = sorted(keep, key=lambda item: first[item.path])


# the modules that take longest in `make test-all` (pytest --durations=0), longest first
LONGEST = ("test_zoo", "test_zoo_baselines", "test_journal", "test_storage", "test_distributed", "test_dataset_kinds")


def pytest_report_header(config):
    if not config.option.markexpr and not _names_tests(config):
        return "tiers: unit only (plain pytest); -m integration|system|zoo for others, `make test-all` for all"
    return None


IN_PROCESS = ("unit", "integration")  # the tiers whose tests start no process and open no socket


class TierError(AssertionError):
    """Raised where a unit or integration test starts a process or opens a socket."""


@pytest.fixture(autouse=True)
def tier_guard(request, monkeypatch) -> Iterator[list[str]]:
    """In a unit or integration test, starting a process (subprocess, multiprocessing, fork) or opening a network
    socket raises :class:`TierError`, and the test fails at its end even where the code under test caught it.
    Yields what was tried (a test of the guard itself clears it)."""
    tried: list[str] = []
    tier = next((t for t in IN_PROCESS if request.node.get_closest_marker(t)), None)
    if tier is None:
        yield tried
        return
    import _posixsubprocess
    import socket
    import subprocess

    import matplotlib.font_manager  # noqa: F401  (on a new machine its first import lists the fonts with fc-list)

    def message(what: str) -> str:
        return f"a test of the {tier} tier may not {what}: mark it system (tests/conftest.py, TIERS)"

    def refuse(what: str):
        def refused(*args, **kwargs):
            tried.append(what)
            raise TierError(message(what))

        return refused

    for target, name in ((subprocess.Popen, "_execute_child"), (_posixsubprocess, "fork_exec"), (os, "fork")):
        monkeypatch.setattr(target, name, refuse("start a process"))
    for name in ("posix_spawn", "posix_spawnp", "system"):
        monkeypatch.setattr(os, name, refuse("start a process"))
    for name in ("connect", "connect_ex", "bind", "listen"):
        monkeypatch.setattr(socket.socket, name, refuse("open a socket"))
    yield tried
    if tried:
        pytest.fail(message(tried[0]), pytrace=False)


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
