from __future__ import annotations

import os
import shutil
from pathlib import Path

import optuna
import pytest
from conftest import SMALL_RUN, study_folder
from optuna.artifacts import get_all_artifact_meta, upload_artifact
from typer.testing import CliRunner

import fnnp_opt.artifacts as A
from fnnp_opt import optuna_private as P
from fnnp_opt import storage as St
from fnnp_opt.cli import app
from fnnp_opt.errors import StorageError


def _finished_study(url: str) -> tuple[optuna.Study, optuna.trial.FrozenTrial]:
    study = optuna.create_study(study_name="s", storage=St.open_storage(url))
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    return study, study.trials[1]


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_a_second_publish_rewrites_the_same_artifacts_in_place(tmp_path, kind):
    url = f"sqlite:///{tmp_path}/s.db" if kind == "sqlite" else str(tmp_path / "s.log")
    study, trial = _finished_study(url)
    export = tmp_path / "export"
    export.mkdir()
    (export / "pruned.json").write_text('{"v": 1}')
    (export / "pruned.safetensors").write_bytes(b"\x00" * 100)
    store = A.default_dir(url)
    assert store == tmp_path / "artifacts"
    first = A.publish(study, trial, A.export_files(export), store, url)
    (export / "pruned.json").write_text('{"v": 2, "resumed": true}')
    second = A.publish(study, trial, A.export_files(export), store, url)
    assert first.artifacts == second.artifacts and len(first.artifacts) == 2
    # on SQLite the files hang on the finished trial; a journal cannot annotate it, so they go on the study
    fresh = optuna.load_study(study_name="s", storage=St.open_storage(url))  # as another process reads it
    target = fresh.trials[1] if kind == "sqlite" else fresh
    assert first.target == ("trial 1" if kind == "sqlite" else "study")
    metas = get_all_artifact_meta(target, storage=P.storage(fresh))
    assert sorted(m.filename for m in metas) == ["pruned.json", "pruned.safetensors"]
    by_name = {m.filename: m.artifact_id for m in metas}
    assert (store / by_name["pruned.json"]).read_text() == '{"v": 2, "resumed": true}'
    assert sorted(p.name for p in store.iterdir()) == sorted(by_name.values())  # no temporary file left
    assert fresh.user_attrs[A.STORE_ATTR] == str(store.resolve())


def test_the_store_folder_follows_the_flag_then_the_study_then_the_storage(tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    study, _ = _finished_study(url)
    assert A.store_dir(url, None, study) == tmp_path / "artifacts"
    A.record(study, tmp_path / "elsewhere", url)
    assert A.store_dir(url, None, study) == (tmp_path / "elsewhere").resolve()
    assert A.store_dir(url, tmp_path / "flag", study) == tmp_path / "flag"
    assert A.default_dir("postgresql://u@127.0.0.1/db").as_posix() == "studies/artifacts"


def test_a_store_that_cannot_be_made_is_refused_in_one_line(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(StorageError, match="pass another --artifact-dir"):
        A.open_store(tmp_path / "file")
    with pytest.raises(StorageError, match="pass another --artifact-dir"):
        A.open_store(tmp_path / "file" / "sub")


def test_a_bad_artifact_dir_is_refused_before_the_search_and_never_recorded(small_fmnist, searched, tmp_path):
    import shutil

    from typer.testing import CliRunner

    from conftest import SMALL_RUN
    from fnnp_opt.cli import app

    shutil.copy(searched, tmp_path / "study.db")
    before = (tmp_path / "study.db").read_bytes()
    (tmp_path / "a-file").write_text("not a folder")
    args = ["run", *SMALL_RUN, "--data-dir", str(small_fmnist), "--epochs", "0", "--output", str(tmp_path / "out")]
    res = CliRunner().invoke(
        app, [*args, "--storage", f"sqlite:///{tmp_path}/study.db", "--artifact-dir", str(tmp_path / "a-file" / "x")]
    )
    assert res.exit_code == 1 and "pass another --artifact-dir" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(
        app, [*args, "--storage", f"sqlite:///{tmp_path}/study.db", "--artifact-dir", str(tmp_path / "a-file")]
    )
    assert res.exit_code == 1 and "is a file, not a folder" in res.output
    assert (tmp_path / "study.db").read_bytes() == before and not (tmp_path / "out").exists()
    with pytest.raises(StorageError, match="cannot be made"):
        A.check_store(tmp_path / "a-file" / "deeper" / "x")


def _url(folder: Path, kind: str) -> str:
    return f"sqlite:///{folder}/s.db" if kind == "sqlite" else str(folder / "s.log")


def _load(url: str) -> optuna.Study:
    return optuna.load_study(study_name="s", storage=St.open_storage(url))


def _files(folder: Path) -> dict[str, tuple[int, int, bytes]]:
    """Each file under ``folder``: its inode, modification time and bytes (a file replaced in place changes)."""
    return {
        str(p.relative_to(folder)): (p.stat().st_ino, p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_a_store_recorded_by_its_path_alone_is_found_beside_a_moved_or_copied_storage(tmp_path, kind):
    (tmp_path / "a").mkdir()
    study, _ = _finished_study(_url(tmp_path / "a", kind))
    (tmp_path / "file.txt").write_text("a file")
    store = A.open_store(tmp_path / "a" / "artifacts")
    upload_artifact(artifact_store=store, file_path=str(tmp_path / "file.txt"), study_or_trial=study)
    study.set_user_attr(A.STORE_ATTR, str((tmp_path / "a" / "artifacts").resolve()))  # what older fnnp-opt records
    St.close(study)
    shutil.copytree(tmp_path / "a", tmp_path / "copy")  # the original stays: the copy must not take its store
    assert A.store_dir(_url(tmp_path / "copy", kind), None, _load(_url(tmp_path / "copy", kind))) == (
        tmp_path / "copy" / "artifacts"
    )
    os.rename(tmp_path / "a", tmp_path / "moved")  # the recorded folder is gone
    moved = _url(tmp_path / "moved", kind)
    assert A.store_dir(moved, None, _load(moved)) == tmp_path / "moved" / "artifacts"
    # a store of its own elsewhere stays the study's, though another study's store sits beside the storage
    os.rename(tmp_path / "moved" / "artifacts", tmp_path / "own")
    (tmp_path / "moved" / "artifacts").mkdir()
    (tmp_path / "moved" / "artifacts" / "other").write_text("another study's file")
    _load(moved).set_user_attr(A.STORE_ATTR, str((tmp_path / "own").resolve()))
    assert A.store_dir(moved, None, _load(moved)) == (tmp_path / "own").resolve()


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_a_copied_storage_writes_into_its_own_store_and_never_into_the_originals(tmp_path, kind):
    (tmp_path / "a").mkdir()
    url = _url(tmp_path / "a", kind)
    study, trial = _finished_study(url)
    (tmp_path / "pruned.json").write_text('{"v": 1}')
    first = A.publish(study, trial, [tmp_path / "pruned.json"], A.store_dir(url, None, study), url)
    St.close(study)
    original = _files(tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "folder")  # the folder copied
    (tmp_path / "alone").mkdir()
    shutil.copy(St.storage_file(url), St.storage_file(_url(tmp_path / "alone", kind)))  # the storage file alone
    (tmp_path / "pruned.json").write_text('{"v": 2}')
    for where in ("folder", "alone"):
        copy_url = _url(tmp_path / where, kind)
        copy = _load(copy_url)
        target = copy.trials[1] if kind == "sqlite" else None
        again = A.publish(copy, target, [tmp_path / "pruned.json"], A.store_dir(copy_url, None, copy), copy_url)
        assert again.store == tmp_path / where / "artifacts" and again.artifacts == first.artifacts
        (artifact_id,) = again.artifacts.values()
        assert (tmp_path / where / "artifacts" / artifact_id).read_text() == '{"v": 2}'
        assert A.store_dir(copy_url, None, _load(copy_url)) == (tmp_path / where / "artifacts").resolve()
        St.close(copy)
    assert _files(tmp_path / "a") == original


def _store_of(db: Path) -> tuple[Path, dict[str, str]]:
    """The store a study of `fnnp-opt run` in ``db`` records, and its delivered trial's files by name -> id."""
    study = optuna.load_study(study_name="resnet20-fashion-mnist-flops0.5", storage=f"sqlite:///{db}")
    (winner,) = [t for t in study.trials if t.number == study.user_attrs["result"]["trial"]]
    metas = get_all_artifact_meta(winner, storage=P.storage(study))
    return Path(study.user_attrs[A.STORE_ATTR]), {m.filename: m.artifact_id for m in metas}


def test_a_moved_study_folder_keeps_its_store_and_report_writes_there(searched, tmp_path):
    study_folder(searched, tmp_path / "old")
    os.rename(tmp_path / "old", tmp_path / "new")  # the user moves the folder: database, artifacts/, out/
    db = tmp_path / "new" / "study.db"
    res = CliRunner().invoke(app, ["report", "--storage", f"sqlite:///{db}", "--output", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    assert not (tmp_path / "old").exists()  # the old folder is not made again
    store, files = _store_of(db)
    assert store == (tmp_path / "new" / "artifacts").resolve()
    assert (store / files["report.md"]).read_bytes() == (tmp_path / "r" / "report.md").read_bytes()
    assert (store / files["pruned.json"]).read_bytes() == (tmp_path / "new" / "out" / "pruned.json").read_bytes()


@pytest.mark.integration
def test_a_copied_study_writes_into_its_own_store_and_leaves_the_originals_alone(searched, small_fmnist, tmp_path):
    original = _files(searched.parent)
    shutil.copytree(searched.parent, tmp_path / "folder")  # the folder copied (the original stays)
    db = tmp_path / "folder" / "study.db"
    args = ["run", *SMALL_RUN, "--data-dir", str(small_fmnist), "--epochs", "0", "--output", str(tmp_path / "out")]
    res = CliRunner().invoke(app, [*args, "--storage", f"sqlite:///{db}"])  # resumed: delivers and reports again
    assert res.exit_code == 0, res.output
    store, files = _store_of(db)
    assert store == (tmp_path / "folder" / "artifacts").resolve()
    assert (store / files["pruned.safetensors"]).read_bytes() == (tmp_path / "out" / "pruned.safetensors").read_bytes()
    (tmp_path / "alone").mkdir()
    shutil.copy(searched, tmp_path / "alone" / "study.db")  # the database alone copied
    db = tmp_path / "alone" / "study.db"
    res = CliRunner().invoke(app, ["report", "--storage", f"sqlite:///{db}", "--output", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    store, files = _store_of(db)
    assert store == (tmp_path / "alone" / "artifacts").resolve()  # its own, with copies of the export's files
    assert (store / files["report.md"]).read_bytes() == (tmp_path / "r" / "report.md").read_bytes()
    assert (store / files["pruned.json"]).read_bytes() == (searched.parent / "out" / "pruned.json").read_bytes()
    assert _files(searched.parent) == original


def test_report_of_a_copied_or_moved_study_folder_writes_into_that_folder(searched, tmp_path):
    """`report` without --output writes into the study's export: the one in the folder it was copied or moved to,
    never the original's, and report.md names the storage it was read from."""
    db = study_folder(searched, tmp_path / "old")
    study = optuna.load_study(study_name=None, storage=f"sqlite:///{db}")
    study.set_user_attr("result", {**study.user_attrs["result"], "export": str((tmp_path / "old" / "out").resolve())})
    shutil.copytree(tmp_path / "old", tmp_path / "copy")
    before = _files(tmp_path / "old")
    copy_db = tmp_path / "copy" / "study.db"
    res = CliRunner().invoke(app, ["report", "--storage", f"sqlite:///{copy_db}"])
    assert res.exit_code == 0, res.output
    assert _files(tmp_path / "old") == before  # the original folder is untouched
    assert f"in `sqlite:///{copy_db}`" in (tmp_path / "copy" / "out" / "report.md").read_text()

    os.rename(tmp_path / "old", tmp_path / "new")
    res = CliRunner().invoke(app, ["report", "--storage", f"sqlite:///{tmp_path / 'new' / 'study.db'}"])
    assert res.exit_code == 0, res.output
    assert not (tmp_path / "old").exists()  # not made again
    assert "new/study.db" in (tmp_path / "new" / "out" / "report.md").read_text()
