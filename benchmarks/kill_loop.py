"""Kill a real `fnnp-opt run` at random moments, resume it, and check that nothing is lost or broken.

Each cycle is a fresh study on a small copy of Fashion-MNIST (6 trials, a rerank of the top 2,
a 1-epoch distilled fine-tune, the export). The run is stopped once in each phase it reaches,
in order (search, rerank, fine-tune, export), at a random moment after the phase's first log
line, and resumed with the same command; the last resume runs to completion. (With
``--workers 2`` a cycle stops one search worker, once.)

Modes:
  kill     SIGKILL the run (nothing can clean up);
  term     SIGTERM the run (a clean stop: exit 130, "run the same command again to resume");
  workers  `--workers 2`: SIGKILL one of the two search workers; the run must still end well.

After every stop it checks what must hold at any moment: the SQLite file passes
``PRAGMA integrity_check``; no strategy was evaluated twice; at most --n-trials were evaluated;
the fine-tune checkpoint, if any, loads (weights_only); an export, if any, loads with
``load_pruned``; no half-written file is left but the atomic writers' ``*.tmp``, which the
next write replaces. After the final resume: exactly --n-trials evaluated, nothing RUNNING, no
``*.tmp`` anywhere, and the export reproduces the accuracy it printed.

    python benchmarks/kill_loop.py --kills 20 --mode kill,term,workers --out docs/reliability.md
    python benchmarks/kill_loop.py --kills 5 --mode kill        # the short version CI runs
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLI = ROOT / "cli.py"
N_TRIALS = 6
# the log line that opens each phase, and how long after it a stop may land (seconds)
PHASES = {
    "search": (re.compile(r"resuming study|trial \d+: ABN"), 4.0),
    "rerank": (re.compile(r"rerank: re-scoring"), 3.0),
    "finetune": (re.compile(r"fine-tuning trial"), 4.0),
    "export": (re.compile(r"testing the base and the pruned network"), 2.5),
}


@dataclass
class Tally:
    kills: int = 0
    phases: dict = field(default_factory=dict)  # phase -> stops that landed in it
    missed: int = 0  # stops whose phase had ended before the signal (the run was already past it)
    failures: list = field(default_factory=list)
    cycles: int = 0
    seconds: float = 0.0


def small_data(folder: Path) -> Path:
    """The first 3,000 training and 1,000 test images of the real Fashion-MNIST, as gzipped IDX."""
    sys.path.insert(0, str(ROOT))
    from fnnp_opt.data import DATASETS, load_fashion_mnist, write_idx

    arrays = load_fashion_mnist(Path(DATASETS["fashion-mnist"].default_dir))
    folder.mkdir(parents=True, exist_ok=True)
    for part, key, n in (("train", "train", 3000), ("t10k", "test", 1000)):
        write_idx(folder / f"{part}-images-idx3-ubyte.gz", arrays[f"{key}_x"][:n])
        write_idx(folder / f"{part}-labels-idx1-ubyte.gz", arrays[f"{key}_y"][:n])
    return folder


def command(data: Path, work: Path, name: str, workers: int) -> list[str]:
    return [
        sys.executable, str(CLI), "-v", "run",
        "--data-dir", str(data), "--storage", f"sqlite:///{work}/s.db", "--study-name", name,
        "--output", str(work / name), "--n-trials", str(N_TRIALS), "--abn-batches", "20",
        "--abn-batch-size", "32", "--search-size", "300", "--epochs", "1", "--batch-size", "64",
        "--flops-tolerance", "0.05", "--rerank", "2", "--score-steps", "20", "--device", "cpu",
        "--workers", str(workers),
    ]  # fmt: skip


class Run:
    """One `fnnp-opt run` process whose log lines are read as they come."""

    def __init__(self, cmd: list[str]) -> None:
        env = dict(os.environ, COLUMNS="400", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip())

    def wait_for(self, pattern: re.Pattern, timeout: float = 300) -> bool:
        """True once a log line matches ``pattern``; False if the run ended (or timed out) first."""
        deadline, seen = time.time() + timeout, 0
        while time.time() < deadline:
            while seen < len(self.lines):
                if pattern.search(self.lines[seen]):
                    return True
                seen += 1
            if self.proc.poll() is not None and seen >= len(self.lines):
                self._reader.join(1)
                if seen >= len(self.lines):
                    return False
            time.sleep(0.05)
        return False

    def phase(self) -> str | None:
        """The last phase the log shows."""
        last = None
        for line in self.lines:
            for name, (pattern, _) in PHASES.items():
                if pattern.search(line):
                    last = name
        return last

    def finish(self, timeout: float = 600) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(5)
        return code

    def text(self) -> str:
        return "\n".join(self.lines)


def wait_for_workers(run: Run, db: Path, name: str, timeout: float = 300) -> bool:
    """True once the run's search workers are up and the study has a first evaluated trial."""
    deadline = time.time() + timeout
    while time.time() < deadline and run.proc.poll() is None:
        if workers_of(run.proc.pid) and db.exists():
            try:
                if evaluated_rows(db, name):
                    return True
            except sqlite3.OperationalError:  # the study's tables are being created
                pass
        time.sleep(0.2)
    return False


def workers_of(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [int(p) for p in out]


# --------------------------------------------------------------------------- checks


def evaluated_rows(db: Path, name: str) -> list[tuple[int, str]]:
    """(trial number, params JSON) of the evaluated trials of study ``name`` (read-only, no Optuna cache)."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        sid = con.execute("select study_id from studies where study_name = ?", (name,)).fetchone()
        if sid is None:
            return []
        rows = con.execute(
            "select t.number, t.trial_id from trials t join trial_user_attributes a on a.trial_id = t.trial_id "
            "where t.study_id = ? and t.state = 'COMPLETE' and a.key = 'abn_accuracy'",
            sid,
        ).fetchall()
        out = []
        for number, tid in rows:
            params = con.execute(
                "select param_name, param_value from trial_params where trial_id = ? order by param_name", (tid,)
            ).fetchall()
            out.append((number, json.dumps(params)))
        return out
    finally:
        con.close()


def states(db: Path, name: str) -> dict[str, int]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = con.execute(
            "select t.state, count(*) from trials t join studies s on s.study_id = t.study_id "
            "where s.study_name = ? group by t.state",
            (name,),
        ).fetchall()
        return dict(rows)
    finally:
        con.close()


def check_any_time(db: Path, name: str, out: Path) -> list[str]:
    """What must hold after any stop."""
    import torch

    from fnnp_opt import load_pruned

    problems = []
    if db.exists():
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            ok = con.execute("PRAGMA integrity_check").fetchone()[0]
        finally:
            con.close()
        if ok != "ok":
            problems.append(f"integrity_check: {ok}")
        rows = evaluated_rows(db, name)
        if len({p for _, p in rows}) != len(rows):
            problems.append("a strategy was evaluated twice")
        if len(rows) > N_TRIALS:
            problems.append(f"{len(rows)} evaluated, more than {N_TRIALS}")
    ckpt = out / "finetune.pt"
    if ckpt.exists():
        try:
            torch.load(ckpt, map_location="cpu", weights_only=True)
        except Exception as exc:
            problems.append(f"the fine-tune checkpoint does not load: {exc}")
    if (out / "pruned.json").exists():
        try:
            load_pruned(out)
        except Exception as exc:
            problems.append(f"the export does not load: {exc}")
    return problems


def check_final(db: Path, name: str, out: Path, data: Path, printed: str) -> list[str]:
    """What must hold once the run has completed."""
    from fnnp_opt import load_pruned
    from fnnp_opt.data import load_splits
    from fnnp_opt.evaluate import accuracy

    problems = check_any_time(db, name, out)
    rows = evaluated_rows(db, name)
    if len(rows) != N_TRIALS:
        problems.append(f"{len(rows)} evaluated, not {N_TRIALS}")
    running = states(db, name).get("RUNNING", 0)
    if running:
        problems.append(f"{running} trials left RUNNING")
    tmp = [str(p) for p in db.parent.rglob("*.tmp")]
    if tmp:
        problems.append(f"half-written files left: {tmp}")
    doc = json.loads((out / "pruned.json").read_text())
    reported = doc["metrics"]["pruned"]["test_accuracy"]
    if f"{reported:.2%}" not in printed:
        problems.append(f"the export's accuracy {reported:.2%} was not printed")
    test = load_splits("fashion-mnist", data, search_size=300, abn_batches=1, abn_batch_size=32).test
    again = accuracy(load_pruned(out), test.batches(500))
    if again != reported:
        problems.append(f"the export tests at {again}, not the reported {reported}")
    return problems


# --------------------------------------------------------------------------- the loop


def cycle(mode: str, k: int, data: Path, work: Path, rng: random.Random, tally: Tally, kills_left: int) -> None:
    """One fresh study, stopped once per phase (while kills are left), then run to completion."""
    name = f"{mode}-{k}"
    workers = 2 if mode == "workers" else 1
    cmd = command(data, work, name, workers)
    db, out = work / "s.db", work / name
    for phase, (pattern, window) in PHASES.items():
        if kills_left == 0 or (mode == "workers" and phase != "search"):
            break  # with --workers 2, each study loses one search worker, then runs to completion
        run = Run(cmd)
        if mode == "workers" and phase == "search":
            ready = wait_for_workers(run, db, name)  # their log lines stay in the workers' processes
        else:
            ready = run.wait_for(pattern)
        if not ready:
            run.finish()
            continue  # this resume ran past the phase (or finished): nothing to stop
        time.sleep(rng.uniform(0, window))
        if run.proc.poll() is not None:
            tally.missed += 1
            run.finish()
            continue
        landed = run.phase()
        if mode == "workers" and phase == "search" and workers_of(run.proc.pid):
            landed = "search (one of 2 workers)"
        if mode == "term":
            run.proc.send_signal(signal.SIGTERM)
        elif mode == "workers" and phase == "search" and workers_of(run.proc.pid):
            os.kill(rng.choice(workers_of(run.proc.pid)), signal.SIGKILL)  # one worker; the run goes on
        else:
            os.killpg(run.proc.pid, signal.SIGKILL)  # the run and any worker it started
        code = run.finish()
        tally.kills += 1
        kills_left -= 1
        tally.phases[landed] = tally.phases.get(landed, 0) + 1
        if landed == "search (one of 2 workers)" and code != 0:  # the other worker and the parent go on
            tally.failures.append(f"{name}: with one worker killed the run exited {code}:\n{run.text()[-3000:]}")
        if mode == "term" and code != 130:
            tally.failures.append(f"{name}: SIGTERM in {landed} exited {code}, not 130:\n{run.text()[-2000:]}")
        problems = check_any_time(db, name, out)
        tally.failures += [f"{name} after a stop in {landed}: {p}" for p in problems]
        if mode != "term":
            from fnnp_opt.storage import GRACE_S  # 8 s, or FNNP_GRACE_S as the runs see it

            time.sleep(GRACE_S + 1)  # a SIGKILLed trial's heartbeat goes stale, so the resume retries it
    run = Run(cmd)
    code = run.finish()
    if code != 0:
        tally.failures.append(f"{name}: the final resume exited {code}:\n{run.text()[-3000:]}")
        return
    tally.failures += [f"{name} at the end: {p}" for p in check_final(db, name, out, data, run.text())]
    tally.cycles += 1


def loop(mode: str, kills: int, data: Path, seed: int) -> Tally:
    tally, rng = Tally(), random.Random(seed)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"fnnp-kill-{mode}-") as tmp:
        k = 0
        while tally.kills < kills:
            cycle(mode, k, data, Path(tmp), rng, tally, kills - tally.kills)
            k += 1
            print(f"{mode}: {tally.kills} stops, phases {tally.phases}, failures {len(tally.failures)}", flush=True)
            if k > 4 * kills:
                tally.failures.append("no stop landed: the phases ended before the signals")
                break
    tally.seconds = time.perf_counter() - t0
    return tally


def write_report(results: dict[str, Tally], path: Path, argv: list[str], started: dict) -> None:
    from _stamp import line

    lines = [
        "# Reliability: the kill loop",
        "",
        f"Measured with `python benchmarks/kill_loop.py {' '.join(argv)}` on a small copy of Fashion-MNIST",
        f"(3,000 training images; {N_TRIALS} trials, a rerank of the top 2, a 1-epoch distilled fine-tune and the",
        "export per study). Every stop is followed by the checks of any moment (SQLite integrity, no strategy",
        "twice, at most n-trials evaluated, the fine-tune checkpoint and any export load); every study ends with",
        "a resume to completion and the final checks (exactly n-trials evaluated, nothing RUNNING, no half-written",
        "file, the export reproduces its printed test accuracy). See the module docstring for the modes.",
        "",
        "| mode | stops | phases hit | stops that came too late | studies completed | failures | wall time |",
        "|---|---|---|---|---|---|---|",
    ]
    for mode, t in results.items():
        order = [*PHASES, "search (one of 2 workers)"]
        phases = ", ".join(f"{k} {v}" for k, v in sorted(t.phases.items(), key=lambda kv: order.index(kv[0])))
        minutes = f"{t.seconds / 60:.1f} min"
        lines.append(f"| {mode} | {t.kills} | {phases} | {t.missed} | {t.cycles} | {len(t.failures)} | {minutes} |")
    lines += ["", f"**Measured:** {line(started).removeprefix('measured ')}."]
    failures = [f for t in results.values() for f in t.failures]
    if failures:
        lines += ["", "## Failures", ""] + [f"- {f}" for f in failures]
    path.write_text("\n".join(lines) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=20, help="stops per mode (default: 20)")
    ap.add_argument("--mode", default="kill,term,workers", help="comma-separated: kill, term, workers")
    ap.add_argument("--seed", type=int, default=0, help="seed of the stop moments")
    ap.add_argument("--out", type=Path, help="write the Markdown report here (e.g. docs/reliability.md)")
    args = ap.parse_args()
    modes = args.mode.split(",")
    if args.kills < 1 or not set(modes) <= {"kill", "term", "workers"}:
        ap.error("--kills must be >= 1 and --mode a list of kill, term, workers")
    sys.path.insert(0, str(ROOT))
    from _stamp import stamp

    started = stamp()
    with tempfile.TemporaryDirectory(prefix="fnnp-kill-data-") as tmp:
        data = small_data(Path(tmp))
        results = {mode: loop(mode, args.kills, data, args.seed) for mode in modes}
    if args.out:
        write_report(results, args.out, sys.argv[1:], started)
    for mode, t in results.items():
        print(f"{mode}: {t.kills} stops, phases {t.phases}, {t.cycles} studies completed, {len(t.failures)} failures")
        for f in t.failures:
            print("  FAIL", f)
    return 1 if any(t.failures for t in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
