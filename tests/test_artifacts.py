from __future__ import annotations

import optuna
import pytest
from optuna.artifacts import get_all_artifact_meta

import fnnp_opt.artifacts as A
from fnnp_opt import storage as St
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
    first = A.publish(study, trial, A.export_files(export), store)
    (export / "pruned.json").write_text('{"v": 2, "resumed": true}')
    second = A.publish(study, trial, A.export_files(export), store)
    assert first.artifacts == second.artifacts and len(first.artifacts) == 2
    # on SQLite the files hang on the finished trial; a journal cannot annotate it, so they go on the study
    fresh = optuna.load_study(study_name="s", storage=St.open_storage(url))  # as another process reads it
    target = fresh.trials[1] if kind == "sqlite" else fresh
    assert first.target == ("trial 1" if kind == "sqlite" else "study")
    metas = get_all_artifact_meta(target, storage=fresh._storage)
    assert sorted(m.filename for m in metas) == ["pruned.json", "pruned.safetensors"]
    by_name = {m.filename: m.artifact_id for m in metas}
    assert (store / by_name["pruned.json"]).read_text() == '{"v": 2, "resumed": true}'
    assert sorted(p.name for p in store.iterdir()) == sorted(by_name.values())  # no temporary file left
    assert fresh.user_attrs[A.STORE_ATTR] == str(store.resolve())


def test_the_store_folder_follows_the_flag_then_the_study_then_the_storage(tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    study, _ = _finished_study(url)
    assert A.store_dir(url, None, study) == tmp_path / "artifacts"
    A.record(study, tmp_path / "elsewhere")
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
