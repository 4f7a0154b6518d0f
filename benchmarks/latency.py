"""Is the pruned network faster where it runs? Base vs pruned latency, its levers, and the --latency budget.

Four parts, each writing its rows to ``docs/latency/<part>.json``; ``report`` turns them into
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
* ``imagenet``: torchvision's ResNet-18, ResNet-50 and MobileNetV2 at 224 px (random weights), each pruned to
  50% and 25% of its MACs by uniform L1 (unrounded, ``--round-to 8`` and ``16``), Torch-Pruning's global ranking
  (where ``fnnp_opt.baselines`` provides it) and ``--latency`` studies: every network of a model timed side by
  side at batch 1 and 32, 1 and 2 threads, in eager NCHW and channels-last (BN folded), unfolded, and
  onnxruntime. The networks, their ONNX files and studies are kept in ``--work``, and each row is written as it
  is timed: a stopped run resumes where it stopped (``--again`` times chosen rows again).

    python benchmarks/latency.py speed round budget      # then:
    python benchmarks/latency.py imagenet                # about an hour on 2 cores
    python benchmarks/latency.py report                  # docs/latency.md

Run it on a quiet machine (nothing else busy): the timings are ratios, but two processes sharing a
core still disturb them.
"""

from __future__ import annotations

import argparse
import json
import logging
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


# --------------------------------------------------------------------------- ImageNet-size networks

IMAGENET = ("resnet18", "resnet50", "mobilenet_v2")  # torchvision builders: random weights, 224 px, 1000 classes
SHARES = ("0.5", "0.25")  # the MACs the pruned networks keep
ROUNDINGS = (1, 8, 16)  # --round-to of the uniform L1 plans; auto is the one equal to the CPU's vector width
FORMS = ("eager NCHW", "eager channels-last", "eager, BN not folded", "onnxruntime")
WORK = Path(tempfile.gettempdir()) / "fnnp-latency-imagenet"  # networks, ONNX files, studies: a rerun resumes


def _label(share: str, what: str) -> str:
    return f"{float(share):.0%} {what}"


def _rounding(step: int) -> str:
    from fnnp_opt.latency import vector_width

    if step == 1:
        return "uniform L1"
    return f"uniform L1, round {step}" + (" (auto, the default)" if step == vector_width("cpu") else "")


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in label).strip("-")


class Nets:
    """The base and the pruned networks of one model, each exported (``save_pruned``) to ``work/<model>/<label>``
    and listed in ``nets.json`` with how it was made: a rerun reads back what is there and makes the rest."""

    def __init__(self, model: str, work: Path) -> None:
        from _synthetic import random_checkpoint

        from fnnp_opt.models import load_model

        self.model, self.folder = model, work / model
        self.checkpoint = random_checkpoint(self.folder / "base.safetensors", model, 1000)
        self.base, _ = load_model(model, 3, 1000, self.checkpoint)
        self.index = self.folder / "nets.json"
        self.made: dict[str, dict] = json.loads(self.index.read_text()) if self.index.is_file() else {}

    def keep(self, label: str, net, **record) -> None:
        from fnnp_opt.export import save_pruned
        from fnnp_opt.flops import count

        card = {"model": self.model, "in_channels": 3, "num_classes": 1000, "input_shape": [1, 3, 224, 224]}
        save_pruned(net, self.folder / _slug(label), card)
        macs = count(net, (1, 3, 224, 224))[0] / count(self.base, (1, 3, 224, 224))[0]
        self.made[label] = {"macs_kept": round(macs, 4), **record}
        self.index.write_text(json.dumps(self.made, indent=1) + "\n")
        print(self.model, label, json.dumps(self.made[label]))

    def load(self) -> dict:
        """{label: network}, the base first."""
        from fnnp_opt.export import load_pruned

        made = [k for k, record in self.made.items() if "refused" not in record]  # a refused study made none
        return {"base": self.base.eval()} | {k: load_pruned(self.folder / _slug(k)) for k in made}


def _global_ratios(problem) -> dict[str, float] | None:
    """The global-ranking baseline's ratios at ``problem``'s budget, where ``fnnp_opt.baselines`` provides it."""
    try:
        from fnnp_opt import baselines
    except ImportError:
        return None
    if hasattr(baselines, "global_ratios"):
        return baselines.global_ratios(problem)
    return baselines.GlobalRanking(problem).allocation(problem.budget.target).ratios


def make_nets(nets: Nets, data: Path, n_trials: int) -> None:
    """Uniform L1 plans at each of :data:`SHARES` of the MACs, unrounded and rounded (:data:`ROUNDINGS`), the
    global-ranking baseline and the winners of ``--latency <share>x`` studies (batch 1, 1 thread), both with the
    default rounding of these wide networks (the CPU's vector width)."""
    import torch

    from fnnp_opt.flops import make_budget
    from fnnp_opt.latency import vector_width
    from fnnp_opt.problem import FLOPS_TOLERANCE, Problem

    default = vector_width("cpu")  # these networks are wide: the default --round-to rounds them to it
    for step in ROUNDINGS:
        ranked = f"global ranking, round {step}"
        labels = [_label(s, _rounding(step)) for s in SHARES] + [_label(s, ranked) for s in SHARES]
        if all(k in nets.made for k in labels[: None if step == default else 2]):
            continue
        problem = Problem(nets.base, torch.zeros(1, 3, 224, 224), max_rate=0.8, round_to=step)
        for share in SHARES:
            problem.budget = make_budget(share, FLOPS_TOLERANCE, problem.flops.base)
            label = _label(share, _rounding(step))
            if label not in nets.made:
                (plan, *_), _ = problem.uniform_strategies()
                nets.keep(label, problem.pruner.prune(plan), ratio=round(max(plan.values()), 4))
            label = _label(share, ranked)
            if step == default and label not in nets.made:
                ratios = _global_ratios(problem)
                if ratios is not None:
                    nets.keep(label, problem.pruner.prune(ratios))
    for share in SHARES:
        label = _label(share, f"--latency {float(share)}x")
        if label not in nets.made:
            _latency_search(nets, label, f"{float(share)}x", MAX_RATE[share], data, n_trials)


def _latency_search(nets: Nets, label: str, target: str, max_rate: float, data: Path, n_trials: int) -> None:
    """A ``--latency`` study of the base on the synthetic ImageFolder ``data`` (the scores mean nothing on random
    weights; the timing is real), its winner kept with the table's record: target, measurement, prediction error."""
    from fnnp_opt.config import resolve
    from fnnp_opt.errors import BudgetError
    from fnnp_opt.pipeline import prepare

    storage = f"sqlite:///{nets.folder}/search.db"  # the latency table is cached beside it, for both targets
    cfg = resolve(
        model=nets.model,
        dataset="imagenet",
        data_dir=str(data),
        checkpoint=str(nets.checkpoint),
        latency=target,
        latency_threads=1,
        max_rate=max_rate,
        n_trials=n_trials,
        abn_batches=2,
        abn_batch_size=16,
        search_size=64,
        check_base=False,
        workers=1,
        rerank=0,  # the winner's speed is the point; no re-scoring after the search
        storage=storage,
    )
    try:
        p = prepare(cfg)
    except BudgetError as exc:  # a refusal is a result too
        nets.made[label] = {"refused": str(exc)}
        nets.index.write_text(json.dumps(nets.made, indent=1) + "\n")
        return
    study, best = _search(p, storage)
    row = _row(
        f"--latency {target}",
        best,
        study,
        p.latency.measure(p.pruner.prune(_ratios(p, best)), 100)[1],
        p,
        p.latency.setting,
    )
    row.pop("abn_accuracy")  # of random weights on noise
    nets.keep(label, p.pruner.prune(_ratios(p, best)), search=row | {"trial": best.number, "trials": n_trials})


def _described(command: str) -> str:
    """A busy process's command, with pytest-xdist's workers (``python -u -c import ...``) named."""
    return "a pytest-xdist worker" if command.startswith("python -u -c import") else command


def _busy() -> list[str]:
    """The other processes that use over a quarter of a core now: what shares the machine with the timings."""
    import os
    import subprocess

    out = subprocess.run(["ps", "-eo", "pid,pcpu,args", "--no-headers"], capture_output=True, text=True).stdout
    busy = []
    for line in out.splitlines():
        pid, cpu, args = line.split(None, 2)
        if int(pid) != os.getpid() and float(cpu) > 25:
            busy.append(_described(" ".join(a.rsplit("/", 1)[-1] if "/" in a else a for a in args.split()[:4])[:80]))
    return busy


def _ort_sessions(nets: Nets, models: dict, threads: int) -> list:
    """onnxruntime sessions of ``models`` on ``threads`` threads, from their ``--onnx`` exports (made once)."""
    import onnxruntime as ort

    from fnnp_opt.export import save_onnx

    sessions = []
    for label, model in models.items():
        path = (nets.folder / "base.onnx") if label == "base" else nets.folder / _slug(label) / "pruned.onnx"
        if not path.is_file():
            save_onnx(model, (1, 3, 224, 224), path, check_batch=2, time_batches=())
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        sessions.append(ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]))
    return sessions


def time_nets(nets: Nets, batch: int, threads: int, form: str, runs: int, budget_s: float, rows: list[dict]) -> dict:
    """One row: every network of ``nets`` in ``form`` at ``batch`` and ``threads``, side by side."""
    import os
    import time

    from fnnp_opt.latency import Setting, compare_ms, fold_bn, onnx_ms

    models = nets.load()
    load, busy, t = os.getloadavg()[0], _busy(), time.perf_counter()
    if form == "onnxruntime":
        sessions = _ort_sessions(nets, models, threads)
        ms = onnx_ms(sessions, (1, 3, 224, 224), batch, runs=runs, budget_s=budget_s)
    else:
        cl = form == "eager channels-last"
        if form == "eager, BN not folded":  # in the layout the folded base is faster in, at this cell
            cell = {
                r["form"]: r["ms"]["base"]
                for r in rows
                if (r["model"], r["batch"], r["threads"]) == (nets.model, batch, threads)
            }
            cl = cell.get("eager channels-last", 0) < cell.get("eager NCHW", 0)
        else:
            models = {k: fold_bn(m) for k, m in models.items()}
        ms = compare_ms(
            list(models.values()), (1, 3, 224, 224), Setting("cpu", threads, batch, cl), runs=runs, budget_s=budget_s
        )
    row = {
        "model": nets.model,
        "batch": batch,
        "threads": threads,
        "form": form + (" (channels-last)" if form == "eager, BN not folded" and cl else ""),
        "ms": {k: round(x, 3) for k, x in zip(models, ms)},
        "seconds": round(time.perf_counter() - t, 1),
        "load": [round(load, 2), round(os.getloadavg()[0], 2)],  # 1-minute load average before and after
        "busy": busy,
        "stamp": stamp(),
    }
    base = row["ms"]["base"]
    print(
        nets.model,
        f"batch {batch}",
        f"{threads} threads",
        row["form"],
        f"base {base:.4g} ms",
        {k: round(base / v, 2) for k, v in row["ms"].items() if k != "base"},
        f"load {row['load']}",
    )
    return row


def part_imagenet(
    models: list[str],
    batches: list[int],
    threads: list[int],
    n_trials: int,
    work: Path,
    runs: int,
    budget_s: float,
    again: bool,
) -> dict:
    """The networks of each model (made, or read back from ``work``) timed at every batch, thread count and form.
    Rows already in ``imagenet.json`` are kept (``again``: timed again and replaced); each new row is written as it
    is timed, so a stopped run resumes where it stopped."""
    import sys

    from _synthetic import image_folder

    path = OUT / "imagenet.json"
    doc = json.loads(path.read_text()) if path.is_file() else {"runs": [], "nets": {}, "rows": []}
    doc["runs"].append({"command": " ".join(["python", *sys.argv]), "stamp": stamp()})
    data = image_folder(work / "data", classes=1000, train=2, val=1)
    for name in models:
        nets = Nets(name, work)
        make_nets(nets, data, n_trials)
        doc["nets"][name] = nets.made
        path.write_text(json.dumps(doc, indent=1) + "\n")
        for b in batches:
            for n in threads:
                for form in FORMS if b == 1 else [f for f in FORMS if f != "eager, BN not folded"]:  # folding's
                    key = (name, b, n, form)  # gain is the per-op overhead it saves: shown where it weighs most
                    kept = [
                        r
                        for r in doc["rows"]
                        if (r["model"], r["batch"], r["threads"], r["form"].split(" (")[0]) != key
                    ]
                    if len(kept) < len(doc["rows"]) and not again:
                        continue
                    doc["rows"] = kept + [time_nets(nets, b, n, form, runs, budget_s, kept)]
                    path.write_text(json.dumps(doc, indent=1) + "\n")
    return doc


def report() -> None:
    lines = ["# Latency: is the pruned network faster where it runs?", ""]
    lines += [
        "Written by `python benchmarks/latency.py report` from the rows of `python benchmarks/latency.py speed "
        "round budget imagenet` (in `docs/latency/`), on this project's 2-core CPU machine (AVX-512, no GPU): the "
        "first three parts with nothing else busy on it; the ImageNet-size part (last) says how busy it was. The CUDA path is unmeasured (see [the GPU check](gpu.md)). Times are medians "
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
            "before it is scored."
            + (
                " These rows predate the table's reference layer (each layer's grid timed beside one fixed conv, "
                "commit 5c07560), which can change the table's predictions and so the winner; the ResNet-50 "
                "`--latency` studies of the ImageNet-size part below were made with it."
                if not any(r.get("stamp") for r in budget)  # rows stamped since carry their commit
                else ""
            ),
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
    lines += _report_imagenet()
    path = OUT.parent / "latency.md"
    path.write_text("\n".join(lines) + "\n")
    print(f"wrote {path}")


SHORT = {"eager NCHW": "NCHW", "eager channels-last": "channels-last", "eager, BN not folded": "BN not folded",
         "onnxruntime": "onnxruntime"}  # fmt: skip


DEPLOY = ("eager NCHW", "eager channels-last", "onnxruntime")  # BN folded: what fnnp-opt times and exports


def _cells(doc: dict, model: str) -> dict[tuple[int, int], dict[str, dict[str, float]]]:
    """{(batch, threads): {form: {network: ms}}} of ``model``."""
    cells: dict = {}
    for r in doc["rows"]:
        if r["model"] == model:
            cells.setdefault((r["batch"], r["threads"]), {})[r["form"].split(" (")[0]] = r["ms"]
    return dict(sorted(cells.items()))


def _best(forms: dict[str, dict[str, float]], net: str) -> tuple[float, str]:
    """``net``'s speed-up as deployed: the base's fastest deploy form against ``net``'s fastest (named); the deploy
    forms are BN folded (eager in either layout, or onnxruntime)."""
    deploy = {f: ms for f, ms in forms.items() if f in DEPLOY}
    form = min(deploy, key=lambda f: deploy[f][net])
    return min(ms["base"] for ms in deploy.values()) / deploy[form][net], SHORT[form]


def _threads_evidence(doc: dict) -> tuple[int, list[str]]:
    """The base's time as deployed on 1 and on 2 threads, per model and batch, where both were timed; and in how
    many of them 2 threads were slower."""
    out, slower = [], 0
    for model in doc["nets"]:
        cells = _cells(doc, model)
        for (b, t), forms in cells.items():
            if t == 2 and (b, 1) in cells:
                one, two = (min(cells[(b, n)][f]["base"] for f in DEPLOY if f in cells[(b, n)]) for n in (1, 2))
                out.append(f"{model} at batch {b}: {one:.4g} ms on 1 thread, {two:.4g} ms on 2")
                slower += two > one
    return slower, out


def _goals(doc: dict) -> list[str]:
    """The goals of a 50%-MACs ResNet-50 and of the default rounding, from the rows: met or missed, with figures."""
    lines = [
        "### The goals",
        "",
        "Judged on one thread, the setting `--latency` budgets by default (the 2-thread cells are in *Every form*).",
        "",
    ]
    cells, made = _cells(doc, "resnet50"), doc["nets"].get("resnet50", {})
    half = [k for k in made if k.startswith("50% ") and "search" not in made[k] and "refused" not in made[k]]
    for batch, goal in ((32, 1.8), (1, 1.6)):
        got = [(*_best(forms, net), net, t) for (b, t), forms in cells.items() if (b, t) == (batch, 1) for net in half]
        if got:
            x, form, net, t = max(got)
            verdict = "met" if x >= goal else "missed"
            lines.append(
                f"- A 50%-MACs ResNet-50 at least {goal}x faster at batch {batch} in its best deploy form: "
                f"**{verdict}**, {x:.2f}x at best ({net}, {form}, one thread, {made[net]['macs_kept']:.1%} of the "
                "MACs)."
            )
    rec = made.get("50% --latency 0.5x", {}).get("search")
    if rec:
        off = rec["latency_ratio_measured"] / rec["target_ratio"] - 1
        err = rec["prediction_error_median"]
        lines.append(
            f"- `--latency 0.5x` on ResNet-50 within 10% of its target: **{'met' if abs(off) <= 0.1 else 'missed'}**, "
            f"{rec['latency_ratio_measured']:.3f}x measured ({off:+.1%}); its table's median prediction error at most "
            f"5%: **{'met' if err <= 0.05 else 'missed'}**, {err:.1%} over {rec['candidates_timed']} candidates."
        )
    lines.append("")
    rounded = {}
    for model in doc["nets"]:
        for (b, t), forms in _cells(doc, model).items():
            if t != 1:
                continue
            names = {k.split(", round ")[-1].split(" ")[0] if "round" in k else "1": k for k in forms["eager NCHW"]
                     if k.startswith("50% uniform L1")}  # fmt: skip
            if {"1", "16"} <= set(names):
                rounded.setdefault(model, []).append(
                    f"{_best(forms, names['1'])[0]:.2f}x → {_best(forms, names['16'])[0]:.2f}x (batch {b})"
                )
    if rounded:
        lines += [
            "The default rounding (`--round-to` 16 here, the vector width, for these wide networks), as deployed, "
            "against unrounded uniform L1 at 50% of the MACs, one thread: "
            + "; ".join(f"{m}: " + ", ".join(v) for m, v in rounded.items())
            + ".",
            "",
        ]
    return lines


def _report_imagenet() -> list[str]:
    path = OUT / "imagenet.json"
    if not path.is_file():
        return []
    doc = json.loads(path.read_text())
    runs = " and ".join(f"`{c}`" for c in dict.fromkeys(r["command"] for r in doc["runs"]))
    slower, evidence = _threads_evidence(doc)
    trials = sorted({r["search"]["trials"] for made in doc["nets"].values() for r in made.values() if "search" in r})
    lines = [
        "## ImageNet-size networks: torchvision ResNet-18, ResNet-50 and MobileNetV2 at 224 px",
        "",
        f"Written from `docs/latency/imagenet.json`, made by {runs} (*Measured* below: commits, machine). Random "
        "weights (seed 0, 1000 classes): timing needs no training. Each model is pruned to 50% and to 25% of its "
        "MACs by uniform L1, unrounded and with `--round-to 8` and `16`; by Torch-Pruning's global ranking where "
        "`fnnp_opt.baselines` provides it; and by a `--latency 0.5x` and a `--latency 0.25x` study (batch 1, one "
        f"thread, {' or '.join(map(str, trials))} candidates scored on a synthetic ImageFolder: its scores mean "
        "nothing, its timing is real; the default rounding). "
        "All networks of a model are timed side by side in one run per cell (batch, threads, form): medians of "
        "warm passes in turns of 5, at most 40 passes each (5 at batch 32). *NCHW* and *channels-last* are the "
        "deploy form (BN folded); *BN not folded* is the module as trained, in the layout the folded base is "
        "faster in (timed at batch 1 only, where the per-op overhead folding saves weighs most: the benchmark "
        "would not fit an hour on 2 cores otherwise); *onnxruntime* runs the `--onnx` export.",
        "",
        "".join(_quiet_words(model, [r for r in doc["rows"] if r["model"] == model]) for model in doc["nets"])
        + f"The base as deployed ran slower on 2 threads than on 1 in {slower} of its {len(evidence)} cells ("
        + "; ".join(evidence)
        + "). The speed-ups and goals below are of one thread; the 2-thread cells are in *Every form*.",
        "",
        *provenance(doc["rows"], path),
        "",
        *_goals(doc),
        "### Speed-up as deployed",
        "",
        "The base in its fastest deploy form (BN folded: eager NCHW, eager channels-last or onnxruntime) against "
        "each network in its own fastest deploy form (named).",
        "",
    ]
    for model, made in doc["nets"].items():
        cells = {k: v for k, v in _cells(doc, model).items() if k[1] == 1}
        if not cells:
            continue
        heads = [f"batch {b}, one thread" for b, _ in cells]
        lines += [f"| {model} | MACs kept | " + " | ".join(heads) + " |", "|---" * (2 + len(heads)) + "|"]
        base = [f"{min(ms['base'] for f, ms in forms.items() if f in DEPLOY):.4g} ms" for forms in cells.values()]
        lines.append("| base | 100% | " + " | ".join(base) + " |")
        for net, rec in made.items():
            if "refused" in rec:
                lines.append(f"| {net} | refused: {rec['refused']} |" + " |" * len(heads))
                continue
            sp = [_best(forms, net) for forms in cells.values() if all(net in ms for ms in forms.values())]
            lines.append(f"| {net} | {rec['macs_kept']:.1%} | " + " | ".join(f"{x:.2f}x {f}" for x, f in sp) + " |")
        lines.append("")
    lines += ["### Every form", "", "Speed-up of each network over the base in the same form; the base's ms."]
    for model in doc["nets"]:
        cells = _cells(doc, model)
        for (b, t), forms in cells.items():
            cols = list(forms)
            lines += ["", f"| {model}, batch {b}, {t} thread{'s' * (t > 1)} | " + " | ".join(SHORT[c] for c in cols)]
            lines[-1] += " |"
            lines += ["|---" * (1 + len(cols)) + "|"]
            lines.append("| base (ms) | " + " | ".join(f"{forms[c]['base']:.4g}" for c in cols) + " |")
            for net in forms[cols[0]]:
                if net != "base":
                    cells_ = [f"{forms[c]['base'] / forms[c][net]:.2f}x" if net in forms[c] else "" for c in cols]
                    lines.append(f"| {net} | " + " | ".join(cells_) + " |")
    lines += [
        "",
        "### The `--latency` studies",
        "",
        "Latency as `--latency` budgets it: batch 1, one thread, the 10th percentile of warm passes, each network "
        "side by side with the base, as a fraction of the base's. *Measured* is the winner after the search; the "
        "table's prediction error is over every candidate the search timed directly. The studies ran when their "
        "networks were made, by the first command above (its stamp is in `docs/latency/imagenet.json`, `runs`).",
        "",
        "| model | target (window) | winner measured | off target | MACs kept | prediction error: median, p90 (over) "
        "| table's fit error |",
        "|---" * 7 + "|",
    ]
    for model, made in doc["nets"].items():
        for net, rec in made.items():
            if "refused" in rec and "--latency" in net:
                lines.append(f"| {model} | {net.split()[-1]} | refused: {rec['refused']} | | | | |")
            elif "search" in rec:
                r = rec["search"]
                low, high = r["window_ratio"]
                off = r["latency_ratio_measured"] / r["target_ratio"] - 1
                lines.append(
                    f"| {model} | {r['target_ratio']:.3f}x ({low:.3f}-{high:.3f}) | {r['latency_ratio_measured']:.3f}x "
                    f"| {off:+.1%} | {rec['macs_kept']:.1%} | {r['prediction_error_median']:.1%}, "
                    f"{r['prediction_error_p90']:.1%} ({r['candidates_timed']}) | {r['fit']['calibration_error']:.1%} |"
                )
    return lines + [""]


def _quiet_words(model: str, rows: list[dict]) -> str:
    """How busy the machine was while ``model``'s rows were timed, from their load averages and busy processes."""
    if not rows:
        return ""
    loads = sorted(x for r in rows for x in r["load"])
    busy: dict[str, int] = {}
    for r in rows:
        for b in set(map(_described, r["busy"])):
            busy[b] = busy.get(b, 0) + 1
    spread = f"1-minute load average {loads[0]:.1f} to {loads[-1]:.1f}, median {loads[len(loads) // 2]:.1f}"
    if not busy:
        return f"**{model}**: nothing else ran on the machine ({spread}: the benchmark's own threads). "
    shares = sorted(busy.items(), key=lambda x: -x[1])[:4]
    return (
        f"**{model}: the machine was not quiet**: other work ran on its 2 cores ({spread}; over 25% of a core, in "
        "the rows' share: " + ", ".join(f"`{b}` ({n / len(rows):.0%})" for b, n in shares) + "); side-by-side "
        "ratios survive a busy machine better than times do, but two threads that wait on each other's stragglers "
        "do not. "
    )


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
    logging.basicConfig(format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("fnnp_opt").setLevel(logging.INFO)  # the studies' and latency tables' progress, in the log
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("parts", nargs="+", choices=("speed", "round", "budget", "imagenet", "report"))
    ap.add_argument(
        "--models", default=None, help=f"comma-separated, of {', '.join(MODELS)} (imagenet: of {', '.join(IMAGENET)})"
    )
    ap.add_argument("--flops", default="0.5,0.25", help="FLOPs budgets of the speed part")
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--n-trials", type=int, default=30, help="trials of each study (30: the default run's)")
    ap.add_argument("--out", type=Path, default=OUT, help="folder of the rows; the report goes beside it")
    ap.add_argument("--work", type=Path, default=WORK, help="imagenet: where its networks and studies are kept")
    ap.add_argument("--runs", type=int, default=40, help="imagenet: timed passes of each network (at most)")
    ap.add_argument("--budget-s", type=float, default=40.0, help="imagenet: ... fewer (at least 5) past this")
    ap.add_argument("--again", action="store_true", help="imagenet: time the chosen rows again, replacing them")
    args = ap.parse_args()
    OUT = args.out
    ints = lambda s: [int(x) for x in s.split(",")]  # noqa: E731
    OUT.mkdir(parents=True, exist_ok=True)
    for part in args.parts:
        models = args.models.split(",") if args.models else list(IMAGENET if part == "imagenet" else MODELS)
        if part == "imagenet":
            part_imagenet(
                models,
                ints(args.batches),
                ints(args.threads),
                args.n_trials,
                args.work,
                args.runs,
                args.budget_s,
                args.again,
            )
            continue
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
