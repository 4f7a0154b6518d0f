"""benchmarks/gpu_check.sh: its CPU smoke run (``--device cpu --tiny``) passes every step, so the CUDA check cannot rot
while no GPU runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STEPS = ["data", "official_path", "trial_cost", "bf16_vs_fp32", "latency", "torchrun", "api"]


@pytest.mark.system
@pytest.mark.slow
def test_the_gpu_check_passes_its_cpu_smoke_run(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="1")
    args = ["bash", str(ROOT / "benchmarks/gpu_check.sh"), "--device", "cpu", "--tiny", "--out", str(out)]
    res = subprocess.run(args, env=env, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["ok"] is True and list(doc["steps"]) == STEPS
    assert all(step["ok"] for step in doc["steps"].values())
    assert doc["steps"]["bf16_vs_fp32"]["autocast"] is False  # on CPU both scorings are fp32: they agree exactly
    assert doc["steps"]["bf16_vs_fp32"]["max_abs_diff"] == 0.0
    rows = doc["steps"]["latency"]["rows"]
    assert [(r["batch"], r["dtype"]) for r in rows] == [(b, d) for b in (1, 8) for d in ("fp32", "bf16 autocast")]
    assert doc["steps"]["official_path"]["candidates"] == doc["size"]["candidates"]


@pytest.mark.system
def test_the_gpu_check_refuses_cuda_where_there_is_none(tmp_path):
    if subprocess.run([sys.executable, "-c", "import torch; exit(torch.cuda.is_available())"]).returncode:
        pytest.skip("a CUDA device is here")
    out = tmp_path / "gpu_check.json"
    env = dict(os.environ, PYTHON=sys.executable)
    res = subprocess.run(["bash", str(ROOT / "benchmarks/gpu_check.sh"), "--out", str(out)], env=env,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert res.returncode == 1 and "no CUDA device here" in res.stdout
    assert json.loads(out.read_text())["ok"] is False
