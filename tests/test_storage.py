"""Sharing one study: the study lock, exactly --n-trials evaluations, one delivery, and dead workers."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
from conftest import PG_PASSWORD, SMALL_RUN, message_lines
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

import fnnp_opt.optuna_private as P
import fnnp_opt.storage as St
from fnnp_opt.errors import UsageError
from fnnp_opt.options import env_seconds, env_whole_seconds

CLI = Path(__file__).parents[1] / "cli.py"


def _study(tmp_path, name="s"):
    storage = St.open_storage(f"sqlite:///{tmp_path}/s.db")
    return optuna.create_study(study_name=name, storage=storage, direction="maximize")


def _finish(study, trial, feasible=True):
    trial.set_user_attr("feasible", feasible)
    study.tell(trial, 0.5)


def test_slots_stop_at_n_and_a_waiting_claim_follows_the_running_one(tmp_path, monkeypatch):
    monkeypatch.setattr(St, "POLL_S", 0.05)
    study = _study(tmp_path)
    slots = St.Slots(study, n_trials=2)
    a, b = study.ask(), study.ask()
    assert slots.claim(a) and slots.claim(b)
    assert a.user_attrs["worker"] == f"{socket.gethostname()}:{os.getpid()}"
    _finish(study, a)
    c = study.ask()
    outcome = []
    waiter = threading.Thread(target=lambda: outcome.append(slots.claim(c)))
    waiter.start()
    time.sleep(0.5)
    assert waiter.is_alive() and not outcome  # b holds the last slot: c waits, since b may yet die
    _finish(study, b)
    waiter.join(5)
    assert outcome == [False]  # b completed: the study is full, c is not evaluated


def test_a_failed_slot_holder_frees_its_slot(tmp_path, monkeypatch):
    monkeypatch.setattr(St, "POLL_S", 0.05)
    study = _study(tmp_path)
    slots = St.Slots(study, n_trials=1)
    a = study.ask()
    assert slots.claim(a)
    b = study.ask()
    outcome = []
    waiter = threading.Thread(target=lambda: outcome.append(slots.claim(b)))
    waiter.start()
    time.sleep(0.3)
    study.tell(a, state=TrialState.FAIL)
    waiter.join(5)
    assert outcome == [True]


def test_penalized_trials_do_not_fill_slots(tmp_path):
    study = _study(tmp_path)
    slots = St.Slots(study, n_trials=1)
    a = study.ask()
    _finish(study, a, feasible=False)
    assert slots.claim(study.ask())


def test_queued_trials_come_before_fresh_draws(tmp_path):
    study = _study(tmp_path)
    study.enqueue_trial({"x": 0.5})
    slots = St.Slots(study, n_trials=1)
    fresh = P.storage(study).create_new_trial(P.study_id(study))  # a draw that bypasses the queue
    assert not slots.claim(optuna.Trial(study, fresh))
    queued = study.ask()  # pops the queue
    assert slots.claim(queued)


_POP = """
import sys, time, warnings
from pathlib import Path
import optuna
import fnnp_opt.storage as St
warnings.simplefilter("ignore")
optuna.logging.set_verbosity(optuna.logging.ERROR)
url, ready, me, n = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
study = optuna.load_study(study_name="q", storage=St.open_storage(url))
(ready / me).touch()
while len(list(ready.iterdir())) < 2:  # both processes start asking at once
    time.sleep(0.001)
print(" ".join(str(study.ask().number) for _ in range(n)))
"""


@pytest.mark.system
@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_two_processes_never_take_the_same_queued_trial(tmp_path, kind):
    """Optuna alone on SQLite lets both take one WAITING trial now and then (no row locks): 11 of 200 here."""
    url = f"sqlite:///{tmp_path}/q.db" if kind == "sqlite" else f"journal:///{tmp_path}/q.log"
    study = optuna.create_study(study_name="q", storage=St.open_storage(url))
    for i in range(160):
        study.enqueue_trial({"x": float(i)})
    St.close_storage(P.storage(study))
    ready = tmp_path / "ready"
    ready.mkdir()
    procs = [
        subprocess.Popen([sys.executable, "-c", _POP, url, str(ready), str(i), "80"], stdout=subprocess.PIPE, text=True)
        for i in range(2)
    ]
    taken = [proc.communicate(timeout=120)[0].split() for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0]
    assert len(taken[0]) == len(taken[1]) == 80
    assert not set(taken[0]) & set(taken[1])


@pytest.mark.system
def test_one_delivery_per_winner(tmp_path):
    study = _study(tmp_path)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        other = f"{socket.gethostname()}:{sleeper.pid}"
        study.set_user_attr("delivery", {"owner": other, "trial": 3, "since": "now"})
        assert St.claim_delivery(study, 3) == other  # a live worker fine-tunes it: hands off
        assert St.claim_delivery(study, 4) is None  # another trial: ours
        study.set_user_attr("delivery", {"owner": other, "trial": 3, "since": "now"})
    finally:
        sleeper.kill()
        sleeper.wait()
    assert St.claim_delivery(study, 3) is None  # its owner died: take it over
    assert study.user_attrs["delivery"]["owner"] == St.worker_id()


def test_the_intervals_come_from_the_environment_or_their_default(monkeypatch):
    monkeypatch.delenv("FNNP_X_S", raising=False)
    assert env_seconds("FNNP_X_S", 1.5) == 1.5 and env_whole_seconds("FNNP_X_S", 8) == 8
    monkeypatch.setenv("FNNP_X_S", " 0.25 ")
    assert env_seconds("FNNP_X_S", 1.0) == 0.25
    for bad in ("0", "-1", "nan", "inf", "soon"):
        monkeypatch.setenv("FNNP_X_S", bad)
        with pytest.raises(UsageError, match=rf"^FNNP_X_S must be a positive number of seconds, got '{bad}'"):
            env_seconds("FNNP_X_S", 1.0)
    monkeypatch.setenv("FNNP_X_S", "2.5")
    with pytest.raises(UsageError, match=r"^FNNP_X_S must be a whole number of seconds, got 2.5; unset it for 8 s$"):
        env_whole_seconds("FNNP_X_S", 8)



@pytest.mark.system
def test_a_grace_period_no_longer_than_the_heartbeat_is_refused_in_one_line(tmp_path):
    env = dict(os.environ, FNNP_HEARTBEAT_S="2", FNNP_GRACE_S="2")
    cmd = [sys.executable, str(CLI), "report", "--storage", f"sqlite:///{tmp_path}/s.db"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert proc.returncode == 2 and message_lines(proc.stdout + proc.stderr) == [
        "error: FNNP_GRACE_S (2 s) must be longer than FNNP_HEARTBEAT_S (2 s), or every running trial would be failed "
        "as dead; unset both for 8 s and 2 s"
    ], proc.stderr

# --------------------------------------------------------------------------- many processes


def _run_args(data_dir, storage, n, *extra):
    """`fnnp-opt run` on the small data, with evaluations long enough (60 ABN batches) to kill one midway."""
    return [
        sys.executable,
        str(CLI),
        "run",
        *SMALL_RUN,  # later options override earlier ones
        "--n-trials",
        str(n),
        "--abn-batches",
        "60",
        "--data-dir",
        str(data_dir),
        "--storage",
        storage,
        "--study-name",
        "shared",
        *extra,
    ]


def _kill_mid_trial(storage, pids, deadline_s=240):
    """SIGKILL the first process of ``pids()`` seen evaluating a trial; return that trial's number."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        time.sleep(0.3)
        owners = {f"{socket.gethostname()}:{pid}": pid for pid in pids()}
        try:
            study = optuna.load_study(study_name="shared", storage=storage)
        except KeyError:
            continue
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            pid = owners.get(t.user_attrs.get("worker"))
            if pid and t.user_attrs.get("slot") == P.trial_id(t) and t.number > 0:
                os.kill(pid, signal.SIGKILL)
                return t.number
    raise AssertionError("no worker was seen evaluating a trial")


def _check_shared_study(storage, n, killed):
    study = optuna.load_study(study_name="shared", storage=storage)
    trials = study.get_trials()
    evaluated = [t for t in trials if St.is_evaluated(t)]
    assert len(evaluated) == n  # exactly n: none lost, none extra
    assert len({tuple(sorted(t.params.items())) for t in evaluated}) == n  # none evaluated twice
    dead = trials[killed]
    assert dead.state is TrialState.FAIL
    retries = [t for t in trials if RetryHeartbeatStaleTrialCallback.retried_trial_number(t) == killed]
    assert len(retries) == 1 and St.is_evaluated(retries[0]) and retries[0].params == dead.params
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    return study


@pytest.mark.system
@pytest.mark.slow
def test_two_machines_share_a_postgres_study_and_survive_a_kill(postgres_url, small_fmnist, tmp_path):
    """Two `fnnp-opt run` processes (as on two machines) on one PostgreSQL study; one is killed mid-trial."""
    n = 8
    procs = [
        subprocess.Popen(
            _run_args(small_fmnist, postgres_url, n, "--output", str(tmp_path / name)),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for name in ("a", "b")
    ]
    try:
        killed = _kill_mid_trial(postgres_url, lambda: [procs[0].pid])
        out, _ = procs[1].communicate(timeout=400)
        assert procs[1].returncode == 0, out
    finally:
        for p in procs:
            p.kill()
            p.wait()
    study = _check_shared_study(postgres_url, n, killed)
    assert (tmp_path / "b" / "pruned.json").is_file() and not (tmp_path / "a" / "pruned.json").exists()
    assert PG_PASSWORD not in out and "fnnp:***@127.0.0.1" in out  # shown masked
    assert study.user_attrs["delivery"]["owner"] == f"{socket.gethostname()}:{procs[1].pid}"


@pytest.mark.system
@pytest.mark.slow
def test_workers_flag_survives_a_killed_worker(small_fmnist, tmp_path):
    """`--workers 2` on SQLite: one worker process is killed mid-trial; the run still ends with exactly n."""
    n = 8
    storage, out_dir = f"sqlite:///{tmp_path}/w.db", str(tmp_path / "out")
    proc = subprocess.Popen(
        _run_args(small_fmnist, storage, n, "--workers", "2", "--baselines", "uniform,global", "--output", out_dir),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:

        def children():
            found = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
            return [int(c) for c in found]

        killed = _kill_mid_trial(storage, children)
        out, _ = proc.communicate(timeout=400)
        assert proc.returncode == 0, out
    finally:
        proc.kill()
        proc.wait()
    study = _check_shared_study(storage, n, killed)
    assert (tmp_path / "out" / "pruned.json").is_file()
    assert out.count("global baseline queued") == 1, out  # computed and said once, by the parent
    best = max((t for t in study.trials if St.is_evaluated(t)), key=lambda t: (t.value, -t.number))
    assert study.user_attrs["result"]["trial"] == best.number  # the parent delivered the winner, once


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return b""


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] == "Z"  # a zombie nobody reaped yet
    except (FileNotFoundError, IndexError):
        return True


@pytest.mark.system
def test_workers_stop_on_ctrl_c_and_with_their_parent_and_the_resume_is_clean(small_fmnist, tmp_path):
    """`--workers 2`: Ctrl-C (SIGINT to the whole foreground group), during the workers' start-up or mid-trial, ends
    in one line and 130; kill -9 of the parent stops its workers though trials remain; the resume (queued retries and
    all) completes exactly n with no worker error."""
    n = 16
    storage = f"sqlite:///{tmp_path}/w.db"
    args = _run_args(small_fmnist, storage, n, "--workers", "2", "--epochs", "0", "--output", str(tmp_path / "out"))

    def children(proc):  # the search workers (not multiprocessing's resource tracker)
        found = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        return [int(c) for c in found if b"spawn_main" in _cmdline(int(c))]

    def start(until_a_trial: bool):
        """Start the run; return it once its workers exist (and, with ``until_a_trial``, one evaluates a trial)."""
        proc = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )
        end = time.monotonic() + 240
        while time.monotonic() < end:
            time.sleep(0.2)
            owners = {f"{socket.gethostname()}:{pid}" for pid in children(proc)}
            if len(owners) >= 2 and not until_a_trial:
                time.sleep(0.5)  # the parent is done starting them; they are still importing
                return proc, children(proc)
            try:
                study = optuna.load_study(study_name="shared", storage=storage)
            except KeyError:
                continue
            if any(t.user_attrs.get("worker") in owners for t in study.get_trials(states=(TrialState.RUNNING,))):
                return proc, children(proc)
        proc.kill()
        raise AssertionError("no worker was seen")

    for until_a_trial in (False, True):
        proc, _ = start(until_a_trial)
        try:
            os.killpg(proc.pid, signal.SIGINT)  # what the terminal does on Ctrl-C
            out, _ = proc.communicate(timeout=120)
        finally:
            proc.kill()
            proc.wait()
        assert proc.returncode == 130 and "interrupted" in out, out
        assert "Traceback" not in out and "Process" not in out, out

    proc, workers = start(until_a_trial=True)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    end = time.monotonic() + 30
    while not all(map(_gone, workers)) and time.monotonic() < end:
        time.sleep(0.5)
    assert all(map(_gone, workers)), [pid for pid in workers if not _gone(pid)]
    study = optuna.load_study(study_name="shared", storage=storage)
    assert len([t for t in study.trials if St.is_evaluated(t)]) < n  # they stopped; they did not finish the study

    done = subprocess.run(args, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stderr and "exited with codes" not in done.stderr, done.stderr
    study = optuna.load_study(study_name="shared", storage=storage)
    evaluated = [t for t in study.trials if St.is_evaluated(t)]
    assert len(evaluated) == n
    assert len({tuple(sorted(t.params.items())) for t in evaluated}) == n  # none evaluated twice
    assert not [t for t in study.trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]


@pytest.mark.system
def test_a_postgres_password_reaches_no_study_export_or_screen(postgres_url, small_fmnist, tmp_path):
    """A password-protected role (scram-sha-256): the run works, and the password is nowhere but in the URL."""
    from typer.testing import CliRunner

    from fnnp_opt.cli import app

    args = ["run", *SMALL_RUN, "--data-dir", str(small_fmnist), "--storage", postgres_url]
    args += ["--study-name", "secret", "--output", str(tmp_path / "out")]
    res = CliRunner().invoke(app, ["-v", *args])
    assert res.exit_code == 0, res.output
    assert PG_PASSWORD not in res.output and "fnnp:***@127.0.0.1" in res.output
    for path in (tmp_path / "out").rglob("*"):
        if path.is_file() and path.suffix in (".json", ".csv", ".txt", ".md", ".toml"):
            assert PG_PASSWORD not in path.read_text(errors="replace"), path
    study = optuna.load_study(study_name="secret", storage=postgres_url)
    stored = repr(study.user_attrs) + repr([(t.user_attrs, t.system_attrs) for t in study.trials])
    assert PG_PASSWORD not in stored and study.user_attrs["config"]["storage"].startswith(
        "postgresql+psycopg2://fnnp:***@"
    )
    assert "storage" not in study.user_attrs["fingerprint"]  # the fingerprint cannot depend on the password
    wrong = postgres_url.replace(PG_PASSWORD, "Wrong-pw-4242")
    res = CliRunner().invoke(app, ["run", *args[1:-4], "--storage", wrong, "--output", str(tmp_path / "o2")])
    assert res.exit_code == 1 and "could not be opened" in res.output, res.output
    assert "Wrong-pw-4242" not in res.output and "***" in res.output


def _as_unprivileged(cmd: list[str]) -> list[str]:
    """``cmd`` without the capabilities that let root write anything (util-linux's setpriv), when run as root:
    file modes then hold for it as for any user."""
    return ["setpriv", "--bounding-set=-all", "--inh-caps=-all", "--", *cmd] if os.geteuid() == 0 else cmd


@pytest.mark.system
@pytest.mark.parametrize("case", ["read-only folder", "read-only database", "read-only lock file"])
def test_a_storage_this_user_cannot_write_is_refused_untouched(case, small_fmnist):
    """Run as an unprivileged user: one line, exit 1, the database byte-identical, no export written."""
    import shutil
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="fnnp-ro-"))  # pytest's own folders are private to root
    root.chmod(0o777)
    folder = root / "ro"
    folder.mkdir()
    db = folder / "s.db"
    optuna.create_study(study_name="earlier", storage=f"sqlite:///{db}")
    (folder / "s.db.lock").touch()
    before = db.read_bytes()
    out = root / "out"
    modes = {"read-only folder": (0o555, 0o666, 0o666), "read-only database": (0o777, 0o444, 0o666)}
    modes["read-only lock file"] = (0o777, 0o666, 0o444)
    for path, mode in zip((folder, db, folder / "s.db.lock"), modes[case]):
        path.chmod(mode)
    try:
        proc = subprocess.run(
            _as_unprivileged(_run_args(small_fmnist, f"sqlite:///{db}", 2, "--output", str(out))),
            capture_output=True,
            text=True,
            timeout=300,
            cwd=root,
        )
        assert proc.returncode == 1, proc.stdout + proc.stderr
        lines = message_lines(proc.stdout + proc.stderr)
        assert len(lines) == 1 and "for this user" in lines[0] and "Traceback" not in proc.stderr, lines
        assert db.read_bytes() == before and not out.exists()
    finally:
        folder.chmod(0o777)
        shutil.rmtree(root)


@pytest.mark.system
def test_finetune_on_a_read_only_database_is_refused_before_the_export(small_fmnist):
    """`fnnp-opt finetune` used to write the export, then crash on the storage: now it writes nothing."""
    import shutil
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="fnnp-ro-"))
    root.chmod(0o777)
    db = root / "s.db"
    first = subprocess.run(
        _run_args(small_fmnist, f"sqlite:///{db}", 2, "--epochs", "0", "--output", str(root / "run")),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert first.returncode == 0, first.stderr
    before = db.read_bytes()
    db.chmod(0o444)
    try:
        args = ["finetune", "--trial", "0", "--storage", f"sqlite:///{db}", "--data-dir", str(small_fmnist)]
        proc = subprocess.run(
            _as_unprivileged([sys.executable, str(CLI), *args, "--epochs", "1", "--output", str(root / "ft")]),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 1 and "read-only for this user" in proc.stdout + proc.stderr, proc.stderr
        assert db.read_bytes() == before and not (root / "ft").exists()
    finally:
        shutil.rmtree(root)


@pytest.mark.system
def test_processes_that_open_a_new_sqlite_file_at_once_all_open_it(tmp_path):
    # each creates the file's tables if it finds none: without a lock, the second one's creation collides
    code = (
        "import sys, time, pathlib; from fnnp_opt.storage import open_storage\n"
        "go = pathlib.Path(sys.argv[2])\n"
        "pathlib.Path(sys.argv[3]).touch()\n"
        "while not go.exists(): time.sleep(0.01)\n"
        "open_storage(sys.argv[1])\n"
    )
    for attempt in range(3):
        url, go = f"sqlite:///{tmp_path}/s{attempt}.db", tmp_path / f"go{attempt}"
        env = dict(os.environ, OMP_NUM_THREADS="1")
        ready = [tmp_path / f"ready{attempt}-{i}" for i in range(4)]
        args = [[sys.executable, "-c", code, url, str(go), str(r)] for r in ready]
        procs = [subprocess.Popen(a, env=env, stderr=subprocess.PIPE, text=True) for a in args]
        deadline = time.monotonic() + 120
        while not all(r.exists() for r in ready) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.1)  # every process waits at the gate, imports done
        go.touch()
        errors = [p.communicate(timeout=120)[1] for p in procs]
        assert all(p.returncode == 0 for p in procs), [e.strip().splitlines()[-1] for e in errors if e.strip()]


def test_an_opened_storage_is_closed_however_its_block_ends(tmp_path):
    """SQLite keeps its write-ahead log (``-wal``) beside the database while a connection is open; closing the last
    folds it in, so the database file alone holds the study."""
    db = tmp_path / "s.db"
    with St.opened(f"sqlite:///{db}") as storage:
        optuna.create_study(study_name="s", storage=storage).enqueue_trial({"x": 0.5})
        assert db.with_name("s.db-wal").exists()
    assert not db.with_name("s.db-wal").exists()
    with pytest.raises(KeyError), St.opened(f"sqlite:///{db}") as storage:
        optuna.load_study(study_name="s", storage=storage).set_user_attr("k", 1)
        raise KeyError("the block fails")
    assert not db.with_name("s.db-wal").exists()
    assert optuna.load_study(study_name="s", storage=f"sqlite:///{db}").user_attrs == {"k": 1}


@pytest.mark.integration
def test_finetune_closes_its_storage(searched, tmp_path):
    from typer.testing import CliRunner

    from fnnp_opt.cli import app

    db = tmp_path / "study.db"
    shutil.copy(searched, db)
    args = ["finetune", "--storage", f"sqlite:///{db}", "--trial", "0", "--epochs", "0"]
    res = CliRunner().invoke(app, [*args, "--output", str(tmp_path / "o"), "--artifact-dir", str(tmp_path / "a")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "o" / "pruned.json").is_file() and not db.with_name("study.db-wal").exists()
