"""EagleEye's official per-candidate path beside fnnp-opt's default, on the same candidates, in one run.

    .venv/bin/python benchmarks/official_path.py [--candidates 30] [--loader-workers 2]
    .venv/bin/python benchmarks/official_path.py --model resnet50 --dataset folder --data-dir D --checkpoint C ...

fnnp-opt's default study (random sampler, seed 0, 50% FLOPs, a fresh SQLite storage) runs one
trial at a time. After each evaluated candidate, the same pruned network is scored twice more:

* the official path, with its published settings (EagleEye, Li et al. ECCV 2020, and its
  code): a new DataLoader for every candidate, over the train part with the training
  augmentation applied image by image (padded random crop and flip; for image folders a
  random resized crop and flip) from the stored uint8 images; the whole network in train
  mode for 100 batches of 128 images without gradients, BN statistics updated by the default
  exponential moving average (momentum 0.1) from the stale values, not reset; then accuracy on
  the search split through another DataLoader, with the evaluation transform;
* the reference: fnnp-opt's ABN with the paper's full calibration (100 batches of 64, reset,
  exact average; ``--reference-batches`` for a smaller train part) on the whole search split, with no early
  stopping.

Times are wall seconds of one candidate per path, side by side in this process; fnnp-opt's is its
whole trial (suggest, prune, count, calibrate, score, storage), also with the rejected draws
before it added. Printed: seconds per candidate and their ratio, the Spearman coefficient between
the official and fnnp-opt rankings and between fnnp-opt's ranking and the reference (with a 95%
bootstrap interval), and whether the winners agree; if not, whether fnnp-opt's winner is within
the binomial noise of the search split (95%) of the reference winner. ``--json`` keeps the rows;
``--report`` prints the summary of kept rows again.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import optuna
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2 as T

from _stamp import EARLIER_MACHINE, committed, line, stamp
from fnnp_opt import optimize as S
from fnnp_opt import storage as St
from fnnp_opt.config import resolve
from fnnp_opt.correlation import with_interval
from fnnp_opt.data import load_splits
from fnnp_opt.evaluate import accuracy, calibrate_bn
from fnnp_opt.pipeline import make_evaluator, prepare, settle, trial_ratios


class _Images(Dataset):
    """Images of a dataset file by index, each decoded and transformed on its own (torchvision's way)."""

    def __init__(self, source, idx, transform) -> None:
        self.source, self.idx, self.transform = source, np.asarray(idx), transform

    def __len__(self) -> int:
        return len(self.idx)

    def __getitem__(self, i: int):
        j = int(self.idx[i])
        if hasattr(self.source, "images"):  # in-memory uint8 (N, C, H, W)
            arr = self.source.images[j]
            img = Image.fromarray(arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0))
        else:  # an image folder: decode the file
            img = Image.open(self.source.root / self.source.paths[j]).convert("RGB")
        return self.transform(img), int(self.source.labels[j])


def _transforms(info):
    norm = [T.ToImage(), T.ToDtype(torch.float32, scale=True), T.Normalize(info.mean, info.std)]
    if info.folder:
        size = info.image_size
        train = T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), *norm])
        test = T.Compose([T.Resize(int(size * 256 / 224)), T.CenterCrop(size), *norm])
        return train, test
    side = info.image_size
    aug = [T.RandomCrop(side, padding=info.crop_padding)] if info.crop_padding else []
    aug += [T.RandomHorizontalFlip()] if info.hflip else []
    return T.Compose([*aug, *norm]), T.Compose(norm)


def official_score(model, sources, splits, info, device: str, workers: int, seed: int) -> float:
    """The official per-candidate path: loaders built for this candidate, 100 x 128 EMA batches, loader scoring."""
    train_tf, test_tf = _transforms(info)
    train = DataLoader(
        _Images(sources[0], splits.train_idx.numpy(), train_tf),
        batch_size=128,
        shuffle=True,
        num_workers=workers,
        drop_last=True,
        generator=torch.Generator().manual_seed(seed),
    )
    model.to(device).train()
    with torch.no_grad():
        for i, (x, _) in enumerate(train):
            if i == 100:
                break
            model(x.to(device))
    model.eval()
    hits = seen = 0
    test = DataLoader(_Images(sources[0], splits.search_idx.numpy(), test_tf), batch_size=128, num_workers=workers)
    with torch.no_grad():
        for x, y in test:
            hits += int((model(x.to(device)).argmax(1).cpu() == y).sum())
            seen += len(y)
    return hits / seen


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--candidates", type=int, default=30, help="evaluated candidates of the default study")
    ap.add_argument("--loader-workers", type=int, default=2, help="DataLoader workers of the official path")
    ap.add_argument("--model", default=None)
    ap.add_argument("--dataset", default=None)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--image-size", type=int, default=None)
    ap.add_argument("--search-per-class", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--abn-batches", type=int, default=None, help="fnnp-opt's calibration batches (default: run's)")
    ap.add_argument("--abn-batch-size", type=int, default=64, help="... of this many images")
    ap.add_argument("--reference-batches", type=int, default=100, help="the reference's calibration batches of 64")
    ap.add_argument("--json", type=Path, default=None, help="also write the per-candidate rows here")
    ap.add_argument("--report", type=Path, default=None, help="only print the summary of rows written by --json")
    args = ap.parse_args()
    started = stamp()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    if args.report:
        doc = json.loads(args.report.read_text())
        print(_measured(doc, args.report))
        _report(doc["rows"], doc["search_images"])
        return
    print(line(started), flush=True)

    flags = {k: getattr(args, k) for k in ("model", "dataset", "data_dir", "checkpoint", "image_size", "device")}
    tmp = tempfile.mkdtemp()
    calibration = {"abn_batches": args.abn_batches, "abn_batch_size": args.abn_batch_size}
    url = f"sqlite:///{tmp}/bench.db"
    # rerank 0: the per-candidate path is measured; a re-scoring after the search is not part of it
    cfg = settle(resolve(**flags, **calibration, search_per_class=args.search_per_class, storage=url, rerank=0))
    p = prepare(cfg)
    info = p.splits.info
    full = load_splits(  # the reference's calibration: the paper's 100 batches of 64, same seed
        cfg.dataset,
        Path(cfg.data_dir) if cfg.data_dir else None,
        search_size=cfg.search_size,
        search_per_class=cfg.search_per_class,
        abn_batches=args.reference_batches,
        abn_batch_size=64,
        calib_seed=cfg.seed,
        image_size=cfg.image_size,
    )
    sources = info.load(Path(cfg.data_dir or info.default_dir), info)
    search_full = full.search_batches(cfg.eval_batch_size)
    storage = St.open_storage(cfg.resolved_storage())
    study = St.create_study(storage, "bench", p.fingerprint(), cfg.to_dict(), p.space, p.budget)
    S.enqueue_strategies(study, p.space, p.uniform, "uniform")  # as the default study: the uniform strategy first
    evaluator = make_evaluator(cfg, p, study)
    evaluator.slots = None
    print(
        f"{cfg.model} on {cfg.dataset}: {len(p.space)} dimensions, budget {p.budget.describe()}, "
        f"search split {len(p.splits.search)} images, {torch.get_num_threads()} threads, device {p.device}"
    )
    print(
        f"fnnp-opt default: ABN {cfg.abn_batches} x {cfg.abn_batch_size}, early stopping "
        f"{'on' if cfg.stops_early() else 'off'}, PBN {'on' if cfg.pbn else 'off'}; official: 100 x 128 EMA, "
        f"{args.loader_workers} loader workers"
    )

    rows, draws_s = [], 0.0
    while len(rows) < args.candidates:
        t = time.perf_counter()
        study.optimize(evaluator, n_trials=1)
        wall = time.perf_counter() - t
        trial = study.trials[-1]
        if not St.is_evaluated(trial):
            draws_s += wall
            continue
        ratios = trial_ratios(p.space, trial)
        t = time.perf_counter()
        official = official_score(p.pruner.prune(ratios), sources, p.splits, info, p.device, args.loader_workers, 0)
        official_s = time.perf_counter() - t
        model = p.pruner.prune(ratios).to(p.device)
        calibrate_bn(model, full.calibration, p.device)
        reference = accuracy(model, search_full, p.device)
        rows.append(
            {
                "trial": trial.number,
                "fnnp": trial.value,
                "images": trial.user_attrs["images_scored"],
                "fnnp_s": wall,
                "fnnp_with_draws_s": wall + draws_s,
                "official": official,
                "official_s": official_s,
                "reference": reference,
            }
        )
        draws_s = 0.0
        r = rows[-1]
        print(
            f"  trial {r['trial']:3d}: fnnp-opt {r['fnnp']:.4f} ({r['images']} images, {r['fnnp_s']:.2f} s)  "
            f"official {r['official']:.4f} ({r['official_s']:.2f} s)  reference {r['reference']:.4f}",
            flush=True,
        )
    _report(rows, len(p.splits.search))
    if args.json:
        doc = {"search_images": len(p.splits.search), "stamp": started, "rows": rows}
        args.json.write_text(json.dumps(doc, indent=1) + "\n")


def _measured(doc: dict, path: Path) -> str:
    """Where the rows of ``doc`` were measured: their stamp, or the commits of ``path`` for rows written before."""
    if "stamp" in doc:
        return line(doc["stamp"])
    return f"measured on a {EARLIER_MACHINE}; {path.name} gained its rows in commit " + ", ".join(committed(path))


def _report(rows: list[dict], n_search: int) -> None:
    fn, off, ref = (np.array([r[k] for r in rows]) for k in ("fnnp", "official", "reference"))
    keys = ("official_s", "fnnp_s", "fnnp_with_draws_s")
    labels = ("official path", "fnnp-opt default (its trial)", "fnnp-opt, rejected draws included")
    print(f"\n{len(rows)} candidates, seconds per candidate (median, mean) and how much faster than the official path")
    for key, label in zip(keys, labels):
        med, mean = statistics.median(r[key] for r in rows), statistics.mean(r[key] for r in rows)
        ratio = (
            ""
            if key == "official_s"
            else (
                f"   {statistics.median(r['official_s'] for r in rows) / med:5.1f}x, "
                f"{statistics.mean(r['official_s'] for r in rows) / mean:5.1f}x"
            )
        )
        print(f"  {label:36s} {med:7.3f} {mean:7.3f}{ratio}")
    stopped, seen = sum(r["images"] < n_search for r in rows), np.mean([r["images"] for r in rows])
    print(f"  fnnp-opt stopped {stopped} of {len(rows)} early; mean images scored {seen:.0f} of {n_search}")
    for label, a, b in (
        ("official vs fnnp-opt", off, fn),
        ("fnnp-opt vs reference", fn, ref),
        ("official vs reference", off, ref),
    ):
        c = with_interval("spearman", a, b)
        print(f"  Spearman {label:22s} {c.value:+.3f}  [{c.low:+.3f}, {c.high:+.3f}]")
    wins = {k: int(np.argmax(v)) for k, v in (("fnnp", fn), ("official", off), ("reference", ref))}
    best = ref[wins["reference"]]
    noise = 1.96 * math.sqrt(best * (1 - best) / n_search)
    for who in ("fnnp", "official"):
        gap = best - ref[wins[who]]
        same = wins[who] == wins["reference"]
        verdict = "the same candidate" if same else f"{'within' if gap <= noise else 'outside'} the noise"
        print(
            f"  {who:8s} winner: trial {rows[wins[who]]['trial']}, reference {ref[wins[who]]:.4f} vs the reference "
            f"winner's {best:.4f} (trial {rows[wins['reference']]['trial']}): {verdict} (gap {gap:.4f}, "
            f"binomial 95% {noise:.4f})"
        )


if __name__ == "__main__":
    main()
