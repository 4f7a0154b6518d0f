"""fnnp_opt type-checks: mypy, with the settings of pyproject.toml (what `make typecheck` runs), reports nothing."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(
    importlib.util.find_spec("mypy") is None,
    reason="mypy is not installed; `pip install -e '.[dev]'` (what `make test` does) installs it",
)
def test_fnnp_opt_type_checks() -> None:
    # the cache `make typecheck` leaves makes this a few seconds; without one it takes about half a minute
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-error-summary"], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, f"mypy found type errors in fnnp_opt:\n{done.stdout}{done.stderr}"
