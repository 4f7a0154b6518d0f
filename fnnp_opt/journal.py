"""Optuna's journal file as a study storage, with the heartbeats Optuna 5 gives only its RDB storages.

A journal file is one JSON operation per line, appended under Optuna's own lock
(``JournalFileBackend``); every process replays the lines it has not read yet. fnnp-opt takes
one wherever it takes a ``--storage`` URL:

* ``journal:///studies/fnnp.log`` (relative) or ``journal:////abs/path/fnnp.log`` (absolute):
  the path after ``journal:///``, as SQLAlchemy reads ``sqlite:///``;
* a plain path ending in ``.log`` or ``.journal`` (``studies/fnnp.log``), which the stock
  ``optuna`` CLI and ``optuna-dashboard`` take too.

What fnnp-opt adds to Optuna's ``JournalStorage`` (:class:`HeartbeatJournalStorage`):

* Heartbeats, behind Optuna's own heartbeat interface (:class:`fnnp_opt.optuna_private.Heartbeat`), so Optuna's
  optimize loop runs them as it does for RDB storages: a running trial writes its system attribute
  :data:`HEARTBEAT_ATTR` (seconds since the epoch) every ``heartbeat_s``; a RUNNING trial whose
  last sign of life (that attribute, or its start when it never sent one) is older than
  ``grace_s`` is stale, and ``optuna.storages.fail_stale_trials`` fails it and hands it to the
  retry callback (``RetryHeartbeatStaleTrialCallback``: the same params queued again, linked by
  ``failed_trial`` and ``retry_history``). Two processes failing the same trial at once: the
  journal replays the first FAIL and refuses the second (``UpdateFinishedTrialError``), so the
  trial is retried once. The clocks of machines sharing a journal file must agree (NTP).
* A torn last line (a writer killed in the middle of an append) is cut off before the next append
  (:func:`cut_torn_tail`, under the append lock): Optuna's reader skips it, but the append would join
  it into one broken line in the middle of the file, and every later read would fail.
* User attributes of finished trials, which the journal refuses (its replay drops updates of a
  finished trial): kept in study user attributes, one per attribute key,
  ``trial_attrs:<key>`` = ``{"<trial number>": value}`` (:func:`set_finished_user_attr`,
  :func:`finished_user_attrs`).

Two more files go beside the journal. The study-wide lock of :mod:`fnnp_opt.storage` is a file
lock, :func:`lock_path` (``<journal>.fnnp-lock``). Appends take Optuna's own lock (the symlink
``<journal>.lock``, so stock Optuna writers such as optuna-dashboard stay excluded), but fnnp-opt's
processes first queue for it on a kernel file lock, :func:`append_lock_path`
(:class:`QueuedAppendLock`): Optuna's lock polls with a back-off that grows to a second, which
made one trial in a hundred wait about a second with two workers (benchmarks/storage.py).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
import warnings
from pathlib import Path
from typing import IO, Callable

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock
from optuna.trial import FrozenTrial, TrialState

from fnnp_opt import optuna_private as P
from fnnp_opt.errors import StorageError
from fnnp_opt.paths import NOT_A_FOLDER, nearest_parent

log = logging.getLogger(__name__)

SCHEME = "journal:///"
SUFFIXES = (".log", ".journal")  # a plain path with one of these endings is a journal file
HEARTBEAT_ATTR = "fnnp:heartbeat"  # trial system attribute: the last heartbeat, seconds since the epoch
FINISHED_PREFIX = "trial_attrs:"  # study user attribute trial_attrs:<key> = {"<trial number>": value}
SYNTAX = "journal:///relative/path.log, journal:////absolute/path.log, or a path ending in .log or .journal"


def journal_path(url: str) -> Path | None:
    """The file of a journal storage URL (see the module docstring); None for any other storage.

    Raises :class:`StorageError` for a ``journal:`` URL that names no file.
    """
    if url.startswith("journal:"):
        path = url[len(SCHEME) :] if url.startswith(SCHEME) else ""
        if not path or path.endswith("/"):
            raise StorageError(f"storage {url!r} names no journal file; a journal is {SYNTAX}")
        return Path(path).expanduser()
    if "://" not in url and url.endswith(SUFFIXES):
        return Path(url).expanduser()
    return None


def lock_path(path: Path) -> Path:
    """fnnp-opt's study-wide lock file of journal ``path`` (beside it; not Optuna's ``<journal>.lock``)."""
    return path.with_name(path.name + ".fnnp-lock")


def append_lock_path(path: Path) -> Path:
    """The file on which fnnp-opt's processes queue to append to journal ``path`` (:class:`QueuedAppendLock`)."""
    return path.with_name(path.name + ".fnnp-append-lock")


class QueuedAppendLock(P.JournalFileLock):
    """Optuna's symlink lock of a journal file, taken while holding a kernel file lock (``flock``) that fnnp-opt's
    processes wait on in a queue: no polling among them, and the kernel frees it when its holder dies. Stock
    Optuna writers, which know only the symlink, are excluded by it as before. Once both are held, a torn last
    line is cut (:func:`cut_torn_tail`), so the append that follows lands on a line of its own."""

    def __init__(self, path: Path) -> None:
        self._path = Path(path)
        self._optuna = JournalFileSymlinkLock(str(path))
        self._queue = append_lock_path(path)
        self._held: IO | None = None

    def acquire(self) -> bool:
        fh = open(self._queue, "a")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX)
            self._optuna.acquire()
        except BaseException:
            fh.close()  # closing releases the flock
            raise
        self._held = fh
        try:
            cut_torn_tail(self._path)  # before this append joins a torn line left by a killed writer
        except BaseException:
            self.release()
            raise
        return True

    def release(self) -> None:
        fh, self._held = self._held, None
        try:
            self._optuna.release()
        finally:
            if fh is not None:
                fh.close()


def check_file(path: Path, url: str) -> None:
    """Raise :class:`StorageError` when ``path`` cannot hold a journal: a folder, a path under a file, or an
    existing file that is not an Optuna journal (its first line is not one of the journal's JSON operations).

    Reads at most the first line; writes nothing. Appending to another kind of file would corrupt it and make
    the study unreadable, so it is refused.
    """
    if path.is_dir():
        raise StorageError(f"storage {url}: {path} is a folder, not a journal file; a journal is {SYNTAX}")
    folder, problem = nearest_parent(path)
    if problem == NOT_A_FOLDER:
        raise StorageError(f"storage {url}: {folder} is not a folder; pass another --storage")
    if not path.is_file() or path.stat().st_size == 0:
        return
    try:
        for wait in (0.0, 0.5):  # a first line without its end may be another process's first write, landing
            time.sleep(wait)
            with open(path, "rb") as fh:
                first = fh.readline(1 << 20)
            if first.endswith(b"\n"):
                break
        op = json.loads(first) if first.endswith(b"\n") else None
    except (OSError, ValueError) as exc:
        if isinstance(exc, PermissionError):
            raise StorageError(f"storage {url}: {path} is not readable for this user; pass another --storage") from None
        op = None
    if not isinstance(op, dict) or "op_code" not in op:
        raise StorageError(
            f"storage {url}: {path} exists and is not an Optuna journal file (its first line is not a journal "
            "operation); fnnp-opt will not append to it: pass a new file or an existing journal to --storage"
        )


def cut_torn_tail(path: Path) -> int:
    """Cut a torn last line off journal ``path``; return the bytes cut (0 when its last line is whole).

    A writer killed in the middle of an append leaves a last line without its end. Optuna's reader skips such a
    line, so no process ever saw that operation, but the next append would be written onto it: one broken line in
    the middle of the file, which no read gets past. Call it holding the append lock (:class:`QueuedAppendLock`
    does, before every append), so an append in flight is never taken for a torn one."""
    try:
        fh = open(path, "rb+")
    except FileNotFoundError:
        return 0
    with fh:
        size = fh.seek(0, os.SEEK_END)
        if size == 0:
            return 0
        fh.seek(size - 1)
        if fh.read(1) == b"\n":
            return 0
        keep = size
        while keep > 0:  # back to the end of the last whole line
            start = max(0, keep - (1 << 16))
            fh.seek(start)
            at = fh.read(keep - start).rfind(b"\n")
            if at >= 0:
                keep = start + at + 1
                break
            keep = start
        fh.truncate(keep)
        fh.flush()
        os.fsync(fh.fileno())
    log.warning("%s ended in a torn line (a writer killed mid-append); cut its %d bytes", path, size - keep)
    return size - keep


class HeartbeatJournalStorage(JournalStorage, P.Heartbeat):
    """Optuna's ``JournalStorage`` over a ``JournalFileBackend``, with heartbeats (see the module docstring)."""

    def __init__(
        self,
        path: Path,
        heartbeat_s: int,
        grace_s: int,
        stale_callback: Callable[[optuna.Study, FrozenTrial], None] | None,
    ) -> None:
        super().__init__(JournalFileBackend(str(path), lock_obj=QueuedAppendLock(Path(path))))
        self.path = Path(path)
        self.heartbeat_s = heartbeat_s
        self.grace_s = grace_s
        self.stale_callback = stale_callback

    def record_heartbeat(self, trial_id: int) -> None:
        """Write the trial's heartbeat; a trial already finished (failed by another process as stale) is left."""
        try:
            self.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, time.time())
        except (optuna.exceptions.UpdateFinishedTrialError, KeyError):
            pass

    def stale_trial_ids(self, study_id: int) -> list[int]:
        now = time.time()
        running = self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,))
        return [P.trial_id(t) for t in running if now - last_sign_of_life(t) > self.grace_s]

    def get_heartbeat_interval(self) -> int | None:
        return self.heartbeat_s

    def get_heartbeat_stale_trial_callback(self) -> Callable[[optuna.Study, FrozenTrial], None] | None:
        return self.stale_callback


def last_sign_of_life(trial: FrozenTrial) -> float:
    """When a running trial last proved its worker alive (seconds since the epoch): its last heartbeat, or its
    start when later (a retry inherits its failed trial's system attributes, old heartbeat included)."""
    start = trial.datetime_start.timestamp() if trial.datetime_start is not None else 0.0
    return max(float(trial.system_attrs.get(HEARTBEAT_ATTR, 0.0)), start)


def open_journal(
    path: Path,
    url: str,
    heartbeat_s: int,
    grace_s: int,
    stale_callback: Callable[[optuna.Study, FrozenTrial], None] | None,
) -> HeartbeatJournalStorage:
    """Open (or create) the journal file ``path`` with heartbeats; :class:`StorageError` when it cannot be."""
    check_file(path, url)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return HeartbeatJournalStorage(path, heartbeat_s, grace_s, stale_callback)
    except OSError as exc:
        raise StorageError(
            f"storage {url} could not be opened ({exc.strerror or exc}); pass another --storage"
        ) from None
    except ValueError as exc:  # a line that is not JSON, in the middle of the file
        raise StorageError(
            f"storage {url}: {path} is not a readable Optuna journal ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:120]}); pass another --storage"
        ) from None


def is_journal(storage) -> bool:
    """Whether ``storage`` (an Optuna storage) is a journal."""
    return isinstance(storage, JournalStorage)


# --------------------------------------------------------------------------- attributes of finished trials


def set_finished_user_attr(study: optuna.Study, number: int, key: str, value) -> None:
    """Record user attribute ``key`` = ``value`` of finished trial ``number`` in study attribute
    ``trial_attrs:<key>``. A read-modify-write: the caller holds the study lock."""
    name = FINISHED_PREFIX + key
    stored = dict(study.user_attrs.get(name) or {})
    stored[str(number)] = value
    study.set_user_attr(name, stored)


def finished_user_attrs(study: optuna.Study, number: int) -> dict:
    """The user attributes recorded for finished trial ``number`` by :func:`set_finished_user_attr`."""
    out = {}
    for name, by_number in study.user_attrs.items():
        if name.startswith(FINISHED_PREFIX) and isinstance(by_number, dict) and str(number) in by_number:
            out[name[len(FINISHED_PREFIX) :]] = by_number[str(number)]
    return out
