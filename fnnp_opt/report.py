"""`fnnp-opt report`: a stored study's figures and a short Markdown summary.

Reads a study (nothing is written to its storage) and writes into one folder:

- ``history.png``: the study's score over trials (Optuna's optimization history);
- ``score_vs_flops.png`` (``score_vs_latency.png`` in a latency-budget study): the score of every
  evaluated candidate against its cost, the budget window shaded, the winner and the uniform L1
  trial marked; in a Pareto study ``pareto_front.png``, Optuna's Pareto-front plot with the same marks;
- ``allocation.png``: channels kept per layer group by the winner, by uniform L1 and by the base;
- ``importances.png``: Optuna's importances of the ratios (PED-ANOVA), when enough trials were evaluated;
- ``report.md``: the study, its budget, the winner against uniform L1 and the base, the test
  accuracy of a delivered export, and links to the figures.

Optuna's plots see an in-memory copy of the study in which only evaluated candidates are
complete (:func:`_evaluated_view`): draws outside the window that a penalty or a constraint left
complete would otherwise be drawn as scores.
"""

from __future__ import annotations

import logging
import sys
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import optuna
from optuna.trial import FrozenTrial, TrialState

from fnnp_opt import storage as St
from fnnp_opt.errors import FnnpError, OutputError, StorageError
from fnnp_opt.export import check_output_writable
from fnnp_opt.flops import Budget, human
from fnnp_opt.optimize import evaluated, outcome
from fnnp_opt.space import PREFIX, uniform_words

if TYPE_CHECKING:  # imported where it is used: drawing a report needs no artifact store
    from fnnp_opt.artifacts import Published

log = logging.getLogger(__name__)

MIN_IMPORTANCE_TRIALS = 11  # PED-ANOVA compares the best 10% with all: from 11 candidates that is 2 or more
DPI = 120
# colours of the three strategies, the same in every figure
BASE_COLOUR, UNIFORM_COLOUR, WINNER_COLOUR, OTHER_COLOUR = "#d9dde3", "#e8913a", "#2f6db3", "#7f8c99"
BASELINE_COLOURS = {"global": "#5aa469", "sensitivity": "#a05fb5"}  # the other baselines' bars
BASELINE_WORDS = {"global": "Torch-Pruning global ranking", "sensitivity": "per-layer sensitivity"}


@dataclass
class Report:
    """The files `fnnp-opt report` wrote (all in ``folder``)."""

    folder: Path
    summary: Path  # report.md
    history: Path | None = None  # the score over trials
    scores: Path | None = None  # score vs FLOPs or latency, or the Pareto front
    allocation: Path | None = None  # channels kept per layer: winner, uniform L1, base
    importances: Path | None = None  # None when skipped (see ``skipped``)
    skipped: dict[str, str] = field(default_factory=dict)  # figure file name -> why it was not drawn
    published: Published | None = None  # when the files were uploaded

    @property
    def figures(self) -> list[Path]:
        """The PNG files written, in the order report.md shows them."""
        return [p for p in (self.allocation, self.scores, self.history, self.importances) if p is not None]

    @property
    def files(self) -> list[Path]:
        """Every file written: the figures, then report.md."""
        return [*self.figures, self.summary]


@dataclass(frozen=True)
class Allocation:
    """The allocation figure's data: output channels kept per searchable layer group, in network order."""

    layers: tuple[str, ...]  # group names (the Optuna parameter without ``ratio.``), e.g. layer2.residual
    base: tuple[int, ...]  # channels of the unpruned base
    winner: tuple[int, ...]  # kept by the winner
    uniform: tuple[int, ...] | None  # kept by the uniform L1 trial; None when the study has none evaluated
    winner_trial: int
    uniform_trial: int | None
    # the other evaluated baselines (global, sensitivity): (strategy, trial, channels kept per layer)
    others: tuple[tuple[str, int, tuple[int, ...]], ...] = ()

    def as_dict(self) -> dict[str, dict[str, int | None]]:
        """{layer: {"winner": channels, "uniform": channels or None, "base": channels, <strategy>: channels}}."""
        uniform = self.uniform or (None,) * len(self.layers)
        out: dict[str, dict[str, int | None]] = {
            name: {"winner": w, "uniform": u, "base": b}
            for name, w, u, b in zip(self.layers, self.winner, uniform, self.base)
        }
        for strategy, _, kept in self.others:
            for name, k in zip(self.layers, kept):
                out[name][strategy] = k
        return out


@dataclass(frozen=True)
class _Facts:
    """What the figures and the summary need to know about a study, read once."""

    study: optuna.Study
    trials: list[FrozenTrial]  # the evaluated candidates
    winner: FrozenTrial  # the delivered trial, else the best score (a Pareto study: see _pareto_winner)
    uniform: FrozenTrial | None  # the evaluated uniform L1 trial (nearest the winner's cost when several)
    budget: Budget
    score_label: str  # what a trial's value is
    pareto: bool  # two objectives: (score, cost / base)
    latency: bool  # a latency budget (ms), not FLOPs
    delivered: dict | None  # the study's "result" attribute: the fine-tuned, tested export
    chosen: str = "delivered"  # why the winner is the winner, in words
    others: tuple[FrozenTrial, ...] = ()  # the other evaluated baselines (global, sensitivity), nearest the winner
    rerank: dict[str, float] = field(default_factory=dict)  # abn-ft by trial number (text) of the rerank that chose

    def cost(self, trial: FrozenTrial) -> float:
        """A trial's cost in % of the base's: FLOPs, measured latency, or the Pareto study's second objective."""
        if self.pareto:
            return 100 * trial.values[1]
        a = trial.user_attrs
        value = a.get("latency_measured_ms", a["latency_ms"]) if self.latency else a["flops"]
        return 100 * value / self.budget.base

    @property
    def cost_label(self) -> str:
        b = self.budget
        if self.latency:
            what = "predicted latency" if self.pareto else "measured latency"
            return f"{what}, % of the base's {b.fmt(b.base)}"
        return f"FLOPs (MACs), % of the base's {human(b.base)}"


def _facts(study: optuna.Study) -> _Facts:
    """Read a study made by fnnp-opt; raise :class:`StorageError` for a study fnnp-opt did not make, or
    :class:`FnnpError` for one with no evaluated candidate."""
    attrs = study.user_attrs
    missing = [key for key in ("config", "space", "budget") if key not in attrs]
    if missing:
        raise StorageError(
            f"study {study.study_name!r} was not created by fnnp-opt (it lacks the user attributes "
            f"{', '.join(missing)}); pass the --study-name of a study `fnnp-opt run` made"
        )
    trials = evaluated(study)
    if not trials:
        states = ", ".join(f"{n} {s}" for s, n in _state_counts(study).items() if n) or "no trials"
        raise FnnpError(
            f"study {study.study_name!r} has no evaluated candidate to report on ({states}); run "
            "`fnnp-opt run` with the same options to evaluate some, or pass another --study-name"
        )
    config, stored = attrs["config"], attrs["budget"]
    pareto = len(study.directions) == 2
    latency = config.get("latency") is not None
    budget = Budget(
        stored["base"], stored["target"], stored["low"], stored["high"], pareto, "ms" if latency else "FLOPs"
    )
    label = "abn-ft score" if config.get("score") == "abn-ft" else "ABN accuracy"
    best = max(trials, key=lambda t: (t.values[0], -t.number))
    facts = _Facts(study, trials, best, None, budget, label, pareto, latency, None, "best score")
    delivered = attrs.get("result")
    by_number = {t.number: t for t in trials}
    if delivered is not None and delivered.get("trial") in by_number:
        scores = _rerank_scores(study, delivered)
        won = scores.get(str(delivered["trial"]))
        chosen = "delivered" if won is None else f"delivered: the best abn-ft in the rerank, {won:.4f}"
        facts = replace(facts, winner=by_number[delivered["trial"]], delivered=delivered, chosen=chosen, rerank=scores)
    elif pareto:
        facts = _pareto_winner(facts)
    nearest: dict[str, tuple[tuple, FrozenTrial]] = {}
    for t in trials:
        strategy = t.user_attrs.get("strategy")
        if strategy:
            key = (abs(facts.cost(t) - facts.cost(facts.winner)), t.number)
            if strategy not in nearest or key < nearest[strategy][0]:
                nearest[strategy] = (key, t)
    others = tuple(t for name, (_, t) in nearest.items() if name != "uniform")
    return replace(facts, uniform=nearest["uniform"][1] if "uniform" in nearest else None, others=others)


def _pareto_winner(f: _Facts) -> _Facts:
    """A Pareto study nobody fine-tuned a point of yet: the point of the front that beats the uniform L1
    trial nearest its cost by the most (the best score alone would be the least pruned point)."""
    from fnnp_opt.pareto import pareto_front

    uniform = [t for t in f.trials if t.user_attrs.get("strategy") == "uniform"]
    points = [t for t in pareto_front(f.study) if t.user_attrs.get("strategy") != "uniform"]
    if not uniform or not points:
        return f

    def gain(t: FrozenTrial) -> float:
        near = min(uniform, key=lambda u: abs(f.cost(u) - f.cost(t)))
        return t.values[0] - near.values[0]

    return replace(
        f,
        winner=max(points, key=lambda t: (gain(t), -t.number)),
        chosen="Pareto point best against uniform L1 at its cost",
    )


def _state_counts(study: optuna.Study) -> dict[str, int]:
    """Trials by what became of them: evaluated, outside the window, failed, surplus, running or queued."""
    label = {"rejected": "outside the window", "unfinished": "running or queued"}
    counts = dict.fromkeys(("evaluated", "outside the window", "failed", "surplus", "running or queued"), 0)
    for t in study.get_trials(deepcopy=False):
        kind = outcome(t)
        counts[label.get(kind, kind)] += 1
    return counts


# --------------------------------------------------------------------------- the allocation


def allocation(study: optuna.Study) -> Allocation:
    """Channels kept per layer group by the winner (the delivered trial, else the best score; in a Pareto study
    the front's point best against the uniform L1 trial nearest its cost) and by that uniform L1 trial, beside
    the base's, from the trials' ``channels`` and the study's ``space``.

    Raises :class:`StorageError` when the winner records no channels (a study from before they were kept).
    """
    return _allocation(_facts(study))


def _allocation(f: _Facts) -> Allocation:
    space = f.study.user_attrs["space"]
    layers = tuple(d["param"][len(PREFIX) :] for d in space)
    kept = f.winner.user_attrs.get("channels")
    if not kept or any(name not in kept for name in layers):
        raise StorageError(
            f"trial {f.winner.number} of study {f.study.study_name!r} records no kept channels per layer (a study "
            "made before fnnp-opt stored them); fine-tune it with `fnnp-opt finetune --trial N` to see its plan "
            "in pruned.json"
        )
    uniform, uniform_trial = None, None
    if f.uniform is not None and all(name in f.uniform.user_attrs.get("channels", {}) for name in layers):
        uniform = tuple(int(f.uniform.user_attrs["channels"][name]) for name in layers)
        uniform_trial = f.uniform.number
    others = tuple(
        (t.user_attrs["strategy"], t.number, tuple(int(t.user_attrs["channels"][name]) for name in layers))
        for t in f.others
        if all(name in t.user_attrs.get("channels", {}) for name in layers)
    )
    return Allocation(
        layers,
        tuple(int(d["channels"]) for d in space),
        tuple(int(kept[name]) for name in layers),
        uniform,
        f.winner.number,
        uniform_trial,
        others,
    )


def allocation_figure(study: optuna.Study):
    """The allocation figure (a :class:`matplotlib.figure.Figure`): per layer group, in network order, the
    base's output channels as a wide pale bar, and in front of it the channels kept by uniform L1, by the
    other baselines and by the winner. Its bar containers' labels are ``unpruned base`` and labels that start with
    ``uniform L1 (trial N)``, ``Torch-Pruning global ranking (trial N)``, ``per-layer sensitivity (trial N)`` and
    ``winner (trial N)``; the x tick labels are the layer names."""
    return _allocation_figure(_facts(study))


def _allocation_figure(f: _Facts):
    import matplotlib.style
    import numpy as np
    from matplotlib.figure import Figure

    a = _allocation(f)
    n = len(a.layers)
    x = np.arange(n)
    with matplotlib.style.context("default"):
        fig = Figure(figsize=(max(7.0, 0.62 * n + 2.4), 4.8), dpi=DPI, layout="constrained")
        ax = fig.add_subplot()
        ax.bar(x, a.base, 0.84, color=BASE_COLOUR, edgecolor="#b3bac4", linewidth=0.8, label="unpruned base", zorder=1)
        pairs = [(a.winner, WINNER_COLOUR, f"winner (trial {a.winner_trial}): % of the base's channels kept")]
        if a.uniform is not None and f.uniform is not None:  # the one only with the other
            ratio = _uniform_ratio(f.uniform)
            pairs.insert(0, (a.uniform, UNIFORM_COLOUR, f"uniform L1 (trial {a.uniform_trial}): {ratio}"))
        for strategy, number, kept in a.others:
            words = BASELINE_WORDS.get(strategy, strategy)
            pairs.insert(-1, (kept, BASELINE_COLOURS.get(strategy, OTHER_COLOUR), f"{words} (trial {number})"))
        width = {1: 0.5, 2: 0.34}.get(len(pairs), 0.8 / len(pairs))
        for k, (kept, colour, label) in enumerate(pairs):
            offset = (k - (len(pairs) - 1) / 2) * width
            bars = ax.bar(x + offset, kept, width, color=colour, label=label, zorder=2)
            if label.startswith("winner") and n <= 32:  # the share of its channels each layer keeps
                shares = [f"{c / b:.0%}" for c, b in zip(kept, a.base)]
                ax.bar_label(bars, shares, padding=2, fontsize=7, color=WINNER_COLOUR)
        ax.set_xticks(x, a.layers, rotation=40, ha="right", rotation_mode="anchor", fontsize=8.5)
        ax.set_xlim(-0.6, n - 0.4)
        ax.set_ylim(0, max(a.base) * 1.1)
        ax.set_ylabel("output channels kept")
        ax.set_xlabel("layer group (network order; a residual group is every conv that feeds one sum)")
        ax.yaxis.grid(True, color="#e6e6e6", zorder=0)
        ax.set_axisbelow(True)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
        ax.legend(loc="upper left", fontsize=8.5, frameon=False)
        ax.set_title(_allocation_title(f), fontsize=10, loc="left")
    return fig


def _uniform_ratio(trial: FrozenTrial) -> str:
    """The ratio of a uniform trial (as applied, after --fit-budget), in words (:func:`uniform_words`)."""
    return uniform_words(trial.user_attrs.get("ratios") or {k[len(PREFIX) :]: v for k, v in trial.params.items()})


def _space_words(config: dict) -> str:
    """The search space as a study's stored run settings give it: R and the channel rounding."""
    rounded = config.get("round_to") or 1  # a study made before --round-to existed kept every count
    words = f"ratios in [0, {config.get('max_rate')}] per group"
    return words + (f", kept channels in multiples of {rounded}" if rounded > 1 else ", every channel count allowed")


def _allocation_title(f: _Facts) -> str:
    w, u = f.winner, f.uniform
    versus = f"; uniform L1 {u.values[0]:.4f}" if u is not None else ""
    what = f.chosen
    return (
        f"{f.study.study_name}: channels kept per layer\n"
        f"winner trial {w.number} ({what}): {f.score_label} {w.values[0]:.4f} at {f.cost(w):.1f}% of the base's "
        f"{'latency' if f.latency else 'FLOPs'}{versus}\n"
        f"budget {f.budget.describe()}"
    )


# --------------------------------------------------------------------------- the other figures


@contextmanager
def _optuna_plotting() -> Iterator[None]:
    """Optuna's matplotlib plots, quietly: its style sheet (ggplot) stays inside, its experimental and
    small-sample warnings and its study-creation log lines are not shown."""
    import matplotlib

    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with matplotlib.rc_context(), warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            warnings.simplefilter("ignore", UserWarning)
            yield
    finally:
        optuna.logging.set_verbosity(verbosity)


def _evaluated_view(study: optuna.Study) -> optuna.Study:
    """An in-memory copy of ``study`` in which only evaluated candidates are COMPLETE (every other trial is
    PRUNED, or FAIL as it was), with the same trial numbers: what Optuna's plots and importances should see."""
    view = optuna.create_study(directions=study.directions, sampler=optuna.samplers.RandomSampler(seed=0))
    copies = []
    for t in study.get_trials(deepcopy=False):  # numbered 0, 1, ... in both studies
        keep = St.is_evaluated(t)
        state = TrialState.COMPLETE if keep else TrialState.FAIL if t.state is TrialState.FAIL else TrialState.PRUNED
        copies.append(
            optuna.trial.create_trial(
                state=state,
                values=t.values if keep else None,
                params=t.params,
                distributions=t.distributions,
                user_attrs=t.user_attrs,
                intermediate_values=t.intermediate_values,
            )
        )
    view.add_trials(copies)
    return view


def _mark(ax, f: _Facts, xy) -> None:
    """Mark the uniform L1 trial and the winner on ``ax`` at ``xy(trial)``."""
    if f.uniform is not None:
        x, y = xy(f.uniform)
        label = f"uniform L1 (trial {f.uniform.number})"
        ax.scatter(
            [x], [y], s=70, marker="s", c=UNIFORM_COLOUR, edgecolors="black", linewidths=0.6, zorder=5, label=label
        )
    x, y = xy(f.winner)
    label = f"winner (trial {f.winner.number})"
    ax.scatter([x], [y], s=200, marker="*", c=WINNER_COLOUR, edgecolors="black", linewidths=0.6, zorder=6, label=label)


def _history_figure(f: _Facts, view: optuna.Study):
    from optuna.visualization.matplotlib import plot_optimization_history

    target = (lambda t: t.values[0]) if f.pareto else None
    ax = plot_optimization_history(view, target=target, target_name=f.score_label)
    _mark(ax, f, lambda t: (t.number, t.values[0]))
    ax.set_title(f"{f.study.study_name}: {f.score_label} of {len(f.trials)} evaluated candidates", fontsize=10)
    ax.set_xlabel("trial (draws outside the window are numbered too)")
    ax.set_ylabel(f"{f.score_label} (search split)")
    ax.legend(fontsize=8, loc="lower right")
    return ax.figure


def _pareto_figure(f: _Facts, view: optuna.Study):
    from optuna.visualization.matplotlib import plot_pareto_front

    ax = plot_pareto_front(
        view, targets=lambda t: (100 * t.values[1], t.values[0]), target_names=[f.cost_label, f.score_label]
    )
    _mark(ax, f, lambda t: (f.cost(t), t.values[0]))
    ax.set_title(f"{f.study.study_name}: {f.score_label} against cost, {len(f.trials)} candidates", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    return ax.figure


def _scores_figure(f: _Facts):
    """Score against cost for one budget (no Optuna plot draws a single objective against an attribute)."""
    import matplotlib.style
    from matplotlib.figure import Figure

    b = f.budget
    with matplotlib.style.context("default"):
        fig = Figure(figsize=(7.0, 4.4), dpi=DPI, layout="constrained")
        ax = fig.add_subplot()
        ax.axvspan(100 * b.low / b.base, 100 * b.high / b.base, color="#eef2f7", zorder=0, label="budget window")
        ax.axvline(100 * b.target / b.base, color="#9aa7b5", lw=0.8, ls="--", zorder=1)
        full = [t for t in f.trials if not t.user_attrs.get("stopped_early")]
        early = [t for t in f.trials if t.user_attrs.get("stopped_early")]
        ax.scatter(
            [f.cost(t) for t in full],
            [t.values[0] for t in full],
            s=18,
            c=OTHER_COLOUR,
            zorder=3,
            label="candidate (the whole split scored)",
        )
        if early:
            ax.scatter(
                [f.cost(t) for t in early],
                [t.values[0] for t in early],
                s=18,
                facecolors="none",
                edgecolors=OTHER_COLOUR,
                zorder=3,
                label="stopped early (scored on part of the split)",
            )
        _mark(ax, f, lambda t: (f.cost(t), t.values[0]))
        ax.set_xlabel(f.cost_label)
        ax.set_ylabel(f"{f.score_label} (search split)")
        ax.set_title(
            f"{f.study.study_name}: {f.score_label} of {len(f.trials)} evaluated candidates\nbudget {b.describe()}",
            fontsize=10,
            loc="left",
        )
        costs = [f.cost(t) for t in f.trials] + [100 * b.low / b.base, 100 * b.high / b.base]
        pad = 0.08 * (max(costs) - min(costs)) or 1.0
        ax.set_xlim(min(costs) - pad, max(costs) + pad)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    return fig


def _importances_figure(f: _Facts, view: optuna.Study):
    from matplotlib.figure import Figure
    from optuna.visualization.matplotlib import plot_param_importances

    # Optuna's default evaluator, PED-ANOVA: which ratios set the best 10% of candidates apart from all. Given a
    # target it seeks low values, hence the negated score of a Pareto study; one objective keeps its direction.
    target = (lambda t: -t.values[0]) if f.pareto else None
    ax = plot_param_importances(view, target=target, target_name=f.score_label)
    ax.set_title(
        f"{f.study.study_name}\nwhich ratios set the best 10% apart (PED-ANOVA, {len(f.trials)} candidates)",
        fontsize=10,
        loc="left",
    )
    ax.set_xlabel(f"importance for a high {f.score_label}")
    ax.set_ylabel("")
    fig = ax.figure
    assert isinstance(fig, Figure)  # Optuna's plot draws in a figure of its own
    fig.set_size_inches(7.0, max(3.2, 0.32 * len(f.study.user_attrs["space"]) + 1.2))
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- the report


def default_folder(study: optuna.Study, storage: str) -> Path:
    """Where the report goes by default: the study's delivered export (where it is now, if it was moved or copied
    with the study's storage file: :func:`fnnp_opt.artifacts.followed`), else ``runs/<study>/report``."""
    from fnnp_opt.artifacts import followed

    delivered = study.user_attrs.get("result") or {}
    if delivered.get("export"):
        return followed(storage, study, Path(delivered["export"]))
    return Path("runs") / study.study_name / "report"


def write_report(study: optuna.Study, folder: Path, storage: str | None = None) -> Report:
    """Draw ``study``'s figures and write ``report.md`` into ``folder`` (created); returns the paths.

    Reads the study only. Raises :class:`OutputError` when ``folder`` cannot be written,
    :class:`StorageError` for a study fnnp-opt did not make, :class:`FnnpError` for a study with no
    evaluated candidate.
    """
    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:  # Optuna's plots need pyplot: headless unless in use
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(folder)
    check_output_writable(folder, folder=True)
    f = _facts(study)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"report folder {folder} cannot be created ({exc.strerror}); pass another --output") from None
    report = Report(folder, folder / "report.md")

    def save(fig, name: str) -> Path:
        path = folder / name
        try:
            fig.savefig(path, dpi=DPI, facecolor="white")
        except OSError as exc:
            raise OutputError(f"{path} cannot be written ({exc.strerror}); pass another --output") from None
        finally:
            plt.close(fig)  # a no-op for a figure pyplot does not manage
        return path

    try:
        report.allocation = save(_allocation_figure(f), "allocation.png")
    except StorageError as exc:
        report.skipped["allocation.png"] = str(exc)
    with _optuna_plotting():
        view = _evaluated_view(study)
        if f.pareto:
            report.scores = save(_pareto_figure(f, view), "pareto_front.png")
        else:
            name = "score_vs_latency.png" if f.latency else "score_vs_flops.png"
            report.scores = save(_scores_figure(f), name)
        report.history = save(_history_figure(f, view), "history.png")
        if len(f.trials) < MIN_IMPORTANCE_TRIALS:
            report.skipped["importances.png"] = (
                f"parameter importances need at least {MIN_IMPORTANCE_TRIALS} evaluated candidates (PED-ANOVA "
                f"compares the best 10% with all), the study has {len(f.trials)}; raise --n-trials and resume"
            )
        else:
            report.importances = save(_importances_figure(f, view), "importances.png")
    for name, reason in report.skipped.items():
        log.info("%s not drawn: %s", name, reason)
    _write_summary(f, report, storage)
    return report


def _no_uniform(study: optuna.Study) -> str:
    """Why ``study`` has no evaluated uniform L1 trial, in words."""
    tried = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("strategy") == "uniform"]
    failed = [t for t in tried if t.state.name == "FAIL"]
    rejected = [t for t in tried if t.user_attrs.get("reject_reason")]
    if rejected:
        return f"trial {rejected[-1].number} was outside the window: {rejected[-1].user_attrs['reject_reason']}"
    if failed:
        reason = failed[-1].user_attrs.get("fail_reason", "see the run's log")
        return f"trial {failed[-1].number} failed: {reason}; a resume queues it again"
    return "no uniform strategy lands in the window: `fnnp-opt space` says where its costs fall"


DEFAULT_URL = "sqlite:///studies/fnnp.db"  # the study's storage when its config names none


def _rerank_scores(study: optuna.Study, delivered: dict | None) -> dict[str, float]:
    """{trial number as text: abn-ft score} of the rerank that chose the delivered trial (its ledger, the study
    attribute ``rerank:abn_ft<steps>``), or {} where no rerank chose it."""
    key = (delivered or {}).get("rerank")
    return study.user_attrs.get(f"rerank:{key}", {}).get("scores", {}) if key else {}


def _versus(f: _Facts, t: FrozenTrial) -> str:
    """Baseline ``t``'s score against the winner's, by the score that chose the winner: the rerank's abn-ft
    re-score where a rerank chose it (:attr:`_Facts.rerank`), else the study's value."""
    w, scores = f.winner, f.rerank
    if str(t.number) in scores and str(w.number) in scores:
        a, b = scores[str(t.number)], scores[str(w.number)]
        return f"abn-ft {a:.4f} in the rerank ({b - a:+.4f} for the winner), {f.score_label} {t.values[0]:.4f}"
    return f"{f.score_label} {t.values[0]:.4f} ({w.values[0] - t.values[0]:+.4f} for the winner)"


def _write_summary(f: _Facts, report: Report, storage: str | None) -> None:
    b, w, u = f.budget, f.winner, f.uniform
    config = f.study.user_attrs["config"]
    counts = _state_counts(f.study)
    base_score = f.study.user_attrs.get("base_accuracy")
    lines = [
        f"# {f.study.study_name}",
        "",
        f"- **study**: `{f.study.study_name}` in `{St.redact_url(storage or config.get('storage') or DEFAULT_URL)}`; "
        + ", ".join(f"{n} {what}" for what, n in counts.items() if n or what == "evaluated")
        + f"; sampler {config.get('sampler')}, score {config.get('score', 'abn')}",
        f"- **budget**: {b.describe()}",
        f"- **space**: {_space_words(config)}",
        f"- **winner**: trial {w.number} ({f.chosen}), "
        f"{f.score_label} {w.values[0]:.4f}, FLOPs {human(w.user_attrs['flops'])} "
        f"({w.user_attrs.get('flops_ratio', float('nan')):.1%} of the base's)",
    ]
    if u is not None:
        lines.append(
            f"- **uniform L1** (the same ratio everywhere): trial {u.number}, {_versus(f, u)}, "
            f"FLOPs {human(u.user_attrs['flops'])}"
        )
    else:
        lines.append(f"- **uniform L1**: none evaluated in this study ({_no_uniform(f.study)})")
    for t in f.others:
        strategy = t.user_attrs["strategy"]
        cost = t.user_attrs.get("baseline_cost", {})
        lines.append(
            f"- **{strategy}** ({BASELINE_WORDS.get(strategy, strategy)}): trial {t.number}, {_versus(f, t)}, "
            f"FLOPs {human(t.user_attrs['flops'])}"
            + (f"; computed with {cost['evaluations']} evaluations" if cost.get("evaluations") else "")
        )
    if base_score is not None:
        lines.append(f"- **unpruned base**: {base_score:.4f} on the search split (before any pruning or ABN)")
    if f.delivered is not None:
        base, pruned = f.delivered.get("base", {}), f.delivered.get("pruned", {})
        if "test_accuracy" in pruned and "test_accuracy" in base:
            delta = 100 * (pruned["test_accuracy"] - base["test_accuracy"])
            lines.append(
                f"- **test set** (trial {w.number} as delivered to `{f.delivered.get('export')}`): pruned "
                f"{pruned['test_accuracy']:.2%} against the base's {base['test_accuracy']:.2%} ({delta:+.2f} pt); "
                f"FLOPs {human(pruned['flops'])} against {human(base['flops'])} "
                f"({base['flops'] / pruned['flops']:.2f}x fewer)"
            )
    else:
        lines.append("- **test set**: no trial of this study has been fine-tuned and tested yet")
    lines += ["", "## Figures", ""]
    captions = {
        report.allocation: "Channels kept per layer group: the winner"
        + (" against uniform L1" if u is not None else "")
        + ", the base behind.",
        report.scores: (
            f"The Pareto front of score against cost (Optuna's plot), {'uniform L1 and ' if u else ''}the winner "
            "marked."
            if f.pareto
            else f"{f.score_label} of every evaluated candidate against its cost; the budget window shaded."
        ),
        report.history: f"{f.score_label} over trials (Optuna's optimization history).",
        report.importances: "Which ratios set the best 10% of candidates apart (Optuna's PED-ANOVA).",
    }
    for path in report.figures:
        lines += [f"[{path.name}]({path.name}): {captions[path]}", "", f"![{path.stem}]({path.name})", ""]
    for name, reason in report.skipped.items():
        lines += [f"{name} was not drawn: {reason}.", ""]
    try:
        report.summary.write_text("\n".join(lines))
    except OSError as exc:
        raise OutputError(f"{report.summary} cannot be written ({exc.strerror}); pass another --output") from None


def report_study(
    storage: str,
    study_name: str | None = None,
    output: Path | None = None,
    upload: bool = True,
    artifact_dir: Path | None = None,
) -> Report:
    """`fnnp-opt report`: :func:`write_report` for ``study_name`` in ``storage`` (its only study when None) into
    ``output`` (default: :func:`default_folder`); with ``upload``, also put the files into the study's artifact
    store (:mod:`fnnp_opt.artifacts`), on the delivered trial. Without ``upload`` the storage is only read."""
    from fnnp_opt import artifacts as A

    St.check_exists(storage)
    with St.opened(storage, write_ahead=upload) as store:
        study = St.pick_study(store, storage, study_name)
        if upload and artifact_dir is not None:  # checked before anything is drawn or written
            A.check_store(Path(artifact_dir))
            recorded = A.recorded_dir(storage, study) if study.user_attrs.get(A.STORE_ATTR) else None
            if (
                recorded is not None
                and recorded.absolute() != Path(artifact_dir).absolute()  # moved
                and recorded.is_dir()
                and any(recorded.iterdir())  # the record would orphan them
            ):
                raise StorageError(
                    f"study {study.study_name!r} keeps its artifacts (the export's files among them) in {recorded}, "
                    f"not {artifact_dir}; pass --artifact-dir {recorded} or leave it out, or --no-upload"
                )
        report = write_report(study, Path(output) if output is not None else default_folder(study, storage), storage)
        if upload:
            delivered = (study.user_attrs.get("result") or {}).get("trial")
            trial = next((t for t in study.trials if t.number == delivered), None)
            folder = A.store_dir(storage, artifact_dir, study)
            report.published = A.publish(study, trial, report.files, folder, storage)
        return report
