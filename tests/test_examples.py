"""The scripts in examples/ run as a user would run them, on small data, and use only the public API."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

import fnnp_opt
from tests.conftest import write_image_folder

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))


def _run(args: list[str], cwd: Path) -> str:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


@pytest.mark.unit
@pytest.mark.parametrize("script", EXAMPLES, ids=lambda p: p.name)
def test_an_example_uses_only_the_public_api(script):
    tree = ast.parse(script.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("fnnp_opt"):
            pytest.fail(f"{script.name} imports from {node.module}; an example imports only `fnnp_opt`")
        if isinstance(node, ast.Import):
            assert all(a.name == "fnnp_opt" or not a.name.startswith("fnnp_opt") for a in node.names), script.name
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "fnnp_opt":
            assert node.attr in fnnp_opt.__all__, f"{script.name} uses fnnp_opt.{node.attr}, which is not public"


def test_resnet18_on_an_image_folder_with_its_own_loop_saves_and_reloads(tmp_path):
    folder = write_image_folder(tmp_path / "images", ["cat", "dog", "fox"], {"train": 16, "val": 4}, size=32)
    out = _run(
        [
            "examples/resnet18_folder.py",
            str(folder),
            "--size",
            "32",
            "--epochs",
            "1",
            "--trials",
            "3",
            "--out",
            str(tmp_path / "pruned"),
        ],
        ROOT,
    )
    assert "identical outputs" in out and "winner: trial" in out
    assert (tmp_path / "pruned" / "pruned.safetensors").is_file()


def test_a_dense_network_scored_by_its_own_metric_keeps_its_head(tmp_path):
    out = _run([str(ROOT / "examples/dense_metric.py"), "--steps", "60", "--trials", "3"], tmp_path)
    assert "pruned to" in out and "mIoU" in out


def test_optuna_native_with_tpe_and_a_callback_then_the_stock_optuna_cli_reopens_the_study(tmp_path):
    url = f"sqlite:///{tmp_path}/prune.db"
    out = _run([str(ROOT / "examples/optuna_native.py"), "--storage", url, "--trials", "4"], tmp_path)
    assert [line.split(":")[0] for line in out.splitlines() if line.startswith("trial ")] == [
        "trial 0",
        "trial 1",
        "trial 2",
        "trial 3",
    ]
    optuna_cli = Path(sys.executable).parent / "optuna"
    listed = subprocess.run(
        [str(optuna_cli), "trials", "--study-name", "small-cnn-half", "--storage", url, "-f", "json"],
        capture_output=True,
        text=True,
        check=True,
    )
    import json

    trials = json.loads(listed.stdout)
    assert len(trials) == 4 and trials[0]["user_attrs"]["strategy"] == "uniform"
