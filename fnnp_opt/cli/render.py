"""What the command line shows: progress bars (or plain lines off a terminal) and each command's summary."""

from __future__ import annotations

import math
from contextlib import contextmanager
from functools import partial
from typing import Callable, Iterator

from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from fnnp_opt import commands

console = Console(stderr=True)  # progress, logs, notes and errors
out = Console()  # the results
SHORT_LAYOUT = {"nchw": "NCHW", "channels-last": "NHWC"}


class BarProgress:
    """Rich progress bars implementing :class:`fnnp_opt.progress.Progress`."""

    def __init__(self, progress: Progress) -> None:
        self._p = progress

    @contextmanager
    def task(self, description: str, total: int | None) -> Iterator[Callable[[int], None]]:
        tid = self._p.add_task(description, total=total)
        try:
            yield partial(self._p.advance, tid)  # advance(n), by 1 when n is left out
        finally:
            self._p.remove_task(tid)


@contextmanager
def bars() -> Iterator[BarProgress | commands.LineProgress]:
    """The progress of a command: bars on a terminal, else plain lines at a steady pace."""
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    if not console.is_terminal:  # a log file, a pipe, CI: plain lines at a steady pace instead of bars
        yield commands.LineProgress(lambda line: console.print(line, highlight=False, soft_wrap=True, markup=False))
        return
    with Progress(*columns, console=console, transient=True) as p:
        yield BarProgress(p)


def threads(n: int) -> str:
    """``n threads`` (``1 thread``)."""
    return f"{n} thread{'s' * (n > 1)}"


def print_baselines(r: commands.RunResult) -> None:
    """One line: the winner's score against each baseline's (the rerank's scores after a rerank)."""
    rows = [b for b in r.baselines if b["score"] is not None]
    if not rows:
        return
    by = "abn-ft, the rerank's score" if r.rerank is not None else r.score_label
    cells = ", ".join(f"{b['strategy']} (trial {b['trial']}) {b['score']:.4f}" for b in rows)
    best = max(rows, key=lambda b: b["score"])
    margin = 100 * (best["winner_score"] - best["score"])
    verdict = (
        f"the winner is the {best['strategy']} baseline"
        if best["trial"] == r.best_trial
        else f"the winner {margin:+.2f} pt over the best baseline ({best['strategy']})"
    )
    out.print(f"baselines by {by}: {cells}; {verdict}")


def print_summary(r: commands.RunResult) -> None:
    """The summary of `run` or `finetune`: the search, then the delivered network against the base (or the Pareto
    front)."""
    human, rep = commands.human, r.report
    out.print(
        f"study [bold]{r.study_name}[/bold] ({r.storage}): {rep.total_evaluated} candidates evaluated "
        f"({rep.evaluated} this session, {rep.rejected} draws outside the window, {rep.failed} failed)"
    )
    if r.front:
        print_front(r)
        return
    if r.rerank is not None:
        rr = r.rerank
        assert rr.winner is not None  # a finished rerank names its winner
        out.print(
            f"rerank: {len(rr.scores)} trials (the top K by ABN and the baselines) re-scored with {rr.key} "
            f"({rr.rescored} this session, "
            f"{rr.seconds:.0f}s); the winner scores {rr.scores[rr.winner]:.4f}"
        )
    out.print(
        f"trial {r.best_trial}: {r.score_label} {r.best_value:.4f} on the search split; budget {r.budget.describe()}"
    )
    print_baselines(r)
    if r.delivered_by:
        out.print(f"trial {r.best_trial} is being fine-tuned by worker {r.delivered_by}; nothing left to do here")
        return
    assert r.base is not None and r.pruned is not None  # delivered
    b, p = r.base.to_dict(), r.pruned.to_dict()
    table = Table(
        title=f"base vs pruned: test set, FLOPs as MACs, median CPU times ({threads(b['threads'])}, BN folded, "
        "each in its faster layout)"
    )
    for col in ("", "test acc", "FLOPs", "params", "CPU 1 image", f"CPU {b['batch_images']} images"):
        table.add_column(col, justify="right")
    for label, m in (("base", b), ("pruned", p)):
        table.add_row(
            label,
            f"{m['test_accuracy']:.2%}",
            human(m["flops"]),
            human(m["params"]),
            f"{m['latency_ms']:.2f} ms {SHORT_LAYOUT[m['latency_layout']]}",
            f"{m['batch_ms']:.1f} ms {SHORT_LAYOUT[m['batch_layout']]}",
        )
    table.add_row(
        "speed-up",
        f"{100 * (p['test_accuracy'] - b['test_accuracy']):+.2f} pt",
        f"{b['flops'] / p['flops']:.2f}x",
        f"{b['params'] / p['params']:.2f}x",
        f"{b['latency_ms'] / p['latency_ms']:.2f}x",
        f"{b['batch_ms'] / p['batch_ms']:.2f}x",
    )
    out.print(table)
    for note in r.speed_notes:
        out.print(f"[yellow]note:[/yellow] {note}", highlight=False)
    if r.latency is not None:
        lat = r.latency
        inside = "inside" if lat["within_window"] else "[yellow]outside[/yellow]"
        out.print(
            f"latency budget ({lat['device']}, {threads(lat['threads'])}, batch {lat['batch']}, {lat['layout']}): "
            f"measured {lat['measured_ms']:.3f} ms ({lat['measured_ratio']:.2f}x the base's {lat['base_ms']:.3f} ms "
            f"{SHORT_LAYOUT[lat['base_layout']]}), {inside} the window [{lat['window_ms'][0]:.3f}, "
            f"{lat['window_ms'][1]:.3f}] ms; predicted {lat['predicted_ms'] or float('nan'):.3f} ms"
            + (
                f"; the table's median error over {lat['candidates_timed']} timed candidates: "
                f"{lat['prediction_error_median']:.1%}"
                if lat["candidates_timed"]
                else ""
            ),
            highlight=False,
        )
    if r.finetune_losses:
        out.print(
            f"fine-tune: {len(r.finetune_losses)} epochs"
            + (" distilled from the base" if r.distilled else "")
            + ", training loss "
            + " -> ".join(f"{x:.3f}" for x in r.finetune_losses)
        )
    if r.onnx is not None:
        times = ", ".join(f"{ms:.3g} ms at batch {b}" for b, ms in r.onnx["ort_ms"].items())
        out.print(
            f"pruned.onnx: onnxruntime matches PyTorch within {r.onnx['max_abs_diff']:.2g}; runs in {times} (CPU)",
            highlight=False,
        )
    stages = ", ".join(f"{k} {v:.0f}s" for k, v in r.stage_seconds.items())
    onnx = " + pruned.onnx" if r.onnx is not None else ""
    out.print(
        f"exported to {r.export}/pruned.json + pruned.safetensors{onnx} (load with fnnp_opt.load_pruned); {stages}"
    )
    print_published(r)


def print_published(r: commands.RunResult) -> None:
    """Where the delivered files went in the study's artifact store, if they went there."""
    if r.published is None:
        return
    if "report.md" in r.published.artifacts:
        out.print(f"report: {r.export or r.front_files[0].parent}/report.md and its figures", highlight=False)
    out.print(f"artifacts: {r.published.describe()} (fnnp-opt dashboard serves them)", highlight=False)


def print_front(r: commands.RunResult) -> None:
    """The Pareto front of a `--objective pareto` run, and how to fine-tune one of its points."""
    human = commands.human
    timed = r.budget.unit == "ms"
    table = Table(title=f"Pareto front: ABN accuracy vs {r.budget.unit}, {r.budget.describe()}")
    for col in (
        "trial",
        "FLOPs",
        "kept",
        *(("latency", "measured") if timed else ()),
        "ABN acc",
        "PBN acc",
        "params",
        "",
    ):
        table.add_column(col, justify="right")
    for row in r.front:
        pbn, measured = row["pbn_accuracy"], row.get("latency_measured_ms")
        latency = (f"{row['latency_ms']:.3f} ms", "" if measured is None else f"{measured:.3f} ms") if timed else ()
        table.add_row(
            str(row["trial"]),
            human(row["flops"]),
            f"{row['flops_ratio']:.1%}",
            *latency,
            f"{row['abn_accuracy']:.4f}",
            "" if pbn is None else f"{pbn:.4f}",
            human(row["params"] or 0),
            row["strategy"],
        )
    out.print(table)
    on_front: dict[str, list[str]] = {}
    for row in r.front:
        if row["strategy"]:
            on_front.setdefault(row["strategy"], []).append(str(row["trial"]))
    if on_front:
        words = "; ".join(f"{name} (trial{'s' * (len(n) > 1)} {', '.join(n)})" for name, n in on_front.items())
        out.print(f"baselines on the front: {words}; every other baseline trial is dominated")
    else:
        out.print("baselines on the front: none; every baseline trial is dominated")
    files = " + ".join(str(f) for f in r.front_files)
    out.print(
        f"front written to {files}; fine-tune a point with "
        f"`fnnp-opt finetune --study-name {r.study_name} --storage {r.storage} --trial N`"
    )
    print_published(r)


def print_paper(recipe: commands.Recipe, result: commands.RunResult) -> None:
    """The paper's figures beside this run's, for a recipe of a paper experiment."""
    human = commands.human
    if not result.pruned or not recipe.paper:
        return
    got = result.pruned.to_dict()
    out.print(
        f"paper, {recipe.paper.get('source', recipe.name)}: {recipe.paper_result()} | this run: "
        f"{human(got['flops'])} FLOPs, {got['test_accuracy']:.2%} top-1 after {len(result.finetune_losses)} "
        f"fine-tune epochs (recipe: {recipe.config.get('epochs', '?')})",
        highlight=False,
        soft_wrap=True,
    )



def print_correlation(result: commands.CorrelateResult, settings: commands.CorrelateSettings) -> None:
    """The result of `correlate`: each score's Spearman correlation per budget, against the ground truth's noise."""
    table = Table(
        title="Spearman with the fine-tuned accuracy \\[bootstrap 95%]",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
    )
    top = f"abn_{max(settings.sweep)}"
    ft = [f"abn_ft{n}" for n in sorted(settings.score_steps)][-1:]  # the longest short fine-tune
    scores = ("PBN", "ABN", *(c.replace("abn_ft", "ABN-FT") for c in ft))
    for col in ("FLOPs", "n", *scores, "spread\n(pt)", "noise\n(pt)", "ceiling", "verdict"):
        table.add_column(col, justify="right", no_wrap=col in scores)
    for b in result.budgets:
        cells = []
        for col in ("pbn", top, *ft):
            c = b.spearman(col)
            cells.append(
                "n/a\n(constant)" if math.isnan(c.value) else f"{c.value:+.2f}\n\\[{c.low:+.2f}, {c.high:+.2f}]"
            )
        n = b.noise
        verdict = "within\nnoise" if n.within_noise else "real"
        table.add_row(
            b.budget,
            str(len(b.rows)),
            *cells,
            f"{100 * n.spread:.2f}",
            f"{100 * n.floor:.2f}",
            f"{n.ceiling:.2f}",
            verdict,
        )
    out.print(table)
    out.print(
        f"ABN: {max(settings.sweep)} batches, reset + cumulative average (the official EMA variant and the sweep are "
        "in coefficients.csv and sweep.csv). spread: the sd of the fine-tuned accuracy across candidates; noise: "
        "the larger of the fine-tune's seed-to-seed sd and the binomial error of the evaluation set; ceiling: the "
        "largest correlation any score can reach against a ground truth this noisy; within noise (spread < 2 x "
        "noise): at this budget the choice of strategy hardly matters. pt: accuracy points.",
        soft_wrap=True,
    )
    out.print("written: " + ", ".join(str(f) for f in result.files), soft_wrap=True)


def print_space(r: commands.SpaceReport) -> None:
    """The result of `space`: its dimensions and FLOPs shares, the budget's reach and random sampling's hit rate."""
    human = commands.human
    rounding = f", kept channels in multiples of {r.round_to}" if r.round_to > 1 else ""
    table = Table(title=f"search space: {len(r.dims)} ratios in [0, {r.max_rate}]{rounding}")
    for col in ("parameter", "channels", "convs", "FLOPs cut by R alone"):
        table.add_column(col, justify="left" if col == "parameter" else "right")
    for d in r.dims:
        table.add_row(d["param"], str(d["channels"]), str(len(d["convs"])), f"{d['flops_share']:.1%}")
    out.print(table)
    b = r.budget
    out.print(
        f"base {human(b.base)} FLOPs (MACs); reachable [{human(r.lowest)}, {human(b.base)}] "
        f"= [{r.lowest / b.base:.1%}, 100%] of the base"
    )
    out.print(f"budget {b.describe()}")
    rate = r.accepted / r.draws
    out.print(f"random sampling: {r.accepted} of {r.draws} draws land in the window ({rate:.1%})")
    if r.uniform:
        words = ", ".join(map(commands.uniform_words, r.uniform))
        out.print(f"uniform L1 baseline, queued first in every study: {words}")
    for line in r.no_uniform:
        out.print(f"uniform L1 baseline: {line}")

