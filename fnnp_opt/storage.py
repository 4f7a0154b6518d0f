"""Study storage: opening it, resuming safely, surviving dead workers, and sharing one study among many.

Any number of processes, on one machine or several, may run the same study: they
share an Optuna RDB storage (SQLite on one machine, PostgreSQL across machines) or an
Optuna journal file (:mod:`fnnp_opt.journal`: ``journal:///path.log``, or a path ending in
``.log`` or ``.journal``).

* Heartbeats: a running trial proves every ``HEARTBEAT_S`` (2 s) that its worker lives; one
  silent for ``GRACE_S`` (8 s) is failed and queued again (``RetryHeartbeatStaleTrialCallback``).
  The environment variables ``FNNP_HEARTBEAT_S`` and ``FNNP_GRACE_S`` (whole seconds), and ``FNNP_POLL_S`` (how
  often a worker waiting for a slot looks again, 1 s), set them for a process and the workers it starts.
  Optuna keeps them for RDB storages, fnnp-opt for journal files, behind the same interface.
* Exactly ``n_trials``: before a candidate is evaluated, its worker claims one of the
  study's ``n_trials`` evaluation slots under a study-wide lock (an advisory lock on
  PostgreSQL, a file lock beside a SQLite or journal file). A worker finding every slot taken by
  a running trial waits, since that trial may yet die and free its slot.
* One runner per queued trial: SQLite ignores ``SELECT ... FOR UPDATE``, so two processes could both move one
  queued (WAITING) trial to RUNNING and run it twice; on a SQLite file that move is made under the file lock
  (:class:`SQLiteStorage`).
* One delivery: the process that fine-tunes the winner claims it first, so no two
  workers fine-tune it twice.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import socket
import time
import warnings
from contextlib import contextmanager, nullcontext
from datetime import datetime
from pathlib import Path
from typing import ContextManager, Iterator, Literal

import optuna
from optuna.storages import BaseStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from fnnp_opt import journal as J
from fnnp_opt import optuna_private as P
from fnnp_opt.errors import StorageError, UsageError
from fnnp_opt.flops import Budget
from fnnp_opt.options import env_seconds, env_whole_seconds
from fnnp_opt.paths import NOT_A_FOLDER, NOT_WRITABLE, nearest_parent
from fnnp_opt.redact import redact_url, scrub
from fnnp_opt.space import SearchSpace

log = logging.getLogger(__name__)

# The intervals, read once at import; each environment variable named beside one overrides it (whole seconds for the
# heartbeats, as Optuna takes them). fnnp-opt's tests shorten them so a killed worker's trial is retried in seconds.
HEARTBEAT_S = env_whole_seconds("FNNP_HEARTBEAT_S", 2)  # how often a running trial proves it is alive
GRACE_S = env_whole_seconds("FNNP_GRACE_S", 8)  # a RUNNING trial silent for longer is failed and retried
MAX_RETRY = 3  # retries of a trial whose worker died
POLL_S = env_seconds("FNNP_POLL_S", 1.0)  # how often a worker waiting for a free slot looks again
if GRACE_S <= HEARTBEAT_S:
    raise UsageError(
        f"FNNP_GRACE_S ({GRACE_S} s) must be longer than FNNP_HEARTBEAT_S ({HEARTBEAT_S} s), or every running trial "
        "would be failed as dead; unset both for 8 s and 2 s"
    )


def sqlite_lock_path(path: Path) -> Path:
    """The study lock's file beside SQLite database ``path`` (also taken to hand out a queued trial)."""
    return path.with_name(path.name + ".lock")


def sqlite_path(url: str) -> Path | None:
    """The file of a ``sqlite:///`` storage URL; None for other storages and in-memory SQLite."""
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///") :]
        if path not in ("", ":memory:"):
            return Path(path)
    return None


def _check_not_in_memory(url: str) -> None:
    if url.split("?")[0] in ("sqlite://", "sqlite:///", "sqlite:///:memory:"):
        raise StorageError(
            f"storage {url} is in memory: a study there ends with its process (no resume, no dashboard, no "
            "workers); pass a file such as sqlite:///studies/fnnp.db"
        )


def check_exists(url: str) -> None:
    """Raise :class:`StorageError` when ``url`` is a SQLite or journal file that does not exist (opening it would
    create it), a path that cannot hold a journal, or in-memory SQLite (which holds nothing yet)."""
    _check_not_in_memory(url)
    path = storage_file(url)
    journal = J.journal_path(url)
    if journal is not None:
        J.check_file(journal, url)
    if path is not None and not path.is_file():
        raise StorageError(f"storage {url} does not exist yet; run `fnnp-opt run` first or pass --storage")


def check_storage_writable(url: str) -> None:
    """Raise :class:`StorageError` when this user could not write the SQLite or journal storage ``url``.

    SQLite needs the database file writable and its folder too (its journal goes there, and
    fnnp-opt's lock file ``<db>.lock``); a journal file likewise (Optuna's append lock
    ``<journal>.lock`` and fnnp-opt's ``.fnnp-lock`` and ``.fnnp-append-lock`` go beside it), and it must be a
    journal (:func:`fnnp_opt.journal.check_file`). A folder that does not exist yet needs its
    nearest existing parent writable. Checked before anything is loaded, so a refusal leaves the
    storage untouched. Other storages are checked when they are opened. In-memory SQLite is refused: a study
    there ends with the process (no resume, no dashboard) and cannot be shared by search workers.
    """
    _check_not_in_memory(url)
    path = storage_file(url)
    if path is None:
        return
    journal = J.journal_path(url) is not None
    if journal:
        J.check_file(path, url)
    if path.is_dir():
        raise StorageError(f"storage {url}: {path} is a folder, not a database file; pass a file path in --storage")
    folder, problem = nearest_parent(path)
    if problem == NOT_A_FOLDER:
        raise StorageError(f"storage {url}: {folder} is not a folder; pass another --storage")
    if journal:
        locks = (J.lock_path(path), J.append_lock_path(path))
        files = [(path, "the journal file"), *((lock, "its lock file") for lock in locks)]
    else:
        files = [(path, "the database file"), (sqlite_lock_path(path), "its lock file")]
    for target, what in files:
        if target.exists() and not os.access(target, os.W_OK):
            raise StorageError(
                f"storage {url}: {what} {target} is read-only for this user; make it writable "
                "(chmod u+w) or pass another --storage"
            )
    if problem == NOT_WRITABLE:
        beside = (
            "Optuna and fnnp-opt keep their lock files beside the journal"
            if journal
            else "SQLite keeps its journal and fnnp-opt its lock file beside the database"
        )
        raise StorageError(
            f"storage {url}: the folder {folder} is not writable for this user ({beside}); make it writable or "
            "pass another --storage"
        )


# --------------------------------------------------------------------------- opening


def _with_driver(url: str) -> str:
    """A bare ``postgresql://`` URL with the PostgreSQL driver that is installed: SQLAlchemy's default (psycopg
    3) when present, else psycopg2 (fnnp-opt's ``postgres`` extra)."""
    import importlib.util

    if url.startswith("postgresql://") and importlib.util.find_spec("psycopg") is None:
        if importlib.util.find_spec("psycopg2") is not None:
            return "postgresql+psycopg2://" + url[len("postgresql://") :]
    return url


def open_storage(url: str, write_ahead: bool = True) -> BaseStorage:
    """Open an Optuna RDB storage, or a journal file, with heartbeats, so a killed worker's trial is failed and
    retried.

    A SQLite file is switched to a write-ahead log (:func:`_write_ahead`) unless ``write_ahead`` is
    False (a read that must leave the file as it found it). A journal file
    (:func:`fnnp_opt.journal.journal_path`) is opened with fnnp-opt's heartbeats
    (:class:`fnnp_opt.journal.HeartbeatJournalStorage`), and created when missing."""
    journal = J.journal_path(url)
    if journal is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            retry = RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)
        return J.open_journal(journal, url, HEARTBEAT_S, GRACE_S, retry)
    url = _with_driver(url)
    path = sqlite_path(url)
    if path is not None:
        if path.parent.exists() and not path.parent.is_dir():
            raise StorageError(f"storage {url}: {path.parent} is not a folder; pass another --storage")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"storage {url} could not be opened: {exc}; pass another --storage") from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        try:
            # a new SQLite file gets its tables from whichever process opens it first: one at a time
            with _opening_lock(path) if path is not None else nullcontext():
                storage = (RDBStorage if path is None else SQLiteStorage)(
                    url,
                    heartbeat_interval=HEARTBEAT_S,
                    grace_period=GRACE_S,
                    heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY),
                    engine_kwargs={"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None,
                )
            if path is not None and write_ahead:
                _write_ahead(storage)
            return storage
        except Exception as exc:  # SQLAlchemy raises many types for bad URLs and dead servers
            msg = scrub(str(exc).splitlines()[0] if str(exc) else type(exc).__name__, url)
            fix = "install the database driver its scheme names, or " if isinstance(exc, ImportError) else ""
            raise StorageError(
                f"storage {redact_url(url)!r} could not be opened ({type(exc).__name__}: {msg}); {fix}pass a reachable "
                "URL such as sqlite:///studies/fnnp.db or postgresql://user@127.0.0.1/db"
            ) from None


@contextmanager
def opened(url: str, write_ahead: bool = True) -> Iterator[BaseStorage]:
    """The storage ``url`` (:func:`open_storage`) for the block, closed however the block ends
    (:func:`close_storage`): a SQLite file then holds everything again (its write-ahead log folded in), and a
    refused run leaves no -wal or -shm file beside it."""
    storage = open_storage(url, write_ahead)
    try:
        yield storage
    finally:
        close_storage(storage)


class SQLiteStorage(RDBStorage):
    """Optuna's RDB storage of a SQLite file, where a queued trial is taken by one process only.

    Optuna takes a queued trial by reading it ``FOR UPDATE`` and setting it RUNNING if it is still WAITING; SQLite
    has no row locks, so two processes can read WAITING together and both run the trial (seen with ``--workers 2``
    on a resume: the second to finish fails with "Cannot tell a COMPLETE trial"). Here that read-and-set runs under
    the file lock beside the database (the study lock's file), which orders the processes. So never take a trial
    (``study.ask()``) while holding :func:`study_lock`: the second ``flock`` of one file would wait on the first."""

    def set_trial_state_values(self, trial_id: int, state: TrialState, values=None) -> bool:
        if state is not TrialState.RUNNING:
            return super().set_trial_state_values(trial_id, state, values)
        path = sqlite_path(str(self.engine.url))
        assert path is not None  # made for SQLite files only
        with _file_lock(sqlite_lock_path(path)):
            return super().set_trial_state_values(trial_id, state, values)


def _write_ahead(storage: RDBStorage) -> None:
    """Every later connection to this SQLite file commits through a write-ahead log (``journal_mode=WAL``,
    ``synchronous=NORMAL``): one fsync per checkpoint instead of several per commit, so a trial's writes cost
    a few times less (benchmarks/trial_cost.py). A killed process loses nothing it committed; a power cut can
    lose the last commits but leaves the file consistent (https://www.sqlite.org/wal.html). Readers and
    writers no longer block each other, which the dashboard and extra workers need. A read-only file keeps
    its journal mode."""
    from sqlalchemy import event
    from sqlalchemy.exc import DBAPIError

    def pragmas(connection, _record) -> None:
        cursor = connection.cursor()
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
        except Exception:  # a read-only file or folder: stay with the rollback journal
            pass
        finally:
            cursor.close()

    event.listen(storage.engine, "connect", pragmas)
    try:
        storage.engine.dispose()  # the connections opened while creating the tables predate the listener
    except DBAPIError:
        pass


def existing_study(storage: BaseStorage, name: str) -> optuna.Study | None:
    """Load study ``name`` when it exists in ``storage``, else None (creates nothing)."""
    try:
        storage.get_study_id_from_name(name)
    except KeyError:
        return None
    return optuna.load_study(study_name=name, storage=storage, sampler=optuna.samplers.RandomSampler())


def pick_study(storage, url: str, name: str | None) -> optuna.Study:
    """Study ``name`` of ``storage`` (at ``url``), or its only study when ``name`` is None; :class:`UsageError`
    naming the studies it holds when there is no such study or several to choose from."""
    names = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
    if name is None and len(names) == 1:
        name = names[0]
    study = existing_study(storage, name) if name else None
    if study is None:
        if not names:
            raise UsageError(
                f"{redact_url(url)} holds no study yet; start one with `fnnp-opt run --storage {redact_url(url)}`, or "
                "pass the storage a run wrote"
            )
        what, held = (f"no study {name!r}" if name else f"{len(names)} studies"), ", ".join(names)
        raise UsageError(f"{what} in {redact_url(url)} (it holds: {held}); pass one of them as --study-name")
    return study


# Settings a run leaves to its study (None in RunConfig) when they are not given: a resumed study keeps its
# stored value, and a new one takes the default. A study stored before a setting existed ran without it.
# settings a run leaves to its study (None in RunConfig), and their value in a stored study made before each
# was recorded: the behaviour it had then (its calibration images were drawn with --seed)
STUDY_SETTINGS = {
    "abn_batches": lambda config: 100,
    "early_stop": lambda config: False,
    "calibration_seed": lambda config: config.get("seed", 0),
    "round_to": lambda config: 1,
}


def stored_settings(url: str, name: str) -> dict:
    """The :data:`STUDY_SETTINGS` of stored study ``name`` in ``url`` (an older study's: the behaviour it had then),
    or {} when the study does not exist yet. Creates nothing."""
    path = storage_file(url)
    if path is not None and not path.is_file():
        return {}
    with opened(url, write_ahead=False) as storage:
        study = existing_study(storage, name)
        config = (study.user_attrs.get("config") or {}) if study is not None else None
    if config is None:
        return {}
    return {
        key: config[key] if config.get(key) is not None else before(config) for key, before in STUDY_SETTINGS.items()
    }


# The run settings behind each fingerprint entry, as flags, to name what changed.
_FINGERPRINT_FLAGS = {
    "model": ("model",),
    "weights": ("checkpoint",),
    "dataset": ("dataset",),
    "data": (
        "data_dir",
        "search_size",
        "search_per_class",
        "abn_batches",
        "abn_batch_size",
        "calibration_seed",
        "image_size",
    ),
    "space": ("max_rate", "round_to", "min_channels", "exclude"),
    "budget": (
        "flops",
        "flops_tolerance",
        "latency",
        "latency_tolerance",
        "latency_batch",
        "latency_threads",
        "latency_layout",
        "device",
    ),
    "objective": ("objective",),
    "score": ("score", "score_steps", "lr", "batch_size", "weight_decay", "finetune_seed", "seed"),
}


def _shown(value) -> str:
    return "the default" if value is None else repr(value)  # a setting left to its default is stored as None


def _changes(
    key: str,
    stored: dict,
    now: dict,
    stored_config: dict | None,
    config: dict | None,
    names: dict[str, str] | None = None,
) -> list[str]:
    """What differs in fingerprint entry ``key``, named by flag (``--max-rate: stored 0.6, now 0.7``) where
    the stored run settings tell, else by the entry itself. ``names`` renames a setting the command sets itself."""
    named = []
    if stored_config is not None and config is not None:
        for flag in _FINGERPRINT_FLAGS.get(key, ()):
            a, b = stored_config.get(flag), config.get(flag)
            if isinstance(a, list):
                a = tuple(a)
            if isinstance(b, list):
                b = tuple(b)
            if a != b:
                shown = (names or {}).get(flag, f"--{flag.replace('_', '-')}")
                named.append(f"{shown}: stored {_shown(a)}, now {_shown(b)}")
    if named:
        return named
    what = {"weights": "the base weights (sha256 prefix)", "data": "the data split", "space": "the layer groups"}
    return [f"{what.get(key, key)}: stored {stored.get(key)!r}, now {now.get(key)!r}"]


def check_fingerprint(
    study: optuna.Study,
    fingerprint: dict[str, str],
    storage_url: str,
    config: dict | None = None,
    other: str = "--study-name",
    names: dict[str, str] | None = None,
) -> None:
    """Raise :class:`StorageError` when a stored study was made with another model, data or space.

    ``config`` (the run's settings, :meth:`RunConfig.to_dict`) lets the message name each flag
    that differs from the stored study's, with both values. ``other`` is the option that chooses
    another study (``correlate`` names its studies itself: ``--storage``). ``names`` says how to name a
    setting the command derives from another option (``correlate``'s ABN batches come from ``--sweep``).
    """
    stored = study.user_attrs.get("fingerprint")
    where = f"study {study.study_name!r} in {redact_url(storage_url)}"
    if stored is None:
        raise StorageError(f"{where} was not created by fnnp-opt; pass another {other}")
    keys = [k for k, v in fingerprint.items() if stored.get(k) != v]
    if keys:
        stored_config = study.user_attrs.get("config")
        diff = [c for k in keys for c in _changes(k, stored, fingerprint, stored_config, config, names)]
        raise StorageError(
            f"{where} was created with different settings ({'; '.join(dict.fromkeys(diff))}); "
            f"pass a new {other}, or the original options to resume it"
        )


def create_study(
    storage: BaseStorage,
    name: str,
    fingerprint: dict,
    config: dict,
    space: SearchSpace,
    budget: Budget,
    directions: tuple[Literal["maximize", "minimize"], ...] = ("maximize",),
) -> optuna.Study:
    """Create a study and store what it was made from (fingerprint, config, space, budget)."""
    study = optuna.create_study(
        study_name=name, storage=storage, directions=list(directions), sampler=optuna.samplers.RandomSampler()
    )
    study.set_user_attr("fingerprint", fingerprint)
    study.set_user_attr("config", config)
    study.set_user_attr("space", space.describe())
    study.set_user_attr(
        "budget", {"base": budget.base, "target": budget.target, "low": budget.low, "high": budget.high}
    )
    return study


# --------------------------------------------------------------------------- dead workers


def close(study: optuna.Study) -> None:
    """Close this process's connections to the study's storage. For SQLite the last one to close folds the
    write-ahead log into the database file, so the file alone holds the study again (to copy or commit)."""
    close_storage(P.backend(study))


def close_storage(storage: BaseStorage) -> None:
    """Close this process's connections to ``storage`` (an RDB storage's; a journal file holds none open)."""
    if isinstance(storage, RDBStorage):
        storage.engine.dispose()


def fail_stale_trials(study: optuna.Study) -> None:
    """Optuna's check for trials whose heartbeat went stale (it also runs before each trial): an RDB storage's
    heartbeats, or a journal file's (:class:`fnnp_opt.journal.HeartbeatJournalStorage`)."""
    if P.heartbeat_enabled(P.storage(study)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)


def recover_dead_trials(study: optuna.Study) -> int:
    """Fail the RUNNING trials that never sent a heartbeat, and queue them again; return how many.

    Optuna's own check (run before every trial) finds a trial whose heartbeat went
    stale. A worker killed between creating a trial and its first heartbeat leaves a
    trial with no heartbeat at all, which that check never sees; such a trial older
    than the grace period is dead too (a live one records its first heartbeat at once).
    """
    storage = P.backend(study)
    if not isinstance(storage, RDBStorage):
        return 0
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    old = [t for t in running if t.datetime_start and (datetime.now() - t.datetime_start).total_seconds() > GRACE_S]
    if not old:
        return 0
    beating = P.heartbeat_trial_ids(storage)
    retry = storage.get_heartbeat_stale_trial_callback()
    failed = 0
    for t in old:
        if P.trial_id(t) in beating:
            continue
        try:
            P.storage(study).set_trial_state_values(P.trial_id(t), TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # it finished after all
        failed += 1
        log.warning("trial %d never sent a heartbeat; marked failed", t.number)
        if retry is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                retry(study, P.storage(study).get_trial(P.trial_id(t)))
    return failed


# --------------------------------------------------------------------------- sharing


def study_lock(study: optuna.Study) -> ContextManager[None]:
    """A lock held by one process at a time, across every process and machine sharing ``study``."""
    return name_lock(P.backend(study), study.study_name)


def name_lock(storage, name: str) -> ContextManager[None]:
    """The lock of study ``name`` in ``storage`` (the study need not exist yet)."""
    if isinstance(storage, J.HeartbeatJournalStorage):
        return _file_lock(J.lock_path(storage.path))
    if not isinstance(storage, RDBStorage):
        return nullcontext()
    url = str(storage.engine.url)
    path = sqlite_path(url)
    if path is not None:
        return _file_lock(sqlite_lock_path(path))
    if storage.engine.dialect.name == "postgresql":
        key = int.from_bytes(hashlib.sha256(f"fnnp-opt:{name}".encode()).digest()[:8], "big", signed=True)
        return _advisory_lock(storage, key)
    log.warning("no study-wide lock for %s storage; workers may overshoot --n-trials", storage.engine.dialect.name)
    return nullcontext()


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextmanager
def _opening_lock(path: Path) -> Iterator[None]:
    """The study lock's file held while ``path`` (a SQLite file) is opened, so that two processes starting on a new
    file do not both create its tables. The file is made only for a database not made yet (its maker holds it
    while making the tables, so a process that finds the database finds the file too); an existing database
    without it, or a read-only folder (a reader), is opened without a lock, and no file is left beside it."""
    lock = sqlite_lock_path(path)
    if path.exists() and not lock.exists():
        yield
        return
    try:
        fh = open(lock, "a")
    except OSError:
        yield
        return
    with fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextmanager
def _advisory_lock(storage: RDBStorage, key: int) -> Iterator[None]:
    from sqlalchemy import text

    with storage.engine.connect() as conn:
        conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
        try:
            yield
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
            conn.commit()


def is_evaluated(trial) -> bool:
    """A COMPLETE trial whose candidate met the budget and was scored (penalized ones are not)."""
    return trial.state is TrialState.COMPLETE and trial.user_attrs.get("feasible", True)


BASELINE = "strategy"  # user attribute of a queued baseline trial: its strategy ("uniform")


class Slots:
    """The study's ``n_trials`` evaluation slots, claimed under the study lock."""

    KEY = "slot"  # user attribute: the trial id of the trial that claimed the slot

    def __init__(self, study: optuna.Study, n_trials: int) -> None:
        self.study = study
        self.n_trials = n_trials

    def count(self, exclude: int | None = None) -> tuple[int, int, int]:
        """(evaluated trials, running trials holding a slot but ``exclude``, queued trials)."""
        trials = self.study.get_trials(
            deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING)
        )
        done = sum(map(is_evaluated, trials))
        held = sum(
            1
            for t in trials
            if t.state is TrialState.RUNNING and t.user_attrs.get(self.KEY) == P.trial_id(t) != exclude
        )
        queued = sum(1 for t in trials if t.state is TrialState.WAITING)
        return done, held, queued

    def claim(self, trial: optuna.Trial) -> bool:
        """Take a slot for ``trial``; False when no slot is left for it.

        Queued trials (the uniform baselines, and the retries of trials whose worker died)
        come before fresh draws: a fresh draw gives way when the free slots are no more than
        the queue, and the worker's next trial takes from the queue. While every free slot
        is held by a running trial, wait: that trial's worker may die, and its slot then
        returns to the study.
        """
        stored = P.storage(self.study).get_trial(P.trial_id(trial))
        fresh = P.fixed_params(stored) is None
        baseline = bool(stored.user_attrs.get(BASELINE))  # a baseline queued again after it failed: evaluated
        last_check = time.monotonic()  # even in a study that holds n_trials already, so that every study has it
        while True:
            with study_lock(self.study):
                done, held, queued = self.count(exclude=P.trial_id(trial))
                free = self.n_trials - done - held
                if not baseline and (done >= self.n_trials or (fresh and queued and free <= queued)):
                    return False
                if free > 0 or (baseline and done >= self.n_trials):
                    trial.set_user_attr(self.KEY, P.trial_id(trial))
                    trial.set_user_attr("worker", worker_id())
                    return True
            time.sleep(POLL_S)
            if time.monotonic() - last_check > GRACE_S:
                fail_stale_trials(self.study)
                recover_dead_trials(self.study)
                last_check = time.monotonic()


def next_session(study: optuna.Study) -> int:
    """Number this process's session of ``study`` (0, 1, ...): each seeds its sampler apart from the others."""
    with study_lock(study):
        n = study.user_attrs.get("sessions", 0)
        study.set_user_attr("sessions", n + 1)
    return n


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def alive(owner: str) -> bool:
    """Whether the process ``host:pid`` lives (a process on another machine is assumed to)."""
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname():
        return True  # another machine's process: assume it lives
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError):
        return False
    except PermissionError:
        return True
    return True


def claim_delivery(study: optuna.Study, trial_number: int) -> str | None:
    """Claim the fine-tune of ``trial_number``; return the live owner that holds it instead, or None."""
    me = worker_id()
    with study_lock(study):
        current = study.user_attrs.get("delivery")
        if current and current["owner"] != me and current["trial"] == trial_number and alive(current["owner"]):
            return current["owner"]
        study.set_user_attr("delivery", {"owner": me, "trial": trial_number, "since": datetime.now().isoformat()})
    return None


def set_finished_trial_user_attr(study: optuna.Study, trial, key: str, value) -> None:
    """Set user attribute ``key`` of a finished trial, which Optuna's API refuses (finished trials are frozen).

    Writes the same row as ``Trial.set_user_attr`` in the RDB storage (SQLite, PostgreSQL), so
    optuna-dashboard and every process that loads the study afterwards see it. This process's
    cached copy of the trial does not: read the value back from where it was computed, or through
    :func:`trial_user_attrs`. A journal file cannot change a finished trial: there the value goes
    into the study's user attribute ``trial_attrs:<key>``, keyed by trial number (so does a study in memory; under the study
    lock; do not call this while holding it), which :func:`trial_user_attrs` reads.
    """
    storage = P.backend(study)
    if J.is_journal(storage) or isinstance(storage, optuna.storages.InMemoryStorage):
        with study_lock(study):
            J.set_finished_user_attr(study, trial.number, key, value)
        return
    if not isinstance(storage, RDBStorage):
        raise StorageError(f"cannot annotate finished trials in a {type(storage).__name__}; use an RDB --storage")
    P.set_finished_trial_attr(storage, P.trial_id(trial), key, value)


def set_finished_trial_system_attr(study: optuna.Study, trial_id: int, key: str, value) -> None:
    """Set system attribute ``key`` of finished trial ``trial_id`` in an RDB storage (an artifact's record, which
    ``optuna.artifacts.upload_artifact`` writes and Optuna's API refuses once a trial is finished)."""
    storage = P.backend(study)
    if not isinstance(storage, RDBStorage):
        raise StorageError(f"cannot annotate finished trials in a {type(storage).__name__}; use an RDB --storage")
    P.set_finished_trial_attr(storage, trial_id, key, value, system=True)


def storage_file(url: str) -> Path | None:
    """The file of a SQLite or journal storage, else None (a server storage)."""
    return sqlite_path(url) or J.journal_path(url)


def beside(url: str, name: str) -> Path:
    """The folder ``name`` that goes with storage ``url``: beside its SQLite or journal file, else in ``./studies``
    (a server storage). The artifact store and the latency cache live there."""
    path = storage_file(url)
    return (path.parent if path is not None else Path("studies")) / name


def trial_user_attrs(study: optuna.Study, trial) -> dict:
    """The user attributes of ``trial`` (a FrozenTrial of ``study``), with those :func:`set_finished_trial_user_attr`
    recorded after it finished on a journal file or in memory (an RDB storage holds them on the trial itself)."""
    storage = P.backend(study)
    if J.is_journal(storage) or isinstance(storage, optuna.storages.InMemoryStorage):
        return {**trial.user_attrs, **J.finished_user_attrs(study, trial.number)}
    return dict(trial.user_attrs)
