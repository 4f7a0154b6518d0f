"""SQLite, a journal file and PostgreSQL as the storage of one and of two worker processes, side by side.

Each worker runs trials shaped like fnnp-opt's default search, with no model work, so the time per
trial is the storage's (and Optuna's) own: 12 ratios suggested; four draws in five rejected (three
attributes, pruned: the default budget accepts 19% of random draws), the fifth evaluated (a slot
claimed under the study lock, four intermediate values, ten attributes, a value told). Every storage
is opened as fnnp-opt opens it (``fnnp_opt.storage.open_storage``): heartbeats on (Optuna's on SQLite
and PostgreSQL, fnnp-opt's on the journal: a thread per running trial), SQLite with its write-ahead
log, the journal with fnnp-opt's lock file beside it. PostgreSQL is a throwaway server on 127.0.0.1
(Debian's postgresql, started as tests/conftest.py starts it) with its default durability (fsync on);
each configuration gets a fresh database, file or journal.

The rounds alternate the configurations, so a busy machine slows each alike. Per configuration it
prints the wall time per trial of the whole study (``wall``: what N workers cost per trial together,
from the moment all are ready to the last trial) and the median time a worker spends per trial
(``worker``), over all rounds, and the medians of the rejected and the evaluated trials:

    python benchmarks/storage.py --trials 60 --rounds 3
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import shutil
import statistics
import tempfile
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Callable, Iterator


KINDS = ("sqlite", "journal", "postgresql")
EVALUATED_EVERY = 5  # one draw in five is evaluated: the default budget accepts 19% of random draws


def _url(kind: str, where: Path, server: str | None) -> str:
    """The storage URL of one configuration: a file in its own folder, or its own PostgreSQL database."""
    if kind == "sqlite":
        return f"sqlite:///{where}/bench.db"
    if kind == "journal":
        return f"{where}/bench.log"
    return f"{server}/{where.name.replace('-', '_')}"


def _worker(url: str, trials: int, ready, out) -> None:
    import optuna

    from fnnp_opt import storage as St

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.load_study(study_name="bench", storage=St.open_storage(url))
    slots = St.Slots(study, n_trials=10**6)  # the claim's cost, never a wait
    times: dict[str, list[float]] = {"rejected": [], "evaluated": []}
    kind = []

    def objective(trial):
        for i in range(12):
            trial.suggest_float(f"ratio.{i}", 0.0, 0.6)
        evaluated = trial.number % EVALUATED_EVERY == EVALUATED_EVERY - 1
        kind.append("evaluated" if evaluated else "rejected")
        trial.set_user_attr("feasible", evaluated)
        if not evaluated:
            trial.set_user_attr("flops", 1)
            trial.set_user_attr("reject_reason", "FLOPs outside the window")
            raise optuna.TrialPruned()
        slots.claim(trial)
        for step in range(4):
            trial.report(0.5, step)
        for key in ("flops", "flops_ratio", "params", "channels", "abn_accuracy", "images_scored", "vs_base"):
            trial.set_user_attr(key, 1)
        trial.set_user_attr("timings", {"strategy": 0.001, "prune": 0.01})
        return 0.5

    def clock(study, trial):
        nonlocal last
        now = time.perf_counter()
        times[kind[-1]].append(now - last)
        last = now

    ready.wait()  # spawned and imported: the clock starts for every worker at once
    start = last = time.perf_counter()
    study.optimize(objective, n_trials=trials, callbacks=[clock])
    out.put((start, time.perf_counter(), times))


def measure(url: str, workers: int, trials: int) -> dict:
    """One study of ``workers`` x ``trials`` on ``url``: wall and worker seconds per trial."""
    import optuna

    from fnnp_opt import storage as St

    storage = St.open_storage(url)
    optuna.create_study(study_name="bench", storage=storage, sampler=optuna.samplers.RandomSampler())
    St.close_storage(storage)
    ctx = mp.get_context("spawn")
    out, ready = ctx.Queue(), ctx.Barrier(workers)
    procs = [ctx.Process(target=_worker, args=(url, trials, ready, out)) for _ in range(workers)]
    for p in procs:
        p.start()
    results = [out.get() for _ in procs]
    for p in procs:
        p.join()
    wall = max(end for _, end, _ in results) - min(start for start, _, _ in results)
    times = {k: [t for _, _, r in results for t in r[k]] for k in ("rejected", "evaluated")}
    return {"wall": wall / (workers * trials), "worker": times["rejected"] + times["evaluated"], **times}


@contextmanager
def postgres() -> Iterator[tuple[str, Callable[[str], None]]]:
    """A throwaway PostgreSQL server on 127.0.0.1 (trust authentication); yields its URL without a database,
    and a function that creates a database on it."""
    import glob
    import os
    import socket
    import subprocess

    initdb = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not initdb:
        raise SystemExit("PostgreSQL is not installed (apt-get install postgresql); or pass --kinds sqlite,journal")
    bindir = Path(initdb[-1]).parent
    root = Path(tempfile.mkdtemp(prefix="fnnp-bench-pg-"))
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if prefix:
        shutil.chown(root, "postgres")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    def pg(*args):
        subprocess.run([*prefix, *map(str, args)], check=True, capture_output=True)

    pg(bindir / "initdb", "-D", root / "data", "--auth=trust", "-U", "fnnp")
    pg(bindir / "pg_ctl", "-D", root / "data", "-l", root / "log", "-w", "-o",
       f"-c listen_addresses=127.0.0.1 -p {port} -k {root}", "start")  # fmt: skip
    try:
        yield (
            f"postgresql+psycopg2://fnnp@127.0.0.1:{port}",
            lambda name: pg(bindir / "createdb", "-h", root, "-p", port, "-U", "fnnp", name),
        )
    finally:
        pg(bindir / "pg_ctl", "-D", root / "data", "-m", "immediate", "stop")
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=60, help="trials per worker (default: 60)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds over every configuration (default: 3)")
    ap.add_argument("--workers", default="1,2", help="worker counts to compare (default: 1,2)")
    ap.add_argument("--kinds", default=",".join(KINDS), help=f"storages (default: {','.join(KINDS)})")
    args = ap.parse_args()
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    kinds = args.kinds.split(",")
    counts = [int(w) for w in args.workers.split(",")]
    if not set(kinds) <= set(KINDS):
        ap.error(f"--kinds must be a subset of {','.join(KINDS)}")
    runs: dict[tuple[str, int], list[dict]] = {(k, w): [] for k in kinds for w in counts}
    with postgres() if "postgresql" in kinds else nullcontext((None, None)) as (server, createdb):
        for r in range(args.rounds):
            for kind in kinds:
                for workers in counts:
                    where = Path(tempfile.mkdtemp(prefix=f"bench-{kind}-{workers}-{r}-"))
                    if kind == "postgresql":
                        createdb(where.name.replace("-", "_"))
                    runs[kind, workers].append(measure(_url(kind, where, server), workers, args.trials))
                    shutil.rmtree(where)
    print(f"{args.trials} trials per worker, {args.rounds} rounds; ms per trial")
    print("  wall: the study's wall time / its trials (median of the rounds); worker: a worker's mean; rejected,")
    print("  evaluated: medians of each kind; p99: the 99th percentile of all trials (waits for a lock)")
    print(f"{'storage':<11} {'workers':>7} {'wall':>8} {'worker':>8} {'rejected':>9} {'evaluated':>10} {'p99':>8}")
    for (kind, workers), rs in runs.items():
        wall = 1000 * statistics.median(x["wall"] for x in rs)
        every = sorted(t for x in rs for t in x["worker"])
        worker, p99 = 1000 * statistics.fmean(every), 1000 * every[int(0.99 * (len(every) - 1))]
        rejected, evaluated = (1000 * statistics.median(t for x in rs for t in x[k]) for k in ("rejected", "evaluated"))
        print(f"{kind:<11} {workers:>7} {wall:8.1f} {worker:8.1f} {rejected:9.1f} {evaluated:10.1f} {p99:8.1f}")
    if len(counts) > 1:  # within a round the configurations run back to back: a busy machine cancels out
        one = counts[0]
        print(f"trials per second of N workers over {one}, per round (median, min-max):")
        for kind in kinds:
            for workers in counts[1:]:
                r = [a["wall"] / b["wall"] for a, b in zip(runs[kind, one], runs[kind, workers])]
                print(f"  {kind:<11} {workers} workers: {statistics.median(r):.2f}x ({min(r):.2f}-{max(r):.2f})")
    if "sqlite" in kinds:
        print("wall per trial against SQLite's (the default storage), per round (median):")
        for kind in (k for k in kinds if k != "sqlite"):
            ratios = []
            for workers in counts:
                r = [b["wall"] / a["wall"] for a, b in zip(runs["sqlite", workers], runs[kind, workers])]
                ratios.append(f"{workers} workers {statistics.median(r):.2f}x")
            print(f"  {kind:<11} " + ", ".join(ratios))


if __name__ == "__main__":
    from _stamp import line

    print(line(), flush=True)  # the commit and the machine, above the figures
    main()
