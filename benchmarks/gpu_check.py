"""The CUDA path end to end, in one run that writes one JSON file of results (``benchmarks/gpu_check.sh``).

    benchmarks/gpu_check.sh                                  # ResNet-50 at 224 px on CUDA: under 10 minutes, one GPU
    benchmarks/gpu_check.sh --device cpu --tiny              # the same steps on CPU, smaller: a couple of minutes

Each step is timed and recorded under ``steps`` (``ok``, ``seconds``, its figures or its ``error``); the script
goes on after a failed step and exits 1 at the end when any failed:

1. ``data``: a synthetic ImageFolder (label-coloured noise, shifted per image so that the classes overlap; 224 px)
   and a base trained on it for a few epochs (``fnnp-opt train``), so that candidates score apart;
2. ``official_path``: ``benchmarks/official_path.py`` (the paper's per-candidate path beside fnnp-opt's, with
   fnnp-opt's scoring in bf16 autocast and channels-last on CUDA);
3. ``trial_cost``: ``benchmarks/trial_cost.py`` (where a trial's time goes);
4. ``bf16_vs_fp32``: the same candidates scored by ABN with bf16 autocast and in fp32, and the Spearman of the two
   rankings (on CPU autocast is off: the two are the same computation);
5. ``latency``: the base and its uniform L1 networks (50% and 25% of the MACs; unrounded and ``--round-to auto``)
   timed side by side on the device (BN folded, channels-last), in fp32 and under bf16 autocast, at batch 1, 32
   and 128: each network's speed-up;
6. ``torchrun``: ``torchrun --standalone --nproc-per-node 1 -m fnnp_opt.cli run`` with a one-epoch fine-tune
   (NCCL on CUDA, gloo on CPU);
7. ``api``: ``fnnp_opt.search`` of a few trials.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"


@dataclass(frozen=True)
class Size:
    """How big each step is."""

    model: str
    image_size: int  # the network's input side (the files are stored at it too)
    classes: int
    train: int  # images per class
    val: int
    per_class: int  # of the train images, held out per class to score candidates
    train_epochs: int  # of the base
    abn_batches: int  # of 32 images
    candidates: int  # scored by the official path, by trial_cost, and in bf16 and fp32
    reference_batches: int  # the official path's reference calibration (batches of 64)
    batches: tuple[int, ...]  # of the latency step
    trials: int  # of the torchrun run and the API search


FULL = Size("resnet50", 224, 10, 96, 16, 24, 3, 4, 12, 8, (1, 32, 128), 4)
TINY = Size("resnet18", 32, 4, 56, 8, 8, 1, 2, 4, 2, (1, 8), 3)


def _run(args: list[str], out: Path, seconds: int) -> str:
    """Run a command (``PYTHONPATH`` at this checkout), its output kept in ``out``; raise on a non-zero exit."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with out.open("w") as log:
        done = subprocess.run(args, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT, timeout=seconds)
    text = out.read_text()
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:4])} ... exited {done.returncode}: {text[-1500:]}")
    return text


class Check:
    """The run's state: its options, its work folder, and the results written so far."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.device, self.size, self.work = args.device, TINY if args.tiny else FULL, args.work
        self.folder, self.checkpoint = self.work / "data", self.work / "base.safetensors"
        self.doc: dict = {"device": args.device, "tiny": args.tiny, "size": asdict(self.size), "steps": {}}
        self.out = args.out

    def flags(self) -> list[str]:
        """The model and data flags every command of the check shares."""
        s = self.size
        return [
            "--model", s.model, "--dataset", "folder", "--data-dir", str(self.folder), "--checkpoint",
            str(self.checkpoint), "--image-size", str(s.image_size), "--search-per-class", str(s.per_class),
            "--device", self.device,
        ]  # fmt: skip

    def step(self, name: str, fn) -> None:
        t = time.perf_counter()
        try:
            result = {"ok": True, **(fn() or {})}
        except Exception as exc:  # noqa: BLE001  (a failed step is a result; the next steps still run)
            result = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-3000:]}
        result["seconds"] = round(time.perf_counter() - t, 1)
        self.doc["steps"][name] = result
        self.doc["ok"] = all(s["ok"] for s in self.doc["steps"].values())
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.out.write_text(json.dumps(self.doc, indent=1) + "\n")
        print(f"{name}: {'ok' if result['ok'] else 'FAILED ' + result['error'][:300]} ({result['seconds']} s)")

    def prepared(self, **flags):
        from fnnp_opt.config import resolve
        from fnnp_opt.pipeline import prepare

        s = self.size
        cfg = resolve(
            model=s.model, dataset="folder", data_dir=str(self.folder), checkpoint=str(self.checkpoint),
            image_size=s.image_size, search_per_class=s.per_class, abn_batches=s.abn_batches, abn_batch_size=32,
            device=self.device, rerank=0, **flags,
        )  # fmt: skip
        return prepare(cfg)

    # ----------------------------------------------------------------- the steps

    def data(self) -> dict:
        from _synthetic import image_folder

        s = self.size
        image_folder(self.folder, s.classes, s.train, s.val, s.image_size, jitter=60)
        log = _run(
            [sys.executable, "-m", "fnnp_opt.cli", "train", *self.flags()[:6], "--image-size", str(s.image_size),
             "--search-per-class", str(s.per_class), "--epochs", str(s.train_epochs), "--batch-size", "32",
             "--lr", "0.05", "--device", self.device, "--output", str(self.checkpoint)],
            self.work / "train.log", 900,
        )  # fmt: skip
        return {"images": s.classes * (s.train + s.val), "train_log_tail": log[-600:]}

    def official_path(self) -> dict:
        from fnnp_opt.correlation import with_interval

        s, rows = self.size, self.work / "official_path.json"
        _run(
            [sys.executable, str(BENCH / "official_path.py"), *self.flags(), "--candidates", str(s.candidates),
             "--abn-batches", str(s.abn_batches), "--abn-batch-size", "32", "--reference-batches",
             str(s.reference_batches), "--loader-workers", "2", "--json", str(rows)],
            self.work / "official_path.log", 1200,
        )  # fmt: skip
        got = json.loads(rows.read_text())["rows"]
        pick = lambda key: [r[key] for r in got]  # noqa: E731
        median = lambda key: sorted(pick(key))[len(got) // 2]  # noqa: E731
        return {
            "candidates": len(got),
            "official_s": median("official_s"),
            "fnnp_s": median("fnnp_s"),
            "spearman_fnnp_vs_reference": with_interval("spearman", pick("fnnp"), pick("reference")).value,
            "spearman_official_vs_reference": with_interval("spearman", pick("official"), pick("reference")).value,
        }

    def trial_cost(self) -> dict:
        text = _run(
            [sys.executable, str(BENCH / "trial_cost.py"), *self.flags(), "--trials", str(self.size.candidates),
             "--abn-batches", str(self.size.abn_batches)],
            self.work / "trial_cost.log", 1200,
        )  # fmt: skip
        per = re.search(r"([0-9.]+) s per evaluated candidate", text)
        floor = re.search(r"= ([0-9]+)% of the floor", text)
        return {
            "s_per_candidate": float(per.group(1)) if per else None,
            "share_of_floor": int(floor.group(1)) / 100 if floor else None,
            "tail": text[-1200:],
        }

    def bf16_vs_fp32(self) -> dict:
        import numpy as np

        from fnnp_opt.constraints import fit_to_budget
        from fnnp_opt.correlation import with_interval
        from fnnp_opt.evaluate import accuracy, calibrate_bn
        from fnnp_opt.latency import fold_bn

        p = self.prepared()
        rng = np.random.default_rng(0)
        cost = lambda r: p.flops.macs(p.pruner.counts(r))  # noqa: E731
        search = p.splits.search_batches(64)
        scores: dict[str, list[float]] = {"bf16": [], "fp32": []}
        for _ in range(self.size.candidates):
            draw = {d.root: float(x) for d, x in zip(p.space.dims, rng.uniform(0, p.space.max_rate, len(p.space)))}
            draw, _ = fit_to_budget(draw, cost, p.budget, p.space.max_rate)
            for key, amp in (("bf16", True), ("fp32", False)):
                model = p.pruner.prune(draw).to(p.device)
                calibrate_bn(model, p.splits.calibration, p.device, amp=amp)
                scores[key].append(accuracy(fold_bn(model), search, p.device, amp=amp))
        spearman = with_interval("spearman", scores["bf16"], scores["fp32"])
        return {
            "autocast": p.device.startswith("cuda"),  # off on CPU: both are fp32
            "spearman": spearman.value,
            "interval": [spearman.low, spearman.high],
            "max_abs_diff": max(abs(a - b) for a, b in zip(scores["bf16"], scores["fp32"])),
            "scores": scores,
        }

    def latency(self) -> dict:
        from fnnp_opt.flops import count
        from fnnp_opt.latency import Setting, compare_ms, fold_bn, vector_width
        from fnnp_opt.models import load_model
        from fnnp_opt.problem import Problem

        s = self.size
        base, _ = load_model(s.model, 3, s.classes, self.checkpoint)
        example = torch.zeros(1, 3, s.image_size, s.image_size)
        nets = {}
        for step in (1, vector_width(self.device)):
            for share in ("0.5", "0.25"):
                problem = Problem(base, example, budget=share, max_rate=0.8, round_to=step)
                net = problem.pruner.prune(problem.uniform[0])
                nets[f"{float(share):.0%} MACs, round {step}"] = (
                    net,
                    count(net, example.shape)[0] / problem.flops.base,
                )
        models = [fold_bn(base)] + [fold_bn(n) for n, _ in nets.values()]
        rows = []
        for batch in s.batches:
            for amp in (False, True):
                timed = [Autocast(m) if amp else m for m in models]
                ms = compare_ms(timed, tuple(example.shape), Setting(self.device, torch.get_num_threads(), batch, True),
                                runs=30, budget_s=10.0)  # fmt: skip
                rows.append(
                    {
                        "batch": batch,
                        "dtype": "bf16 autocast" if amp else "fp32",
                        "base_ms": round(ms[0], 4),
                        "speedup": {k: round(ms[0] / t, 3) for k, t in zip(nets, ms[1:])},
                    }
                )
                print(f"  latency batch {batch} {rows[-1]['dtype']}: base {ms[0]:.3g} ms, {rows[-1]['speedup']}")
        return {"macs_kept": {k: round(m, 4) for k, (_, m) in nets.items()}, "rows": rows}

    def torchrun(self) -> dict:
        s, out = self.size, self.work / "torchrun-out"
        _run(
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1", "-m",
             "fnnp_opt.cli", "run", *self.flags(), "--n-trials", str(s.trials), "--epochs", "1", "--batch-size", "32",
             "--abn-batches", str(s.abn_batches), "--abn-batch-size", "32", "--rerank", "2", "--score-steps", "5",
             "--no-check-base", "--storage",
             f"sqlite:///{self.work}/torchrun.db", "--output", str(out)],
            self.work / "torchrun.log", 1200,
        )  # fmt: skip
        card = json.loads((out / "pruned.json").read_text())
        return {"test_accuracy": card["metrics"]["pruned"]["test_accuracy"], "distilled": card["distilled"]}

    def api(self) -> dict:
        import fnnp_opt

        p = self.prepared()
        result = fnnp_opt.search(
            p.model,
            torch.zeros(p.input_shape),
            calibration=p.splits.calibration,
            evaluation=p.splits.search_batches(64),
            calibration_batches=self.size.abn_batches,
            n_trials=self.size.trials,
            device=p.device,
        )
        return {"best_value": result.best.value, "trials": len(result.study.trials)}


class Autocast(nn.Module):
    """A network run under bf16 autocast on its device (fnnp-opt's scoring precision), for timing."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from fnnp_opt.evaluate import autocast

        with autocast(x.device, True):
            return self.model(x)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    ap.add_argument("--tiny", action="store_true", help="ResNet-18 at 32 px, a few images and trials (CI on CPU)")
    ap.add_argument("--out", type=Path, default=Path("gpu_check.json"), help="the JSON file of results")
    ap.add_argument("--work", type=Path, default=None, help="the data, weights and logs (default: beside --out)")
    args = ap.parse_args()
    args.work = args.work or args.out.with_suffix("")
    args.work.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(BENCH))  # the benchmarks' helpers (_synthetic)
    sys.stdout.reconfigure(line_buffering=True)
    import optuna

    from fnnp_opt.latency import machine

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    check = Check(args)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        check.doc |= {"ok": False, "error": "no CUDA device here; pass --device cpu (with --tiny for a smoke run)"}
        args.out.write_text(json.dumps(check.doc, indent=1) + "\n")
        print(check.doc["error"])
        return 1
    from _stamp import stamp

    check.doc |= {"machine": machine(args.device), "command": " ".join(sys.argv), "stamp": stamp()}
    t = time.perf_counter()
    for name in ("data", "official_path", "trial_cost", "bf16_vs_fp32", "latency", "torchrun", "api"):
        check.step(name, getattr(check, name))
    check.doc["seconds"] = round(time.perf_counter() - t, 1)
    args.out.write_text(json.dumps(check.doc, indent=1) + "\n")
    print(f"{'all steps passed' if check.doc['ok'] else 'FAILED'} in {check.doc['seconds']} s; results in {args.out}")
    return 0 if check.doc["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
