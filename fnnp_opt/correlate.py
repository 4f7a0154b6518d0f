"""`fnnp-opt correlate`: do adaptive-BN scores rank candidates the way their fine-tuned accuracy does?

For each FLOPs budget, K random candidates of the study's search space are drawn (seeded,
so an interrupted run resumes at the next one). Each is scored

* with its stale post-training statistics (PBN);
* with adaptive BN after each batch count of a sweep (statistics reset, then the cumulative
  average over the first n calibration batches);
* with the official code's variant (no reset, EMA updates with momentum 0.1, all batches);
* with ``abn-ft`` for each count of ``--score-steps`` (ABN, then that many SGD steps on a copy,
  then accuracy on the search split: the score of ``fnnp-opt run --score abn-ft``);

and then fine-tuned the same way as every other candidate, and tested on the search split plus
the test set: the ground truth (analysis, not selection, so the test set may be used). A few
candidates are fine-tuned again under other seeds to measure the ground truth's own noise.

Each candidate becomes a trial of an Optuna study (``correlate-...``), its scores user
attributes, so optuna-dashboard shows them. The output folder gets ``candidates.csv``,
``coefficients.csv`` (every score, plus the candidate's FLOPs and parameters as free baselines,
against the ground truth, beside its noise), ``sweep.csv`` (the batch sweep, and how fast the
ranking converges) and three figures.
"""

from __future__ import annotations

import csv
import logging
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import optuna
import torch
from optuna.storages import BaseStorage

from fnnp_opt import storage as St
from fnnp_opt.config import RunConfig
from fnnp_opt.constraints import fit_to_budget
from fnnp_opt.correlation import METRICS, Coefficient, Noise, coefficient, noise, with_interval
from fnnp_opt.errors import UsageError
from fnnp_opt.evaluate import accuracy, bn_momentum, calibration_mode, run_batches
from fnnp_opt.export import check_output_writable
from fnnp_opt.training import FitConfig, fit
from fnnp_opt.flops import make_budget
from fnnp_opt.progress import NULL, Progress
from fnnp_opt.score import Scorer, abn_ft_key

log = logging.getLogger(__name__)

# R for `correlate` when neither flag nor recipe sets it. On the default, uniform draws in [0, 0.6]
# land 0 times in 1,000 in the 25% and 15% windows, so every candidate would be moved to near all-R
# and most would prune alike; in [0, 0.8], 86 and 11 times
# (`fnnp-opt space --flops 0.25 --max-rate 0.8 --draws 1000`).
CORRELATE_MAX_RATE = 0.8


@dataclass(frozen=True)
class CorrelateSettings:
    """What `fnnp-opt correlate` measures, beyond the run options (model, data, space, storage)."""

    budgets: tuple[str, ...] = ("0.75", "0.5", "0.25", "0.15")  # FLOPs budgets, as --flops
    candidates: tuple[int, ...] = (30,)  # per budget: one count for all, or one per budget
    sweep: tuple[int, ...] = (1, 5, 10, 20, 50, 100)  # ABN batch counts scored
    ft_epochs: int = 1  # fine-tune of every candidate (the ground truth)
    noise_candidates: int = 3  # candidates fine-tuned again ...
    noise_seeds: int = 2  # ... under this many other seeds
    ema_momentum: float = 0.1  # the official code's BN momentum
    score_steps: tuple[int, ...] = ()  # abn-ft short fine-tune lengths scored (columns abn_ft<steps>)
    output: Path = Path("runs/correlate")

    def validate(self) -> "CorrelateSettings":
        if not self.budgets:
            raise UsageError("--flops needs at least one budget, e.g. --flops 0.75,0.5,0.25")
        if any(":" in b for b in self.budgets):
            raise UsageError(f"--flops {','.join(self.budgets)}: give budgets like 0.5, not ranges")
        if len(set(self.budgets)) < len(self.budgets):
            raise UsageError(f"--flops {','.join(self.budgets)} names a budget twice; give each once")
        if len(self.candidates) not in (1, len(self.budgets)):
            raise UsageError(
                f"--candidates {','.join(map(str, self.candidates))}: give one count, or one per budget "
                f"({len(self.budgets)} budgets in --flops {','.join(self.budgets)})"
            )
        if min(self.candidates) < 3:
            raise UsageError(f"--candidates must be at least 3 to correlate anything, got {min(self.candidates)}")
        if not self.sweep or min(self.sweep) < 1:
            raise UsageError(f"--sweep must list batch counts >= 1, like 1,5,10,20,50,100, got {self.sweep}")
        if self.ft_epochs < 1:
            raise UsageError(f"--ft-epochs must be at least 1 (the ground truth is a fine-tune), got {self.ft_epochs}")
        if any(n < 1 for n in self.score_steps):
            raise UsageError(f"--score-steps must list step counts >= 1, like 50,100, got {self.score_steps}")
        if self.noise_candidates < 0 or self.noise_seeds < 0:
            raise UsageError("--noise-candidates and --noise-seeds must be >= 0")
        return self

    def count(self, budget: str) -> int:
        """How many candidates ``budget`` gets."""
        return self.candidates[0] if len(self.candidates) == 1 else self.candidates[self.budgets.index(budget)]


def study_name(cfg: RunConfig, budget: str) -> str:
    return f"correlate-{cfg.model}-{cfg.dataset}-flops{budget}"


# --------------------------------------------------------------------------- scoring


@torch.no_grad()
def abn_sweep(model, calibration: list, search: list, counts: tuple[int, ...], device: str) -> dict[int, float]:
    """Reset BN statistics, then accumulate them batch by batch; score after each count in ``counts``."""
    scores, seen = {}, 0
    with bn_momentum(model, None, reset=True):  # the cumulative average of the batches seen so far
        for n in sorted(counts):
            calibration_mode(model)
            run_batches(model, calibration[seen:n], torch.device(device), lambda x, y: model(x))
            seen = n
            scores[n] = accuracy(model, search, device)
    return scores


@torch.no_grad()
def abn_ema(model, calibration: list, search: list, momentum: float, device: str) -> float:
    """The official code's variant: no reset; every batch moves the statistics by ``momentum``."""
    with bn_momentum(model, momentum):
        calibration_mode(model)
        run_batches(model, calibration, torch.device(device), lambda x, y: model(x))
    return accuracy(model, search, device)


def draw_candidates(p, n: int, seed: int, max_draws: int = 2000, redraws: int = 20) -> list[dict[str, float]]:
    """``n`` random strategies in the budget window with distinct channel plans, the same for the same seed.

    Uniform draws in [0, R] are kept when they land in the window; a draw that does not,
    after ``max_draws`` misses in a row, is moved into it (as --fit-budget does). A draw that
    prunes to the same channels as an earlier one would only repeat its measurement, so it
    is drawn again (up to ``redraws`` times, then kept with a warning).
    """
    rng = np.random.default_rng(seed)
    macs_of = p.flops.macs
    out: list[dict[str, float]] = []
    plans = set()
    while len(out) < n:
        for _ in range(redraws):
            ratios = _draw_in_window(p, rng, macs_of, max_draws)
            plan = tuple(sorted(p.pruner.counts(ratios).items()))
            if plan not in plans:
                break
        else:
            log.warning(
                "candidate %d prunes to the same channels as an earlier one: this FLOPs window holds few distinct "
                "plans under R = %s; a larger --max-rate or a wider --flops-tolerance gives more",
                len(out),
                p.space.max_rate,
            )
        plans.add(plan)
        out.append(ratios)
    return out


def _draw_in_window(p, rng, macs_of, max_draws: int) -> dict[str, float]:
    for _ in range(max_draws):
        ratios = {d.root: float(rng.uniform(0, p.space.max_rate)) for d in p.space.dims}
        if p.budget.contains(macs_of(p.pruner.counts(ratios))):
            return ratios
    return fit_to_budget(ratios, lambda r: macs_of(p.pruner.counts(r)), p.budget, p.space.max_rate)[0]


# --------------------------------------------------------------------------- the run


@dataclass
class BudgetResult:
    budget: str
    study: str
    rows: list[dict]  # one per candidate
    coefficients: dict[str, list[Coefficient]]  # score column -> one per metric
    noise: Noise
    eval_images: int
    convergence: dict[int, float]  # batch count -> Spearman of its ABN scores with the full calibration's

    def spearman(self, score: str) -> Coefficient:
        """The Spearman coefficient of ``score`` with the ground truth."""
        return next(c for c in self.coefficients[score] if c.metric == "spearman")


@dataclass
class CorrelateResult:
    budgets: list[BudgetResult] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)


# free baselines: how well the candidate's own size, anywhere in the window, ranks its fine-tuned accuracy
SIZE_SCORES = ("flops", "params")


def score_columns(settings: CorrelateSettings) -> list[str]:
    return (
        ["pbn"]
        + [f"abn_{n}" for n in sorted(settings.sweep)]
        + ["abn_ema"]
        + [abn_ft_key(n) for n in sorted(settings.score_steps)]
    )


def _scorers(p, cfg: RunConfig, settings: CorrelateSettings, search: list) -> dict[str, Scorer]:
    """One abn-ft scorer per --score-steps count, each with its own seeded images (as `run` draws them)."""
    from fnnp_opt.pipeline import short_finetune

    return {
        abn_ft_key(n): Scorer.build(
            short_finetune(cfg, n),
            p.splits.train,
            search,
            p.splits.augment,
            p.device,
        )
        for n in sorted(settings.score_steps)
    }


def _finetune_accuracy(model, p, cfg: RunConfig, settings: CorrelateSettings, seed: int, truth: list) -> float:
    fit(
        model,
        p.splits.train,
        FitConfig(settings.ft_epochs, cfg.lr, cfg.batch_size, weight_decay=cfg.weight_decay, seed=seed),
        augment=p.splits.augment,
        device=p.device,
    )
    return accuracy(model, truth, p.device)


@dataclass(frozen=True)
class _Batches:
    """What every candidate of a budget is scored on, materialised once."""

    calibration: list
    search: list
    truth: list  # the search split plus the test set
    scorers: dict  # abn-ft column -> Scorer


def _candidate(p, cfg: RunConfig, settings: CorrelateSettings, k: int, ratios: dict, batches: _Batches) -> dict:
    import copy

    from fnnp_opt.flops import count

    calibration, search, truth = batches.calibration, batches.search, batches.truth
    model = p.pruner.prune(ratios).to(p.device)
    macs, params = count(model, p.input_shape)
    row = {"candidate": k, "flops": macs, "flops_ratio": round(macs / p.budget.base, 5), "params": params}
    row["pbn"] = accuracy(model, search, p.device)
    ema_model = copy.deepcopy(model)
    for n, acc in abn_sweep(model, calibration, search, settings.sweep, p.device).items():
        row[f"abn_{n}"] = acc
    row["abn_ema"] = abn_ema(ema_model, calibration, search, settings.ema_momentum, p.device)
    del ema_model
    for col, scorer in batches.scorers.items():  # from the full calibration, on a copy
        row[col] = scorer(model)
    # the ground truth: every candidate starts from its full ABN statistics and gets the same fine-tune,
    # on a fresh copy (scoring ran in inference mode, whose tensors autograd refuses)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    seeds = [cfg.seed] + [cfg.seed + 1000 * j for j in range(1, settings.noise_seeds + 1)]
    for j, seed in enumerate(seeds if k < settings.noise_candidates else seeds[:1]):
        fresh = p.pruner.prune(ratios)
        fresh.load_state_dict(start)
        row["truth" if j == 0 else f"truth_seed{j}"] = _finetune_accuracy(
            fresh.to(p.device), p, cfg, settings, seed, truth
        )
    row["ratios"] = p.space.named(ratios)
    return row


def _fill_missing(study: optuna.Study, p, batches: _Batches, progress: Progress = NULL) -> dict[int, dict]:
    """Score stored candidates that lack an abn-ft column asked for now (their ground truth is kept).

    Returns {candidate: {column: value}}: the storage has them too, but this process's cache of the
    finished trials does not.
    """
    from fnnp_opt.evaluate import calibrate_bn

    todo = [
        (t, [c for c in batches.scorers if c not in St.trial_user_attrs(study, t)])
        for t in study.trials
        if "candidate" in t.user_attrs
    ]
    todo = [(t, cols) for t, cols in todo if cols]
    filled: dict[int, dict] = {}
    with progress.task("abn-ft of stored candidates", len(todo)) as advance:
        for t, cols in todo:
            model = p.pruner.prune(p.space.from_params(t.params))
            calibrate_bn(model, batches.calibration, p.device)  # once: every scorer trains a copy
            for col in cols:
                value = batches.scorers[col](model)
                St.set_finished_trial_user_attr(study, t, col, value)
                filled.setdefault(t.user_attrs["candidate"], {})[col] = value
            advance(1)
    return filled


def _study(cfg: RunConfig, settings: CorrelateSettings, p, budget: str, storage: BaseStorage) -> optuna.Study:
    """The budget's study in ``storage``, resumed when its model, data, space, budget and measurement all match."""
    name = study_name(cfg, budget)
    fingerprint = p.fingerprint() | {
        "measure": f"sweep{sorted(settings.sweep)}|ft{settings.ft_epochs}x{cfg.lr}x{cfg.batch_size}x"
        f"{cfg.weight_decay}|ema{settings.ema_momentum}|noise{settings.noise_candidates}x{settings.noise_seeds}"
        f"|seed{cfg.seed}"
    }
    with St.name_lock(storage, name):
        study = St.existing_study(storage, name)
        if study is None:
            study = St.create_study(storage, name, fingerprint, cfg.to_dict(), p.space, p.budget)
        else:
            names = {"abn_batches": "--sweep's largest count (ABN batches)"}
            St.check_fingerprint(study, fingerprint, cfg.resolved_storage(), cfg.to_dict(), "--storage", names)
    return study


def _record(study: optuna.Study, p, row: dict, value_column: str) -> None:
    dist = optuna.distributions.FloatDistribution(0.0, p.space.max_rate)
    named = row["ratios"]
    trial = optuna.trial.create_trial(
        params={f"ratio.{n}": v for n, v in named.items()},
        distributions={f"ratio.{n}": dist for n in named},
        value=row[value_column],
        user_attrs={k: v for k, v in row.items() if k != "ratios"},
    )
    study.add_trial(trial)


def correlate(cfg: RunConfig, settings: CorrelateSettings, progress: Progress = NULL) -> CorrelateResult:
    """Measure, for every budget, how PBN and ABN scores rank candidates against their fine-tuned accuracy."""
    from fnnp_opt.pipeline import prepare

    settings.validate()
    St.check_storage_writable(cfg.resolved_storage())
    check_output_writable(Path(settings.output), folder=True)  # before hours of measuring, not after
    cfg = replace(cfg, abn_batches=max(settings.sweep))
    top = f"abn_{max(settings.sweep)}"  # the full calibration: the trial's value
    result = CorrelateResult()
    for budget in settings.budgets:
        p = prepare(replace(cfg, flops=budget).validate())
        assert p.splits is not None  # prepared with data
        if budget == settings.budgets[0]:  # every budget now, not each when its turn comes hours later
            for other in settings.budgets[1:]:
                make_budget(other, cfg.flops_tolerance, p.budget.base)
        with St.opened(cfg.resolved_storage()) as storage:  # closed however the budget's measuring ends
            study = _study(cfg, settings, p, budget, storage)
            done = {t.user_attrs["candidate"]: t for t in study.trials if "candidate" in t.user_attrs}
            search = list(p.splits.search_batches(cfg.eval_batch_size))
            batches = _Batches(
                list(p.splits.calibration),
                search,
                search + list(p.splits.test_batches(cfg.eval_batch_size)),
                _scorers(p, cfg, settings, search),
            )
            filled = _fill_missing(study, p, batches, progress)
            eval_images = sum(len(y) for _, y in batches.truth)
            wanted = settings.count(budget)
            candidates = draw_candidates(p, wanted, seed=candidate_seed(cfg.seed, budget))
            with progress.task(f"budget {budget}: candidates", wanted) as advance:
                advance(len([k for k in done if k < wanted]))
                for k, ratios in enumerate(candidates):
                    if k in done:
                        continue
                    row = _candidate(p, cfg, settings, k, ratios, batches)
                    _record(study, p, row, top)
                    log.info(
                        "budget %s candidate %d: pbn %.4f abn %.4f truth %.4f",
                        budget,
                        k,
                        row["pbn"],
                        row[top],
                        row["truth"],
                    )
                    advance(1)
            rows = sorted(
                (
                    St.trial_user_attrs(study, t) | filled.get(t.user_attrs["candidate"], {})
                    for t in study.trials
                    if "candidate" in t.user_attrs and t.user_attrs["candidate"] < wanted
                ),
                key=lambda r: r["candidate"],
            )
            result.budgets.append(_summarise(budget, study.study_name, rows, settings, eval_images, cfg.seed))
    result.files = write_outputs(result, settings)
    return result


def candidate_seed(seed: int, budget: str) -> int:
    """The seed of a budget's candidate draws: stable across processes (Python's hash() is not)."""
    return seed * 7919 + int.from_bytes(budget.encode()[:8].ljust(8, b"\0"), "little") % (2**31)


def _summarise(budget: str, name: str, rows: list[dict], settings, eval_images: int, seed: int) -> BudgetResult:
    truth = np.array([r["truth"] for r in rows])
    coefficients = {}
    for col in score_columns(settings) + list(SIZE_SCORES):
        x = np.array([r[col] for r in rows])
        coefficients[col] = [with_interval(m, x, truth, seed=seed) for m in METRICS]
    repeats = [
        np.array(
            [r["truth"]] + [r[f"truth_seed{j}"] for j in range(1, settings.noise_seeds + 1) if f"truth_seed{j}" in r]
        )
        for r in rows
        if any(k.startswith("truth_seed") for k in r)
    ]
    full = np.array([r[f"abn_{max(settings.sweep)}"] for r in rows])
    convergence = {
        n: coefficient("spearman", np.array([r[f"abn_{n}"] for r in rows]), full) for n in sorted(settings.sweep)
    }
    return BudgetResult(budget, name, rows, coefficients, noise(truth, repeats, eval_images), eval_images, convergence)


# --------------------------------------------------------------------------- outputs


def write_outputs(result: CorrelateResult, settings: CorrelateSettings) -> list[Path]:
    out = Path(settings.output)
    out.mkdir(parents=True, exist_ok=True)
    cols = score_columns(settings)
    files = [out / "candidates.csv", out / "coefficients.csv"]
    extra = [f"truth_seed{j}" for j in range(1, settings.noise_seeds + 1)]
    with open(files[0], "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["budget", "candidate", "flops", "flops_ratio", "params", *cols, "truth", *extra])
        for b in result.budgets:
            for r in b.rows:
                w.writerow(
                    [
                        b.budget,
                        r["candidate"],
                        r["flops"],
                        r["flops_ratio"],
                        r["params"],
                        *(r[c] for c in cols),
                        r["truth"],
                        *(r.get(e, "") for e in extra),
                    ]
                )
    with open(files[1], "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "budget",
                "candidates",
                "score",
                "metric",
                "value",
                "ci_low",
                "ci_high",
                "truth_spread",
                "seed_sd",
                "binomial_se",
                "spread_over_noise",
                "ceiling",
                "within_noise",
            ]
        )
        for b in result.budgets:
            n = b.noise
            for col, coefs in b.coefficients.items():
                for c in coefs:
                    w.writerow(
                        [
                            b.budget,
                            len(b.rows),
                            col,
                            c.metric,
                            _r(c.value),
                            _r(c.low),
                            _r(c.high),
                            _r(n.spread),
                            _r(n.seed_sd),
                            _r(n.binomial_se),
                            _r(n.ratio),
                            _r(n.ceiling),
                            n.within_noise,
                        ]
                    )
    files.append(out / "sweep.csv")
    with open(files[-1], "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["budget", "batches", "spearman_truth", "ci_low", "ci_high", "spearman_full_calibration"])
        for b in result.budgets:
            for batches, agreement in b.convergence.items():
                c = b.spearman(f"abn_{batches}")
                w.writerow([b.budget, batches, _r(c.value), _r(c.low), _r(c.high), _r(agreement)])
    files += plot(result, settings, out)
    return files


def _r(v: float) -> float | str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else round(float(v), 5)


def plot(result: CorrelateResult, settings: CorrelateSettings, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    top = f"abn_{max(settings.sweep)}"
    files = []
    # 1. the paper's scatter: PBN and ABN scores against the fine-tuned accuracy, one row per budget
    panels = [("pbn", "PBN (stale statistics)"), (top, "ABN")]
    panels += [(abn_ft_key(n), f"abn-ft ({n} steps)") for n in sorted(settings.score_steps)[-1:]]
    fig, axes = plt.subplots(
        len(result.budgets), len(panels), figsize=(4.5 * len(panels), 3.2 * len(result.budgets)), squeeze=False
    )
    for row, b in zip(axes, result.budgets):
        truth = [r["truth"] for r in b.rows]
        for ax, (col, label) in zip(row, panels):
            ax.scatter([r[col] for r in b.rows], truth, s=14)
            rho = b.spearman(col)
            ax.set_title(f"FLOPs {b.budget}: {label}, Spearman {rho.value:.2f}", fontsize=9)
            ax.set_xlabel(f"{label} accuracy on the search split", fontsize=8)
            ax.set_ylabel("accuracy after fine-tuning", fontsize=8)
    fig.tight_layout()
    files.append(out / "scatter.png")
    fig.savefig(files[-1], dpi=110)
    plt.close(fig)
    # 2. correlation against the budget, with intervals
    fig, ax = plt.subplots(figsize=(6, 4))
    xs = [float(b.budget) if _is_float(b.budget) else i for i, b in enumerate(result.budgets)]
    ft = [(abn_ft_key(n), f"ABN + {n} SGD steps (abn-ft)") for n in sorted(settings.score_steps)]
    for col, label in (("pbn", "PBN"), (top, "ABN"), ("abn_ema", "ABN, EMA no reset"), *ft):
        vals = [b.spearman(col) for b in result.budgets]
        ax.errorbar(xs, [v.value for v in vals], yerr=_yerr(vals), marker="o", capsize=3, label=label)
    ax.set_xlabel("FLOPs kept (fraction of the base)")
    ax.set_ylabel("Spearman with fine-tuned accuracy")
    ax.axhline(0, color="grey", lw=0.5)
    ax.legend(fontsize=8)
    fig.tight_layout()
    files.append(out / "budgets.png")
    fig.savefig(files[-1], dpi=110)
    plt.close(fig)
    # 3. against the ABN batch count: the correlation with the truth, and the ranking's convergence
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    counts = sorted(settings.sweep)
    for b in result.budgets:
        vals = [b.spearman(f"abn_{n}") for n in counts]
        ax.errorbar(counts, [v.value for v in vals], yerr=_yerr(vals), marker="o", capsize=3, label=f"FLOPs {b.budget}")
        ax2.plot(counts, [b.convergence[n] for n in counts], marker="o", label=f"FLOPs {b.budget}")
    ax.set_ylabel("Spearman with fine-tuned accuracy")
    ax2.set_ylabel(f"Spearman with the {max(counts)}-batch ABN score")
    for a in (ax, ax2):
        a.set_xscale("log")
        a.set_xlabel("ABN calibration batches")
        a.legend(fontsize=8)
    fig.tight_layout()
    files.append(out / "iterations.png")
    fig.savefig(files[-1], dpi=110)
    plt.close(fig)
    return files


def _is_float(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _yerr(vals: list[Coefficient]) -> np.ndarray:
    lo = [0 if math.isnan(v.low) else max(0.0, v.value - v.low) for v in vals]
    hi = [0 if math.isnan(v.high) else max(0.0, v.high - v.value) for v in vals]
    return np.array([lo, hi])
