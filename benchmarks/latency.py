"""Is the pruned network faster where it runs? Base vs pruned latency, its levers, and the --latency budget.

Three parts, each writing its rows to ``docs/latency/<part>.json``; ``report`` turns them into
``docs/latency.md``. Every time is a median of warm passes, the base and the pruned network timed
side by side, in turns of 5 passes (``fnnp_opt.latency.compare_ms``), so the figures are ratios from one run.

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
from pathlib import Path

from _stamp import provenance, stamp

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

    flags.setdefault("max_rate", MAX_RATE.get(flops, 0.6))
    flags.setdefault("abn_batches", 100)  # the scoring the documented figures were measured with
    flags.setdefault("early_stop", False)
    cfg = resolve(model=model, dataset=MODELS[model], flops=flops, **flags)
    return prepare(cfg, with_data=model == "resnet20")


def _search(p, storage: str):
    """The default search (random, 30 trials, ABN) of a prepared run; returns (study, best trial)."""
    from dataclasses import replace

    from fnnp_opt import optimize as S
    from fnnp_opt import storage as St
    from fnnp_opt.pipeline import check_base, open_study, search

    p.cfg = replace(p.cfg, storage=storage)
    base_accuracy = check_base(p)
    study = open_study(p.cfg, p, St.open_storage(storage), base_accuracy)  # left open: the caller reads the study
    search(p.cfg, p, study)
    return study, S.best_trial(study)


def _pruned(p, storage: str):
    """The network a study delivers: the search winner on the default, else the uniform L1 plan."""
    from fnnp_opt.pipeline import trial_ratios

    if p.splits is not None:
        _, best = _search(p, storage)
        return p.pruner.prune(trial_ratios(p.space, best)), f"search winner (trial {best.number})"
    plan = p.uniform[0]
    return p.pruner.prune(plan), f"uniform L1, ratio {max(plan.values()):.3f}"


def _ort_ms(models, input_shape, batch: int, threads: int, folder: Path) -> list[float]:
    """onnxruntime median ms of each model (exported with fnnp_opt.export.save_onnx), side by side."""
    import onnxruntime as ort

    from fnnp_opt.export import save_onnx
    from fnnp_opt.latency import onnx_ms

    sessions = []
    for k, m in enumerate(models):
        path = folder / f"m{k}.onnx"
        save_onnx(m, input_shape, path, check_batch=2, time_batches=())
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        sessions.append(ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]))
    return onnx_ms(sessions, input_shape, batch)


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


def part_round(models: list[str], batches: list[int], plans: int = 4) -> list[dict]:
    """Random draws moved into the 50% window (``--fit-budget``'s projection), with kept channels unrounded
    and rounded to the vector width: the median speed-up of ``plans`` of each, in the faster layout."""
    import numpy as np

    from fnnp_opt.constraints import fit_to_budget
    from fnnp_opt.flops import count
    from fnnp_opt.latency import Setting, compare_ms, fold_bn, vector_width

    rows = []
    step = vector_width("cpu")
    for name in models:
        nets, macs = {}, {}
        for round_to in (1, "auto"):
            p = _prepared(name, "0.5", round_to=round_to, max_rate=0.8)  # rounding needs room to reach 50%
            rng, got = np.random.default_rng(0), []
            cost = lambda r: p.flops.macs(p.pruner.counts(r))  # noqa: E731
            while len(got) < plans:
                draw = {d.root: float(x) for d, x in zip(p.space.dims, rng.uniform(0, 0.8, len(p.space)))}
                draw, _ = fit_to_budget(draw, cost, p.budget, 0.8)
                if p.budget.contains(cost(draw)):
                    got.append(fold_bn(p.pruner.prune(draw)))
            nets[round_to] = got
            macs[round_to] = [count(n, p.input_shape)[0] / p.flops.base for n in got]
        base = fold_bn(p.model)
        for b in batches:
            models_ = [base, *nets[1], *nets["auto"]]
            t = [
                min(pair)
                for pair in zip(
                    *(compare_ms(models_, p.input_shape, Setting("cpu", 1, b, cl), runs=30) for cl in (False, True))
                )
            ]
            speed = {
                "unrounded": statistics.median(t[0] / x for x in t[1 : 1 + plans]),
                "auto": statistics.median(t[0] / x for x in t[1 + plans :]),
            }
            row = {
                "model": name,
                "batch": b,
                "threads": 1,
                "round_to": step,
                "plans": plans,
                "flops_kept": {"unrounded": macs[1], "auto": macs["auto"]},
                "base_ms": t[0],
                "speedup_median": speed,
            }
            rows.append(row)
            print(name, f"batch {b}", f"round-to {step}", {k: round(v, 2) for k, v in speed.items()})
    return rows


def part_budget(n_trials: int) -> list[dict]:
    from fnnp_opt.errors import BudgetError

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        storage = f"sqlite:///{tmp}/budget.db"  # the latency table is cached beside it
        timing = {"latency_threads": 1, "n_trials": n_trials, "storage": storage}  # batch 1, 1 thread, layout auto
        p = _prepared("resnet20", "0.5", n_trials=n_trials, storage=storage)
        study, best = _search(p, storage)
        winner = p.pruner.prune(_ratios(p, best))
        lp = _prepared("resnet20", None, latency="0.5x", **timing)  # the FLOPs winner timed in the same setting
        setting = lp.latency.setting

        def side_by_side(net) -> float:  # latency of ``net`` as a fraction of the base's, as the run reports it
            return lp.latency.measure(net, runs=100)[1]

        ratio = side_by_side(winner)
        rows.append(_row("FLOPs 50% winner (R 0.6)", best, study, ratio, None, setting))
        for target, flags in (
            (f"{ratio:.3f}x", {}),  # the FLOPs winner's speed, searched for directly
            ("0.5x", {"max_rate": 0.8}),
            ("0.5x", {"max_rate": 0.8, "round_to": "auto"}),
        ):
            label = f"--latency {target}" + "".join(f" --{k.replace('_', '-')} {v}" for k, v in flags.items())
            try:
                lp = _prepared("resnet20", None, latency=target, **timing, **flags)
            except BudgetError as exc:  # a refusal is a result too
                rows.append({"what": label, "refused": str(exc)})
                print(json.dumps(rows[-1]))
                continue
            lstudy, lbest = _search(lp, storage)
            net = lp.pruner.prune(_ratios(lp, lbest))
            rows.append(_row(label, lbest, lstudy, side_by_side(net), lp, setting))
            print(json.dumps(rows[-1]))
    return rows


def _ratios(p, trial):
    from fnnp_opt.pipeline import trial_ratios

    return trial_ratios(p.space, trial)


def _row(what: str, best, study, latency_ratio: float, lp, setting) -> dict:

    row = {
        "what": what,
        "abn_accuracy": best.user_attrs["abn_accuracy"],
        "flops_ratio": best.user_attrs["flops_ratio"],
        "latency_ratio_measured": round(latency_ratio, 4),  # side by side with the base, after the search
        "setting": setting.describe(),
    }
    if "latency_ms" in best.user_attrs:  # the winner's own trial: predicted and timed during the search
        row["trial_predicted_ratio"] = round(best.user_attrs["latency_ms"] / lp.latency.base_ms, 4)
        row["trial_measured_ratio"] = round(best.user_attrs["latency_measured_ms"] / lp.latency.base_ms, 4)
    if lp is not None:
        trials = [t for t in study.get_trials(deepcopy=False) if "latency_measured_ms" in t.user_attrs]
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
        "round budget` (in `docs/latency/`), run with nothing else busy on the machine. Times are medians "
        "of warm passes, the base and the pruned network timed side by side (turns of 5 passes) in one run; a "
        "speed-up is base time / pruned time, both in the same form (a column). *Eager* is PyTorch with each "
        "BatchNorm folded into its conv (what `fnnp-opt run` reports and `--latency` budgets), in NCHW or "
        "channels-last; *not folded* is the trained module as is, in its faster layout; *onnxruntime* runs "
        "the export of `--onnx` (BN folded) on the same threads. A part can be rerun for some models alone "
        "(`--models`); *Measured* under each part gives the commit and the machine of its rows.",
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
        lines += ["", *provenance(speed, OUT / "speed.json"), ""]
    rounded = _load("round")
    if rounded:
        lines += [
            "## Kept channels rounded to the vector width (`--round-to auto`), 50% FLOPs, 1 thread",
            "",
            f"Median speed-up over {rounded[0]['plans']} random draws moved into the window, each network in its "
            "faster layout, BN folded.",
            "",
            "| model | batch | step | FLOPs kept (unrounded / rounded) | base ms | unrounded | rounded |",
        ]
        lines += ["|---" * 7 + "|"]
        for r in rounded:
            kept, sp = r["flops_kept"], r["speedup_median"]
            lines.append(
                f"| {r['model']} | {r['batch']} | {r['round_to']} | {statistics.mean(kept['unrounded']):.1%} / "
                f"{statistics.mean(kept['auto']):.1%} | {r['base_ms']:.3g} | {sp['unrounded']:.2f}x | "
                f"{sp['auto']:.2f}x |"
            )
        lines += ["", *provenance(rounded, OUT / "round.json"), ""]
    budget = _load("budget")
    if budget:
        lines += ["## A latency budget against a FLOPs budget (default ResNet-20, batch 1, 1 thread)", ""]
        lines += [
            "Latency here is what `--latency` budgets: the 10th percentile of warm passes (clear of a busy "
            "machine's stolen time-slices), each network timed side by side with the base, as a fraction of the "
            "base's. A candidate the table predicts inside the window but that measures outside it is rejected "
            "before it is scored.",
            "",
        ]
        lines += ["| winner | ABN accuracy | FLOPs kept | latency (measured, of base) | target | prediction error |"]
        lines += ["|---" * 6 + "|"]
        for r in budget:
            if "refused" in r:
                lines.append(f"| {r['what']} | refused: {r['refused']} | | | | |")
                continue
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
        lines += ["", *provenance(budget, OUT / "budget.json"), ""]
    path = OUT.parent / "latency.md"
    path.write_text("\n".join(lines) + "\n")
    print(f"wrote {path}")


def _load(part: str) -> list[dict]:
    """A part's rows, the models in MODELS' order (a rerun of one model appends its rows)."""
    path = OUT / f"{part}.json"
    rows = json.loads(path.read_text()) if path.is_file() else []
    order = list(MODELS)
    return sorted(rows, key=lambda r: order.index(r["model"]) if r.get("model") in order else -1)


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
        rows = [{**r, "stamp": stamp()} for r in rows]
        if part in ("speed", "round"):  # a rerun of some models keeps the other models' rows
            rows = [r for r in _load(part) if r["model"] not in models] + rows
        (OUT / f"{part}.json").write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
