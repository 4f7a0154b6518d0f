"""Does distillation from the unpruned network beat plain fine-tuning at equal epochs?

One pruned network (the uniform L1 strategy at the budget: deterministic, and at 50% FLOPs every
candidate fine-tunes alike within noise, docs/correlate.md) is fine-tuned from its ABN statistics
exactly as `fnnp-opt run` fine-tunes its winner, once plainly and once with ``--distill``, for each
epoch count and seed; each result is tested once on the test set. Rows land one at a time, so an
interrupted run resumes.

    python benchmarks/distill.py run --flops 0.5 --epochs 3,6 --seeds 0,1   # appends docs/distill/results.jsonl
    python benchmarks/distill.py report                                     # docs/distill.md
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from _stamp import append_row, provenance

OUT = Path(__file__).parents[1] / "docs" / "distill"


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def cmd_run(args) -> None:
    from fnnp_opt.config import resolve
    from fnnp_opt.evaluate import accuracy, calibrate_bn
    from fnnp_opt.training import Distill, FitConfig, fit
    from fnnp_opt.pipeline import prepare

    results = Path(args.out) / "results.jsonl"
    results.parent.mkdir(parents=True, exist_ok=True)
    cfg = resolve(model=args.model, flops=args.flops, device="cpu", abn_batches=100)  # as measured
    p = prepare(cfg)
    plan = p.uniform[0]  # the uniform L1 strategy, {root: ratio}
    test = p.splits.test_batches(cfg.eval_batch_size)
    base_test = accuracy(p.model, test, p.device)
    d = Distill(args.temperature, args.weight)
    done = {(r["model"], r["flops_budget"], r["method"], r["epochs"], r["seed"]) for r in _rows(results)}
    for seed in args.seeds:
        for epochs in args.epochs:
            for method in ("plain", "distill"):
                key = (args.model, args.flops, method, epochs, seed)
                if key in done:
                    continue
                t = time.perf_counter()
                model = p.pruner.prune(plan)
                calibrate_bn(model, p.splits.calibration, p.device)
                distill = d if method == "distill" else None
                fit(
                    model,
                    p.splits.train,
                    FitConfig(epochs, cfg.lr, cfg.batch_size, weight_decay=cfg.weight_decay, seed=seed),
                    augment=p.splits.augment,
                    device=p.device,
                    teacher=p.model if distill else None,
                    distill=distill,
                )
                row = {
                    "model": args.model,
                    "flops_budget": args.flops,
                    "method": method,
                    "epochs": epochs,
                    "seed": seed,
                    "uniform_ratio": max(plan.values()),
                    "temperature": d.temperature if distill else None,
                    "weight": d.weight if distill else None,
                    "test": accuracy(model, test, p.device),
                    "base_test": base_test,
                    "seconds": time.perf_counter() - t,
                }
                append_row(results, row)
                print(
                    f"{method} {epochs} epochs seed {seed}: test {row['test']:.4f} ({row['seconds']:.0f}s)", flush=True
                )


def cmd_report(args) -> None:
    rows = _rows(Path(args.out) / "results.jsonl")
    if not rows:
        raise SystemExit(f"no results in {args.out}/results.jsonl: run `python benchmarks/distill.py run` first")
    lines = [
        "# Distillation against plain fine-tuning",
        "",
        "The uniform L1 strategy at the budget, fine-tuned from its ABN statistics as `fnnp-opt run` fine-tunes",
        "its winner (SGD, lr 0.02, cosine, batch 128), plainly or with `--distill` (KL on softened logits of the",
        "unpruned network), tested once on the 10,000-image test set. Produced by",
        "",
        "    python benchmarks/distill.py run --flops 0.5 --epochs 3,6 --seeds 0,1",
        "    python benchmarks/distill.py report",
        "",
        "| model | FLOPs | epochs | plain (per seed) | distill (per seed) | distill − plain, mean | vs base "
        "| s per run, plain / distill |",
        "|---|---|---:|---|---|---:|---:|---|",
    ]
    groups: dict[tuple, dict[str, list[dict]]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["flops_budget"], r["epochs"]), {}).setdefault(r["method"], []).append(r)
    for (model, budget, epochs), by in sorted(groups.items()):
        plain = {r["seed"]: r for r in by.get("plain", [])}
        dist = {r["seed"]: r for r in by.get("distill", [])}
        seeds = sorted(set(plain) & set(dist))
        if not seeds:
            continue
        diff = statistics.mean(dist[s]["test"] - plain[s]["test"] for s in seeds)
        base = plain[seeds[0]]["base_test"]
        gap = statistics.mean(dist[s]["test"] for s in seeds) - base
        secs = "{:.0f} / {:.0f}".format(*(statistics.mean(m[s]["seconds"] for s in seeds) for m in (plain, dist)))
        p_accs = ", ".join(f"{plain[s]['test']:.4f}" for s in seeds)
        d_accs = ", ".join(f"{dist[s]['test']:.4f}" for s in seeds)
        lines.append(
            f"| {model} | {budget} | {epochs} | {p_accs} | {d_accs} | {100 * diff:+.2f} pt | {100 * gap:+.2f} pt "
            f"| {secs} |"
        )
    t = next((r for r in rows if r["method"] == "distill"), None)
    if t:
        lines += [
            "",
            f"Distillation: temperature {t['temperature']}, weight {t['weight']}. 'vs base': the distilled",
            f"mean minus the unpruned base as shipped ({rows[0]['base_test']:.4f}).",
        ]
    lines += ["", *provenance(rows, Path(args.out) / "results.jsonl")]
    Path(args.doc).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.doc}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="measure (resumable, row by row)")
    run.add_argument("--model", default="resnet20", help="a shipped base: resnet20 or mobilenet_v1_cifar")
    run.add_argument("--flops", default="0.5", help="the FLOPs budget (default: 0.5, the demo's)")
    run.add_argument("--epochs", type=_ints, default=[3, 6], help="fine-tune epoch counts (default: 3,6)")
    run.add_argument("--seeds", type=_ints, default=[0, 1])
    run.add_argument("--temperature", type=float, default=4.0)
    run.add_argument("--weight", type=float, default=0.5)
    run.add_argument("--out", default=str(OUT))
    rep = sub.add_parser("report", help="write the table")
    rep.add_argument("--out", default=str(OUT))
    rep.add_argument("--doc", default=str(OUT.parent / "distill.md"))
    args = ap.parse_args()
    cmd_run(args) if args.cmd == "run" else cmd_report(args)


if __name__ == "__main__":
    main()
