"""Threads per process against search processes: which split of this machine's cores scores the most candidates.

    .venv/bin/python benchmarks/workers.py [--trials 30] [--rounds 2]

For each way of splitting the cores (1 process with every core as torch threads, 2 processes
with half each, ... one thread per process), the default study (`fnnp-opt run`'s defaults,
seed 0, a fresh SQLite storage each time) is searched to ``--trials`` evaluated candidates by
``search_parallel`` (``--workers N``: N spawned processes, cores // N threads each), and the wall
seconds are timed. The splits alternate over ``--rounds`` so that a noisy machine hits each
alike. Prints candidates per minute for each split and the ratio to one process.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import optuna

from fnnp_opt import storage as St
from fnnp_opt.config import resolve
from fnnp_opt.pipeline import make_evaluator, open_study, prepare, queue_baselines, search_share, settle
from fnnp_opt.workers import search_parallel


def one(workers: int, trials: int) -> float:
    """Wall seconds of a fresh default study searched to ``trials`` candidates by ``workers`` processes."""
    url = f"sqlite:///{tempfile.mkdtemp()}/bench.db"
    cfg = settle(resolve(device="cpu", storage=url, n_trials=trials, workers=workers, epochs=0))
    p = prepare(cfg)
    with St.opened(url) as storage:
        study = open_study(cfg, p, storage)
        t = time.perf_counter()
        queue_baselines(cfg, p, study, make_evaluator(cfg, p, study))  # as `fnnp-opt run --workers N` does
        report = search_parallel(cfg, study, search_share)
        wall = time.perf_counter() - t
    assert report.total_evaluated == trials, report
    return wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=30, help="evaluated candidates per study")
    ap.add_argument("--rounds", type=int, default=2, help="times each split is timed, alternating")
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    cores = os.cpu_count() or 1
    splits = [n for n in range(1, cores + 1) if cores % n == 0]
    walls: dict[int, list[float]] = {n: [] for n in splits}
    for r in range(args.rounds):
        for n in splits if r % 2 == 0 else reversed(splits):
            walls[n].append(one(n, args.trials))
            print(f"  round {r + 1}: {n} process(es) x {cores // n} thread(s): {walls[n][-1]:.1f} s", flush=True)
    base = statistics.median(walls[1])
    print(f"\n{args.trials} candidates of the default study, {cores} cores, median of {args.rounds} rounds")
    for n in splits:
        w = statistics.median(walls[n])
        print(
            f"  --workers {n} ({cores // n} thread{'s' * (cores // n > 1)} each): {60 * args.trials / w:6.1f} "
            f"candidates/min  {base / w:4.2f}x"
        )


if __name__ == "__main__":
    from _stamp import line

    print(line(), flush=True)  # the commit and the machine, above the figures
    main()
