"""Rebuild a `fnnp-opt correlate` storage from its committed ``candidates.csv``, so that new score columns
(`fnnp-opt correlate --score-steps ...`) can be added to the same candidates without fine-tuning their
ground truth again (about 95 minutes on 2 cores for the default's 74 candidates).

The candidates are drawn again exactly as `correlate` draws them (seeded per budget); each must prune
to the FLOPs and parameter counts the CSV recorded, or nothing is written. The scores and the ground
truth are copied from the CSV. Then run the same `correlate` command with ``--score-steps``:

    python benchmarks/restore_correlate.py --csv docs/correlate/candidates.csv --storage sqlite:///studies/correlate.db
    fnnp-opt correlate --flops 0.75,0.5,0.25,0.15 --candidates 6,8,30,30 --score-steps 100 \\
        --storage sqlite:///studies/correlate.db --output docs/correlate
"""

from __future__ import annotations

import argparse
import csv
from dataclasses import replace


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--csv", default="docs/correlate/candidates.csv")
    ap.add_argument("--storage", default="sqlite:///studies/correlate.db")
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--max-rate", type=float, default=0.8, help="R of the run that wrote the CSV (default: 0.8)")
    ap.add_argument("--sweep", default="1,5,10,20,50,100", help="the run's --sweep")
    ap.add_argument("--noise-candidates", type=int, default=3)
    ap.add_argument("--noise-seeds", type=int, default=2)
    args = ap.parse_args()

    from fnnp_opt import correlate as C
    from fnnp_opt.config import resolve
    from fnnp_opt.flops import count
    from fnnp_opt.pipeline import prepare

    rows = list(csv.DictReader(open(args.csv)))
    budgets = list(dict.fromkeys(r["budget"] for r in rows))
    counts = tuple(sum(r["budget"] == b for r in rows) for b in budgets)
    settings = C.CorrelateSettings(
        budgets=tuple(budgets),
        candidates=counts,
        sweep=tuple(int(v) for v in args.sweep.split(",")),
        noise_candidates=args.noise_candidates,
        noise_seeds=args.noise_seeds,
    ).validate()
    cfg = resolve(model=args.model, max_rate=args.max_rate, storage=args.storage, device="cpu")
    cfg = replace(cfg, abn_batches=max(settings.sweep))
    top = f"abn_{max(settings.sweep)}"
    numeric = [c for c in rows[0] if c not in ("budget", "candidate")]
    for budget in budgets:
        p = prepare(replace(cfg, flops=budget).validate())
        mine = sorted((r for r in rows if r["budget"] == budget), key=lambda r: int(r["candidate"]))
        drawn = C.draw_candidates(p, len(mine), seed=C.candidate_seed(cfg.seed, budget))
        study = C._study(cfg, settings, p, budget)
        have = {t.user_attrs["candidate"] for t in study.trials if "candidate" in t.user_attrs}
        for r, ratios in zip(mine, drawn):
            k = int(r["candidate"])
            plan = p.pruner.counts(ratios)
            macs, params = count(p.pruner.prune_counts(plan), p.input_shape)
            if (macs, params) != (int(r["flops"]), int(r["params"])):
                raise SystemExit(
                    f"budget {budget} candidate {k}: drawn again it prunes to {macs} FLOPs / {params} params, the CSV "
                    f"says {r['flops']} / {r['params']}; the CSV was made with other settings, nothing written"
                )
            if k in have:
                continue
            row = {"candidate": k, **{c: float(r[c]) for c in numeric if r[c] != ""}, "ratios": p.space.named(ratios)}
            row["flops"], row["params"] = macs, params
            C._record(study, p, row, top)
        print(f"budget {budget}: {len(mine)} candidates verified and stored in {args.storage}", flush=True)


if __name__ == "__main__":
    main()
