"""Every private name of Optuna (and optuna-dashboard) that fnnp_opt.optuna_private reaches into, touched once: an
Optuna release that moves or changes one of them fails here, beside the one module to mend."""

from __future__ import annotations

import warnings

import optuna
import pytest
from optuna.artifacts import FileSystemArtifactStore, upload_artifact
from optuna.storages import JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileSymlinkLock
from optuna.trial import TrialState

from fnnp_opt import journal as J
from fnnp_opt import optuna_private as P


@pytest.fixture()
def rdb(tmp_path) -> RDBStorage:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = RDBStorage(f"sqlite:///{tmp_path}/s.db", heartbeat_interval=60, grace_period=120)
    yield storage
    storage.engine.dispose()


def _study(storage) -> optuna.Study:
    return optuna.create_study(study_name="s", storage=storage)


def test_a_study_gives_its_storage_its_backend_and_the_ids_storage_calls_take(rdb, tmp_path):
    study = _study(rdb)
    trial = study.ask()
    assert P.storage(study) is not rdb and P.backend(study) is rdb  # Optuna's cache wraps an RDB storage
    assert rdb.get_study_name_from_id(P.study_id(study)) == "s"
    frozen = P.storage(study).get_trial(P.trial_id(trial))
    assert frozen.number == trial.number and P.trial_id(frozen) == P.trial_id(trial)
    journal = _study(J.open_journal(tmp_path / "j.log", "j.log", 1, 1, None))
    assert isinstance(P.backend(journal), JournalStorage) and P.storage(journal) is P.backend(journal)


def test_a_queued_trial_has_its_fixed_params_and_a_fresh_draw_none(rdb):
    study = _study(rdb)
    study.enqueue_trial({"x": 0.25})
    queued, fresh = study.ask(), study.ask()
    for trial in (queued, fresh):
        trial.suggest_float("x", 0, 1)
        study.tell(trial, 0.0)
    by_number = {t.number: t for t in study.trials}
    assert P.fixed_params(by_number[queued.number]) == {"x": 0.25}
    assert P.fixed_params(by_number[fresh.number]) is None


def test_heartbeats_are_listed_and_a_finished_trial_takes_attributes_in_the_rdb_tables(rdb):
    study = _study(rdb)
    trial = study.ask()
    assert P.heartbeat_enabled(rdb) and P.heartbeat_trial_ids(rdb) == set()
    rdb.record_heartbeat(P.trial_id(trial))
    assert P.heartbeat_trial_ids(rdb) == {P.trial_id(trial)}
    study.tell(trial, 1.0)
    P.set_finished_trial_attr(rdb, P.trial_id(trial), "late", {"a": 1})
    P.set_finished_trial_attr(rdb, P.trial_id(trial), "late", 2)  # rewritten in place
    P.set_finished_trial_attr(rdb, P.trial_id(trial), "mark", "x", system=True)
    (stored,) = optuna.load_study(study_name="s", storage=rdb).trials
    assert stored.user_attrs["late"] == 2 and stored.system_attrs["mark"] == "x"


def test_a_heartbeat_storage_answers_optunas_stale_trial_check(tmp_path):
    storage = J.open_journal(tmp_path / "j.log", "j.log", 1, 1, None)
    assert isinstance(storage, P.Heartbeat) and P.heartbeat_enabled(storage)
    study = _study(storage)
    trial = study.ask()
    storage.stale_trial_ids = lambda study_id: [P.trial_id(trial)] if study_id == P.study_id(study) else []
    optuna.storages.fail_stale_trials(study)
    assert study.trials[0].state is TrialState.FAIL


def test_a_journal_lock_is_optunas_lock_kind():
    assert issubclass(JournalFileSymlinkLock, P.JournalFileLock)
    assert issubclass(J.QueuedAppendLock, P.JournalFileLock)


def test_an_uploaded_artifact_is_listed_under_the_prefix_and_lies_at_its_path(rdb, tmp_path):
    study = _study(rdb)
    store = FileSystemArtifactStore(tmp_path / "store")
    (tmp_path / "store").mkdir()
    (tmp_path / "f.txt").write_text("bytes")
    artifact_id = upload_artifact(artifact_store=store, file_path=str(tmp_path / "f.txt"), study_or_trial=study)
    keys = rdb.get_study_system_attrs(P.study_id(study))
    assert P.ARTIFACT_ATTR_PREFIX + artifact_id in keys
    assert P.artifact_path(store, artifact_id).read_text() == "bytes"


def test_the_dashboard_note_is_read_back(rdb):
    from optuna_dashboard import save_note

    study = _study(rdb)
    assert P.stored_note(study) == ""
    save_note(study, "## a note")
    assert P.stored_note(study) == "## a note"
