"""The study's files in Optuna's artifact store: the delivered export and the report, reachable from the dashboard.

The store is Optuna's core :class:`optuna.artifacts.FileSystemArtifactStore`, by default the folder
``artifacts`` beside a SQLite or journal file (``./studies/artifacts`` for a server storage), or ``--artifact-dir``.
Optuna does not record where a study's store is, so fnnp-opt keeps it in the study's ``artifact_store`` user
attribute; `fnnp-opt dashboard` serves that store, and the files download from the winning trial's page.

Where they go: onto the winning trial on SQLite and PostgreSQL (fnnp-opt writes the finished trial's artifact
row, which Optuna's API refuses once a trial is finished), onto the study on a journal, whose log cannot annotate
a finished trial. Uploading again (a resumed run) rewrites the same artifact of each file name in place, so the
study never lists two versions of one file.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterable

import optuna
from optuna.artifacts import FileSystemArtifactStore, get_all_artifact_meta, upload_artifact

from fnnp_opt import storage as St
from fnnp_opt.errors import StorageError

log = logging.getLogger(__name__)

STORE_ATTR = "artifact_store"  # study user attribute: the absolute path of the study's artifact store


class AtomicFileSystemArtifactStore(FileSystemArtifactStore):
    """Optuna's file-system store, writing each artifact to a temporary file first: a killed upload leaves the
    previous bytes of that artifact, never half a file."""

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        target = self._get_filepath(artifact_id)
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
    path = St.storage_file(storage_url)
    return (path.parent if path is not None else Path("studies")) / "artifacts"


def store_dir(storage_url: str, artifact_dir: str | Path | None = None, study: optuna.Study | None = None) -> Path:
    """The artifact folder of ``study``: ``artifact_dir`` when given, else the one the study recorded, else
    :func:`default_dir`."""
    if artifact_dir is not None:
        return Path(artifact_dir)
    if study is not None and study.user_attrs.get(STORE_ATTR):
        return Path(study.user_attrs[STORE_ATTR])
    return default_dir(storage_url)


def check_store(folder: Path) -> None:
    """Raise :class:`StorageError` unless ``folder`` could be made (or is) an artifact store this user writes;
    creates nothing. `run` and `finetune` check an explicit ``--artifact-dir`` first, so a bad one is refused
    before the search, and never recorded on the study."""
    folder = Path(folder).absolute()
    if folder.exists() and not folder.is_dir():
        raise StorageError(f"artifact store {folder} is a file, not a folder; pass another --artifact-dir")
    parent = folder
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise StorageError(f"artifact store {folder} cannot be made: {parent} is a file; pass another --artifact-dir")
    if not os.access(parent, os.W_OK | os.X_OK):
        what = "is not writable for this user" if parent == folder else f"cannot be made: {parent} is not writable"
        raise StorageError(f"artifact store {folder} {what}; pass another --artifact-dir")


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


def record(study: optuna.Study, folder: Path) -> None:
    """Store ``folder`` (absolute) as ``study``'s artifact store, unless it is already recorded."""
    where = str(folder.resolve())
    if study.user_attrs.get(STORE_ATTR) != where:
        study.set_user_attr(STORE_ATTR, where)


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

    return isinstance(St._backend(study), RDBStorage)


def publish(
    study: optuna.Study, trial: optuna.trial.FrozenTrial | None, files: Iterable[Path], folder: Path
) -> Published:
    """Upload ``files`` to the artifact store in ``folder`` and attach them to ``trial`` (None: the study).

    A file whose name the target already lists is rewritten in place under its artifact id. Records the
    store's folder in the study. Raises :class:`StorageError` when the store cannot be written.
    """
    store = open_store(folder)
    record(study, folder)
    on_trial = trial is not None and _annotates_finished_trials(study)
    if trial is not None and not on_trial:
        log.info("a journal cannot annotate finished trial %d: its files go on the study", trial.number)
    backend = St._backend(study)  # not Optuna's cache, which keeps a finished trial as it was when it finished
    target = backend.get_trial(trial._trial_id) if on_trial else study
    existing = {m.filename: m.artifact_id for m in get_all_artifact_meta(target, storage=backend)}
    done = {}
    for path in files:
        path = Path(path)
        if path.name in existing:
            with open(path, "rb") as fh:
                store.write(existing[path.name], fh)
            done[path.name] = existing[path.name]
        else:
            storage = _FinishedTrialStorage(study) if on_trial else study._storage
            done[path.name] = upload_artifact(
                artifact_store=store, file_path=str(path), study_or_trial=target, storage=storage
            )
    return Published(folder, f"trial {trial.number}" if on_trial else "study", done)


def export_files(export: Path) -> list[Path]:
    """The files of an export folder worth keeping with the study: the recipe (JSON), the weights, and the ONNX
    graph when made."""
    return [export / n for n in ("pruned.json", "pruned.safetensors", "pruned.onnx") if (export / n).is_file()]
