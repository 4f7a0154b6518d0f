"""The Pareto front of ``--objective pareto``: ABN accuracy against FLOPs (or predicted latency with
``--latency``), as a table, a CSV and a plot."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import optuna
from optuna.trial import FrozenTrial

from fnnp_opt.flops import Budget, human
from fnnp_opt.optimize import evaluated


def pareto_front(study: optuna.Study) -> list[FrozenTrial]:
    """Evaluated trials no other beats on both ABN accuracy and cost (FLOPs or latency), by rising cost."""
    trials = sorted(evaluated(study), key=lambda t: (t.values[1], -t.values[0]))
    front, best = [], -np.inf
    for t in trials:
        if t.values[0] > best:
            front.append(t)
            best = t.values[0]
    return front


def front_rows(study: optuna.Study) -> list[dict]:
    """The Pareto front as table rows, by rising cost; with ``--latency`` also ``latency_ms`` (predicted),
    ``latency_measured_ms`` and ``latency_ratio`` (predicted, of the base's). ``strategy`` names a baseline's
    trial (``uniform``, ``global``, ``sensitivity``), else is empty."""
    return [
        {
            "trial": t.number,
            "flops": t.user_attrs["flops"],
            "flops_ratio": t.user_attrs.get("flops_ratio", t.values[1]),
            **(
                {
                    "latency_ms": t.user_attrs["latency_ms"],
                    "latency_measured_ms": t.user_attrs.get("latency_measured_ms"),
                    "latency_ratio": t.values[1],
                }
                if "latency_ms" in t.user_attrs
                else {}
            ),
            "abn_accuracy": t.values[0],
            "pbn_accuracy": t.user_attrs.get("pbn_accuracy"),
            "params": t.user_attrs.get("params"),
            "uniform": t.user_attrs.get("strategy") == "uniform",
            "strategy": t.user_attrs.get("strategy") or "",  # the baseline it is (uniform, global, ...), or ""
        }
        for t in pareto_front(study)
    ]


def write_front(study: optuna.Study, rows: list[dict], budget: Budget, output: Path) -> list[Path]:
    """Write the front (``rows`` from :func:`front_rows`) as ``pareto.csv``, and ``pareto.png`` with every
    evaluated candidate and the uniform baselines beside it."""
    import csv

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    output.mkdir(parents=True, exist_ok=True)
    csv_path = output / "pareto.csv"
    with open(csv_path.with_suffix(".csv.tmp"), "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    csv_path.with_suffix(".csv.tmp").replace(csv_path)

    trials = evaluated(study)
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    ax.scatter([t.values[1] for t in trials], [t.values[0] for t in trials], s=12, c="0.7", label="evaluated")
    uniform = [t for t in trials if t.user_attrs.get("strategy") == "uniform"]
    ax.scatter(
        [t.values[1] for t in uniform],
        [t.values[0] for t in uniform],
        s=30,
        marker="s",
        c="tab:orange",
        label="uniform L1 (same ratio everywhere)",
    )
    ax.plot(
        [r.get("latency_ratio", r["flops_ratio"]) for r in rows],
        [r["abn_accuracy"] for r in rows],
        "o-",
        c="tab:blue",
        ms=4,
        label="Pareto front",
    )
    if budget.unit == "FLOPs":
        ax.set_xlabel(f"FLOPs kept (fraction of {human(budget.base)} MACs)")
    else:
        ax.set_xlabel(f"predicted latency (fraction of the base's {budget.fmt(budget.base)})")
    ax.set_ylabel("ABN accuracy on the search split")
    ax.set_title(f"{study.study_name}: {len(trials)} candidates")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    png = output / "pareto.png"
    fig.savefig(png)
    plt.close(fig)
    return [csv_path, png]
