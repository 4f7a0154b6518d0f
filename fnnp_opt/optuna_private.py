"""Every use of Optuna's private API (and optuna-dashboard's), in one place.

pyproject.toml takes any Optuna 5.x, and a minor release may move, rename or drop what this module reaches
into: underscore modules and names, private attributes of studies and trials, the tables of the RDB storage.
Each function says what it reaches into and why no public call does the job. tests/test_optuna_private.py
touches every name used here, so such a release breaks this module and that test, and nothing else.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import optuna
from optuna.artifacts import FileSystemArtifactStore
from optuna.artifacts._upload import ARTIFACTS_ATTR_PREFIX
from optuna.storages import BaseStorage, RDBStorage
from optuna.storages._cached_storage import _CachedStorage
from optuna.storages._heartbeat import BaseHeartbeat, is_heartbeat_enabled
from optuna.storages.journal._file import BaseJournalFileLock
from optuna.trial import FrozenTrial

# The system-attribute prefix under which ``optuna.artifacts.upload_artifact`` records an artifact on a study or
# trial (``optuna.artifacts._upload``): how a study's artifact ids are listed without a meta read per target.
ARTIFACT_ATTR_PREFIX: str = ARTIFACTS_ATTR_PREFIX

# The base class of a journal file's lock (``optuna.storages.journal._file``): fnnp-opt's queued lock
# (:class:`fnnp_opt.journal.QueuedAppendLock`) is handed to ``JournalFileBackend`` as one.
JournalFileLock = BaseJournalFileLock


class Heartbeat(BaseHeartbeat):
    """Optuna's heartbeat interface (``optuna.storages._heartbeat.BaseHeartbeat``), which Optuna 5 implements only
    for its RDB storages: a storage that is one gets its running trials' heartbeats recorded by Optuna's optimize
    loop, and its stale trials failed by ``optuna.storages.fail_stale_trials``. Optuna asks for the stale trials
    through the private ``_get_stale_trial_ids``; a subclass answers :meth:`stale_trial_ids` instead."""

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        return self.stale_trial_ids(study_id)

    def stale_trial_ids(self, study_id: int) -> list[int]:
        """The ids of the study's RUNNING trials whose heartbeat went stale."""
        raise NotImplementedError


def storage(study: optuna.Study) -> BaseStorage:
    """The storage ``study`` reads and writes through (``Study._storage``; an RDB storage is wrapped in Optuna's
    cache): for the storage calls that take ids (a trial by id, its state), which the study does not offer."""
    return study._storage


def backend(study: optuna.Study) -> BaseStorage:
    """``study``'s storage under Optuna's cache (``_CachedStorage._backend``; a journal is not wrapped): the cache
    keeps a finished trial as it was when it finished, and the RDB tables are reached through the backend."""
    s = study._storage
    return s._backend if isinstance(s, _CachedStorage) else s


def study_id(study: optuna.Study) -> int:
    """``Study._study_id``: the id that storage calls take."""
    return study._study_id


def trial_id(trial: optuna.Trial | FrozenTrial) -> int:
    """The storage id of a trial (``Trial._trial_id``, ``FrozenTrial._trial_id``), which its number is not: the
    slot claims, the RDB rows and the artifacts of a finished trial are keyed by it."""
    return trial._trial_id


def heartbeat_enabled(storage: BaseStorage) -> bool:
    """Whether ``storage`` records heartbeats (``optuna.storages._heartbeat.is_heartbeat_enabled``), so that
    ``optuna.storages.fail_stale_trials`` may be called on its study."""
    return is_heartbeat_enabled(storage)


def fixed_params(trial: FrozenTrial) -> dict[str, Any] | None:
    """The parameters ``Study.enqueue_trial`` fixed for ``trial`` (its ``fixed_params`` system attribute, a
    convention of Optuna's internals), or None for a fresh draw: tells a queued trial from a sampled one."""
    return trial.system_attrs.get("fixed_params")


def artifact_path(store: FileSystemArtifactStore, artifact_id: str) -> Path:
    """The file that holds ``artifact_id`` in a file-system artifact store (``_get_filepath``): where an atomic
    write puts its bytes, through a temporary file beside it."""
    return Path(store._get_filepath(artifact_id))


def stored_note(study: optuna.Study) -> str:
    """The body of ``study``'s optuna-dashboard note (``optuna_dashboard._note``, from the study's system
    attributes; empty when it has none): a note is saved only when it changed, since each save adds attributes."""
    from optuna_dashboard._note import get_note_from_system_attrs

    attrs = study._storage.get_study_system_attrs(study._study_id)
    return get_note_from_system_attrs(attrs, None).get("body")


def heartbeat_trial_ids(rdb: RDBStorage) -> set[int]:
    """The ids of the trials that ever recorded a heartbeat in an RDB storage (its table
    ``optuna.storages._rdb.models.TrialHeartbeatModel``): a RUNNING trial absent from it was killed before its
    first heartbeat, which Optuna's stale-trial check never sees."""
    from optuna.storages._rdb.models import TrialHeartbeatModel
    from sqlalchemy import select

    with rdb.engine.connect() as conn:
        return set(conn.execute(select(TrialHeartbeatModel.trial_id)).scalars())


def set_finished_trial_attr(rdb: RDBStorage, trial_id: int, key: str, value: Any, system: bool = False) -> None:
    """Write user (or system) attribute ``key`` of a finished trial into an RDB storage's table
    (``optuna.storages._rdb.models``), the row ``Trial.set_user_attr`` writes: Optuna's API refuses to change a
    finished trial, and a rerank score or an artifact record is added after the trial finished."""
    from optuna.storages._rdb.models import TrialSystemAttributeModel, TrialUserAttributeModel
    from sqlalchemy import delete, insert

    attr = TrialSystemAttributeModel if system else TrialUserAttributeModel
    with rdb.engine.begin() as conn:
        conn.execute(delete(attr).where(attr.trial_id == trial_id, attr.key == key))
        conn.execute(insert(attr).values(trial_id=trial_id, key=key, value_json=json.dumps(value)))
