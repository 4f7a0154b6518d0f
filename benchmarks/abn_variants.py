"""Why does an ABN score fail to rank candidates at a budget? Re-score `correlate`'s candidates under variants.

Reads a budget's `fnnp-opt correlate` study (its candidates and their fine-tuned accuracy),
re-scores every candidate on the same search split under each variant below, and prints
and writes each variant's Spearman coefficient with the fine-tuned accuracy (bootstrap 95%):

* ``abn``: the default (reset, cumulative average over 100 batches of 64); it must
  reproduce the study's full-calibration score exactly, a check that the re-scoring is the same;
* ``abn_bs256``: the same 6,400 calibration images in 25 batches of 256 (batch size);
* ``abn_augmented``: the same batches with the training augmentation (crop + flip);
* ``abn_nll``: the default calibration, scored by the negative cross-entropy instead of
  accuracy (a score that still moves when accuracy sits at chance);
* ``collapse``: after ABN, the share of search images given the most-predicted class (a
  diagnosis, not a score: near 1, the network says one class whatever it sees);
* ``short_ft``: a 100-step fine-tune (128 images a step, the fine-tune's learning rate
  schedule compressed) from the ABN statistics, then accuracy (the paper's costly
  alternative to ABN).

    python benchmarks/abn_variants.py --flops 0.15 --storage sqlite:///studies/correlate.db
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

OUT = Path(__file__).parents[1] / "docs" / "correlate"
VARIANTS = ("abn", "abn_bs256", "abn_augmented", "abn_nll", "collapse", "short_ft")


def _scores(p, cfg, ratios: dict, calibration: list, search: list, seed: int) -> dict[str, float]:
    import torch
    import torch.nn.functional as F

    from fnnp_opt.data import TensorSet
    from fnnp_opt.evaluate import abn_accuracy, accuracy
    from fnnp_opt.training import FitConfig, fit

    out = {}
    model = p.pruner.prune(ratios)
    out["abn"] = abn_accuracy(model, calibration, search, p.device)
    nll, seen, top = 0.0, 0, torch.zeros(p.splits.info.num_classes)
    model.eval()
    with torch.no_grad():
        for x, y in search:
            logits = model(x)
            nll += float(F.cross_entropy(logits, y, reduction="sum"))
            seen += len(y)
            top += torch.bincount(logits.argmax(1), minlength=len(top)).float()
    out["abn_nll"] = -nll / seen
    out["collapse"] = float(top.max() / seen)
    # scoring ran in inference mode, whose tensors autograd refuses: the short fine-tune gets a fresh copy
    short = p.pruner.prune(ratios)
    short.load_state_dict({k: v.clone() for k, v in model.state_dict().items()})

    x_all, y_all = torch.cat([x for x, _ in calibration]), torch.cat([y for _, y in calibration])
    big = [(x_all[i : i + 256], y_all[i : i + 256]) for i in range(0, len(x_all), 256)]
    out["abn_bs256"] = abn_accuracy(p.pruner.prune(ratios), big, search, p.device)

    g = torch.Generator().manual_seed(seed)
    augmented = [(p.splits.augment(x, g), y) for x, y in calibration] if p.splits.augment else calibration
    out["abn_augmented"] = abn_accuracy(p.pruner.prune(ratios), augmented, search, p.device)

    steps, batch = 100, 128
    train = p.splits.train
    subset = TensorSet(train.x[: steps * batch], train.y[: steps * batch])
    fit(short, subset, FitConfig(1, cfg.lr, batch, weight_decay=cfg.weight_decay, seed=seed), augment=p.splits.augment)
    out["short_ft"] = accuracy(short, search, p.device)
    return out


def main() -> None:
    import numpy as np
    import optuna

    from fnnp_opt.config import resolve
    from fnnp_opt.correlation import with_interval
    from fnnp_opt.pipeline import prepare

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flops", required=True, help="the budget, exactly as given to `correlate` (e.g. 0.15)")
    ap.add_argument("--storage", default="sqlite:///studies/correlate.db")
    ap.add_argument("--max-rate", type=float, default=0.8, help="R, as given to `correlate` (default: 0.8)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    cfg = resolve(flops=args.flops, max_rate=args.max_rate, seed=args.seed, device="cpu", abn_batches=100)
    name = f"correlate-{cfg.model}-{cfg.dataset}-flops{args.flops}"
    try:
        study = optuna.load_study(study_name=name, storage=args.storage)
    except KeyError:
        raise SystemExit(f"no study {name} in {args.storage}: run `fnnp-opt correlate --flops {args.flops}` first")
    trials = sorted(study.trials, key=lambda t: t.user_attrs["candidate"])
    p = prepare(cfg)
    calibration = list(p.splits.calibration)
    search = list(p.splits.search_batches(cfg.eval_batch_size))
    rows = []
    for t in trials:
        row = {"candidate": t.user_attrs["candidate"], "truth": t.user_attrs["truth"]}
        row |= _scores(p, cfg, p.space.from_params(t.params), calibration, search, args.seed)
        if abs(row["abn"] - t.value) > 1e-9:  # the trial's value: its full-calibration ABN score
            raise SystemExit(f"candidate {row['candidate']}: re-scored ABN {row['abn']} != the study's")
        rows.append(row)
        print(json.dumps(row), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"variants-{args.flops}.csv"
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    truth = np.array([r["truth"] for r in rows])
    print(f"\nbudget {args.flops}, {len(rows)} candidates: Spearman with the fine-tuned accuracy [bootstrap 95%]")
    for v in VARIANTS:
        x = np.array([r[v] for r in rows])
        c = with_interval("spearman", x, truth, seed=args.seed)
        print(f"  {v:14s} {c.value:+.2f} [{c.low:+.2f}, {c.high:+.2f}]   range {x.min():.4f} .. {x.max():.4f}")
    print(f"wrote {path}")


if __name__ == "__main__":
    from _stamp import line

    print(line(), flush=True)  # the commit and the machine, above the figures
    main()
