"""How many ABN calibration batches the ranking needs: Spearman of each sweep count against the full 100.

    .venv/bin/python benchmarks/saturation.py sqlite:///studies/correlate-mbv1.db   # any correlate storages

Reads the studies `fnnp-opt correlate` stores (one per budget, their trials holding ``abn_<n>``,
the ABN accuracy after n calibration batches of 64, statistics reset, on the search split), also
while a correlate run is unfinished, and prints per study the Spearman coefficient of every
count's ranking against the largest count's, over the candidates scored so far. With ResNet-20's
``docs/correlate/sweep.csv`` (the same figures, written by correlate), this chose ``--abn-batches``'
default (docs/speed.md).
"""

from __future__ import annotations

import argparse
import re

import numpy as np
import optuna

from fnnp_opt.correlation import coefficient


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("storages", nargs="+", help="Optuna storage URLs of correlate runs")
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    for url in args.storages:
        for summary in optuna.get_all_study_summaries(url):
            study = optuna.load_study(study_name=summary.study_name, storage=url)
            done = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
            counts = sorted(
                int(m.group(1)) for k in (done[0].user_attrs if done else {}) if (m := re.fullmatch(r"abn_(\d+)", k))
            )
            rows = [t for t in done if all(f"abn_{n}" in t.user_attrs for n in counts)]
            if len(rows) < 3 or not counts:
                print(f"{summary.study_name}: {len(rows)} candidates, too few to rank")
                continue
            full = np.array([t.user_attrs[f"abn_{counts[-1]}"] for t in rows])
            cells = "  ".join(
                f"{n}: {coefficient('spearman', np.array([t.user_attrs[f'abn_{n}'] for t in rows]), full):.4f}"
                for n in counts
            )
            print(f"{summary.study_name}: {len(rows)} candidates; Spearman against {counts[-1]} batches  {cells}")


if __name__ == "__main__":
    from _stamp import line

    print(line(), flush=True)  # the commit and the machine, above the figures
    main()
