"""Is the EagleEye winner worth the search? The method against its baselines, on the default.

At one FLOPs budget (by default the one where `fnnp-opt correlate` found the choice of
strategy matters most), for each seed:

* N random candidates are drawn in the budget window (the same draws as `correlate`'s
  for that seed and budget), each scored on the search split with its stale statistics
  (PBN) and with adaptive BN (100 calibration batches);
* five models get the same fine-tune (``--epochs`` over the train part, that seed):
  - the EagleEye winner: the best ABN score of the N;
  - the PBN winner: the best stale-statistics score of the same N;
  - a random candidate: one of the N, picked by the seed without looking at scores;
  - uniform L1: the same ratio in every group, at the budget's target;
  - the unpruned base (fine-tuned the same way; its accuracy as shipped is printed too);
* each is measured once on the test set, which nothing here chooses with.

    python benchmarks/quality.py run --flops 0.15 --seeds 0,1,2   # resumable: appends docs/quality/results.jsonl
    python benchmarks/quality.py report                          # docs/quality.md
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

OUT = Path(__file__).parents[1] / "docs" / "quality"
METHODS = ("eagleeye", "pbn_winner", "random", "uniform", "base")
LABELS = {
    "eagleeye": "EagleEye winner (best ABN of N)",
    "pbn_winner": "PBN winner (best stale-BN score of N)",
    "random": "random candidate in the window",
    "uniform": "uniform L1 (same ratio everywhere)",
    "base": "unpruned base, same fine-tune",
}


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def _config(args, seed: int):
    from fnnp_opt.config import resolve

    return resolve(flops=args.flops, max_rate=args.max_rate, seed=seed, device="cpu")


def _finetune_test(p, cfg, model, epochs: int, seed: int) -> float:
    """The one recipe every method gets: from ABN statistics, ``epochs`` over the train part; test accuracy."""
    from fnnp_opt.evaluate import accuracy, calibrate_bn
    from fnnp_opt.finetune import FitConfig, fit

    calibrate_bn(model, p.splits.calibration, p.device)
    fit(
        model,
        p.splits.train,
        FitConfig(epochs, cfg.lr, cfg.batch_size, weight_decay=cfg.weight_decay, seed=seed),
        augment=p.splits.augment,
        device=p.device,
    )
    return accuracy(model, p.splits.test_batches(cfg.eval_batch_size), p.device)


def run_seed(args, seed: int) -> list[dict]:
    import copy

    import numpy as np

    from fnnp_opt.correlate import candidate_seed, draw_candidates
    from fnnp_opt.evaluate import abn_accuracy, accuracy
    from fnnp_opt.flops import count
    from fnnp_opt.pipeline import prepare, uniform_ratios

    cfg = _config(args, seed)
    p = prepare(cfg)
    search = list(p.splits.search_batches(cfg.eval_batch_size))
    t0 = time.perf_counter()
    candidates = draw_candidates(p, args.candidates, seed=candidate_seed(seed, args.flops))
    pbn, abn = [], []
    for ratios in candidates:
        model = p.pruner.prune(ratios)
        pbn.append(accuracy(model, search, p.device))
        abn.append(abn_accuracy(model, p.splits.calibration, search, p.device))
    search_s = time.perf_counter() - t0
    pick = {
        "eagleeye": int(np.argmax(abn)),
        "pbn_winner": int(np.argmax(pbn)),
        "random": int(np.random.default_rng(seed).integers(len(candidates))),
    }
    strategies = {m: candidates[i] for m, i in pick.items()}
    uniform = uniform_ratios(p)[0]
    strategies["uniform"] = p.space.uniform(uniform)
    rows = []
    for method in METHODS:
        t = time.perf_counter()
        model = copy.deepcopy(p.model) if method == "base" else p.pruner.prune(strategies[method])
        macs, params = count(model, p.input_shape)
        row = {
            "flops_budget": args.flops,
            "seed": seed,
            "method": method,
            "candidates": args.candidates,
            "epochs": args.epochs,
            "flops_ratio": macs / p.budget.base,
            "params": params,
            "test": _finetune_test(p, cfg, model, args.epochs, seed),
            "seconds": time.perf_counter() - t,
        }
        if method in pick:
            row |= {"index": pick[method], "abn": abn[pick[method]], "pbn": pbn[pick[method]]}
        if method == "uniform":
            row["ratio"] = uniform
        if method == "base":
            row["test_as_shipped"] = accuracy(p.model, p.splits.test_batches(cfg.eval_batch_size), p.device)
            row["search_s"] = search_s
        rows.append(row)
        print(f"seed {seed} {method}: test {row['test']:.4f} ({row['flops_ratio']:.3f} of the FLOPs)", flush=True)
    return rows


def cmd_run(args) -> None:
    results = Path(args.out) / "results.jsonl"
    results.parent.mkdir(parents=True, exist_ok=True)
    key = (args.flops, args.candidates, args.epochs)
    done = {r["seed"] for r in _rows(results) if (r["flops_budget"], r["candidates"], r["epochs"]) == key}
    for seed in args.seeds:
        if seed in done:
            print(f"seed {seed}: already in {results}", flush=True)
            continue
        rows = run_seed(args, seed)  # a seed lands whole or not at all
        with open(results, "a") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in rows)


def summarise(rows: list[dict]) -> list[dict]:
    """Per method: mean and seed-to-seed standard deviation of the test accuracy, and each seed's value."""
    out = []
    for method in METHODS:
        accs = [r["test"] for r in sorted(rows, key=lambda r: r["seed"]) if r["method"] == method]
        if accs:
            sd = statistics.stdev(accs) if len(accs) > 1 else float("nan")
            out.append({"method": method, "mean": statistics.mean(accs), "sd": sd, "seeds": accs})
    return out


def margins(rows: list[dict], against: str) -> list[float]:
    """EagleEye minus ``against``, seed by seed (both fine-tuned under the same seed)."""
    by = {(r["seed"], r["method"]): r["test"] for r in rows}
    seeds = sorted({r["seed"] for r in rows})
    return [by[s, "eagleeye"] - by[s, against] for s in seeds if (s, "eagleeye") in by and (s, against) in by]


def cmd_report(args) -> None:
    rows = _rows(Path(args.out) / "results.jsonl")
    if not rows:
        raise SystemExit(f"no results in {args.out}/results.jsonl: run `python benchmarks/quality.py run` first")
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["flops_budget"], r["candidates"], r["epochs"]), []).append(r)
    lines = [
        "# The method against its baselines",
        "",
        "Test accuracy after the same fine-tune, Fashion-MNIST, the shipped ResNet-20. Produced by",
        "",
        "    python benchmarks/quality.py run --flops <budget> --seeds 0,1,2",
        "    python benchmarks/quality.py report",
        "",
        "Each seed draws its own N candidates and fine-tunes every model under that seed; the test",
        "set is used once per model, after every choice is made. Raw rows: `docs/quality/results.jsonl`.",
        "The budget is the one where `fnnp-opt correlate` found the largest spread of fine-tuned",
        "accuracy over its noise ([correlate.md](correlate.md)); R is 0.8, as there.",
    ]
    for (budget, n, epochs), rs in sorted(groups.items()):
        seeds = sorted({r["seed"] for r in rs})
        shipped = next((r["test_as_shipped"] for r in rs if r["method"] == "base"), None)
        lines += [
            "",
            f"## FLOPs budget {budget}: N = {n} candidates, {epochs}-epoch fine-tune, seeds {seeds}",
            "",
            "| method | FLOPs kept | test accuracy, mean ± sd | per seed |",
            "|---|---:|---:|---|",
        ]
        for s in summarise(rs):
            kept = statistics.mean(r["flops_ratio"] for r in rs if r["method"] == s["method"])
            per = ", ".join(f"{a:.4f}" for a in s["seeds"])
            lines.append(f"| {LABELS[s['method']]} | {kept:.3f} | {s['mean']:.4f} ± {s['sd']:.4f} | {per} |")
        lines += ["", "EagleEye minus each baseline, seed by seed (same seed, same fine-tune):", ""]
        for other in ("pbn_winner", "random", "uniform", "base"):
            m = margins(rs, other)
            if m:
                sd = statistics.stdev(m) if len(m) > 1 else float("nan")
                lines.append(
                    f"- vs {LABELS[other]}: {', '.join(f'{v:+.4f}' for v in m)} "
                    f"(mean {statistics.mean(m):+.4f}, sd {sd:.4f})"
                )
        if shipped is not None:
            lines += ["", f"The base as shipped, without the extra fine-tune: {shipped:.4f}."]
        search_s = [r["search_s"] for r in rs if r["method"] == "base"]
        if search_s:
            lines.append(f"Scoring the N candidates (PBN + ABN) took {statistics.mean(search_s):.0f} s per seed.")
    path = Path(args.doc)
    path.write_text("\n".join(lines) + "\n")
    print(f"wrote {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="measure (resumable, one seed at a time)")
    run.add_argument("--flops", default="0.15", help="the FLOPs budget (default: 0.15, see docs/correlate.md)")
    run.add_argument("--max-rate", type=float, default=0.8, help="R, as in `correlate` (default: 0.8)")
    run.add_argument("--candidates", type=int, default=30, help="N random candidates per seed (default: 30)")
    run.add_argument("--epochs", type=int, default=1, help="fine-tune epochs, the same for all (default: 1)")
    run.add_argument("--seeds", type=lambda s: [int(v) for v in s.split(",")], default=[0, 1, 2])
    run.add_argument("--out", default=str(OUT))
    rep = sub.add_parser("report", help="write the table")
    rep.add_argument("--out", default=str(OUT))
    rep.add_argument("--doc", default=str(OUT.parent / "quality.md"))
    args = ap.parse_args()
    cmd_run(args) if args.cmd == "run" else cmd_report(args)


if __name__ == "__main__":
    main()
