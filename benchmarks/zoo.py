"""What deriving and pruning costs on every torchvision builder, written to docs/zoo.md.

    python benchmarks/zoo.py run                 # every builder, one process each (about 15 min here)
    python benchmarks/zoo.py run --only densenet121,resnet50
    python benchmarks/zoo.py report              # docs/zoo.md from docs/zoo/results.jsonl

Per builder (random weights, 10 classes, 3 channels, the smallest of 32/64/96 px it runs on):
the search space's dimension count, the seconds to derive it (trace, groups, plans, the pruned-forward
check), the median milliseconds of one prune at a random strategy (deep copy + cuts), and the FLOPs
left. One thread, one process per builder, so a builder that hangs or crashes is recorded as such.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _stamp import provenance, stamp

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "zoo" / "results.jsonl"
REPORT = ROOT / "docs" / "zoo.md"
SIZES = (32, 64, 96)


def measure(name: str) -> dict:
    import numpy as np
    import torch

    from fnnp_opt.flops import count
    from fnnp_opt.models import create_model, find_classifier
    from fnnp_opt.prune import Pruner
    from fnnp_opt.space import SearchSpace

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = create_model(name, 3, 10).eval()
    size = None
    for s in SIZES:
        try:
            with torch.no_grad():
                model(torch.zeros(1, 3, s, s))
            size = s
            break
        except Exception:
            continue
    shape = (1, 3, size, size)
    example = torch.zeros(shape)
    t0 = time.perf_counter()
    pruner = Pruner(model, example, find_classifier(model, example, 10))
    derive = time.perf_counter() - t0
    space = SearchSpace.from_groups(pruner.groups, 0.5)
    rng = np.random.default_rng(0)
    times, pruned = [], None
    for _ in range(3):
        ratios = {d.root: float(rng.uniform(0, 0.5)) for d in space.dims}
        t0 = time.perf_counter()
        pruned = pruner.prune(ratios)
        times.append(time.perf_counter() - t0)
    base, after = count(model, shape)[0], count(pruned, shape)[0]
    return {
        "name": name,
        "size": size,
        "params": sum(p.numel() for p in model.parameters()),
        "dims": len(space),
        "shared": sum(d.coupled for d in space.dims),
        "derive_s": round(derive, 2),
        "prune_ms": round(1e3 * statistics.median(times), 1),
        "flops_left": round(after / base, 3),
    }


def run(only: list[str] | None, timeout: int) -> None:
    from fnnp_opt.models import UNSUPPORTED, torchvision_builders

    names = only or [n for n in torchvision_builders() if n not in UNSUPPORTED]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    done = {json.loads(line)["name"] for line in RESULTS.read_text().splitlines()} if RESULTS.exists() else set()
    for name in names:
        if name in done and not only:
            continue
        cmd = [sys.executable, __file__, "one", name]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
            lines = proc.stdout.strip().splitlines()
            row = json.loads(lines[-1]) if proc.returncode == 0 and lines else {"name": name, "error": _last(proc)}
        except subprocess.TimeoutExpired:
            row = {"name": name, "error": f"no result within {timeout} s"}
        row["stamp"] = stamp()
        print(json.dumps(row), flush=True)
        with RESULTS.open("a") as f:
            f.write(json.dumps(row) + "\n")


def _last(proc) -> str:
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else f"exit {proc.returncode}"


def report() -> None:
    rows = {}
    for line in RESULTS.read_text().splitlines():
        row = json.loads(line)
        rows[row["name"]] = row  # the latest run of each builder
    out = [
        "# torchvision's classification builders in fnnp-opt",
        "",
        "Measured by `python benchmarks/zoo.py run && python benchmarks/zoo.py report` (the machine and the commit",
        "are under the table): one thread, random weights, 10 classes. *dims*: ratios in the search space",
        "(*shared*: of which residual/coupled groups); *derive*: seconds to trace the model, build every group's plan and check a",
        "pruned forward; *prune*: median milliseconds to cut one random strategy (R = 0.5) from a copy;",
        "*FLOPs left*: that strategy's share of the base FLOPs (thop). Absolute times vary with the machine.",
        "",
        "| builder | input | params | dims | shared | derive s | prune ms | FLOPs left |",
        "|---|---|---|---|---|---|---|---|",
    ]
    failed = []
    for name in sorted(rows):
        r = rows[name]
        if "error" in r:
            failed.append(f"- `{name}`: {r['error']}")
            continue
        out.append(
            f"| {name} | {r['size']} px | {r['params'] / 1e6:.1f}M | {r['dims']} | {r['shared']} | "
            f"{r['derive_s']:.2f} | {r['prune_ms']:.0f} | {r['flops_left']:.1%} |"
        )
    if failed:
        out += ["", "Builders that failed here (see docs/models.md for why):", "", *failed]
    out += ["", *provenance(list(rows.values()), RESULTS, "builders")]
    REPORT.write_text("\n".join(out) + "\n")
    print(f"wrote {REPORT} ({len(rows)} builders)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--only", help="comma-separated builder names (re-measured even if recorded)")
    r.add_argument("--timeout", type=int, default=300, help="seconds per builder")
    sub.add_parser("report")
    o = sub.add_parser("one")
    o.add_argument("name")
    args = parser.parse_args()
    if args.cmd == "run":
        run(args.only.split(",") if args.only else None, args.timeout)
    elif args.cmd == "report":
        report()
    else:
        print(json.dumps(measure(args.name)))


if __name__ == "__main__":
    main()
