"""Is data loading a trial's bottleneck on an image folder? Decode, cached and forward times side by side.

    python benchmarks/loading.py                       # 8 classes x 40 JPEGs of 320x240, 224 px input
    python benchmarks/loading.py --images 80 --model mobilenet_v2

Writes a synthetic ImageFolder (JPEG, ImageNet-like sizes) to a temporary folder, loads it as
`--dataset folder`, and times, over the search split's evaluation batches:

* the first pass (decoding by the worker processes, what a study pays once),
* every later pass (the decoded uint8 images, normalised on the fly: what each candidate pays),
* the model's eval-mode forward over the same batches (what each candidate pays anyway).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def write_folder(root: Path, classes: int, per_class: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for part, n in (("train", per_class), ("val", 2)):
        for c in range(classes):
            folder = root / part / f"class{c:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                # smooth random colour fields compress like photos, unlike white noise
                small = rng.integers(0, 256, (15, 20, 3), dtype=np.uint8)
                img = Image.fromarray(small).resize((320, 240), Image.BILINEAR)
                img.save(folder / f"{i}.JPEG", quality=90)


def timed(batches) -> float:
    t0 = time.perf_counter()
    for _ in batches:
        pass
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classes", type=int, default=8)
    parser.add_argument("--images", type=int, default=40, help="training JPEGs per class")
    parser.add_argument("--per-class", type=int, default=20, help="held out per class (the search split)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--model", default="resnet50")
    args = parser.parse_args()

    from fnnp_opt.data import load_splits, loader_workers
    from fnnp_opt.models import create_model

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_folder(root, args.classes, args.images)
        s = load_splits("folder", root, search_per_class=args.per_class, abn_batches=1, abn_batch_size=1)
        batches = s.search.batches(args.batch)
        first = timed(batches)
        cached = min(timed(batches) for _ in range(3))
        model = create_model(args.model, 3, s.info.num_classes).eval()
        with torch.no_grad():
            t0 = time.perf_counter()
            for x, _ in batches:
                model(x)
            forward = time.perf_counter() - t0
    n = len(s.search)
    print(f"{n} images at {s.info.image_size} px, batches of {args.batch}, {loader_workers()} decoding workers")
    print(f"first pass (decode):         {first:7.2f} s  {n / first:7.0f} images/s")
    print(f"later passes (from memory):  {cached:7.2f} s  {n / cached:7.0f} images/s")
    print(f"{args.model} forward, eval:     {forward:7.2f} s  {n / forward:7.0f} images/s")
    print(f"per candidate, loading costs {cached / forward:.1%} of the forward pass (the decode, once per study:")
    print(f"{first / forward:.2f}x one forward pass)")


if __name__ == "__main__":
    from _stamp import line

    print(line(), flush=True)  # the commit and the machine, above the figures
    main()
