"""Where a trial's time goes, on the default setup (ResNet-20, Fashion-MNIST, 50% FLOPs).

    .venv/bin/python benchmarks/trial_cost.py [--trials 10] [--storage sqlite:///...]

Runs the real study loop (default options, a fresh SQLite storage in a temporary
folder unless --storage is given) and prints the median seconds per evaluated trial,
split into strategy (suggest, with its storage writes), pruning, FLOPs counting,
storage (user attributes, trial creation and completion), PBN scoring, ABN
calibration and ABN scoring. Rejected draws are timed too, and their cost is shown
per evaluated trial, since every evaluated candidate pays for the draws rejected
before it. Timings are ratios measured in one run; absolute seconds vary by machine.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import optuna
from optuna.trial import TrialState

from _clock import TrialClock

from fnnp_opt import search as S
from fnnp_opt import storage as St
from fnnp_opt.config import resolve
from fnnp_opt.pipeline import prepare


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=10, help="evaluated candidates to time")
    ap.add_argument("--storage", default=None, help="Optuna storage URL (default: a fresh SQLite file)")
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    cfg = resolve(device="cpu")
    t = time.perf_counter()
    p = prepare(cfg)
    prepare_s = time.perf_counter() - t
    tmp = tempfile.mkdtemp()
    storage = St.open_storage(args.storage or f"sqlite:///{tmp}/bench.db")
    study = St.create_study(storage, "bench", p.fingerprint(), cfg.to_dict(), p.space, p.budget)
    study.sampler = S.make_sampler(cfg.sampler, cfg.seed)
    evaluator = S.Evaluator(
        p.pruner,
        p.space,
        p.budget,
        p.flops,
        p.splits.calibration,
        p.splits.search_batches(cfg.eval_batch_size),
        slots=St.Slots(study, args.trials),
    )

    clock = TrialClock(evaluator)

    def stop(study, trial):
        if len(S.evaluated(study)) >= args.trials:
            study.stop()

    t = time.perf_counter()
    study.optimize(clock, callbacks=[clock.tick, stop])
    search_s = time.perf_counter() - t

    trials = study.get_trials(deepcopy=False)
    done = [t for t in trials if t.state is TrialState.COMPLETE]
    rejected = [t for t in trials if t.state is TrialState.PRUNED]
    parts = ("strategy", "prune", "flops", "storage", "pbn_score", "abn_calibrate", "abn_score")
    rows = {k: [] for k in parts}
    for t in done:
        tm = dict(t.user_attrs["timings"])
        tm["storage"] += clock.outside(t.number)  # trial creation and completion
        for k in parts:
            rows[k].append(tm[k])
    med = {k: statistics.median(v) for k, v in rows.items()}
    reject_wall = statistics.median(clock.walls[t.number] for t in rejected) if rejected else 0.0
    per_eval_rejects = len(rejected) / len(done)
    overhead = med["strategy"] + med["prune"] + med["flops"] + med["storage"]
    forward = med["pbn_score"] + med["abn_calibrate"] + med["abn_score"]
    total = overhead + forward

    print(f"default setup: {len(p.space)} dimensions, budget {p.budget.describe()}")
    print(f"prepare (data, model, space, budget) once per study: {prepare_s:.2f} s")
    print(
        f"{len(done)} evaluated, {len(rejected)} rejected draws ({len(rejected) / len(trials):.0%}), "
        f"search wall {search_s:.1f} s"
    )
    print("\nmedian seconds per evaluated trial")
    for k in parts:
        print(f"  {k:14s} {med[k]:8.4f}  {med[k] / total:6.1%}")
    print(f"  {'total':14s} {total:8.4f}")
    print(
        f"\noverhead beyond the forward passes (strategy+prune+flops+storage): {overhead:.4f} s "
        f"= {overhead / total:.1%} of an evaluated trial"
    )
    print(
        f"rejected draw: median {reject_wall:.4f} s each, {per_eval_rejects:.2f} per evaluated trial "
        f"-> {reject_wall * per_eval_rejects:.4f} s"
    )
    amortised = overhead + reject_wall * per_eval_rejects
    print(
        f"overhead with rejected draws amortised: {amortised:.4f} s "
        f"= {amortised / (total + reject_wall * per_eval_rejects):.1%} of the search time per candidate"
    )


if __name__ == "__main__":
    main()
