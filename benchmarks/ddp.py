"""How much faster is the fine-tune in two processes under torchrun than in one, on this machine?

The fine-tune of `fnnp-opt run`: the shipped ResNet-20 pruned by the uniform L1 strategy to 50% of its FLOPs,
ABN-calibrated, distilled from the base with SGD, batches of 128 images of the real Fashion-MNIST train part, for a
fixed number of steps. It runs in one plain process (torch's default threads: every core), in one process with
``OMP_NUM_THREADS=1`` (what processes gain over threads), and in a torchrun job of two processes (fnnp-opt's
threads: cores // 2 each), in turns, ``--repeats`` times each; the times are of the steps alone (after a warm-up
fine-tune of 2 steps in the same process: imports, oneDNN kernels, process groups).

    python benchmarks/ddp.py --steps 60 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def worker(steps: int, batch: int, out: Path) -> None:
    """One fine-tune of ``steps`` steps, timed; rank 0 (or the only process) writes ``out`` (JSON)."""
    import torch

    from fnnp_opt import distributed
    from fnnp_opt.config import resolve
    from fnnp_opt.evaluate import calibrate_bn
    from fnnp_opt.training import Distill, FitConfig, fit
    from fnnp_opt.pipeline import prepare

    with distributed.session() as group:
        cfg = resolve(device="cpu")
        p = prepare(cfg)
        plan = p.uniform[0]  # the uniform L1 strategy, {root: ratio}
        train = p.splits.train.subset(steps * batch, seed=0)
        fit_cfg = FitConfig(1, cfg.lr, batch, weight_decay=cfg.weight_decay, seed=cfg.seed)

        def finetune(data) -> float:
            model = p.pruner.prune(plan)
            calibrate_bn(model, p.splits.calibration, p.device)
            t = time.perf_counter()
            fit(model, data, fit_cfg, augment=p.splits.augment, device=p.device, teacher=p.model, distill=Distill())
            return time.perf_counter() - t

        finetune(train.subset(2 * batch, seed=1))  # warm-up
        seconds = finetune(train)
        if group is None or group.main:
            threads = group.train_threads if group is not None else torch.get_num_threads()
            processes = group.world_size if group is not None else 1
            row = {"processes": processes, "threads": threads, "steps": steps, "batch": batch, "seconds": seconds}
            row["uniform_ratio"] = max(plan.values())
            out.write_text(json.dumps(row))


def launch(processes: int, one_thread: bool, steps: int, batch: int, folder: Path, k: int) -> dict:
    """Run :func:`worker` in ``processes`` processes (1: a plain process, with ``OMP_NUM_THREADS=1`` when
    ``one_thread``; more: torchrun) and return its row."""
    out = folder / f"p{processes}-{one_thread}-{k}.json"
    args = [__file__, "--worker", "--steps", str(steps), "--batch", str(batch), "--out", str(out)]
    env = {key: v for key, v in os.environ.items() if key != "OMP_NUM_THREADS"}
    if one_thread:
        env["OMP_NUM_THREADS"] = "1"
    if processes == 1:
        cmd = [sys.executable, *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes), *args]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{res.stderr[-3000:]}")
    return json.loads(out.read_text())


def _label(row: dict) -> str:
    n, t = row["processes"], row["threads"]
    return f"{n} process{'es' * (n > 1)} x {t} thread{'s' * (t > 1)}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=60, help="SGD steps timed")
    ap.add_argument("--batch", type=int, default=128, help="global batch (images per step, over every process)")
    ap.add_argument("--repeats", type=int, default=2, help="runs of each set-up, in turns")
    ap.add_argument("--processes", type=int, default=2, help="processes of the torchrun job")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.steps, args.batch, args.out)
        return
    cores, n = len(os.sched_getaffinity(0)), args.processes
    print(f"fine-tune of ResNet-20 at 50% FLOPs, distilled, {args.steps} steps of {args.batch} images; {cores} cores")
    setups = {"one": (1, False), "one thread": (1, True), "torchrun": (n, False)}  # (processes, OMP_NUM_THREADS=1)
    rows: dict[str, list[dict]] = {name: [] for name in setups}
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.repeats):
            for name, (processes, one_thread) in setups.items():
                row = launch(processes, one_thread, args.steps, args.batch, Path(tmp), k)
                rows[name].append(row)
                print(f"  run {k + 1}: {_label(row)}: {row['seconds']:.1f} s", flush=True)
    med = {name: statistics.median(r["seconds"] for r in rs) for name, rs in rows.items()}
    print("median seconds, seconds per step, images per second")
    for name, rs in rows.items():
        t = med[name]
        print(f"  {_label(rs[0]):26s} {t:8.1f} {t / args.steps:8.3f} {args.steps * args.batch / t:8.0f}")
    one, solo = med["one"] / med["torchrun"], med["one thread"] / med["torchrun"]
    print(f"speed-up of {n} processes (torchrun) over 1 process: {one:.2f}x; over 1 process of 1 thread: {solo:.2f}x")


if __name__ == "__main__":
    from _stamp import line

    print(line(), flush=True)  # the commit and the machine, above the figures
    main()
