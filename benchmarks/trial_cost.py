"""Where a trial's time goes, on the default setup (ResNet-20, Fashion-MNIST, 50% FLOPs).

    .venv/bin/python benchmarks/trial_cost.py [--trials 10] [--storage sqlite:///...]
    .venv/bin/python benchmarks/trial_cost.py --api [--trials 10] [--rounds 3]   # fnnp_opt.search beside the CLI

Runs the real study loop of `fnnp-opt run` with its default options (a fresh SQLite storage
in a temporary folder unless --storage is given; the uniform strategy queued first; early
stopping; no PBN unless --pbn) and prints the median seconds per evaluated trial, split into
strategy (suggest, with its storage writes), pruning, FLOPs counting, storage (user
attributes, step reports, trial creation and completion), PBN scoring (with --pbn), ABN
calibration and ABN scoring. Rejected draws are timed too, and their cost is shown per
evaluated trial, since every evaluated candidate pays for the draws rejected before it.
The last line does the same with sums over the whole search instead of medians: the share of the
study's wall time that is not a forward pass. Timings are ratios measured in one run; absolute
seconds vary by machine.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import optuna
import torch
from optuna.trial import TrialState

from _clock import TrialClock

from fnnp_opt import optimize as S
from fnnp_opt import storage as St
from fnnp_opt.config import resolve
from fnnp_opt.pipeline import make_evaluator, prepare, settle


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=10, help="evaluated candidates to time")
    ap.add_argument("--storage", default=None, help="Optuna storage URL (default: a fresh SQLite file)")
    ap.add_argument("--pbn", action="store_true", help="also score with stale statistics (run --pbn)")
    ap.add_argument("--abn-batches", type=int, default=None, help="calibration batches (default: run's)")
    for flag in ("--model", "--dataset", "--data-dir", "--checkpoint"):
        ap.add_argument(flag, default=None, help="as in `fnnp-opt run` (default: run's)")
    ap.add_argument("--image-size", type=int, default=None)
    ap.add_argument("--search-per-class", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument(
        "--api", action="store_true", help="the Python API's fnnp_opt.search beside the CLI's search, side by side"
    )
    ap.add_argument("--rounds", type=int, default=3, help="with --api: alternating rounds of each")
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if args.api:
        return api_beside_cli(args)

    tmp = tempfile.mkdtemp()
    url = args.storage or f"sqlite:///{tmp}/bench.db"
    given = ("model", "dataset", "data_dir", "checkpoint", "image_size", "search_per_class", "device", "pbn")
    flags = {k: getattr(args, k) for k in given}
    # rerank 0: a trial's cost is measured; the re-scoring after the search is not part of it
    cfg = settle(resolve(storage=url, n_trials=args.trials, abn_batches=args.abn_batches, workers=1, rerank=0, **flags))
    t = time.perf_counter()
    p = prepare(cfg)
    prepare_s = time.perf_counter() - t
    storage = St.open_storage(url)
    study = St.create_study(storage, "bench", p.fingerprint(), cfg.to_dict(), p.space, p.budget)
    S.enqueue_strategies(study, p.space, p.uniform, "uniform")
    evaluator = make_evaluator(cfg, p, study)

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
    parts = parts if cfg.pbn else tuple(k for k in parts if k != "pbn_score")
    rows = {k: [] for k in parts}
    for t in done:
        tm = dict(t.user_attrs["timings"])
        tm["storage"] += clock.outside(t.number)  # trial creation and completion
        for k in parts:
            rows[k].append(tm[k])
    images = [t.user_attrs["images_scored"] for t in done]
    calibrated = sum(len(y) for _, y in evaluator.calibration)
    floor = _floor(p, evaluator)
    stopped = sum(bool(t.user_attrs.get("stopped_early")) for t in done)
    med = {k: statistics.median(v) for k, v in rows.items()}
    reject_wall = statistics.median(clock.walls[t.number] for t in rejected) if rejected else 0.0
    per_eval_rejects = len(rejected) / len(done)
    overhead = med["strategy"] + med["prune"] + med["flops"] + med["storage"]
    forward = sum(med[k] for k in ("pbn_score", "abn_calibrate", "abn_score") if k in med)
    total = overhead + forward

    print(f"{cfg.model} on {cfg.dataset} ({p.device}): {len(p.space)} dimensions, budget {p.budget.describe()}")
    print(
        f"ABN {cfg.calibration_batches()} x {cfg.abn_batch_size} images, early stopping "
        f"{'on' if cfg.stops_early() else 'off'}, PBN {'on' if cfg.pbn else 'off'}, {torch.get_num_threads()} threads"
    )
    print(f"prepare (data, model, space, budget) once per study: {prepare_s:.2f} s")
    print(
        f"{len(done)} evaluated, {len(rejected)} rejected draws ({len(rejected) / len(trials):.0%}), "
        f"search wall {search_s:.1f} s"
    )
    print(
        f"{stopped} of {len(done)} stopped early; images scored: median {statistics.median(images):.0f}, "
        f"mean {statistics.mean(images):.0f} of {len(p.splits.search)}"
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
        f"overhead with rejected draws amortised (medians): {amortised:.4f} s "
        f"= {amortised / (total + reject_wall * per_eval_rejects):.1%} of the search time per candidate"
    )
    # the same over the whole search: every second of the study's wall that is not a forward pass
    passes = sum(sum(rows[k]) for k in ("pbn_score", "abn_calibrate", "abn_score") if k in rows)
    print(
        f"the whole search: {search_s:.1f} s, of which forward passes {passes:.1f} s; everything else "
        f"(draws, rejected draws, pruning, counting, storage, sampler) {search_s - passes:.1f} s "
        f"= {(search_s - passes) / search_s:.1%}; {search_s / len(done):.3f} s per evaluated candidate"
    )

    achieved = (calibrated * len(done) + sum(images)) / search_s
    print(
        f"images through the network: {achieved:.0f}/s over the whole search (calibration + scoring of every "
        f"evaluated trial / wall) against a floor of {floor:.0f}/s for the same passes timed alone "
        f"= {achieved / floor:.0%} of the floor"
    )


def _per_candidate(study: optuna.Study) -> float:
    """Seconds of trials (evaluated and rejected, start to completion) per evaluated candidate."""
    trials = [t for t in study.get_trials(deepcopy=False) if t.datetime_complete is not None]
    wall = sum((t.datetime_complete - t.datetime_start).total_seconds() for t in trials)
    return wall / len(S.evaluated(study))


def api_beside_cli(args) -> None:
    """The same search (model, batches, budget, sampler seed, SQLite storage) run by the CLI's pipeline and by
    ``fnnp_opt.search``, alternately, ``--rounds`` times each: seconds per evaluated candidate, trials' own time
    (the one-off preparation, Problem and base score, left out)."""
    import fnnp_opt

    tmp = tempfile.mkdtemp()
    cfg = settle(resolve(storage=f"sqlite:///{tmp}/cli.db", n_trials=args.trials, workers=1, device=args.device))
    p = prepare(cfg)
    calibration, search = p.splits.calibration, p.splits.search_batches(cfg.eval_batch_size)
    costs: dict[str, list[float]] = {"cli": [], "api": []}
    for k in range(args.rounds):
        url = f"sqlite:///{tmp}/cli{k}.db"
        storage = St.open_storage(url)
        study = St.create_study(storage, "bench", p.fingerprint(), cfg.to_dict(), p.space, p.budget)
        S.enqueue_strategies(study, p.space, p.uniform, "uniform")
        S.optimize(study, make_evaluator(cfg, p, study), args.trials, cfg.max_draws)
        costs["cli"].append(_per_candidate(study))
        result = fnnp_opt.search(
            p.model,
            torch.zeros(p.input_shape),
            calibration=calibration,
            evaluation=search,
            budget=cfg.resolved_flops(),
            n_trials=args.trials,
            calibration_batches=cfg.calibration_batches(),
            max_rate=cfg.max_rate,
            storage=f"sqlite:///{tmp}/api{k}.db",
            study_name="bench",
            seed=cfg.seed,
            device=p.device,
        )
        costs["api"].append(_per_candidate(result.study))
        print(f"round {k + 1}: CLI {costs['cli'][-1]:.4f} s, API {costs['api'][-1]:.4f} s per evaluated candidate")
    cli, api = statistics.median(costs["cli"]), statistics.median(costs["api"])
    print(
        f"{cfg.model} on {cfg.dataset}, {args.trials} candidates, {torch.get_num_threads()} threads: median "
        f"{cli:.4f} s (CLI) and {api:.4f} s (API) per evaluated candidate; API / CLI = {api / cli:.3f}; spread "
        f"of the CLI's rounds {min(costs['cli']) / cli:.3f}-{max(costs['cli']) / cli:.3f}"
    )


def _floor(p, evaluator) -> float:
    """Images per second of the forward passes alone: the uniform candidate calibrated and scored in full (BN
    folded, as trials are) on the study's own batches, best of three."""
    import math

    from fnnp_opt.evaluate import accuracy, calibrate_bn
    from fnnp_opt.latency import fold_bn

    model = p.pruner.prune(p.uniform[0]).to(p.device)
    n = sum(len(y) for _, y in evaluator.calibration) + sum(len(y) for _, y in evaluator.search)
    best = math.inf
    for _ in range(3):
        t = time.perf_counter()
        calibrate_bn(model, evaluator.calibration, p.device, amp=evaluator.amp)
        accuracy(fold_bn(model), evaluator.search, p.device, amp=evaluator.amp)
        if p.device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return n / best


if __name__ == "__main__":
    from _stamp import line

    print(line(), flush=True)  # the commit and the machine, above the figures
    main()
