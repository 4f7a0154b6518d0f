from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import optuna
import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def _dashboard(url: str, *extra: str) -> Iterator[tuple[int, subprocess.Popen]]:
    """`fnnp-opt dashboard` on a free loopback port, once it answers."""
    port = _free_port()
    cli = Path(__file__).parents[1] / "cli.py"
    proc = subprocess.Popen(
        [sys.executable, str(cli), "dashboard", "--storage", url, "--port", str(port), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        for _ in range(120):
            time.sleep(0.5)
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=2).read()
                break
            except OSError:
                assert proc.poll() is None, proc.stdout.read()
        yield port, proc
    finally:
        proc.terminate()  # about 1 s to stop on a quiet machine; once, beside the zoo tier's largest models, over 10
        proc.wait(timeout=60)


def _get(port: int, path: str) -> bytes:
    return urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10).read()


@pytest.mark.slow
def test_dashboard_shows_metric_names_note_and_the_winners_downloadable_artifacts(searched, tmp_path):
    shutil.copy(searched, tmp_path / "study.db")  # the dashboard reads a copy; the artifacts stay beside the original
    url = f"sqlite:///{tmp_path}/study.db"
    out = searched.parent / "out"
    exported = json.loads((out / "pruned.json").read_text())
    winner = exported["study"]["trial"]
    with _dashboard(url) as (port, _):
        (summary,) = json.loads(_get(port, "/api/studies"))["study_summaries"]
        study = json.loads(_get(port, f"/api/studies/{summary['study_id']}?after=0"))
        assert study["objective_names"] == ["ABN accuracy"]  # from Study.set_metric_names
        note = study["note"]["body"]
        assert "Budget" in note and "resnet20" in note and "uniform L1" in note
        (trial,) = [t for t in study["trials"] if t["number"] == winner]
        files = {a["filename"]: a for a in trial["artifacts"]}
        assert {"pruned.json", "pruned.safetensors", "report.md", "allocation.png", "history.png"} <= set(files)
        for name in ("pruned.json", "pruned.safetensors", "allocation.png"):
            got = _get(port, f"/artifacts/{summary['study_id']}/{trial['trial_id']}/{files[name]['artifact_id']}")
            assert got == (out / name).read_bytes()
    # the store sits beside the database and the study records it
    stored = optuna.load_study(study_name=summary["study_name"], storage=url).user_attrs["artifact_store"]
    assert Path(stored) == (searched.parent / "artifacts").resolve() and len(list(Path(stored).iterdir())) == len(files)


@pytest.mark.slow
def test_dashboard_serves_the_artifacts_of_a_moved_study_folder(searched, tmp_path):
    import os

    from conftest import study_folder

    study_folder(searched, tmp_path / "old")
    os.rename(tmp_path / "old", tmp_path / "new")  # the folder moved: the store it recorded is gone
    winner = json.loads((tmp_path / "new" / "out" / "pruned.json").read_text())["study"]["trial"]
    with _dashboard(f"sqlite:///{tmp_path}/new/study.db") as (port, _):
        (summary,) = json.loads(_get(port, "/api/studies"))["study_summaries"]
        study = json.loads(_get(port, f"/api/studies/{summary['study_id']}?after=0"))
        (trial,) = [t for t in study["trials"] if t["number"] == winner]
        (meta,) = [a for a in trial["artifacts"] if a["filename"] == "pruned.json"]
        got = _get(port, f"/artifacts/{summary['study_id']}/{trial['trial_id']}/{meta['artifact_id']}")
    assert got == (tmp_path / "new" / "out" / "pruned.json").read_bytes()
    assert not (tmp_path / "old").exists()


@pytest.mark.slow
def test_dashboard_serves_the_study_on_loopback(tmp_path):
    url = f"sqlite:///{tmp_path}/d.db"
    optuna.create_study(study_name="shown", storage=url).optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    with _dashboard(url) as (port, proc):
        body = _get(port, "/api/studies").decode()
        assert '"shown"' in body
        with socket.socket() as s:  # bound to loopback only
            s.settimeout(1)
            addrs = {a[4][0] for a in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)} - {"127.0.0.1"}
            for addr in addrs:
                assert s.connect_ex((addr, port)) != 0


@pytest.mark.unit
def test_dashboard_refuses_a_missing_storage(tmp_path):
    from typer.testing import CliRunner

    from fnnp_opt.cli import app

    res = CliRunner().invoke(app, ["dashboard", "--storage", f"sqlite:///{tmp_path}/none.db"])
    assert res.exit_code == 1 and "does not exist yet" in res.output
    assert not (tmp_path / "none.db").exists()


@pytest.mark.unit
def test_dashboard_refuses_an_artifact_store_that_does_not_exist_and_one_that_is_a_file(tmp_path):
    from typer.testing import CliRunner

    from fnnp_opt.cli import app

    url = f"sqlite:///{tmp_path}/d.db"
    optuna.create_study(study_name="s", storage=url)
    res = CliRunner().invoke(app, ["dashboard", "--storage", url, "--artifact-dir", str(tmp_path / "nowhere")])
    assert (
        res.exit_code == 1
        and "artifact store" in res.output
        and "does not exist; pass the --artifact-dir" in (" ".join(res.output.split()))
    )
    assert not (tmp_path / "nowhere").exists()
    (tmp_path / "file").write_text("")
    res = CliRunner().invoke(app, ["dashboard", "--storage", url, "--artifact-dir", str(tmp_path / "file")])
    assert res.exit_code == 1 and "is a file, not a folder" in " ".join(res.output.split())


def test_dashboard_on_a_busy_port_says_so(tmp_path):
    from typer.testing import CliRunner

    from fnnp_opt.cli import app

    url = f"sqlite:///{tmp_path}/d.db"
    optuna.create_study(study_name="s", storage=url)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        res = CliRunner().invoke(app, ["dashboard", "--storage", url, "--port", str(port)])
    assert res.exit_code == 1 and "pass another --port" in res.output
