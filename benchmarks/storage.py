"""SQLite vs a journal file as the storage of several worker processes on one machine.

Each worker runs trials shaped like fnnp-opt's (12 ratios suggested, 8 user attributes,
a tell) with no model work, so the time per trial is the storage's own. SQLite is used
as fnnp-opt opens it (heartbeats on, 60 s busy timeout); the journal file is Optuna's
JournalFileBackend. Both run in the same invocation, one after the other:

    python benchmarks/storage.py --workers 2 --trials 100
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import tempfile
import time
from pathlib import Path


def _open(kind: str, where: Path):
    import optuna

    if kind == "sqlite":
        from fnnp_opt.storage import open_storage

        return open_storage(f"sqlite:///{where}/bench.db")
    from optuna.storages.journal import JournalFileBackend

    return optuna.storages.JournalStorage(JournalFileBackend(str(where / "bench.log")))


def _worker(kind: str, where: str, trials: int, out) -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.load_study(study_name="bench", storage=_open(kind, Path(where)))
    times = []

    def objective(trial):
        for i in range(12):
            trial.suggest_float(f"ratio.{i}", 0.0, 0.6)
        for key in ("ratios", "flops", "feasible", "slot", "worker", "params", "channels", "timings"):
            trial.set_user_attr(key, 1)
        return 0.5

    last = time.perf_counter()

    def clock(study, trial):
        nonlocal last
        now = time.perf_counter()
        times.append(now - last)
        last = now

    study.optimize(objective, n_trials=trials, callbacks=[clock])
    out.put(times)


def measure(kind: str, workers: int, trials: int) -> tuple[float, float]:
    import optuna

    where = Path(tempfile.mkdtemp())
    optuna.create_study(study_name="bench", storage=_open(kind, where), sampler=optuna.samplers.RandomSampler())
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    t0 = time.perf_counter()
    procs = [ctx.Process(target=_worker, args=(kind, str(where), trials, out)) for _ in range(workers)]
    for p in procs:
        p.start()
    times = [t for _ in procs for t in out.get()]
    for p in procs:
        p.join()
    wall = time.perf_counter() - t0
    return statistics.median(times), wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--trials", type=int, default=100, help="trials per worker")
    args = ap.parse_args()
    results = {kind: measure(kind, args.workers, args.trials) for kind in ("sqlite", "journal")}
    for kind, (median, wall) in results.items():
        print(
            f"{kind:8s} median {1000 * median:7.1f} ms per trial; "
            f"{args.workers} workers x {args.trials} trials in {wall:.1f} s"
        )
    ratio = results["sqlite"][0] / results["journal"][0]
    print(f"SQLite / journal, per trial: {ratio:.2f}x")


if __name__ == "__main__":
    main()
