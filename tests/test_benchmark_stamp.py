"""benchmarks/_stamp.py: every benchmark row carries the commit and the machine it was measured on, and a report
says them under its table (or dates older rows by their results file's commits)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPEC = importlib.util.spec_from_file_location("_stamp", ROOT / "benchmarks" / "_stamp.py")
S = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(S)


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()


def test_a_stamp_names_the_commit_the_machine_and_the_load():
    s = S.stamp()
    assert s["commit"] == _git("rev-parse", "--short", "HEAD")
    assert s["dirty"] == bool(_git("status", "--porcelain", "--untracked-files=no"))
    assert s["cores"] == os.cpu_count() and s["cpu"] and s["load"] >= 0
    assert s["torch"] and metadata.version("torch") == s["torch"]
    assert f"{s['cores']}-core {s['cpu']}" in S.line(s) and s["commit"] in S.line(s)


def test_append_row_adds_the_stamp_and_provenance_groups_rows_by_commit(tmp_path):
    results = tmp_path / "results.jsonl"
    S.append_row(results, {"x": 1})
    S.append_row(results, {"x": 2})
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    assert [r["x"] for r in rows] == [1, 2] and all(r["stamp"]["commit"] for r in rows)
    text = "\n".join(S.provenance(rows, results))
    assert f"2 rows measured at commit `{rows[0]['stamp']['commit']}`" in text
    assert f"{os.cpu_count()}-core" in text and "load average" in text


def test_rows_without_a_stamp_are_dated_by_the_commits_of_their_results_file():
    results = ROOT / "docs" / "distill" / "results.jsonl"
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    bare = [r for r in rows if "stamp" not in r]
    newest = _git("log", "-1", "--format=%h", "--", "docs/distill/results.jsonl")
    text = "\n".join(S.provenance(rows, results))
    if bare:
        assert f"{len(bare)} rows from before rows carried their stamp" in text and f"`{newest}`" in text
        assert S.EARLIER_MACHINE in text
    assert S.provenance([], results) == []
