"""Which sampler finds the best candidate with the fewest ABN evaluations? (the default Fashion-MNIST setup)

Each configuration (sampler, constraint mode, --fit-budget) runs a study of a fixed
number of ABN evaluations per seed, on the real default: the shipped ResNet-20, the
5,000-image search split, 100 calibration batches, the 50% +- 2% FLOPs window. Like
`fnnp-opt run`, every study evaluates the uniform L1 strategy first. For each study it
records the best ABN accuracy and when it was reached, the share of draws outside the
window, and the sampler's own time per trial (ask + tell, in memory). The winner of
each study, and the uniform baseline, then get the same short fine-tune (1 epoch on
the first 16,384 training images) and are measured on the test set.

    python benchmarks/samplers.py run --threads 1 --shard 0/2 &  # resumable; two shards at once
    python benchmarks/samplers.py run --threads 1 --shard 1/2
    python benchmarks/samplers.py report                                 # docs/samplers.md + .png
"""

from __future__ import annotations

import argparse
import fcntl
import json
import statistics
import time
from pathlib import Path

from _stamp import provenance, stamp

OUT = Path(__file__).parents[1] / "docs" / "samplers"
# (sampler, constraint mode, fit-budget)
CONFIGS = [
    ("random", "reject", False),
    ("random", "reject", True),
    ("qmc", "reject", False),
    ("tpe", "reject", False),
    ("tpe", "reject", True),
    ("cmaes", "penalize", False),
    ("cmaes", "reject", True),
    ("gp", "constrain", False),
    ("gp", "constrain", True),
]
FINETUNE_IMAGES = 16_384


def label(sampler: str, mode: str, fit: bool) -> str:
    return f"{sampler} + {'fit-budget' if fit else mode}"


def _append(path: Path, row: dict) -> None:
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        fh.write(json.dumps({**row, "stamp": stamp()}) + "\n")


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


_PREPARED: dict = {}


def _prepare(seed: int):
    from fnnp_opt.config import resolve
    from fnnp_opt.pipeline import prepare

    if seed not in _PREPARED:
        _PREPARED[seed] = prepare(resolve(device="cpu", seed=seed, abn_batches=100))  # the paper's, as measured
    return _PREPARED[seed]


def _short_finetune(p, ratios: dict, seed: int) -> float:
    """The same short recipe for every winner; returns test accuracy."""
    from fnnp_opt.data import TensorSet
    from fnnp_opt.evaluate import accuracy, calibrate_bn
    from fnnp_opt.training import FitConfig, fit

    model = p.pruner.prune(ratios)
    calibrate_bn(model, p.splits.calibration, "cpu")
    train = TensorSet(p.splits.train.x[:FINETUNE_IMAGES], p.splits.train.y[:FINETUNE_IMAGES])
    fit(model, train, FitConfig(epochs=1, lr=0.02, batch_size=128, seed=seed), augment=p.splits.augment)
    return accuracy(model, p.splits.test_batches(256), "cpu")


class _TimedSpace:
    """The search space, timing each suggest (where Optuna's samplers do their work)."""

    def __init__(self, space) -> None:
        self.space, self.seconds = space, []

    def suggest(self, trial):
        t0 = time.perf_counter()
        try:
            return self.space.suggest(trial)
        finally:
            self.seconds.append(time.perf_counter() - t0)

    def __getattr__(self, name):
        return getattr(self.space, name)


def run_one(task: tuple) -> dict:
    """One study: (sampler, mode, fit, seed, evals) -> its row."""
    import optuna
    import torch

    from _clock import TrialClock

    from fnnp_opt import optimize as S
    from fnnp_opt import storage as St
    from fnnp_opt.config import Constraint, Sampler
    from fnnp_opt.pipeline import trial_ratios

    sampler, mode, fit_budget, seed, evals, threads = task
    torch.set_num_threads(threads)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    p = _prepare(seed)
    study = optuna.create_study(direction="maximize")  # in memory: ask + tell time is the sampler's own
    S.enqueue_strategies(study, p.space, p.uniform, "uniform")
    start = p.problem.sampler_start(Sampler(sampler))  # CMA-ES starts from uniform L1, as in `fnnp-opt run`
    study.sampler = S.make_sampler(Sampler(sampler), S.session_seed(seed, 0), start=start)
    space = _TimedSpace(p.space)
    evaluator = S.Evaluator(
        p.pruner,
        space,
        p.budget,
        p.flops,
        p.splits.calibration,
        p.splits.search_batches(128),
        mode=Constraint(mode),
        fit_budget=fit_budget,
        slots=St.Slots(study, evals),
    )
    clock = TrialClock(evaluator)
    t0 = time.perf_counter()
    study.optimize(clock, callbacks=[clock.tick, lambda s, t: len(S.evaluated(s)) >= evals and s.stop()])
    search_s = time.perf_counter() - t0
    trials = study.get_trials(deepcopy=False)
    scored = S.evaluated(study)
    best = S.best_trial(study)
    overhead = [clock.outside(t.number) for t in trials if t.number in clock.walls]
    uniform = trials[0]
    row = {
        "sampler": sampler,
        "mode": mode,
        "fit_budget": fit_budget,
        "seed": seed,
        "evals": evals,
        "abn": [t.value for t in scored],  # in evaluation order
        "flops": [t.user_attrs["flops"] for t in scored],
        "draws": len(trials),
        "infeasible": sum(1 for t in trials if t.user_attrs.get("feasible") is False),
        "overhead_ms": 1000 * statistics.median(overhead),  # ask + tell, outside the objective
        "sampler_ms": 1000 * statistics.median(a + b for a, b in zip(space.seconds, overhead)),
        "search_s": search_s,
        "best_trial": best.number,
        "best_abn": best.value,
        "best_ratios": p.space.named(trial_ratios(p.space, best)),
        "uniform_abn": uniform.value,
    }
    row["best_test"] = _short_finetune(p, trial_ratios(p.space, best), seed)
    return row


def _uniform_test(seed: int, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    p = _prepare(seed)
    plan = p.uniform[0]
    return {"uniform": True, "seed": seed, "ratio": max(plan.values()), "test": _short_finetune(p, plan, seed)}


def _task(args):
    if args[0] == "uniform":
        return _uniform_test(*args[1:])
    return run_one(args)


def cmd_run(args) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.jsonl"
    done = {(r.get("sampler"), r.get("mode"), r.get("fit_budget"), r["seed"]) for r in _rows(results)}
    done_uniform = {r["seed"] for r in _rows(results) if r.get("uniform")}
    tasks = [("uniform", s, args.threads) for s in args.seeds if s not in done_uniform]
    tasks += [
        (s_, m, f, seed, args.evals, args.threads)
        for seed in args.seeds  # seed by seed, so a partial run is balanced across configurations
        for s_, m, f in CONFIGS
        if (s_, m, f, seed) not in done and (not args.only or args.only in label(s_, m, f))
    ]
    k, n = map(int, args.shard.split("/"))
    tasks = tasks[k::n]
    print(f"{len(tasks)} tasks in shard {args.shard}, {args.threads} thread(s)", flush=True)
    for task in tasks:
        row = _task(task)
        _append(results, row)
        what = "uniform" if row.get("uniform") else label(row["sampler"], row["mode"], row["fit_budget"])
        print(f"{what} seed {row['seed']}: " + json.dumps({k: row[k] for k in row if k.endswith("test")}), flush=True)


def _reach(abn: list[float], target: float) -> int | None:
    """Evaluations needed to reach ``target`` (None: never)."""
    best = -1.0
    for i, v in enumerate(abn, 1):
        best = max(best, v)
        if best >= target - 1e-12:
            return i
    return None


def _sampler_ms(rows: list[dict]) -> str:
    """Median time per draw in ask + suggest + tell (rows from before it was recorded are left out)."""
    timed = [r["sampler_ms"] for r in rows if "sampler_ms" in r]
    return f"{statistics.median(timed):.1f}" if timed else "n/a"


def cmd_report(args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    out = Path(args.out)
    rows = _rows(out / "results.jsonl")
    uniform = {r["seed"]: r["test"] for r in rows if r.get("uniform")}
    studies = [r for r in rows if not r.get("uniform")]
    seeds = sorted({r["seed"] for r in studies})
    evals = min(r["evals"] for r in studies)
    random_best = {r["seed"]: r["best_abn"] for r in studies if r["sampler"] == "random" and not r["fit_budget"]}
    target = statistics.mean(random_best.values()) if random_best else float("nan")
    lines = [
        "# Samplers on the default setup",
        "",
        f"ResNet-20 on Fashion-MNIST, FLOPs window 50% +- 2%, {evals} ABN evaluations per study, seeds {seeds}.",
        "Made by `python benchmarks/samplers.py run --threads 1 --shard K/2` for K = 0, 1 at once, then "
        "`python benchmarks/samplers.py report` (see the docstring of benchmarks/samplers.py for the protocol).",
        "",
        "| configuration | best ABN acc (mean ± sd) | evaluations to its best | evaluations to random's mean best "
        f"({target:.4f}) | draws outside window | sampler ms per draw | winner test acc (short FT) |",
        "|---|---|---|---|---|---|---|",
    ]
    curves = {}
    for s_, m, f in CONFIGS:
        rs = [r for r in studies if (r["sampler"], r["mode"], r["fit_budget"]) == (s_, m, f)]
        if not rs:
            continue
        best = [r["best_abn"] for r in rs]
        at = [_reach(r["abn"], r["best_abn"]) for r in rs]
        reach = [_reach(r["abn"], target) for r in rs]
        reach_txt = ", ".join("never" if x is None else str(x) for x in reach)
        outside = sum(r["infeasible"] for r in rs) / sum(r["draws"] for r in rs)
        test = [r["best_test"] for r in rs]
        sd = statistics.stdev(best) if len(best) > 1 else 0.0
        tsd = statistics.stdev(test) if len(test) > 1 else 0.0
        lines.append(
            f"| {label(s_, m, f)} | {statistics.mean(best):.4f} ± {sd:.4f} | {statistics.mean(at):.0f} | "
            f"{reach_txt} | {outside:.0%} | {_sampler_ms(rs)} | "
            f"{statistics.mean(test):.4f} ± {tsd:.4f} |"
        )
        curves[label(s_, m, f)] = np.mean([np.maximum.accumulate(r["abn"][:evals]) for r in rs], axis=0)
    lines += [
        "",
        "Sampler ms per draw: the median, over every draw, of ask + suggest + tell in memory (the sampler's own "
        "work); the studies run before this was recorded (6 of seed 0) are left out of that median. Evaluations "
        "to a value: the count of ABN evaluations, the uniform baseline (the first) included; `never` means not "
        "within the study.",
    ]
    if uniform:
        u = list(uniform.values())
        lines += [
            "",
            f"Uniform L1 baseline (the same ratio everywhere, evaluated first in every study): ABN "
            f"{statistics.mean(r['uniform_abn'] for r in studies):.4f}; after the same short fine-tune, test "
            f"{statistics.mean(u):.4f} ± {statistics.stdev(u) if len(u) > 1 else 0:.4f} (seeds {sorted(uniform)}).",
        ]
    lines += ["", *provenance(rows, out / "results.jsonl")]
    (out.parent / "samplers.md").write_text("\n".join(lines) + "\n")
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for name, curve in curves.items():
        ax.plot(np.arange(1, len(curve) + 1), curve, label=name, ls="--" if "fit" in name else "-")
    ax.axhline(target, c="0.5", lw=0.8, ls=":", label="random's mean best")
    ax.set_xlabel("ABN evaluations")
    ax.set_ylabel("best ABN accuracy so far (mean over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="lower right")
    fig.tight_layout()
    fig.savefig(out.parent / "samplers.png")
    print("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run the studies (skips those already in results.jsonl)")
    r.add_argument("--evals", type=int, default=40)
    r.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    r.add_argument("--threads", type=int, default=2, help="torch threads")
    r.add_argument("--shard", default="0/1", help="K/N: run every N-th task from the K-th (run N at once)")
    r.add_argument("--out", default=str(OUT))
    r.add_argument("--only", default=None, help="run only the configurations whose label contains this")
    rep = sub.add_parser("report", help="write docs/samplers.md and docs/samplers.png from the results")
    rep.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    cmd_run(args) if args.cmd == "run" else cmd_report(args)


if __name__ == "__main__":
    main()
