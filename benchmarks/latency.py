"""Is the pruned network faster where it runs? Base vs pruned latency, its levers, and the --latency budget.

Three parts, each writing its rows to ``docs/latency/<part>.json``; ``report`` turns them into
``docs/latency.md``. Every time is a median of warm passes, the base and the pruned network timed
side by side, pass by pass (``fnnp_opt.latency.compare_ms``), so the figures are ratios from one run.

* ``speed``: the default ResNet-20 (its shipped Fashion-MNIST weights; the pruned network is the
  winner of the default 30-trial ABN search, as ``make demo`` delivers it), ResNet-56 (CIFAR, 32 px)
  and MobileNetV1 (ImageNet, 224 px) with random weights (their uniform L1 plans), at 50% and 25%
  FLOPs: batch 1 and 32, 1 and 2 threads; eager PyTorch with BatchNorm folded (NCHW and
  channels-last), unfolded (the faster layout), and onnxruntime (BN folded into the export).
* ``round``: uniform plans at 50% FLOPs with kept channels unrounded and ``--round-to auto``.
* ``budget``: on the default, the 50% FLOPs winner against a ``--latency`` study at the winner's
  measured latency, and a ``--latency 0.5x`` study: ABN accuracies, the delivered network's measured
  latency against its target, and the table's prediction against direct measurement for every
  evaluated candidate.

    python benchmarks/latency.py speed round budget      # then:
    python benchmarks/latency.py report                  # docs/latency.md

Run it on a quiet machine (nothing else busy): the timings are ratios, but two processes sharing a
core still disturb them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

OUT = Path(__file__).parents[1] / "docs" / "latency"
MODELS = {  # name: (dataset, shipped weights)
    "resnet20": "fashion-mnist",
    "resnet56": "cifar10",
    "mobilenet_v1": "imagenet",
}
MAX_RATE = {"0.5": 0.6, "0.25": 0.8}  # R: the default 0.6 where it reaches the budget (25% needs more)


def _prepared(model: str, flops: str, **flags):
    from fnnp_opt.config import resolve
    from fnnp_opt.pipeline import prepare

    cfg = resolve(model=model, dataset=MODELS[model], flops=flops, max_rate=MAX_RATE.get(flops, 0.6), **flags)
    return prepare(cfg, with_data=model == "resnet20")


def _search(p, storage: str):
    """The default search (random, 30 trials, ABN) of a prepared run; returns (study, best trial)."""
    from dataclasses import replace

    from fnnp_opt import search as S
    from fnnp_opt.pipeline import check_base, open_study, search

    p.cfg = replace(p.cfg, storage=storage)
    study = open_study(p.cfg, p, check_base(p))
    search(p.cfg, p, study)
    return study, S.best_trial(study)


def _pruned(p, storage: str):
    """The network a study delivers: the search winner on the default, else the uniform L1 plan."""
    from fnnp_opt.pipeline import trial_ratios, uniform_ratios

    if p.splits is not None:
        _, best = _search(p, storage)
        return p.pruner.prune(trial_ratios(p.space, best)), f"search winner (trial {best.number})"
    r = uniform_ratios(p)[0]
    return p.pruner.prune(p.space.uniform(r)), f"uniform L1, ratio {r:.3f}"


def _ort_ms(models, input_shape, batch: int, threads: int, folder: Path) -> list[float]:
    """onnxruntime median ms of each model (exported with fnnp_opt.export.save_onnx), round-robin."""
    import numpy as np
    import onnxruntime as ort

    from fnnp_opt.export import save_onnx

    sessions = []
    for k, m in enumerate(models):
        path = folder / f"m{k}.onnx"
        save_onnx(m, input_shape, path, check_batch=2, time_batches=())
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        sessions.append(ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]))
    x = np.random.default_rng(0).standard_normal((batch, *input_shape[1:])).astype(np.float32)
    first = time.perf_counter()
    for s in sessions:
        s.run(None, {"images": x})
    runs = max(5, min(50, int(2.0 / max(time.perf_counter() - first, 1e-9))))
    for _ in range(3):
        for s in sessions:
            s.run(None, {"images": x})
    times = [[] for _ in sessions]
    for _ in range(runs):
        for i, s in enumerate(sessions):
            t = time.perf_counter()
            s.run(None, {"images": x})
            times[i].append((time.perf_counter() - t) * 1e3)
    return [statistics.median(t) for t in times]


def _variants(base, pruned, input_shape, batch: int, threads: int, folder: Path) -> dict:
    """{variant: (base ms, pruned ms)} for the eager layouts, folded and not, and onnxruntime."""
    from fnnp_opt.latency import Setting, compare_ms, fold_bn

    eager = [fold_bn(base), fold_bn(pruned), base.eval(), pruned.eval()]
    models = eager * 2
    layouts = [False] * 4 + [True] * 4
    t = compare_ms(models, input_shape, Setting("cpu", threads, batch), layouts=layouts, runs=40)
    unfolded = min((t[2], t[3]), (t[6], t[7]), key=lambda bp: bp[0])
    out = {
        "eager NCHW": (t[0], t[1]),
        "eager channels-last": (t[4], t[5]),
        "eager, BN not folded": unfolded,
    }
    out["onnxruntime"] = tuple(_ort_ms([base, pruned], input_shape, batch, threads, folder))
    return out


def part_speed(
    models: list[str], budgets: list[str], batches: list[int], threads: list[int], n_trials: int
) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in models:
            for flops in budgets:
                p = _prepared(name, flops, n_trials=n_trials)
                pruned, what = _pruned(p, f"sqlite:///{tmp}/{name}-{flops}.db")
                from fnnp_opt.flops import count

                macs = count(pruned, p.input_shape)[0]
                for b in batches:
                    for n in threads:
                        v = _variants(p.model, pruned, p.input_shape, b, n, Path(tmp))
                        row = {
                            "model": name,
                            "flops_budget": flops,
                            "pruned": what,
                            "input": list(p.input_shape[1:]),
                            "batch": b,
                            "threads": n,
                            "macs_speedup": round(p.flops.base / macs, 3),
                            "ms": {k: [round(x, 4) for x in bp] for k, bp in v.items()},
                        }
                        rows.append(row)
                        speed = {k: round(bp[0] / bp[1], 2) for k, bp in v.items()}
                        print(name, flops, f"batch {b}", f"{n} threads", f"MACs {row['macs_speedup']}x", speed)
    return rows


def part_round(models: list[str], batches: list[int]) -> list[dict]:
    from fnnp_opt.flops import count
    from fnnp_opt.latency import Setting, compare_ms, fold_bn, vector_width
    from fnnp_opt.pipeline import uniform_ratios

    rows = []
    step = vector_width("cpu")
    for name in models:
        nets = {}
        for round_to in (1, "auto"):
            p = _prepared(name, "0.5", round_to=round_to)
            p.splits = None
            r = uniform_ratios(p)[0]
            nets[round_to] = (p.pruner.prune(p.space.uniform(r)), r)
        base = p.model
        for b in batches:
            models_ = [fold_bn(base), fold_bn(nets[1][0]), fold_bn(nets["auto"][0])]
            best = {}
            for cl in (False, True):
                best[cl] = compare_ms(models_, p.input_shape, Setting("cpu", 1, b, cl), runs=40)
            t = [min(best[False][i], best[True][i]) for i in range(3)]
            row = {
                "model": name,
                "batch": b,
                "threads": 1,
                "round_to": step,
                "macs": {k: count(n, p.input_shape)[0] for k, (n, _) in zip(("unrounded", "auto"), nets.values())},
                "ms": {"base": t[0], "unrounded": t[1], "auto": t[2]},
            }
            rows.append(row)
            print(name, f"batch {b}", f"round-to {step}", {k: round(v, 3) for k, v in row["ms"].items()}, row["macs"])
    return rows


def part_budget(n_trials: int) -> list[dict]:
    from fnnp_opt.latency import deploy_form, measure_ms

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        storage = f"sqlite:///{tmp}/budget.db"  # the latency table is cached beside it
        p = _prepared("resnet20", "0.5", n_trials=n_trials, storage=storage)
        study, best = _search(p, storage)
        winner = p.pruner.prune(_ratios(p, best))
        # the FLOPs winner's latency, in the setting of the latency studies (batch 1, this process's threads,
        # the layout --latency-layout auto picks)
        lp = _prepared("resnet20", None, latency="0.5x", n_trials=n_trials, storage=storage)
        setting = lp.latency.setting
        ratio = measure_ms(deploy_form(winner), lp.input_shape, setting) / measure_ms(
            deploy_form(lp.model), lp.input_shape, setting
        )
        rows.append(_row("FLOPs 50% winner", best, study, ratio, None, setting))
        for target in (f"{ratio:.3f}x", "0.5x"):
            lp = _prepared("resnet20", None, latency=target, n_trials=n_trials, storage=storage)
            lstudy, lbest = _search(lp, storage)
            net = lp.pruner.prune(_ratios(lp, lbest))
            measured = measure_ms(deploy_form(net), lp.input_shape, setting) / lp.latency.base_ms
            rows.append(_row(f"--latency {target} winner", lbest, lstudy, measured, lp, setting))
        print(json.dumps(rows, indent=1))
    return rows


def _ratios(p, trial):
    from fnnp_opt.pipeline import trial_ratios

    return trial_ratios(p.space, trial)


def _row(what: str, best, study, latency_ratio: float, lp, setting) -> dict:
    from fnnp_opt.search import evaluated

    row = {
        "what": what,
        "abn_accuracy": best.user_attrs["abn_accuracy"],
        "flops_ratio": best.user_attrs["flops_ratio"],
        "latency_ratio_measured": round(latency_ratio, 4),
        "setting": setting.describe(),
    }
    if lp is not None:
        trials = [t for t in evaluated(study) if "latency_measured_ms" in t.user_attrs]
        errors = [abs(t.user_attrs["latency_ms"] / t.user_attrs["latency_measured_ms"] - 1) for t in trials]
        row |= {
            "target_ratio": lp.budget.target / lp.budget.base,
            "window_ratio": [lp.budget.low / lp.budget.base, lp.budget.high / lp.budget.base],
            "candidates_timed": len(trials),
            "prediction_error_median": round(statistics.median(errors), 4),
            "prediction_error_p90": round(sorted(errors)[int(0.9 * (len(errors) - 1))], 4),
            "fit": lp.latency.fit,
        }
    return row


def report() -> None:
    lines = ["# Latency: is the pruned network faster where it runs?", ""]
    lines += [
        "Written by `python benchmarks/latency.py report` from the rows of `python benchmarks/latency.py speed "
        "round budget` (in `docs/latency/`), run alone on this project's 2-core CPU machine. Times are medians "
        "of warm passes, the base and the pruned network timed side by side, pass by pass, in one run; a "
        "speed-up is base time / pruned time, both in the same form (a column). *Eager* is PyTorch with each "
        "BatchNorm folded into its conv (what `fnnp-opt run` reports and `--latency` budgets), in NCHW or "
        "channels-last; *not folded* is the trained module as is, in its faster layout; *onnxruntime* runs "
        "the export of `--onnx` (BN folded) on the same threads.",
        "",
    ]
    speed = _load("speed")
    if speed:
        lines += ["## Speed-up of the pruned network", ""]
        variants = list(speed[0]["ms"])
        lines += ["| model | FLOPs | pruned | batch | threads | MACs | " + " | ".join(variants) + " |"]
        lines += ["|---" * (6 + len(variants)) + "|"]
        for r in speed:
            cells = [f"{bp[0] / bp[1]:.2f}x ({bp[0]:.3g} → {bp[1]:.3g} ms)" for bp in r["ms"].values()]
            lines.append(
                f"| {r['model']} {'x'.join(map(str, r['input']))} | {float(r['flops_budget']):.0%} | {r['pruned']} "
                f"| {r['batch']} | {r['threads']} | {r['macs_speedup']:.2f}x | " + " | ".join(cells) + " |"
            )
        lines.append("")
    rounded = _load("round")
    if rounded:
        lines += ["## Kept channels rounded to the vector width (`--round-to auto`) at 50% FLOPs, 1 thread", ""]
        lines += ["| model | batch | step | MACs unrounded | MACs rounded | base ms | unrounded ms | rounded ms |"]
        lines += ["|---" * 8 + "|"]
        for r in rounded:
            m, t = r["macs"], r["ms"]
            lines.append(
                f"| {r['model']} | {r['batch']} | {r['round_to']} | {m['unrounded']:,} | {m['auto']:,} | "
                f"{t['base']:.3g} | {t['unrounded']:.3g} | {t['auto']:.3g} |"
            )
        lines.append("")
    budget = _load("budget")
    if budget:
        lines += ["## A latency budget against a FLOPs budget (default ResNet-20, batch 1, 1 thread)", ""]
        lines += ["| winner | ABN accuracy | FLOPs kept | latency (measured, of base) | target | prediction error |"]
        lines += ["|---" * 6 + "|"]
        for r in budget:
            target = f"{r['target_ratio']:.3f}x" if "target_ratio" in r else ""
            err = (
                f"median {r['prediction_error_median']:.1%}, p90 {r['prediction_error_p90']:.1%} over "
                f"{r['candidates_timed']}"
                if "prediction_error_median" in r
                else ""
            )
            lines.append(
                f"| {r['what']} | {r['abn_accuracy']:.4f} | {r['flops_ratio']:.1%} | "
                f"{r['latency_ratio_measured']:.3f}x | {target} | {err} |"
            )
        lines.append("")
    path = OUT.parent / "latency.md"
    path.write_text("\n".join(lines) + "\n")
    print(f"wrote {path}")


def _load(part: str) -> list[dict]:
    path = OUT / f"{part}.json"
    return json.loads(path.read_text()) if path.is_file() else []


def main() -> None:
    global OUT
    import sys

    import optuna

    sys.stdout.reconfigure(line_buffering=True)  # progress lines appear in a log as they come
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("parts", nargs="+", choices=("speed", "round", "budget", "report"))
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated, of " + ", ".join(MODELS))
    ap.add_argument("--flops", default="0.5,0.25", help="FLOPs budgets of the speed part")
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--n-trials", type=int, default=30, help="trials of each study (30: the default run's)")
    ap.add_argument("--out", type=Path, default=OUT, help="folder of the rows; the report goes beside it")
    args = ap.parse_args()
    OUT = args.out
    ints = lambda s: [int(x) for x in s.split(",")]  # noqa: E731
    models = args.models.split(",")
    OUT.mkdir(parents=True, exist_ok=True)
    for part in args.parts:
        if part == "speed":
            rows = part_speed(models, args.flops.split(","), ints(args.batches), ints(args.threads), args.n_trials)
        elif part == "round":
            rows = part_round(models, ints(args.batches))
        elif part == "budget":
            rows = part_budget(args.n_trials)
        else:
            report()
            continue
        (OUT / f"{part}.json").write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
