"""The search: samplers, the per-trial objective, and the optimisation loop.

A trial suggests one ratio per searchable group (optionally projected into the FLOPs
window, ``--fit-budget``), and the candidate's FLOPs are counted analytically from its
channel plan. A candidate outside the window is never ABN-evaluated; the constraint
mode (:mod:`fnnp_opt.constraints`) decides what the sampler is told. A candidate inside
claims one of the study's evaluation slots, is pruned, counted by thop, and scored
with adaptive-BN evaluation on the held-out search split, step by step, stopping once it
is clearly below the best so far (:mod:`fnnp_opt.early_stop`). ``n_trials`` counts scored
candidates. Under ``--latency`` the window is in predicted milliseconds (the latency
table), and a candidate inside it is also timed directly before it is scored: one that
measures outside is rejected as one predicted outside would be, and frees its slot.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState
from torch import nn

from fnnp_opt import optuna_private as P
from fnnp_opt import storage as St
from fnnp_opt.constraints import fit_to_budget, penalized, violation
from fnnp_opt.data import EvalBatches
from fnnp_opt.early_stop import Reporter, step_batches
from fnnp_opt.errors import TrialError, describe, option
from fnnp_opt.evaluate import NonFiniteError, Scored, accuracy, accuracy_in_steps, calibrate_bn
from fnnp_opt.flops import Budget, FlopsModel, count, human
from fnnp_opt.latency import LatencyTable, fold_bn, plan_cost
from fnnp_opt.options import BASELINES, Constraint, Objective, Sampler
from fnnp_opt.progress import NULL, Progress, Stopwatch
from fnnp_opt.prune import Pruner
from fnnp_opt.score import ShortScore
from fnnp_opt.space import SearchSpace

log = logging.getLogger(__name__)

MAX_FAILED_IN_A_ROW = 10  # candidates whose score is NaN or inf, one after another, before the search stops
SURPLUS = "surplus"  # user attribute of a draw left unevaluated because the study was already full


@dataclass
class Evaluator:
    """What every trial needs, prepared once per study."""

    pruner: Pruner
    space: SearchSpace
    budget: Budget
    flops: FlopsModel  # analytic FLOPs of a channel plan (thop's count, without a forward pass)
    calibration: EvalBatches  # ABN batches from the train part
    search: EvalBatches  # batches of the held-out search split
    device: str = "cpu"
    mode: Constraint = Constraint.reject
    fit_budget: bool = False
    objective: Objective = Objective.accuracy
    slots: St.Slots | None = None  # None: no slot accounting (a study nobody else shares)
    progress: Progress = NULL
    finetune: ShortScore | None = None  # --score abn-ft: the value is this short fine-tune's score, not ABN's
    base_accuracy: float | None = None  # the unpruned model's search-split accuracy: trials record vs_base
    latency: LatencyTable | None = None  # --latency: the budget is predicted ms; evaluated draws are also timed
    early_stop: bool = False  # score in steps and stop when the study's pruner says (fnnp_opt.early_stop)
    pbn: bool = False  # also score with the stale statistics (pbn_accuracy): a diagnostic, one more pass
    amp: bool = False  # on CUDA, the passes run under bf16/fp16 autocast
    # the score of a calibrated candidate when it is not top-1 accuracy on ``search`` (the Python API's callable
    # evaluation): the whole candidate is scored, with no early stopping
    score_fn: Callable[[nn.Module], float] | None = None

    def __post_init__(self) -> None:  # search batches per early-stopping step, read without decoding any
        size = getattr(self.search, "batch_size", None)
        if size is None and isinstance(self.search, list) and self.search:
            size = len(self.search[0][1])
        self._step = step_batches(size or 1)

    def score_model(self, model: nn.Module) -> float:
        """A pruned copy's score as a trial's ABN score, whole (no early stopping, no short fine-tune): BN statistics
        re-estimated on the calibration batches, then top-1 on the search batches in the deploy form (or
        ``score_fn``). The sensitivity baseline's score (:mod:`fnnp_opt.baselines`)."""
        model.to(self.device)
        calibrate_bn(model, self.calibration, self.device, amp=self.amp)
        if self.score_fn is not None:
            return float(self.score_fn(model))
        return accuracy(fold_bn(model), self.search, self.device, amp=self.amp)

    def cost_of(self, ratios: dict[str, float]) -> float:
        """What the budget limits (:func:`fnnp_opt.latency.plan_cost`) for ``ratios``."""
        return plan_cost(self.pruner.counts(ratios), self.flops, self.latency)

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, float]:
        clock = Stopwatch()
        with clock("strategy"):
            ratios = self.space.suggest(trial)
        with clock("flops" if self.latency is None else "latency_predict"):
            if self.fit_budget:
                ratios, step = fit_to_budget(ratios, self.cost_of, self.budget, self.space.max_rate)
            cost = self.cost_of(ratios)
        with clock("storage"):
            if self.fit_budget:  # the applied ratios; params hold the suggested ones
                trial.set_user_attr("ratios", self.space.named(ratios))
                trial.set_user_attr("fit_step", round(step, 6))
            v = violation(self.budget, cost)
            trial.set_user_attr("feasible", v == 0)
            if self.latency is not None:
                trial.set_user_attr("latency_ms", round(cost, 5))
            # (optuna takes a constraint once: a latency candidate predicted inside gets it once timed, below)
            if self.mode is Constraint.constrain and (v > 0 or self.latency is None):
                trial.set_constraint("flops" if self.latency is None else "latency", v)
            if v > 0:
                return self._infeasible(trial, cost, v)
        if self.slots is not None and not self.slots.claim(trial):
            trial.set_user_attr(SURPLUS, True)
            raise optuna.TrialPruned("not evaluated: the study's slots are taken or go to queued trials first")

        with clock("prune"):
            removed = self.pruner.counts(ratios)
            model = self.pruner.prune_counts(removed)
        with clock("flops"):
            thop_macs, params = count(model, self.flops.input_shape)
        macs = cost if self.latency is None else self.flops.macs(removed)  # the FLOPs budget's cost is its MACs
        if thop_macs != macs:
            log.warning("trial %d: analytic FLOPs %d differ from thop's %d", trial.number, macs, thop_macs)
        if self.latency is not None:  # timed directly too: the table's error, candidate by candidate
            with clock("latency_measure"):
                measured, _ = self.latency.measure(model)
            with clock("storage"):
                trial.set_user_attr("latency_measured_ms", round(measured, 5))
                v = violation(self.budget, measured)
                if self.mode is Constraint.constrain:
                    trial.set_constraint("latency", v)
                if v > 0:  # predicted inside the window, measured outside: the measurement decides
                    trial.set_user_attr("feasible", False)
                    return self._infeasible(trial, measured, v, "measured latency")
        model.to(self.device)
        pbn = None
        try:
            if self.pbn:
                with clock("pbn_score"):
                    pbn = accuracy(model, self.search, self.device, amp=self.amp)
            with clock("abn_calibrate"):
                calibrate_bn(model, self.calibration, self.device, progress=self.progress, amp=self.amp)
            with clock("abn_score"):  # scored in the deploy form: BN folded into the convs, ~15% faster on CPU
                if self.score_fn is not None:  # the user's metric sees the network as they built it
                    scored = Scored(self.score_fn(model), 0, False)
                else:
                    stop = Reporter(trial) if self.early_stop else (lambda step, acc: False)
                    scored = accuracy_in_steps(fold_bn(model), self.search, self.device, self._step, stop, self.amp)
            abn = value = scored.accuracy
            if self.finetune is not None:
                with clock("short_finetune"):
                    value = self.finetune(model, self.progress)
        except NonFiniteError as exc:
            trial.set_user_attr("fail_reason", str(exc))
            raise
        ratio = thop_macs / self.flops.base
        with clock("storage"):
            trial.set_user_attr("flops", thop_macs)
            trial.set_user_attr("flops_ratio", round(ratio, 5))
            trial.set_user_attr("params", params)
            trial.set_user_attr(
                "channels",
                {d.name: d.channels - removed[d.root] for d in self.space.dims},
            )
            if pbn is not None:
                trial.set_user_attr("pbn_accuracy", pbn)
            if self.score_fn is None:
                trial.set_user_attr("abn_accuracy", abn)
                trial.set_user_attr("images_scored", scored.images)
            else:
                trial.set_user_attr("abn_score", abn)
            if scored.stopped:
                trial.set_user_attr("stopped_early", True)
            if self.finetune is not None:
                trial.set_user_attr(self.finetune.key, value)
            if self.base_accuracy is not None:  # the score relative to the unpruned model's, for the dashboard
                trial.set_user_attr("vs_base", round(value - self.base_accuracy, 6))
        trial.set_user_attr("timings", {k: round(v, 4) for k, v in clock.items()})
        ft = f"  abn-ft {value:.4f}" if self.finetune is not None else ""
        lat = f"  latency {cost:.3g} ms" if self.latency is not None else ""
        seen = f" (stopped after {scored.images} images)" if scored.stopped else ""
        stale = f"  PBN {pbn:.4f}" if pbn is not None else ""
        log.info(
            "trial %d: ABN %.4f%s%s%s  FLOPs %s (%.1f%%)%s",
            trial.number,
            abn,
            seen,
            ft,
            stale,
            human(macs),
            100 * ratio,
            lat,
        )
        return (value, cost / self.budget.base) if self.objective is Objective.pareto else value

    def _infeasible(
        self, trial: optuna.Trial, cost: float, v: float, what: str | None = None
    ) -> float | tuple[float, float]:
        b = self.budget
        what = what or ("FLOPs" if self.latency is None else "predicted latency")
        reason = f"{what} {b.fmt(cost)} ({cost / b.base:.1%}) outside [{b.fmt(b.low)}, {b.fmt(b.high)}]"
        if self.latency is None:
            trial.set_user_attr("flops", cost)
        trial.set_user_attr("reject_reason", reason)
        trial.set_user_attr("violation", round(v, 6))
        if self.mode is Constraint.reject:
            raise optuna.TrialPruned(reason)
        value = penalized(v)
        return (value, cost / b.base) if self.objective is Objective.pareto else value


# --------------------------------------------------------------------------- samplers


def session_seed(seed: int, session: int) -> int:
    """The sampler seed of a study's ``session``-th process: a resumed study, or a second worker, draws afresh."""
    return int(np.random.SeedSequence([seed, session]).generate_state(1)[0])


def make_sampler(
    kind: Sampler, seed: int, objective: Objective = Objective.accuracy, start: dict[str, float] | None = None
) -> optuna.samplers.BaseSampler:
    """The Optuna sampler behind ``--sampler``, seeded.

    ``start`` ({Optuna parameter name: ratio}) is where CMA-ES centres its first generation; `run` passes the
    uniform L1 strategy, so the search starts from the baseline and moves away only where that scores better
    (the EagleEye paper's "start near a good point"). Without it CMA-ES starts at the middle of [0, R]. The
    other samplers ignore it. Optuna deprecated ``x0`` in 4.9 with no replacement and removes it in 6.0, which
    pyproject.toml's ``optuna<6`` keeps out."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", "`x0` has been deprecated", FutureWarning)
        if kind is Sampler.random:
            return optuna.samplers.RandomSampler(seed=seed)
        if kind is Sampler.tpe:
            return optuna.samplers.TPESampler(seed=seed, multivariate=True)
        if kind is Sampler.cmaes:
            return optuna.samplers.CmaEsSampler(x0=start, seed=seed, warn_independent_sampling=False)
        if kind is Sampler.qmc:
            return optuna.samplers.QMCSampler(
                qmc_type="sobol", scramble=True, seed=seed, warn_independent_sampling=False
            )
        if kind is Sampler.gp:
            return optuna.samplers.GPSampler(seed=seed)
        if kind is Sampler.nsga2:
            return optuna.samplers.NSGAIISampler(seed=seed, population_size=20)
    raise ValueError(kind)


def enqueue_strategies(
    study: optuna.Study,
    space: SearchSpace,
    strategies: list[dict[str, float]],
    name: str,
    attrs: dict | None = None,
    skip_if_exists: bool = True,
) -> None:
    """Queue baseline strategies ({root: ratio}) named ``name`` (``uniform``, ``global``, ``sensitivity``): evaluated
    before any draw, marked with the user attribute ``strategy``; ``attrs`` are more user attributes of each.
    ``skip_if_exists``: a plan the study holds already is not queued again (Optuna's rule, as uniform L1 is queued
    by every process); False queues it anyway, so that a baseline equal to another is still the study's."""
    for plan in strategies:
        study.enqueue_trial(
            {d.param: plan[d.root] for d in space.dims},
            user_attrs={St.BASELINE: name, **(attrs or {})},
            skip_if_exists=skip_if_exists,
        )


def baseline_trials(study: optuna.Study) -> dict[str, FrozenTrial]:
    """Each baseline strategy's first evaluated trial, by strategy name, in the order of
    :data:`fnnp_opt.options.BASELINES` (uniform, global, sensitivity; a retried one keeps its place)."""
    out: dict[str, FrozenTrial] = {}
    for t in evaluated(study):
        if t.user_attrs.get(St.BASELINE):
            out.setdefault(t.user_attrs[St.BASELINE], t)
    order = {name: i for i, name in enumerate(BASELINES)}
    return dict(sorted(out.items(), key=lambda item: (order.get(item[0], len(order)), item[1].number)))


def strategies_queued(study: optuna.Study) -> set[str]:
    """The baseline strategies ``study`` holds a trial of, in any state."""
    return {t.user_attrs[St.BASELINE] for t in study.get_trials(deepcopy=False) if t.user_attrs.get(St.BASELINE)}


def warn_if_baselines_fill(study: optuna.Study, n_trials: int) -> None:
    """Log a warning where the study's baseline trials (every strategy at every target of a Pareto range) are as
    many as ``n_trials``: no sampled candidate would be evaluated."""
    held = [t.user_attrs[St.BASELINE] for t in study.get_trials(deepcopy=False) if t.user_attrs.get(St.BASELINE)]
    if held and len(held) >= n_trials and len(evaluated(study)) < n_trials:  # (a resumed full study: nothing to say)
        counts = ", ".join(f"{held.count(name)} {name}" for name in dict.fromkeys(held))
        log.warning(
            "the study's %d baseline trials (%s) take all %s: no sampled candidate will be evaluated; raise it, or "
            "queue fewer (%s)",
            len(held),
            counts,
            option("n_trials", n_trials),
            option("baselines", "uniform"),
        )


def requeue_failed_baselines(study: optuna.Study) -> int:
    """Queue again each baseline whose trials all failed (an error, not a kill: a killed trial's retry is queued
    when it is found dead), so that a resumed study evaluates it; return how many. Call under the study lock."""
    trials = study.get_trials(deepcopy=False)

    def plan(t: FrozenTrial) -> tuple:
        fixed = P.fixed_params(t)
        return tuple(sorted((t.params if fixed is None else fixed).items()))

    baselines = [t for t in trials if t.user_attrs.get(St.BASELINE)]
    alive = {plan(t) for t in baselines if t.state is not TrialState.FAIL}
    queued = 0
    for t in baselines:
        if t.state is TrialState.FAIL and plan(t) not in alive:
            alive.add(plan(t))
            study.enqueue_trial(dict(plan(t)), user_attrs={St.BASELINE: t.user_attrs[St.BASELINE]})
            log.warning("trial %d (the %s baseline) failed; queued again", t.number, t.user_attrs[St.BASELINE])
            queued += 1
    return queued


def baseline_queued(study: optuna.Study) -> bool:
    """Whether a baseline waits in the queue (it is evaluated even in a study that holds ``n_trials`` already)."""
    return any(t.user_attrs.get(St.BASELINE) for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))


# --------------------------------------------------------------------------- results


def evaluated(study: optuna.Study) -> list[FrozenTrial]:
    """The trials whose candidate met the budget and was scored."""
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if St.is_evaluated(t)]


def best_trial(study: optuna.Study) -> FrozenTrial:
    """The evaluated trial with the highest ABN accuracy (the first objective)."""
    return max(evaluated(study), key=lambda t: (t.values[0], -t.number))


@dataclass
class SearchReport:
    """What one session of the search did."""

    evaluated: int = 0  # candidates scored in this session
    rejected: int = 0  # candidates outside the window in this session
    failed: int = 0  # trials that failed (NaN/inf) in this session
    total_evaluated: int = 0  # evaluated trials in the study after this session
    hit_max_draws: bool = False  # max_draws rejected draws stopped the session before n_trials

    def count(self, trial: FrozenTrial) -> str:
        """Count a trial of this session as evaluated, failed or rejected by its :func:`outcome`, which it returns
        (a surplus draw, or one still running or queued, counts as none of them)."""
        kind = outcome(trial)
        if kind in ("evaluated", "failed", "rejected"):
            setattr(self, kind, getattr(self, kind) + 1)
        return kind


def outcome(trial: FrozenTrial) -> str:
    """What became of a trial: ``"evaluated"`` (its candidate met the budget and was scored), ``"failed"``,
    ``"unfinished"`` (running or queued), ``"surplus"`` (a draw left unevaluated, the study being full) or
    ``"rejected"`` (outside the window)."""
    if St.is_evaluated(trial):
        return "evaluated"
    if trial.state is TrialState.FAIL:
        return "failed"
    if trial.state in (TrialState.RUNNING, TrialState.WAITING):
        return "unfinished"
    return "surplus" if trial.user_attrs.get(SURPLUS) else "rejected"


def optimize(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], float | tuple[float, float]],
    n_trials: int,
    max_draws: int,
    progress: Progress = NULL,
) -> SearchReport:
    """Run trials until the study holds ``n_trials`` evaluated candidates."""
    report = SearchReport()
    St.fail_stale_trials(study)  # also when no trial runs in this session
    St.recover_dead_trials(study)
    with St.study_lock(study):
        requeue_failed_baselines(study)
    last_check = time.monotonic()
    done = len(evaluated(study))
    if done >= n_trials and not baseline_queued(study):
        report.total_evaluated = done
        return report

    with progress.task("search", n_trials) as advance:
        advance(done)

        in_a_row: list[str] = []  # why each of the latest trials failed, while they fail one after another

        def callback(study: optuna.Study, trial: FrozenTrial) -> None:
            nonlocal done, last_check
            if trial.state is TrialState.FAIL:
                in_a_row.append(trial.user_attrs.get("fail_reason", "NaN or inf"))
            elif trial.state is TrialState.COMPLETE:
                in_a_row.clear()
            if report.count(trial) == "failed":
                log.warning("trial %d failed: %s", trial.number, trial.user_attrs.get("fail_reason", "see --debug"))
                if len(in_a_row) >= MAX_FAILED_IN_A_ROW:
                    study.stop()
                    return
            if St.is_evaluated(trial) or trial.user_attrs.get(SURPLUS):  # only then can the count have moved
                now = len(evaluated(study))  # other workers add to it too
                advance(now - done)
                done = now
            if time.monotonic() - last_check > St.GRACE_S:  # a heartbeat-less trial can only age into death
                St.recover_dead_trials(study)
                last_check = time.monotonic()
            if done >= n_trials and not baseline_queued(study):  # every queued baseline is evaluated (Slots.claim)
                study.stop()
            elif report.rejected >= max_draws:
                report.hit_max_draws = True
                study.stop()

        def run_trial(trial: optuna.Trial) -> float | tuple[float, float]:
            try:
                return objective(trial)
            except (optuna.TrialPruned, NonFiniteError):
                raise
            except Exception as exc:  # Optuna marks the trial FAIL; the error names it
                try:
                    trial.set_user_attr("fail_reason", describe(exc))
                except Exception:  # noqa: BLE001  (a storage that failed cannot record why)
                    pass
                raise TrialError(trial.number, exc) from exc

        study.optimize(run_trial, callbacks=[callback], catch=(NonFiniteError,), gc_after_trial=False)
    report.total_evaluated = len(evaluated(study))
    if len(in_a_row) >= MAX_FAILED_IN_A_ROW:
        raise NonFiniteError(
            f"the last {len(in_a_row)} candidates failed one after another ({in_a_row[-1]}): the score itself "
            f"diverges, not one candidate; lower {option('lr')} or {option('score_steps')} (a short fine-tune that "
            "diverges), or check the evaluation; the study keeps what was evaluated"
        )
    return report
