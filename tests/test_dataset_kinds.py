"""Every score and every feature that starts processes, on every dataset kind: IDX (Fashion-MNIST), CIFAR pickles and
an ImageFolder tree, each on tiny real files of its format. An image folder is decoded in worker processes: its
cases are system tests.

Per kind: a search with two worker processes (image folders decode in DataLoader processes inside them) re-ranked by
abn-ft; a search scored by abn-ft in one process; `correlate` with its abn-ft column; and, for CIFAR and image
folders, a fine-tune under torchrun (Fashion-MNIST's is in test_distributed.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import optuna
import pytest
from typer.testing import CliRunner

from conftest import random_checkpoint, without
from fnnp_opt.cli import app

pytestmark = pytest.mark.slow
runner = CliRunner()

# fixture, in_channels, classes of the tiny copy, options that fit its size (train part, batches, input size)
KINDS = {
    "fashion-mnist": ("small_fmnist", 1, 10, ["--search-size", "300", "--batch-size", "256", "--abn-batch-size", "32"]),
    "cifar10": ("tiny_cifar10", 3, 10, ["--search-size", "40", "--batch-size", "32", "--abn-batch-size", "8"]),
    "imagenet": (
        "tiny_imagenet",
        3,
        3,
        ["--search-per-class", "2", "--batch-size", "6", "--abn-batch-size", "4", "--eval-batch-size", "6"]
        + ["--image-size", "32"],
    ),
}


@pytest.fixture(params=[pytest.param(k, marks=pytest.mark.system) if k == "imagenet" else k for k in sorted(KINDS)])
def kind(request, tmp_path) -> tuple[str, list[str]]:
    """(dataset, the options every command of this test passes: data, weights, splits, device)."""
    dataset = request.param
    fixture, channels, classes, extra = KINDS[dataset]
    args = ["--dataset", dataset, "--data-dir", str(request.getfixturevalue(fixture)), "--device", "cpu", *extra]
    if dataset != "fashion-mnist":  # no weights ship for these: random ones stand in (they score at chance)
        ckpt = random_checkpoint(tmp_path / "w.safetensors", "resnet20", channels, classes)
        args += ["--checkpoint", str(ckpt), "--no-check-base"]
    return dataset, args


def _evaluated(url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name=name, storage=url)
    return [t for t in study.trials if t.state.name == "COMPLETE" and "abn_accuracy" in t.user_attrs]


def _search(kind: tuple[str, list[str]], tmp_path, name: str, *options: str) -> str:
    """`fnnp-opt run` of study ``name`` with ``options`` on this kind's tiny data (2-step abn-ft scores, 2
    calibration batches, +-5% window) into ``tmp_path``; returns the storage URL."""
    url = f"sqlite:///{tmp_path}/s.db"
    res = runner.invoke(
        app,
        ["run", *kind[1], *options, "--score-steps", "2", "--abn-batches", "2", "--flops-tolerance", "0.05"]
        + ["--storage", url, "--study-name", name, "--output", str(tmp_path / "out")],
    )
    assert res.exit_code == 0, res.output
    return url


@pytest.mark.system
def test_two_search_workers_then_a_rerank_by_abn_ft(kind, tmp_path):
    """Search workers are processes; on an image folder each decodes in DataLoader processes of its own (which a
    daemon process may not start); the rerank re-scores the top 2 and every baseline with abn-ft on the train part."""
    url = _search(kind, tmp_path, "w", "--workers", "2", "--n-trials", "3", "--rerank", "2", "--epochs", "1")
    trials = _evaluated(url, "w")
    assert len(trials) == 3 and any(t.user_attrs.get("strategy") == "uniform" for t in trials)
    states = {t.state.name for t in optuna.load_study(study_name="w", storage=url).trials}
    assert not states & {"WAITING", "RUNNING", "FAIL"}  # nothing left queued, running or failed
    assert all(not t.user_attrs["worker"].endswith(f":{os.getpid()}") for t in trials)  # scored in the workers
    card = json.loads((tmp_path / "out" / "pruned.json").read_text())
    assert "rerank" in card["study"] and card["metrics"]["pruned"]["flops"] < card["metrics"]["base"]["flops"]
    reranked = {t.number for t in trials if "abn_ft2" in t.user_attrs}
    ranked = sorted(trials, key=lambda t: (-t.value, t.number))  # ABN accuracy; ties go to the earlier trial
    expected = {t.number for t in ranked[:2]} | {t.number for t in trials if t.user_attrs.get("strategy")}
    assert reranked == expected and card["study"]["trial"] in reranked  # the top 2 and every baseline


def test_a_search_scored_by_abn_ft(kind, tmp_path):
    url = _search(kind, tmp_path, "ft", "--workers", "1", "--n-trials", "2", "--score", "abn-ft", "--epochs", "0")
    trials = _evaluated(url, "ft")
    assert len(trials) == 2
    for t in trials:  # the trial's value is the abn-ft score, and ABN's accuracy is kept beside it
        assert t.value == t.user_attrs["abn_ft2"] and 0 <= t.user_attrs["abn_accuracy"] <= 1


def test_correlate_with_its_abn_ft_column(kind, tmp_path):
    dataset, args = kind
    args = [a for a in without(args, "--eval-batch-size") if a != "--no-check-base"]
    res = runner.invoke(
        app,
        ["correlate", *args, "--flops", "0.5", "--candidates", "3", "--sweep", "1,2", "--ft-epochs", "1"]
        + ["--score-steps", "2", "--noise-candidates", "1", "--noise-seeds", "1", "--flops-tolerance", "0.05"]
        + ["--storage", f"sqlite:///{tmp_path}/c.db", "--output", str(tmp_path / "c")],
    )
    assert res.exit_code == 0, res.output
    rows = (tmp_path / "c" / "candidates.csv").read_text().splitlines()
    header = rows[0].split(",")
    assert len(rows) == 4 and {"pbn", "abn_1", "abn_2", "abn_ft2", "truth"} <= set(header)
    for row in rows[1:]:
        values = dict(zip(header, row.split(",")))
        assert all(values[k] != "" for k in ("pbn", "abn_2", "abn_ft2", "truth"))


@pytest.mark.system
@pytest.mark.parametrize("dataset", ["cifar10", "imagenet"])
def test_a_finetune_under_torchrun(dataset, tmp_path, request):
    """Two torchrun processes fine-tune a searched study's winner together (gloo on CPU); rank 0 exports."""
    fixture, channels, classes, extra = KINDS[dataset]
    ckpt = random_checkpoint(tmp_path / "w.safetensors", "resnet20", channels, classes)
    url = f"sqlite:///{tmp_path}/s.db"
    common = ["--data-dir", str(request.getfixturevalue(fixture)), "--storage", url]
    search = [
        "run",
        "--dataset",
        dataset,
        *common,
        *extra,
        "--checkpoint",
        str(ckpt),
        "--no-check-base",
        "--device",
        "cpu",
    ]
    search += ["--workers", "1", "--n-trials", "2", "--abn-batches", "2", "--flops-tolerance", "0.05", "--epochs", "0"]
    res = runner.invoke(app, [*search, "--output", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    res = subprocess.run(
        [*torchrun, "-m", "fnnp_opt.cli", "finetune", *common, "--trial", "0", "--epochs", "1"]
        + ["--output", str(tmp_path / "t0")],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
        env={**os.environ, "COLUMNS": "200"},
    )
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]
    assert out.count("exported to") == 1 and "torchrun: 2 processes" in out
    card = json.loads((tmp_path / "t0" / "pruned.json").read_text())
    assert card["study"]["trial"] == 0 and card["dataset"] == dataset
