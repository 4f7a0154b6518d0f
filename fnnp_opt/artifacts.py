"""The study's files in Optuna's artifact store: the delivered export and the report, reachable from the dashboard.

The store is Optuna's core :class:`optuna.artifacts.FileSystemArtifactStore`, by default the folder
``artifacts`` beside a SQLite or journal file (``./studies/artifacts`` for a server storage), or ``--artifact-dir``.
Optuna does not record where a study's store is, so fnnp-opt keeps it in the study's ``artifact_store`` user
attribute; `fnnp-opt dashboard` serves that store, and the files download from the winning trial's page.

A SQLite or journal file may be moved or copied with its folder: the study also records the file it was beside
(``artifact_storage``), and a store recorded inside that file's folder is found at the same place beside the file
where it is now. A copy therefore writes into its own store, never into the original's: a copy of the file alone
starts a store beside itself and takes the copies of its files along from the store it was copied from.

Where they go: onto the winning trial on SQLite and PostgreSQL (fnnp-opt writes the finished trial's artifact
row, which Optuna's API refuses once a trial is finished), onto the study on a journal, whose log cannot annotate
a finished trial. Uploading again (a resumed run) rewrites the same artifact of each file name in place, so the
study never lists two versions of one file.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterable

import optuna
from optuna.artifacts import FileSystemArtifactStore, get_all_artifact_meta, upload_artifact

from fnnp_opt import optuna_private as P
from fnnp_opt import storage as St
from fnnp_opt.errors import StorageError
from fnnp_opt.paths import NOT_A_FOLDER, nearest_parent

log = logging.getLogger(__name__)

STORE_ATTR = "artifact_store"  # study user attribute: the absolute path of the study's artifact store
STORAGE_ATTR = "artifact_storage"  # study user attribute: the SQLite or journal file the store was recorded from


class AtomicFileSystemArtifactStore(FileSystemArtifactStore):
    """Optuna's file-system store, writing each artifact to a temporary file first: a killed upload leaves the
    previous bytes of that artifact, never half a file."""

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        target = P.artifact_path(self, artifact_id)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{artifact_id}.")
        try:
            with os.fdopen(fd, "wb") as fh:
                while chunk := content_body.read(1 << 20):
                    fh.write(chunk)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def default_dir(storage_url: str) -> Path:
    """The store's folder when none is given or recorded: ``artifacts`` beside a SQLite or journal file, else
    ``./studies/artifacts``."""
    return St.beside(storage_url, "artifacts")


def store_dir(storage_url: str, artifact_dir: str | Path | None = None, study: optuna.Study | None = None) -> Path:
    """The artifact folder of ``study``: ``artifact_dir`` when given, else the one the study recorded (where it is
    now, :func:`recorded_dir`), else :func:`default_dir`."""
    if artifact_dir is not None:
        return Path(artifact_dir)
    if study is not None and study.user_attrs.get(STORE_ATTR):
        return recorded_dir(storage_url, study)
    return default_dir(storage_url)


def _artifact_ids(study: optuna.Study) -> set[str]:
    """The ids of the artifacts ``study`` lists, on itself and on its trials (read from the storage itself)."""
    backend, prefix = P.backend(study), P.ARTIFACT_ATTR_PREFIX
    attrs = [backend.get_study_system_attrs(P.study_id(study))]
    attrs += [t.system_attrs for t in backend.get_all_trials(P.study_id(study), deepcopy=False)]
    return {key[len(prefix) :] for a in attrs for key in a if key.startswith(prefix)}


def _holds(folder: Path, study: optuna.Study) -> bool:
    """Whether ``folder`` holds a file of ``study``'s artifacts."""
    return folder.is_dir() and any((folder / i).is_file() for i in _artifact_ids(study))


def recorded_dir(storage_url: str, study: optuna.Study) -> Path:
    """The store ``study`` recorded, found again when its SQLite or journal file (``storage_url``) was moved or
    copied since: a store recorded inside the old file's folder is at the same place beside the file now, unless
    only the file moved (the old file is gone) and the store stayed. A copy never gets the original's store.

    Records older than :data:`STORAGE_ATTR` name the store alone: the default beside the file is taken when the
    recorded folder is gone, or when it holds the study's files (the folder was copied)."""
    recorded = Path(study.user_attrs[STORE_ATTR])
    here = St.storage_file(storage_url)
    if here is None:
        return recorded
    here = here.resolve()
    origin = study.user_attrs.get(STORAGE_ATTR)
    if origin is None:
        beside = default_dir(storage_url)
        if recorded == beside.resolve() or (recorded.exists() and not _holds(beside, study)):
            return recorded
        return beside
    return followed(storage_url, study, recorded)


def followed(storage_url: str, study: optuna.Study, recorded: Path) -> Path:
    """A folder ``study`` recorded (its artifact store, its export), where it is now: one that was inside its
    SQLite or journal file's folder moved or was copied with it, and is at the same place beside the file now
    (``storage_url``); unless only the file moved (the old file is gone, the folder is still there). A copy's
    path never leads into the original's folder. Other paths (and studies recorded before
    :data:`STORAGE_ATTR`) are ``recorded`` itself."""
    here, origin = St.storage_file(storage_url), study.user_attrs.get(STORAGE_ATTR)
    if here is None or origin is None:
        return recorded
    here, origin = here.resolve(), Path(origin)
    if origin == here or not recorded.is_relative_to(origin.parent):  # not moved, or a folder of its own choice
        return recorded
    follow = here.parent / recorded.relative_to(origin.parent)
    if follow.is_dir() or origin.exists() or not recorded.is_dir():
        return follow
    return recorded  # the file alone was moved: the folder is where it was


def served_dir(storage_url: str, study: optuna.Study) -> Path:
    """Where ``study``'s artifact files are read from: :func:`recorded_dir`, or the recorded folder itself while
    there is nothing there (a copy of the storage file alone reads the original's store; it never writes it)."""
    found = recorded_dir(storage_url, study)
    recorded = Path(study.user_attrs[STORE_ATTR])
    return recorded if not found.is_dir() and recorded.is_dir() else found


def check_store(folder: Path) -> None:
    """Raise :class:`StorageError` unless ``folder`` could be made (or is) an artifact store this user writes;
    creates nothing. `run` and `finetune` check an explicit ``--artifact-dir`` first, so a bad one is refused
    before the search, and never recorded on the study."""
    folder = Path(folder).absolute()
    if folder.exists() and not folder.is_dir():
        raise StorageError(f"artifact store {folder} is a file, not a folder; pass another --artifact-dir")
    if folder.is_dir():
        if not os.access(folder, os.W_OK | os.X_OK):
            raise StorageError(f"artifact store {folder} is not writable for this user; pass another --artifact-dir")
        return
    parent, problem = nearest_parent(folder)
    if problem == NOT_A_FOLDER:
        raise StorageError(f"artifact store {folder} cannot be made: {parent} is a file; pass another --artifact-dir")
    if problem:
        raise StorageError(
            f"artifact store {folder} cannot be made: {parent} is not writable; pass another --artifact-dir"
        )


def open_store(folder: Path) -> AtomicFileSystemArtifactStore:
    """The store in ``folder``, created if missing; :class:`StorageError` when it cannot be."""
    if folder.exists() and not folder.is_dir():
        raise StorageError(f"artifact store {folder} is a file, not a folder; pass another --artifact-dir")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError(f"artifact store {folder} could not be made ({exc.strerror}); pass another --artifact-dir")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise StorageError(f"artifact store {folder} is not writable for this user; pass another --artifact-dir")
    return AtomicFileSystemArtifactStore(folder)


def record(study: optuna.Study, folder: Path, storage_url: str) -> None:
    """Store ``folder`` (absolute) as ``study``'s artifact store, and the SQLite or journal file of ``storage_url``
    it is recorded from, unless they are already recorded. When the study's files were in another store, their
    copies are made in ``folder`` first (the other store is only read), so the study still lists every file."""
    where = str(folder.resolve())
    here = St.storage_file(storage_url)
    before = study.user_attrs.get(STORE_ATTR)
    if before and Path(before).resolve() != folder.resolve() and Path(before).is_dir():
        _copy_files(study, Path(before), folder)
    if before != where:
        study.set_user_attr(STORE_ATTR, where)
    if here is not None and study.user_attrs.get(STORAGE_ATTR) != str(here.resolve()):
        study.set_user_attr(STORAGE_ATTR, str(here.resolve()))


def _copy_files(study: optuna.Study, source: Path, folder: Path) -> None:
    """Copy ``study``'s artifact files that ``folder`` lacks from the store in ``source``."""
    missing = sorted(i for i in _artifact_ids(study) if (source / i).is_file() and not (folder / i).exists())
    if missing:
        open_store(folder)
        for artifact_id in missing:
            shutil.copyfile(source / artifact_id, folder / artifact_id)
        log.info("copied %d artifact files of study %r from %s to %s", len(missing), study.study_name, source, folder)


@dataclass
class Published:
    """What :func:`publish` did."""

    store: Path  # the artifact store's folder
    target: str  # "trial N" or "study"
    artifacts: dict[str, str]  # file name -> artifact id

    def describe(self) -> str:
        """One line: how many files went where."""
        return f"{len(self.artifacts)} files on {self.target} in {self.store}"


class _FinishedTrialStorage:
    """The one storage call Optuna's ``upload_artifact`` makes, for a finished trial of an RDB storage."""

    def __init__(self, study: optuna.Study) -> None:
        self.study = study

    def set_trial_system_attr(self, trial_id: int, key: str, value) -> None:
        St.set_finished_trial_system_attr(self.study, trial_id, key, value)


def _annotates_finished_trials(study: optuna.Study) -> bool:
    from optuna.storages import RDBStorage

    return isinstance(P.backend(study), RDBStorage)


def publish(
    study: optuna.Study, trial: optuna.trial.FrozenTrial | None, files: Iterable[Path], folder: Path, storage_url: str
) -> Published:
    """Upload ``files`` to the artifact store in ``folder`` and attach them to ``trial`` (None: the study) of
    ``study`` in ``storage_url``.

    A file whose name the target already lists is rewritten in place under its artifact id. Records the
    store's folder in the study (:func:`record`). Raises :class:`StorageError` when the store cannot be written.
    """
    store = open_store(folder)
    record(study, folder, storage_url)
    on_trial = trial is not None and _annotates_finished_trials(study)
    if trial is not None and not on_trial:
        log.info("a journal cannot annotate finished trial %d: its files go on the study", trial.number)
    backend = P.backend(study)  # not Optuna's cache, which keeps a finished trial as it was when it finished
    target = backend.get_trial(P.trial_id(trial)) if trial is not None and on_trial else study
    existing = {m.filename: m.artifact_id for m in get_all_artifact_meta(target, storage=backend)}
    done = {}
    for path in files:
        path = Path(path)
        if path.name in existing:
            with open(path, "rb") as fh:
                store.write(existing[path.name], fh)
            done[path.name] = existing[path.name]
        else:
            storage = _FinishedTrialStorage(study) if on_trial else P.storage(study)
            # the ignore: Optuna types storage= a BaseStorage but calls only what _FinishedTrialStorage has
            done[path.name] = upload_artifact(
                artifact_store=store,
                file_path=str(path),
                study_or_trial=target,
                storage=storage,  # type: ignore[arg-type]
            )
    return Published(folder, f"trial {trial.number}" if trial is not None and on_trial else "study", done)


def export_files(export: Path) -> list[Path]:
    """The files of an export folder worth keeping with the study: the plan (JSON), the weights, and the ONNX
    graph when made."""
    return [export / n for n in ("pruned.json", "pruned.safetensors", "pruned.onnx") if (export / n).is_file()]
