"""Optuna's journal file as the study storage (fnnp_opt/journal.py): its URLs, fnnp-opt's heartbeats, the study
lock, finished-trial attributes, and whole runs on it (a killed worker, the stock optuna CLI, a rerank that
resumes)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import optuna
import pytest
from conftest import SMALL_RUN, without
from optuna.distributions import FloatDistribution
from optuna.storages import JournalStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState
from test_storage import _check_shared_study, _kill_mid_trial, _run_args

import fnnp_opt.journal as J
import fnnp_opt.rerank as R
import fnnp_opt.storage as St
from fnnp_opt import optuna_private as P
from fnnp_opt.config import resolve
from fnnp_opt.errors import StorageError
from fnnp_opt.pipeline import make_scorer, prepare, run, trial_ratios

CLI = Path(__file__).parents[1] / "cli.py"
OPTUNA = Path(sys.executable).parent / "optuna"
X = {"x": FloatDistribution(0.0, 1.0)}


def _open(path: Path, grace_s: int | None = None) -> J.HeartbeatJournalStorage:
    """The journal at ``path`` as one more process opens it (its own replay and worker id)."""
    storage = St.open_storage(str(path))
    if grace_s is not None:
        storage.grace_s = grace_s
    return storage


def _reader(path: Path) -> JournalStorage:
    """The journal as plain Optuna reads it (no fnnp-opt code)."""
    return JournalStorage(JournalFileBackend(str(path)))


def test_journal_urls():
    assert J.journal_path("journal:///studies/a.log") == Path("studies/a.log")  # as sqlite:///: relative
    assert J.journal_path("journal:////tmp/a.log") == Path("/tmp/a.log")  # four slashes: absolute
    assert J.journal_path("studies/a.log") == Path("studies/a.log")
    assert J.journal_path("/abs/b.journal") == Path("/abs/b.journal")
    for other in ("sqlite:///studies/a.db", "postgresql://u@h/db", "studies/a.db", "sqlite:///x.log"):
        assert J.journal_path(other) is None
    for bad in ("journal://host/a.log", "journal:///", "journal:", "journal:///folder/"):
        with pytest.raises(StorageError, match="names no journal file"):
            J.journal_path(bad)
    assert St.storage_file("journal:///x/a.log") == Path("x/a.log") and St.storage_file("x/a.log") == Path("x/a.log")


def test_a_silent_trial_is_failed_and_retried_once_though_two_processes_find_it(tmp_path):
    """Both processes see the trial stale; the journal replays the first FAIL and refuses the second, so one retry
    is queued, with the same params and Optuna's retry links."""
    a, b = _open(tmp_path / "s.log", grace_s=1), _open(tmp_path / "s.log", grace_s=1)
    study_a = optuna.create_study(study_name="s", storage=a, direction="maximize")
    study_b = optuna.load_study(study_name="s", storage=b)
    dead = study_a.ask(X)  # a worker that dies after one heartbeat
    a.record_heartbeat(P.trial_id(dead))
    assert not a.stale_trial_ids(P.study_id(study_a))  # alive within the grace period
    time.sleep(1.3)
    seen_by_b = b.stale_trial_ids(P.study_id(study_b))
    assert seen_by_b == [P.trial_id(dead)] == a.stale_trial_ids(P.study_id(study_a))
    St.fail_stale_trials(study_a)
    b.stale_trial_ids = lambda study_id: seen_by_b  # b acts on what it saw before a failed the trial
    St.fail_stale_trials(study_b)
    trials = study_b.get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING]
    retry = trials[1]
    assert RetryHeartbeatStaleTrialCallback.retried_trial_number(retry) == dead.number
    assert RetryHeartbeatStaleTrialCallback.retry_history(retry) == [dead.number]
    assert retry.params == trials[0].params and J.HEARTBEAT_ATTR in retry.system_attrs  # the dead one's, inherited
    popped = study_b.ask()  # the retry starts: its inherited heartbeat is old, its start is not
    assert popped.number == retry.number and not a.stale_trial_ids(P.study_id(study_a))


def test_a_live_trial_outlives_the_grace_period_by_its_heartbeats(tmp_path):
    worker, checker = _open(tmp_path / "s.log", grace_s=2), _open(tmp_path / "s.log", grace_s=2)
    worker.heartbeat_s = 1
    study = optuna.create_study(study_name="s", storage=worker, direction="maximize")
    watched = optuna.load_study(study_name="s", storage=checker)
    stop = threading.Event()

    def check():  # another process failing stale trials all along
        while not stop.wait(0.25):
            St.fail_stale_trials(watched)

    thread = threading.Thread(target=check)
    thread.start()
    try:
        study.optimize(lambda t: time.sleep(5) or t.suggest_float("x", 0, 1), n_trials=1)
    finally:
        stop.set()
        thread.join()
    [trial] = watched.get_trials()
    assert trial.state is TrialState.COMPLETE and trial.system_attrs[J.HEARTBEAT_ATTR] > time.time() - 3


def test_slots_on_a_journal_stop_at_n_and_a_waiting_claim_follows_the_running_one(tmp_path, monkeypatch):
    monkeypatch.setattr(St, "POLL_S", 0.05)
    study = optuna.create_study(study_name="s", storage=_open(tmp_path / "s.log"), direction="maximize")
    slots = St.Slots(study, n_trials=2)
    a, b, c = study.ask(), study.ask(), study.ask()
    assert slots.claim(a) and slots.claim(b)
    a.set_user_attr("feasible", True)
    study.tell(a, 0.5)
    outcome = []
    waiter = threading.Thread(target=lambda: outcome.append(slots.claim(c)))
    waiter.start()
    time.sleep(0.5)
    assert waiter.is_alive() and not outcome  # b holds the last slot: c waits, since b may yet die
    study.tell(b, state=TrialState.FAIL)
    waiter.join(5)
    assert outcome == [True]  # b failed: its slot is c's


@pytest.mark.system
def test_the_study_lock_is_a_file_lock_beside_the_journal(tmp_path):
    """Held by another process, the lock waits; it is fnnp-opt's own file, not Optuna's append lock."""
    study = optuna.create_study(study_name="s", storage=_open(tmp_path / "s.log"))
    lock = tmp_path / "s.log.fnnp-lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", f"import fcntl, time; f = open({str(lock)!r}, 'a'); fcntl.flock(f, fcntl.LOCK_EX); "
         "print('held', flush=True); time.sleep(1.5)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        t = time.monotonic()
        with St.study_lock(study):
            waited = time.monotonic() - t
    finally:
        holder.wait(10)
    assert waited > 0.5
    beside = sorted(p.name for p in tmp_path.iterdir())
    assert beside == ["s.log", "s.log.fnnp-append-lock", "s.log.fnnp-lock"]  # Optuna's own lock is released


def test_finished_trial_attributes_live_in_the_study_and_read_back_through_one_accessor(tmp_path):
    study = optuna.create_study(study_name="s", storage=_open(tmp_path / "s.log"), direction="maximize")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=21)
    first = study.trials[0]
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):  # why: the journal keeps finished trials frozen
        P.storage(study).set_trial_user_attr(P.trial_id(first), "abn_ft4", 0.1)

    def annotate(numbers):  # each thread opens the journal as another process would
        mine = optuna.load_study(study_name="s", storage=_open(tmp_path / "s.log"))
        for n in numbers:
            St.set_finished_trial_user_attr(mine, mine.trials[n], "abn_ft4", n / 100)

    threads = [threading.Thread(target=annotate, args=(range(k, 21, 3),)) for k in range(3)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    St.set_finished_trial_user_attr(study, first, "abn_ft4", 0.99)  # rewritten, not added
    fresh = optuna.load_study(study_name="s", storage=_reader(tmp_path / "s.log"))
    stored = fresh.user_attrs["trial_attrs:abn_ft4"]
    assert stored == {str(n): (0.99 if n == 0 else n / 100) for n in range(21)}  # none lost to a race
    assert St.trial_user_attrs(fresh, fresh.trials[5]) == {"abn_ft4": 0.05}
    assert "abn_ft4" not in fresh.trials[5].user_attrs  # the trial itself is untouched


def test_a_torn_last_line_is_cut_before_the_next_append(tmp_path, caplog):
    """A writer killed mid-append, with another process still running: without the cut, that process's next append
    joins the torn line and no read succeeds again."""
    path = tmp_path / "s.log"
    study = optuna.create_study(study_name="s", storage=_open(path))
    running = optuna.load_study(study_name="s", storage=_open(path))  # the other process, opened before the tear
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
    whole = path.read_bytes()
    path.write_bytes(whole[:-25])  # the last operation (trial 2's completion) lost its end
    assert [t.state for t in running.trials][-1] is TrialState.RUNNING  # Optuna's reader skips the torn line
    running.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    assert "ended in a torn line" in caplog.text
    assert path.read_bytes().startswith(whole[: whole[:-1].rfind(b"\n") + 1])  # exactly the torn line is gone
    fresh = optuna.load_study(study_name="s", storage=_reader(path))  # Optuna's own reader, every line
    assert len(fresh.trials) == 5 and fresh.trials[-1].state is TrialState.COMPLETE
    assert J.cut_torn_tail(path) == 0  # a whole file is left alone


def test_a_journal_that_cannot_be_used_is_refused_and_nothing_is_written(tmp_path):
    (tmp_path / "notes.log").write_text("an application's log, not a journal\nsecond line\n")
    (tmp_path / "half.log").write_text("{not json")  # one partial line: Optuna alone would read it as empty
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "dir.journal").mkdir()
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    for url, message in [
        (f"{tmp_path}/notes.log", "is not an Optuna journal file"),
        (f"{tmp_path}/half.log", "is not an Optuna journal file"),
        (f"journal:///{tmp_path}/a-file/s.log", "a-file is not a folder"),
        (f"{tmp_path}/dir.journal", "is a folder, not a journal file"),
    ]:
        for check in (St.check_storage_writable, St.open_storage):
            with pytest.raises(StorageError, match=message):
                check(url)
    with pytest.raises(StorageError, match="does not exist yet"):
        St.check_exists(f"{tmp_path}/new.log")
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == before


# --------------------------------------------------------------------------- whole runs on a journal

SMALL = dict(search_size=300, abn_batches=4, abn_batch_size=32, flops_tolerance=0.05, device="cpu", epochs=0, workers=1, rerank=0)


@pytest.fixture(scope="module")
def journal_run(small_fmnist, tmp_path_factory):
    """`run --rerank 2` on a journal file: 4 candidates, the top 2 re-scored."""
    folder = tmp_path_factory.mktemp("journal")
    cfg = resolve(
        data_dir=str(small_fmnist),
        storage=str(folder / "s.log"),
        output=str(folder / "out"),
        n_trials=4,
        score_steps=4,
        **{**SMALL, "rerank": 2},
    )
    return cfg, run(cfg), folder / "s.log"


@pytest.mark.integration
def test_a_rerank_on_a_journal_keeps_its_scores_on_the_study(journal_run):
    cfg, result, path = journal_run
    study = optuna.load_study(study_name=result.study_name, storage=_reader(path))
    done = sorted((t for t in study.trials if St.is_evaluated(t)), key=lambda t: (-t.value, t.number))
    assert len(done) == 4 and result.rerank.rescored == 2
    assert sorted(result.rerank.scores) == sorted(t.number for t in done[:2])
    ledger = study.user_attrs["rerank:abn_ft4"]
    assert {int(k): v for k, v in ledger["scores"].items()} == result.rerank.scores and not ledger["claims"]
    attrs = {t.number: St.trial_user_attrs(study, t) for t in done}
    marked = {n: a["abn_ft4"] for n, a in attrs.items() if "abn_ft4" in a}
    assert marked == result.rerank.scores  # on exactly the top-K trials, through the one accessor
    assert result.best_trial == result.rerank.winner and study.user_attrs["result"]["trial"] == result.best_trial
    assert not [t for t in study.trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]


@pytest.mark.system
def test_the_stock_optuna_cli_reads_a_journal_study(journal_run):
    _, result, path = journal_run
    args = ["--storage", str(path), "--storage-class", "JournalFileBackend"]
    listed = subprocess.run([str(OPTUNA), "studies", *args, "-f", "json"], capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    assert [s["name"] for s in json.loads(listed.stdout)] == [result.study_name]
    cmd = [str(OPTUNA), "trials", *args, "--study-name", result.study_name, "-f", "json"]
    shown = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    trials = json.loads(shown.stdout)
    study = optuna.load_study(study_name=result.study_name, storage=_reader(path))
    assert [t["number"] for t in trials] == [t.number for t in study.trials]
    evaluated = [t for t in trials if t["state"] == "COMPLETE" and "abn_accuracy" in t["user_attrs"]]
    assert len(evaluated) == 4 and {t["number"]: t["user_attrs"]["abn_accuracy"] for t in evaluated} == {
        t.number: t.user_attrs["abn_accuracy"] for t in study.trials if St.is_evaluated(t)
    }


@pytest.mark.integration
def test_a_second_run_on_the_journal_redoes_nothing(journal_run):
    cfg, result, path = journal_run
    again = run(cfg)
    assert again.rerank.rescored == 0 and again.rerank.scores == result.rerank.scores
    assert again.report.evaluated == 0 and again.report.total_evaluated == 4
    study = optuna.load_study(study_name=result.study_name, storage=_reader(path))
    assert len([t for t in study.trials if St.is_evaluated(t)]) == 4


@pytest.mark.system
def test_a_dead_workers_rerank_claim_on_a_journal_is_taken_over(journal_run):
    cfg, result, path = journal_run
    cfg = replace(cfg, rerank=3)
    p = prepare(cfg)
    study = optuna.load_study(study_name=result.study_name, storage=St.open_storage(str(path)))
    scorer = make_scorer(p)
    name = R.ledger_name(scorer)
    # the next trial by ABN outside the first rerank's (its baselines are in it already)
    k, third = next(
        (k, t.number) for k in range(3, 6) for t in R.top_k(study, k) if t.number not in result.rerank.scores
    )
    ledger = study.user_attrs[name]
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    ledger["claims"][str(third)] = f"{St.worker_id().rsplit(':', 1)[0]}:{dead.pid}"
    study.set_user_attr(name, ledger)
    report = R.rerank(study, p.pruner, p.splits.calibration, scorer, k, lambda t: trial_ratios(p.space, t), poll_s=0.05)
    assert report.rescored == 1 and set(report.scores) == set(result.rerank.scores) | {third}
    assert all(report.scores[n] == v for n, v in result.rerank.scores.items())  # not redone
    fresh = optuna.load_study(study_name=result.study_name, storage=_reader(path))
    assert St.trial_user_attrs(fresh, fresh.trials[third])["abn_ft4"] == report.scores[third]


@pytest.mark.system
@pytest.mark.slow
def test_workers_flag_on_a_journal_survives_a_killed_worker(small_fmnist, tmp_path):
    """`--workers 2` on a journal file: one worker is killed (SIGKILL) mid-trial; exactly n are evaluated, and the
    killed trial is retried by fnnp-opt's heartbeats."""
    n = 8
    path = tmp_path / "w.log"
    proc = subprocess.Popen(
        _run_args(small_fmnist, str(path), n, "--workers", "2", "--output", str(tmp_path / "out")),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:

        def children():
            found = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
            return [int(c) for c in found]

        deadline = time.monotonic() + 240
        while not path.exists() and time.monotonic() < deadline:  # opening a journal creates it: the run first
            time.sleep(0.2)
        killed = _kill_mid_trial(_reader(path), children)
        out, _ = proc.communicate(timeout=400)
        assert proc.returncode == 0, out
    finally:
        proc.kill()
        proc.wait()
    study = _check_shared_study(_reader(path), n, killed)
    assert (tmp_path / "out" / "pruned.json").is_file()
    best = max((t for t in study.trials if St.is_evaluated(t)), key=lambda t: (t.value, -t.number))
    assert study.user_attrs["result"]["trial"] == best.number


@pytest.mark.system
@pytest.mark.slow
def test_two_runs_on_one_journal_rerank_each_candidate_once(small_fmnist, tmp_path):
    """Two `fnnp-opt run` processes on one journal, as on two machines: the rerank's re-scores are split between
    them, none done twice, and the winner is fine-tuned once."""
    path = tmp_path / "two.log"
    small = without(SMALL_RUN, "--n-trials", "--epochs")
    base = [sys.executable, str(CLI), "run", *small, "--n-trials", "4", "--rerank", "3", "--score-steps", "20"]
    base += ["--epochs", "0", "--storage", str(path), "--study-name", "two", "--data-dir", str(small_fmnist)]
    procs = [
        subprocess.Popen([*base, "--output", str(tmp_path / k)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, env=dict(os.environ, COLUMNS="300"))
        for k in ("a", "b")
    ]  # fmt: skip
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    rescored = [int(re.search(r"re-scored with abn_ft20 \((\d+) this session", " ".join(o.split()))[1]) for o in outs]
    assert sum(rescored) == 3  # each of the top 3 re-scored by exactly one process
    study = optuna.load_study(study_name="two", storage=_reader(path))
    assert len(study.user_attrs["rerank:abn_ft20"]["scores"]) == 3
    assert len([t for t in study.trials if St.is_evaluated(t)]) == 4
    assert sum((tmp_path / k / "pruned.json").is_file() for k in ("a", "b")) == 1  # one delivery


@pytest.mark.system
@pytest.mark.slow
def test_kill_9_in_a_journal_rerank_then_resume(small_fmnist, tmp_path):
    """`run --rerank 3` on a journal, killed with SIGKILL while re-scoring, then run again: the finished re-scores
    are kept, the rest are done, each once."""
    path = tmp_path / "study.journal"
    small = without(SMALL_RUN, "--n-trials", "--epochs")
    cmd = [sys.executable, str(CLI), "run", *small, "--n-trials", "4", "--rerank", "3", "--score-steps", "20"]
    cmd += ["--epochs", "0", "--storage", str(path), "--output", str(tmp_path / "out"), "--data-dir", str(small_fmnist)]
    name = "resnet20-fashion-mnist-flops0.5"

    def scores() -> dict:
        if not path.exists():
            return {}
        try:
            study = optuna.load_study(study_name=name, storage=_reader(path))
        except KeyError:
            return {}
        return study.user_attrs.get("rerank:abn_ft20", {}).get("scores", {})

    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not scores():
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before it could be killed in the rerank"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    first = scores()
    assert 1 <= len(first) < 3
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=dict(os.environ, COLUMNS="300"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"re-scored with abn_ft20 ({3 - len(first)} this session" in " ".join(done.stdout.split())
    final = scores()
    assert len(final) == 3 and all(final[k] == v for k, v in first.items())
    study = optuna.load_study(study_name=name, storage=_reader(path))
    assert {str(n): v for n, v in study.user_attrs["trial_attrs:abn_ft20"].items()} == final
    card = json.loads((tmp_path / "out" / "pruned.json").read_text())
    assert card["study"]["rerank"] == {"abn_ft20": max(final.values())}


@pytest.mark.integration
@pytest.mark.slow
def test_correlate_on_a_journal_fills_stored_candidates_once(small_fmnist, tmp_path):
    """`correlate` adds a score column to stored (finished) candidates: on a journal it goes to the study, is read
    back through the one accessor, and a third run computes nothing again."""
    import csv

    from typer.testing import CliRunner

    from fnnp_opt.cli import app

    path = tmp_path / "c.journal"
    args = ["correlate", "--data-dir", str(small_fmnist), "--flops", "0.5", "--candidates", "3", "--sweep", "1,3"]
    args += ["--ft-epochs", "1", "--batch-size", "512", "--noise-candidates", "0", "--abn-batch-size", "32"]
    args += ["--search-size", "300", "--flops-tolerance", "0.05", "--device", "cpu", "--storage", str(path)]
    args += ["--output", str(tmp_path / "out")]
    runner = CliRunner()
    for extra in ([], ["--score-steps", "2"]):
        res = runner.invoke(app, args + extra)
        assert res.exit_code == 0, res.output
    writes = path.read_text().count('"trial_attrs:abn_ft2"')
    res = runner.invoke(app, args + ["--score-steps", "2"])
    assert res.exit_code == 0, res.output
    assert path.read_text().count('"trial_attrs:abn_ft2"') == writes == 3  # one per stored candidate, once
    rows = list(csv.DictReader(open(tmp_path / "out" / "candidates.csv")))
    study = optuna.load_study(study_name="correlate-resnet20-fashion-mnist-flops0.5", storage=_reader(path))
    stored = study.user_attrs["trial_attrs:abn_ft2"]
    by_candidate = {t.user_attrs["candidate"]: t.number for t in study.trials}
    assert len(rows) == 3 and all(float(r["abn_ft2"]) == stored[str(by_candidate[int(r["candidate"])])] for r in rows)


@pytest.mark.system
def test_appends_queue_on_a_kernel_lock_and_still_take_optunas(tmp_path):
    """While a stock Optuna writer holds the journal's symlink lock, fnnp-opt's append waits for it; while another
    fnnp-opt process holds the queue's flock, it waits too; and a process killed holding the flock frees it."""
    from optuna.storages.journal import JournalFileSymlinkLock

    path = tmp_path / "s.log"
    study = optuna.create_study(study_name="s", storage=_open(path))
    stock = JournalFileSymlinkLock(str(path))
    stock.acquire()
    threading.Timer(0.6, stock.release).start()
    t = time.monotonic()
    study.set_user_attr("a", 1)
    assert time.monotonic() - t > 0.5
    holder = subprocess.Popen(
        [sys.executable, "-c", f"import fcntl, time; f = open({str(J.append_lock_path(path))!r}, 'a'); "
         "fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout.readline().strip() == "held"
    threading.Timer(0.6, holder.kill).start()  # SIGKILL: the kernel releases its flock
    t = time.monotonic()
    study.set_user_attr("b", 2)
    assert 0.5 < time.monotonic() - t < 5
    holder.wait()
    assert optuna.load_study(study_name="s", storage=_reader(path)).user_attrs == {"a": 1, "b": 2}


@pytest.mark.system
@pytest.mark.parametrize("case", ["read-only folder", "read-only journal", "read-only lock file"])
def test_a_journal_this_user_cannot_write_is_refused_untouched(case, tmp_path):
    """As an unprivileged user (root without its capabilities, as tests/test_storage.py runs it): refused with the
    rule, the file byte-identical."""
    import shutil
    import tempfile

    from test_storage import _as_unprivileged

    root = Path(tempfile.mkdtemp(prefix="fnnp-ro-"))  # pytest's own folders are private to root
    root.chmod(0o777)
    folder = root / "ro"
    folder.mkdir()
    path = folder / "s.log"
    optuna.create_study(study_name="earlier", storage=_open(path))
    J.lock_path(path).touch()
    before = path.read_bytes()
    modes = {"read-only folder": (0o555, 0o666, 0o666), "read-only journal": (0o777, 0o444, 0o666)}
    modes["read-only lock file"] = (0o777, 0o666, 0o444)
    for p, mode in zip((folder, path, J.lock_path(path)), modes[case]):
        p.chmod(mode)
    code = f"import fnnp_opt.storage as St; St.check_storage_writable({str(path)!r})"
    try:
        proc = subprocess.run(_as_unprivileged([sys.executable, "-c", code]), capture_output=True, text=True)
        assert proc.returncode == 1 and "for this user" in proc.stderr.splitlines()[-1], proc.stderr
        assert path.read_bytes() == before
    finally:
        folder.chmod(0o777)
        shutil.rmtree(root)
