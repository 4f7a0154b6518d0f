"""The Python API: prune your own model, with your own data, metric and training loop.

Two levels, as the other pruning libraries offer them:

* one call, :func:`search`, which returns a :class:`SearchResult` (the Optuna study, the winner's :class:`Plan`,
  the uniform L1 baseline beside it, and ``build()`` for the pruned network);
* Optuna-native: a :class:`Problem` and an :class:`Objective` that ``study.optimize`` accepts with any sampler,
  storage and callback.

The fine-tune is the user's own loop, or :func:`finetune` (fnnp-opt's, with distillation from the base); a pruned
network is kept with :func:`fnnp_opt.save` and reloaded into a fresh instance of its class with
:func:`fnnp_opt.load`. Messages name Python arguments (``max_rate=``), not the CLI's flags.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import optuna
import torch
from optuna.trial import FrozenTrial
from torch import nn

from fnnp_opt import optimize as S
from fnnp_opt import storage as St
from fnnp_opt.batches import LoaderSet, take
from fnnp_opt.config import DEFAULT_RERANK, Constraint, Sampler, check_lr, check_seed, resolve_device
from fnnp_opt.options import IMPORTANCES, check_sensitivity_steps, parse_baselines
from fnnp_opt.config import Objective as Goal
from fnnp_opt.config import Score as ScoreKind
from fnnp_opt.constraints import check_combination, default_constraint
from fnnp_opt.data import Batch, EvalBatches
from fnnp_opt.early_stop import make_pruner
from fnnp_opt.errors import FnnpError, UsageError, describe, python_names
from fnnp_opt.evaluate import NonFiniteError, calibrate_bn, resident
from fnnp_opt.export import check_output_writable
from fnnp_opt.training import Distill, FitConfig, distill_loss, fit
from fnnp_opt.plan import Plan
from fnnp_opt.latency import vector_width
from fnnp_opt.problem import Problem, default_rounding
from fnnp_opt.progress import NULL, Progress
from fnnp_opt.rerank import RerankReport, rerank as rerank_top
from fnnp_opt.score import Scorer, ShortFinetune

log = logging.getLogger(__name__)

Score = Callable[[nn.Module], float]
DEFAULT_BASELINES = "uniform,global"  # what every study queues first unless told (docs/quality.md has the evidence)


def _python(fn):
    """Run ``fn`` with error messages that name Python arguments (:func:`fnnp_opt.errors.python_names`)."""

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with python_names():
            return fn(*args, **kwargs)

    return wrapped


def _whole(value: Any, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise UsageError(f"{name}= must be a whole number >= {low}, got {value!r}")
    return value


def _choice(kind, value: Any, name: str):
    try:
        return kind(value)
    except ValueError:
        raise UsageError(f"{name}= must be one of {', '.join(k.value for k in kind)}, got {value!r}") from None


class _HookScore:
    """abn-ft with the user's short fine-tune: ``hook(copy)`` trains a copy of the calibrated candidate in place,
    then ``measure`` scores the copy."""

    key = "abn_ft"

    def __init__(self, hook: Callable[[nn.Module], None], measure: Score) -> None:
        self.hook, self.measure = hook, measure

    def __call__(self, calibrated: nn.Module, progress: Progress = NULL) -> float:
        student = copy.deepcopy(calibrated).train()
        self.hook(student)
        return self.measure(student.eval())


class Objective:
    """The per-trial objective of an Optuna study: draw a ratio per group, reject what misses the budget, prune,
    re-estimate the BN statistics (adaptive BN), score. ``study.optimize(objective, n_trials=...)`` accepts it with
    any sampler, storage and callback; a draw outside the window ends as a PRUNED trial (``constraint="reject"``).

    Args:
        problem: the model, space and budget (:class:`Problem`).
        calibration: any iterable of batches, ``x`` or ``(x, y)`` (a DataLoader, a list) from the training data;
            its first ``calibration_batches`` are held and re-estimate every candidate's BN statistics.
        evaluation: held-out ``(x, y)`` batches, scored by top-1 accuracy in steps, with early stopping (all are
            held in memory: a few thousand images); or a callable ``score(model) -> float`` (higher is better;
            called on the calibrated candidate in eval mode under ``torch.no_grad()``), for any metric, which
            scores the whole candidate (no early stopping).
        calibration_batches: N, the batches of ``calibration`` that re-estimate BN (the paper: 100 of 64 images;
            10 rank as well on the shipped bases).
        device: where candidates are scored (``"cpu"``, ``"cuda"``).
        constraint: how a draw outside the window is told to the sampler: ``reject``, ``penalize`` or
            ``constrain`` (None: the sampler's default).
        fit_budget: move every draw into the window before it is scored (then every draw counts).
        early_stop: stop scoring a candidate once it is clearly below the best so far (accuracy batches only).
        score: ``"abn"``, or ``"abn-ft"``: ABN, then a short fine-tune of a copy, then the score; it needs
            ``train`` (fnnp-opt's SGD with cross-entropy, ``score_steps`` steps of the first batches of ``train``,
            the same for every candidate) or ``short_finetune`` (your hook, which trains the copy in place).
        sampler: the kind of sampler your study uses (``"random"``, ``"tpe"``, ``"cmaes"`` ...): the default
            ``constraint`` suits it (CMA-ES learns nothing from a PRUNED trial, so it gets ``penalize``; GP and
            NSGA-II read the violation set with ``trial.set_constraint``, ``constrain``).
        slots: under a shared storage, the study's evaluation slots (set by :func:`search`).

    Raises:
        UsageError: a bad argument (the message names it).
    """

    @_python
    def __init__(
        self,
        problem: Problem,
        calibration: Iterable,
        evaluation: Iterable | Score,
        *,
        calibration_batches: int = 10,
        device: str = "cpu",
        constraint: str | None = None,
        fit_budget: bool = False,
        early_stop: bool = True,
        score: str = "abn",
        train: Iterable | None = None,
        short_finetune: Callable[[nn.Module], None] | None = None,
        score_steps: int = 100,
        lr: float = 0.02,
        sampler: str = "random",
        seed: int = 0,
        amp: bool = True,
        progress: Progress = NULL,
        slots: St.Slots | None = None,
    ) -> None:
        if not isinstance(problem, Problem):
            raise UsageError(f"problem must be a fnnp_opt.Problem, got a {type(problem).__name__}")
        _whole(calibration_batches, "calibration_batches", 1)
        _whole(score_steps, "score_steps", 1)
        check_lr(lr)
        check_seed(seed)
        self.problem, self.device, self.seed = problem, resolve_device(device), seed
        device = self.device
        progress = NULL if progress is None else progress
        self.sampler = _choice(Sampler, sampler, "sampler")
        self.constraint = (
            _choice(Constraint, constraint, "constraint") if constraint else default_constraint(self.sampler)
        )
        self.goal = Goal.pareto if problem.budget.ranged else Goal.accuracy
        check_combination(self.sampler, self.constraint, self.goal, fit_budget)
        held = take(calibration, calibration_batches, "calibration")
        _check_shapes(held, problem.example, "calibration")
        self.calibration = resident(held, device)
        if callable(evaluation) and not isinstance(evaluation, (list, tuple)):
            self.measure: Score = _user_score(evaluation)
            search: EvalBatches = []
            early_stop = False
        else:
            search = take(evaluation, None, "evaluation", labels=True)
            _check_shapes(search, problem.example, "evaluation")
            search = resident(search, device)
            self.measure = functools.partial(_accuracy, batches=search, device=device, amp=amp)
        self.score = _choice(ScoreKind, score, "score")
        self.search = search  # the held-out batches (empty with a callable evaluation)
        # the short fine-tune of abn-ft, its train images drawn once (a rerank draws its own: short_scorer)
        abn_ft = self.score is ScoreKind.abn_ft
        self.scorer = self.short_scorer(train, short_finetune, score_steps, lr) if abn_ft else None
        self.early_stop = early_stop and self.score is ScoreKind.abn and self.goal is Goal.accuracy
        self.evaluator = S.Evaluator(
            problem.pruner,
            problem.space,
            problem.budget,
            problem.flops,
            self.calibration,
            search,
            device,
            mode=self.constraint,
            fit_budget=fit_budget,
            objective=self.goal,
            slots=slots,
            progress=progress,
            finetune=self.scorer if self.score is ScoreKind.abn_ft else None,
            latency=problem.latency,
            early_stop=self.early_stop,
            amp=amp,
            score_fn=None if search else self.measure,
        )

    def gradient_batches(self) -> list[Batch]:
        """The first 8 calibration batches, which must be labelled: the ``taylor`` global ranking's gradients.

        Raises:
            UsageError: a calibration batch has no labels.
        """
        held = list(self.calibration)[:8]
        if any(y is None for _, y in held):
            raise UsageError(
                "global_importance='taylor' takes gradients of the loss: pass calibration batches (x, y) with labels, "
                "or global_importance='magnitude'"
            )
        return held

    def short_scorer(
        self, train: Iterable | None, hook: Callable[[nn.Module], None] | None, steps: int, lr: float
    ) -> Scorer | _HookScore:
        """The abn-ft score of a calibrated candidate: ``hook`` trains a copy, else fnnp-opt's short fine-tune of
        ``steps`` SGD steps at peak ``lr`` on the first batches of ``train``, the same for every candidate.

        Raises:
            UsageError: neither ``train`` nor ``hook`` is given.
        """
        if hook is not None:
            if not callable(hook):
                raise UsageError(f"short_finetune= must be a callable(model) that trains it, got a {type(hook)}")
            return _HookScore(hook, self.measure)
        if train is None:
            raise UsageError(
                'score="abn-ft" fine-tunes each candidate briefly: pass train= (batches (x, y) from the training '
                "data) or short_finetune= (a callable that trains the model in place)"
            )
        first = take(train, 1, "train", labels=True)[0]
        short = ShortFinetune(steps, lr, len(first[0]), 5e-4, self.seed)
        scorer = Scorer.build(short, LoaderSet(train, len(first[0])), self.search, None, self.device)
        if not self.search:  # a callable evaluation scores the fine-tuned copy too
            scorer.measure = self.measure
        return scorer

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, float]:
        """Score one trial's candidate (the study's value); raise ``optuna.TrialPruned`` for a draw outside the
        window under ``constraint="reject"``."""
        return self.evaluator(trial)

    def best(self, study: optuna.Study) -> FrozenTrial:
        """The evaluated trial with the highest score (draws outside the window and penalised ones never win).

        Raises:
            FnnpError: no trial of ``study`` was evaluated yet.
        """
        done = S.evaluated(study)
        if not done:
            raise FnnpError(f"study {study.study_name!r} has no evaluated trial yet; run more trials")
        return S.best_trial(study)

    def build(self, trial) -> nn.Module:
        """The pruned copy of ``trial``'s candidate (a trial, or ratios {group root: ratio}) with its BN statistics
        re-estimated on the calibration batches, in eval mode, on the CPU."""
        net = self.problem.prune(trial)
        calibrate_bn(net, self.calibration, self.device)
        return net.cpu().eval()

    def score_base(self) -> float:
        """The unpruned model's score by ``evaluation``: every trial's reference (``vs_base``).

        Raises:
            UsageError: ``evaluation`` fails on the unpruned model (wrong labels, a callable that does not take the
                model ...): checked before any study is made, so none records a failure the data caused.
        """
        base = copy.deepcopy(self.problem.model).to(self.device)
        try:
            return self.measure(base)
        except FnnpError:
            raise
        except Exception as exc:  # noqa: BLE001  (the user's data or metric)
            raise UsageError(
                f"evaluation fails on the unpruned model ({describe(exc)}); pass (x, y) batches the model scores "
                "(labels: class indices below its outputs), or a callable score(model) -> float"
            ) from None


def _check_shapes(batches: list[Batch], example: torch.Tensor, argument: str) -> None:
    """Raise :class:`UsageError` naming ``argument`` when its images are not shaped as ``example_input``'s (the
    batch size aside)."""
    want = tuple(example.shape[1:])
    for x, _ in batches:
        if tuple(x.shape[1:]) != want:
            raise UsageError(
                f"{argument} yields images of shape {tuple(x.shape[1:])}, but example_input's are {want}; pass "
                "batches shaped as the model's input"
            )


@contextlib.contextmanager
def _optuna_quiet():
    """Optuna's own log at WARNING within the block, as it was after."""
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(level)


def _accuracy(model: nn.Module, batches: EvalBatches, device: str, amp: bool) -> float:
    from fnnp_opt.evaluate import accuracy

    return accuracy(model, batches, device, amp=amp)


def _user_score(fn: Score) -> Score:
    """``fn`` as a candidate's score: called in eval mode without gradients; a non-finite value fails the trial."""

    def measure(model: nn.Module) -> float:
        was = model.training
        model.eval()
        try:
            with torch.no_grad():
                value = fn(model)
        finally:
            model.train(was)
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise UsageError(f"evaluation(model) must return a number, got a {type(value).__name__}") from None
        if not math.isfinite(value):
            raise NonFiniteError(f"evaluation(model) returned {value}")
        return value

    return measure


# --------------------------------------------------------------------------- the one call


@dataclass
class SearchResult:
    """What :func:`search` found."""

    study: optuna.Study  # the Optuna study: every trial, its parameters and attributes
    problem: Problem
    objective: Objective
    best: FrozenTrial | None  # the winner (None for a Pareto search: see ``front``)
    baseline: FrozenTrial | None  # the uniform L1 strategy's trial, evaluated (None where none fits the window)
    front: list[FrozenTrial] = field(default_factory=list)  # a Pareto search's non-dominated evaluated trials
    rerank: RerankReport | None = None  # ``rerank=K``: the top K and the baselines re-scored with abn-ft
    # every evaluated baseline's trial by its strategy (uniform, global, sensitivity; the first of a range's five)
    baselines: dict[str, FrozenTrial] = field(default_factory=dict)

    @property
    def plan(self) -> Plan:
        """The winner's :class:`Plan`: ratios and kept channels per searched group, every layer's sizes."""
        if self.best is None:
            raise FnnpError("a Pareto search has no single winner: take result.problem.plan(trial) of a front trial")
        return self.problem.plan(self.best)

    def build(self, trial: FrozenTrial | None = None) -> nn.Module:
        """The pruned copy of ``trial`` (default: the winner) with re-estimated BN statistics, ready to fine-tune."""
        trial = trial or self.best
        if trial is None:
            raise FnnpError("a Pareto search has no single winner: pass one of result.front to build()")
        return self.objective.build(trial)


def _digest(*parts: Any) -> str:
    """A short sha256 of tensors and strings (what a resumed study must have been made from)."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, torch.Tensor):
            h.update(str((part.dtype, tuple(part.shape))).encode())
            h.update(part.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        else:
            h.update(str(part).encode())
    return h.hexdigest()[:16]


def _fingerprint(problem: Problem, objective: Objective, evaluation) -> dict[str, str]:
    model = problem.model
    weights = _digest(*model.state_dict().values())
    if isinstance(objective.evaluator.search, list) and objective.evaluator.search:
        data = [t for x, y in objective.evaluator.search for t in (x[:1], y)]
    else:
        data = [getattr(evaluation, "__qualname__", type(evaluation).__qualname__)]
    calib = [x[:1] for x, _ in objective.calibration]
    return {
        "model": f"{type(model).__module__}.{type(model).__qualname__}",
        "weights": weights,
        "data": _digest(len(objective.calibration), *calib, *data),
        "score": objective.score.value + ("" if objective.scorer is None else f"|{objective.scorer.key}"),
        **problem.fingerprint(),
    }


def _open(storage: str, name: str, fingerprint: dict, settings: dict, problem: Problem) -> optuna.Study:
    """Resume study ``name`` (its fingerprint must match) or create it with the uniform baselines queued."""
    St.check_storage_writable(storage)
    backend = St.open_storage(storage)
    return problem.resume_or_create(backend, storage, name, fingerprint, settings, None, "study_name=")[0]


@_python
def search(
    model: nn.Module,
    example_input: torch.Tensor,
    *,
    calibration: Iterable,
    evaluation: Iterable | Score,
    budget: str | float = "0.5",
    n_trials: int = 30,
    sampler: str = "random",
    constraint: str | None = None,
    fit_budget: bool = False,
    max_rate: float = 0.6,
    round_to: int | str | None = None,
    min_channels: int = 1,
    exclude: Sequence[str] = (),
    ignored_layers: Sequence[nn.Module] | None = None,
    tolerance: float | None = None,
    calibration_batches: int = 10,
    score: str = "abn",
    train: Iterable | None = None,
    short_finetune: Callable[[nn.Module], None] | None = None,
    score_steps: int = 100,
    lr: float = 0.02,
    rerank: int | None = None,
    baselines: str | Sequence[str] = DEFAULT_BASELINES,
    global_importance: str | None = None,
    sensitivity_steps: int | None = None,
    early_stop: bool = True,
    storage: str | None = None,
    study_name: str | None = None,
    seed: int = 0,
    device: str = "cpu",
    max_draws: int = 5000,
    progress: Progress = NULL,
) -> SearchResult:
    """Search the per-group pruning ratios of ``model`` (EagleEye: ratios drawn by an Optuna sampler, candidates
    outside the budget rejected, the rest scored by adaptive-BN evaluation), with the uniform L1 strategy as the
    first trial. Returns a :class:`SearchResult`; ``result.build()`` is the winner, ready for your fine-tune.

    Args:
        model: the trained network (any ``nn.Module``); it is not changed.
        example_input: one input batch, e.g. ``torch.zeros(1, 3, 224, 224)``.
        calibration: batches from the training data (``x`` or ``(x, y)``); the first ``calibration_batches``
            re-estimate each candidate's BN statistics.
        evaluation: held-out ``(x, y)`` batches (top-1 accuracy, early stopping), or ``score(model) -> float``
            (higher is better, any metric; no early stopping).
        budget: ``"0.5"`` of the base's FLOPs (MACs), a count ``"2G"``, a latency ``"0.6x"`` of the base or
            ``"3ms"`` (timed on ``device``), or a range ``"0.2:0.8"``: a Pareto search of (score, cost).
        n_trials: candidates to evaluate, in total across resumes and processes sharing ``storage``.
        sampler: ``random`` (the paper's), ``tpe``, ``cmaes``, ``qmc``, ``gp`` or ``nsga2``.
        constraint, fit_budget: how draws outside the window are handled (see :class:`Objective`).
        max_rate: R, the largest share of a group's channels removed, in (0, 1).
        round_to: kept channel counts are multiples of this; ``"auto"``: of ``device``'s vector width (16 on an
            AVX-512 CPU, 8 on AVX2 and CUDA); None (the default), as `fnnp-opt run`'s: the vector width in a wide
            network (median conv at least 8 widths: ResNet-50, MobileNetV2) where the budget stays within reach,
            else 1. ``result.problem.shaping.round_to`` says which (and a stored study's ``config``).
        min_channels, exclude: the channel floor, and glob patterns of layers never pruned.
        ignored_layers: modules whose outputs keep all their channels (heads); None finds the classifier.
        tolerance: half-width of the budget window, as a fraction of the base (None: 0.02 FLOPs, 0.03 latency).
        calibration_batches: N of ABN.
        score, train, short_finetune, score_steps, lr: ``"abn"`` or ``"abn-ft"`` (see :class:`Objective`).
        rerank: K > 0 re-scores the top K by ABN and every baseline with abn-ft (needs ``train``); the winner is the
            best re-scored. None (the default): 5 (at most ``n_trials``) where ``train`` is given to an ABN search of
            one budget, else 0: ABN falls toward chance at aggressive budgets, where its own winner fine-tunes far
            below uniform L1 (docs/quality.md).
        baselines: the strategies queued first and scored like any candidate (:mod:`fnnp_opt.baselines`):
            ``"uniform,global"`` (the default), ``"uniform,global,sensitivity"``, a subset, or ``"none"``; uniform L1
            is always trial 0. ``global`` is Torch-Pruning's global ranking by ``global_importance`` (``magnitude``,
            the default, ``lamp``, or ``taylor``, whose gradients take the first 8 calibration batches, labelled);
            ``sensitivity`` scores each group pruned alone at ``sensitivity_steps`` ratios (default 4; groups x
            steps + 1 evaluations). A resumed study keeps the baselines it holds; it says so where one was made with
            another ``global_importance`` or ``sensitivity_steps`` than given.
        early_stop: stop scoring a candidate clearly below the best (accuracy batches only).
        storage: an Optuna storage URL (``sqlite:///prune.db``) to resume from, watch in optuna-dashboard and share
            with other processes; None keeps the study in memory.
        study_name: the study in ``storage`` (None: ``fnnp-<class>-<budget>``).
        seed: seeds the sampler (each process of a study draws apart) and the short fine-tunes.
        device: where candidates are scored.
        max_draws: stop after this many draws outside the window in one call.
        progress: a :class:`fnnp_opt.progress.Progress` that shows the search's progress.

    Raises:
        UsageError: a bad argument (the message names it); ModelError: the model cannot be pruned;
        BudgetError: the budget cannot be reached; StorageError: ``storage`` holds another study under
        ``study_name``; TrialError: a candidate's evaluation failed (the study keeps what was evaluated: call
        again to resume).
    """
    _whole(n_trials, "n_trials", 1)
    if rerank is None:  # the default, as `fnnp-opt run`'s: re-score where there is a short fine-tune to do it with
        auto = train is not None and short_finetune is None and score == "abn" and ":" not in str(budget)
        rerank = min(DEFAULT_RERANK, n_trials) if auto else 0
    _whole(rerank, "rerank", 0)
    if storage is not None and not isinstance(storage, str):
        raise UsageError(
            f"storage must be an Optuna storage URL like 'sqlite:///prune.db', got a {type(storage).__name__}"
        )
    progress = NULL if progress is None else progress
    _whole(max_draws, "max_draws", 1)
    if rerank > n_trials:
        raise UsageError(
            f"rerank={rerank} re-scores the top K of n_trials={n_trials} candidates; pass rerank <= n_trials"
        )
    if rerank and train is None:
        raise UsageError(f"rerank={rerank} re-scores with a short fine-tune: pass train= (batches (x, y))")
    if rerank and short_finetune is not None:
        raise UsageError(f"rerank={rerank} re-scores with fnnp-opt's short fine-tune on train=; drop short_finetune=")
    if rerank and score != "abn":
        raise UsageError(f'rerank={rerank} re-scores ABN candidates with abn-ft; with score="{score}" drop rerank')

    def problem_at(step: int) -> Problem:
        return Problem(
            model,
            example_input,
            budget=str(budget),
            tolerance=tolerance,
            max_rate=max_rate,
            round_to=step,
            min_channels=min_channels,
            exclude=exclude,
            ignored_layers=ignored_layers,
            device=device,
            progress=progress,
        )

    if storage is not None:
        if study_name is None:
            study_name = f"fnnp-{type(model).__name__.lower()}-{str(budget).replace(':', '-')}"
        if round_to is None:  # a resumed study keeps the rounding it was made with
            round_to = St.stored_settings(storage, study_name).get("round_to")
    if round_to is None or round_to == "auto":
        width = vector_width(resolve_device(device))
        problem = default_rounding(problem_at, width, model) if round_to is None else problem_at(width)
    elif isinstance(round_to, str):
        raise UsageError(f"round_to= must be a whole number >= 1 or 'auto', got {round_to!r}; e.g. round_to=8")
    else:
        problem = problem_at(round_to)  # Shaping refuses what is not a whole number >= 1
    if problem.budget.ranged and rerank:
        raise UsageError(f"rerank={rerank} picks one winner, which a Pareto search (budget={budget!r}) has not")
    objective = Objective(
        problem,
        calibration,
        evaluation,
        calibration_batches=calibration_batches,
        device=device,
        constraint=constraint,
        fit_budget=fit_budget,
        early_stop=early_stop,
        score=score,
        train=train,
        short_finetune=short_finetune,
        score_steps=score_steps,
        lr=lr,
        sampler=sampler,
        seed=seed,
        progress=progress,
    )
    settings = {
        "api": "fnnp_opt.search",
        "budget": str(budget),
        "tolerance": problem.tolerance,
        "max_rate": max_rate,
        "round_to": problem.shaping.round_to,
        "min_channels": min_channels,
        "exclude": list(exclude),
        "calibration_batches": calibration_batches,
        "score": score,
        "sampler": sampler,
        "n_trials": n_trials,
        "seed": seed,
    }
    wanted = [b for b in parse_baselines(baselines) if b != "uniform"]
    if global_importance is not None and global_importance not in IMPORTANCES:
        raise UsageError(f"global_importance= must be one of {', '.join(IMPORTANCES)}, got {global_importance!r}")
    if sensitivity_steps is not None:
        check_sensitivity_steps(sensitivity_steps)
    grads = objective.gradient_batches() if "global" in wanted and global_importance == "taylor" else None
    base = objective.score_base()  # before any study is made: data that fail leave no study behind
    if storage is None:
        study = optuna.create_study(
            study_name=study_name, directions=["maximize", "minimize"] if problem.budget.ranged else ["maximize"]
        )
        problem.enqueue_uniform(study)
    else:
        assert study_name is not None  # named above
        study = _open(storage, study_name, _fingerprint(problem, objective, evaluation), settings, problem)
        objective.evaluator.slots = St.Slots(study, n_trials)
    if "base_accuracy" not in study.user_attrs:
        study.set_user_attr("base_accuracy", base)
    missing = set(wanted) - S.strategies_queued(study)  # none: nothing to compute, only to check (no lock)
    with St.study_lock(study) if storage is not None and missing else contextlib.nullcontext():
        problem.enqueue_baselines(
            study,
            wanted,
            score=objective.evaluator.score_model,
            importance=global_importance,
            steps=sensitivity_steps,
            gradient_batches=grads,
            progress=progress,
        )
    S.warn_if_baselines_fill(study, n_trials)
    objective.evaluator.base_accuracy = base
    start = problem.sampler_start(objective.sampler)
    session = St.next_session(study) if storage is not None else 0
    study.sampler = S.make_sampler(objective.sampler, S.session_seed(seed, session), objective.goal, start)
    if objective.early_stop:
        study.pruner = make_pruner()
    with _optuna_quiet():  # a line per trial from Optuna as well as fnnp-opt's would drown the log
        report = S.optimize(study, objective, n_trials, max_draws, progress)
    if report.hit_max_draws:
        log.warning(
            "stopped after %d draws outside the window with %d of %d candidates evaluated (max_draws=%d): few draws "
            "land in the window; pass fit_budget=True, or widen tolerance=",
            report.rejected,
            report.total_evaluated,
            n_trials,
            max_draws,
        )
    if report.total_evaluated == 0:
        raise FnnpError(
            f"no candidate landed in the window {problem.budget.describe()} after {report.rejected} draws; widen "
            "tolerance=, change budget= or max_rate=, or pass fit_budget=True"
        )
    strategies = S.baseline_trials(study)
    baseline = strategies.get("uniform")
    if problem.budget.ranged:
        front = [t for t in study.best_trials if St.is_evaluated(t)]
        return SearchResult(study, problem, objective, None, baseline, front, baselines=strategies)
    best, reranked = objective.best(study), None
    if rerank:
        scorer = objective.short_scorer(train, None, score_steps, lr)
        assert isinstance(scorer, Scorer)  # (a rerank takes train=, not a hook: checked above)
        reranked = rerank_top(study, problem.pruner, objective.calibration, scorer, rerank, problem.ratios, progress)
        best = next(t for t in S.evaluated(study) if t.number == reranked.winner)
    return SearchResult(study, problem, objective, best, baseline, rerank=reranked, baselines=strategies)


# --------------------------------------------------------------------------- fine-tune


@_python
def finetune(
    net: nn.Module,
    train_loader: Iterable,
    *,
    epochs: int = 1,
    lr: float = 0.02,
    weight_decay: float = 5e-4,
    teacher: nn.Module | None = None,
    temperature: float = 4.0,
    distill_weight: float = 0.5,
    device: str = "cpu",
    checkpoint: str | os.PathLike | None = None,
    seed: int = 0,
    progress: Progress = NULL,
) -> list[float]:
    """fnnp-opt's fine-tune of a pruned network, in place: SGD with Nesterov momentum, a cosine learning rate from
    ``lr`` to 0, weight decay on conv and linear weights, and, with ``teacher`` (the unpruned model), knowledge
    distillation: ``(1 - distill_weight) x CE + distill_weight x T^2 x KL`` at temperature ``T``.

    Args:
        net: the pruned network (e.g. ``result.build()``); trained in place, returned to eval mode.
        train_loader: a DataLoader (or a list) of ``(x, y)`` batches; its order, batch size and augmentation are
            used as they are, one pass per epoch.
        checkpoint: a file where each epoch is saved; a later call with the same arguments resumes after the last
            finished epoch.

    Returns:
        The mean training loss of each epoch.

    Raises:
        UsageError: a bad argument (the message names it); NonFiniteError: the loss became NaN or inf.
    """
    if not isinstance(net, nn.Module):
        raise UsageError(f"net must be a torch.nn.Module, got a {type(net).__name__}")
    _whole(epochs, "epochs", 1)
    check_lr(lr)
    check_seed(seed)
    if not (weight_decay >= 0 and math.isfinite(weight_decay)):
        raise UsageError(f"weight_decay= must be >= 0, got {weight_decay}")
    if not (temperature > 0 and math.isfinite(temperature)):
        raise UsageError(f"temperature= must be positive, got {temperature}")
    if not 0 <= distill_weight <= 1:
        raise UsageError(f"distill_weight= must be in [0, 1], got {distill_weight}")
    if checkpoint is not None:
        check_output_writable(Path(checkpoint))
    first = take(train_loader, 1, "train_loader", labels=True)[0]
    for name, model in (("net", net), ("teacher", teacher)):
        if model is None:
            continue
        if not isinstance(model, nn.Module):
            raise UsageError(f"{name} must be a torch.nn.Module, got a {type(model).__name__}")
        try:  # the first batch through the loss, on a copy: a mismatch is named before any step changes net
            with torch.no_grad():
                distill_loss(copy.deepcopy(model).eval()(first[0]), first[1], None, None)
        except Exception as exc:  # noqa: BLE001  (the user's data against the user's model)
            raise UsageError(
                f"train_loader's first batch fails in {name}'s loss ({describe(exc)}); pass (x, y) batches shaped as "
                f"{name}'s input, with class indices below its outputs"
            ) from None
    batch = len(first[0])
    train = LoaderSet(train_loader, batch)
    cfg = FitConfig(epochs, lr, batch, weight_decay=weight_decay, seed=seed)
    distill = Distill(temperature, distill_weight) if teacher is not None else None
    return fit(
        net,
        train,
        cfg,
        device=device,
        checkpoint=Path(checkpoint) if checkpoint is not None else None,
        progress=progress,
        teacher=teacher,
        distill=distill,
    )
