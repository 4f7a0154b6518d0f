"""A search that fails for a reason other than the budget says so: the error of the trial that failed, in one process
or in ``--workers`` processes, with how to resume; and the resumed study evaluates its uniform baseline."""

from __future__ import annotations

import re
from pathlib import Path

import optuna
import pytest
from typer.testing import CliRunner

from conftest import message_lines, random_checkpoint, write_image_folder
from fnnp_opt.cli import app
from fnnp_opt.data import load_splits

pytestmark = pytest.mark.slow
runner = CliRunner()
SPLIT = ["--search-per-class", "2", "--image-size", "32"]


@pytest.fixture()
def broken_train(tmp_path) -> tuple[Path, dict[Path, bytes]]:
    """An image folder whose training images outside the search split cannot be decoded (so the base scores, and
    every candidate's ABN calibration fails), and the good bytes of each broken file, to mend it."""
    root = write_image_folder(tmp_path / "data", ["a", "b", "c"], {"train": 8, "val": 2})
    s = load_splits("folder", root, search_per_class=2, abn_batches=1, abn_batch_size=1, image_size=32, workers=0)
    search = {s.search.source.paths[i] for i in s.search.idx}
    broken = {}
    for path in sorted((root / "train").rglob("*.JPEG")):
        if str(path.relative_to(root)) not in search:
            broken[path] = path.read_bytes()
            path.write_bytes(bytes(len(broken[path])))  # zeros: no image, same size (the data's digest holds)
    return root, broken


def _run(root: Path, tmp_path: Path, workers: int, *extra: str):
    ckpt = tmp_path / "w.safetensors"
    if not ckpt.exists():
        random_checkpoint(ckpt, "resnet20", 3, 3)
    return runner.invoke(
        app,
        ["run", "--dataset", "folder", "--data-dir", str(root), *SPLIT, "--checkpoint", str(ckpt), "--no-check-base"]
        + ["--n-trials", "2", "--abn-batches", "2", "--abn-batch-size", "4", "--batch-size", "6", "--epochs", "0"]
        + ["--flops-tolerance", "0.05", "--device", "cpu", "--workers", str(workers), "--baselines", "uniform", *extra]
        + ["--storage", f"sqlite:///{tmp_path}/s.db", "--output", str(tmp_path / "out")],
    )


def test_a_failure_in_every_search_worker_is_reported_as_itself(broken_train, tmp_path):
    res = _run(*broken_train[:1], tmp_path, 2)
    assert res.exit_code == 1, res.output
    (line,) = [line for line in message_lines(res.output) if line.startswith("error:")]
    assert re.search(r"search worker [12] of 2 stopped \(0 of 2 candidates evaluated.*\): trial \d+ failed: ", line)
    assert "could be decoded" in line and "run the same command again to resume" in line
    assert "no candidate landed" not in res.output and "Traceback" not in res.output


def test_a_failed_trial_names_itself_and_the_resume_evaluates_the_baseline_queued_again(broken_train, tmp_path):
    root, broken = broken_train
    res = _run(root, tmp_path, 1)
    assert res.exit_code == 1, res.output
    (line,) = [line for line in message_lines(res.output) if line.startswith("error:")]
    assert line.startswith("error: trial 0 failed: no image of") and "run the same command again to resume" in line
    study = optuna.load_study(study_name=None, storage=f"sqlite:///{tmp_path}/s.db")
    (failed,) = study.trials
    assert failed.state.name == "FAIL" and failed.user_attrs["strategy"] == "uniform"
    assert "could be decoded" in failed.user_attrs["fail_reason"]  # the dashboard shows why

    for path, good in broken.items():  # the files mended, the same command resumes
        path.write_bytes(good)
    res = _run(root, tmp_path, 1)
    assert res.exit_code == 0, res.output
    study = optuna.load_study(study_name=None, storage=f"sqlite:///{tmp_path}/s.db")
    uniform = [t for t in study.trials if t.user_attrs.get("strategy") == "uniform"]
    assert [t.state.name for t in uniform] == ["FAIL", "COMPLETE"]
    assert uniform[1].params == failed.params and uniform[1].number == 1  # queued first, before any draw
    assert len([t for t in study.trials if t.state.name == "COMPLETE"]) == 2
    assert "uniform L1** (the same ratio everywhere): trial 1" in (tmp_path / "out" / "report.md").read_text()
