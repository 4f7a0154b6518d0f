"""The rule for writing a path that may not exist yet: its nearest existing parent must be a writable folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fnnp_opt.paths import NOT_A_FOLDER, NOT_WRITABLE, nearest_parent


def test_the_nearest_existing_parent_decides(tmp_path):
    assert nearest_parent(tmp_path / "a" / "b" / "c.db") == (tmp_path, None)
    assert nearest_parent(tmp_path / "x.db") == (tmp_path, None)
    (tmp_path / "a-file").write_text("x")
    assert nearest_parent(tmp_path / "a-file" / "sub" / "s.db") == (tmp_path / "a-file", NOT_A_FOLDER)
    assert nearest_parent("relative/new/s.db")[1] is None  # the working folder, reached through "."


@pytest.mark.system
def test_a_folder_this_user_cannot_write_blocks_what_lies_under_it(tmp_path):
    """Checked in a process without root's power to write anything (util-linux's setpriv), as any user."""
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    code = f"from fnnp_opt.paths import nearest_parent; print(nearest_parent({str(locked / 'new' / 's.db')!r})[1])"
    cmd = [sys.executable, "-c", code]
    if os.geteuid() == 0:
        cmd = ["setpriv", "--bounding-set=-all", "--inh-caps=-all", "--", *cmd]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    finally:
        locked.chmod(0o755)
    assert proc.stdout.strip() == NOT_WRITABLE, proc.stderr
