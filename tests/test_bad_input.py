"""The bad-input table (tests/bad_inputs.py): each case is refused in one line and touches nothing."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from bad_inputs import CASES, expand, make_files
from conftest import message_lines
from typer.testing import CliRunner

from fnnp_opt.cli import app

runner = CliRunner()
DOCS = Path(__file__).parents[1] / "docs" / "errors.md"


@pytest.fixture(scope="module")
def files(tmp_path_factory, fmnist_arrays) -> Path:
    return make_files(tmp_path_factory.mktemp("broken"), (fmnist_arrays["train_x"], fmnist_arrays["train_y"]))


def test_the_table_is_large_and_documented():
    assert len(CASES) >= 30
    assert len({c.what for c in CASES}) == len(CASES)
    text = DOCS.read_text()
    missing = [c.what for c in CASES if f"| {c.what} |" not in text]
    assert not missing, f"docs/errors.md lacks {missing}: run `python tests/bad_inputs.py`"


@pytest.mark.parametrize("case", CASES, ids=[c.what for c in CASES])
def test_bad_input_is_one_line_and_touches_nothing(case, files, searched, small_fmnist, tmp_path):
    db = tmp_path / "s.db"
    shutil.copy(searched, db)  # a real study of the default run, which every refused command must leave as it was
    before = db.read_bytes()
    args = expand(case, small_fmnist, files)
    storage = [] if "--storage" in args else ["--storage", f"sqlite:///{db}"]
    output = [] if "--output" in args else ["--output", str(tmp_path / "out")]
    res = runner.invoke(app, ["run", *storage, *output, *args], env=dict(case.env))
    assert res.exit_code == case.code, res.output
    lines = message_lines(res.output)
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in res.output, res.output
    assert case.message in " ".join(res.output.split())
    assert db.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.db"]  # no export, lock or journal written
