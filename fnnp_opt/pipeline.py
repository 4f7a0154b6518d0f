"""`fnnp-opt run`: search, fine-tune the winner, report on the test set, export.

Everything that can be checked is checked before the storage or the output folder
is touched, so bad input leaves both as they were.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.storages import BaseStorage

from fnnp_opt import artifacts as A
from fnnp_opt import distributed
from fnnp_opt import dashboard as D
from fnnp_opt import optimize as S
from fnnp_opt import storage as St
from fnnp_opt.config import Objective, RunConfig, Score, check_batch_fits, check_workers, resolve_device
from fnnp_opt.data import DataSplits, load_splits, resolve_dataset
from fnnp_opt.errors import CheckpointError, FnnpError, ModelError, StorageError, UsageError
from fnnp_opt.early_stop import make_pruner
from fnnp_opt.evaluate import accuracy, calibrate_bn, calibration_mode, chance_level, norm_layers, resident
from fnnp_opt.export import check_output_writable, save_onnx, save_pruned
from fnnp_opt.latency import (
    Measurement,
    profile,
    speed_warnings,
    vector_width,
)
from fnnp_opt.training import Distill, FitConfig, fit
from fnnp_opt.flops import Budget, count
from fnnp_opt.models import check_input, create_model, default_checkpoint, load_model
from fnnp_opt.pareto import front_rows, write_front
from fnnp_opt.problem import Problem, default_rounding, is_wide
from fnnp_opt.progress import NULL, Progress, Stopwatch
from fnnp_opt.rerank import RerankReport, rerank
from fnnp_opt.score import Scorer, ShortFinetune
from fnnp_opt.space import SearchSpace
from fnnp_opt.workers import search_parallel

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    """A run's problem (model, space, budget: :class:`fnnp_opt.problem.Problem`) and its data, loaded from files
    and validated."""

    cfg: RunConfig
    device: str
    problem: Problem
    splits: DataSplits | None  # None when prepared without data
    digest: str  # sha256 of the base weights

    # the problem's parts, as every stage reads them
    model = property(lambda self: self.problem.model)
    pruner = property(lambda self: self.problem.pruner)
    space = property(lambda self: self.problem.space)
    budget = property(lambda self: self.problem.budget)
    flops = property(lambda self: self.problem.flops)
    latency = property(lambda self: self.problem.latency)
    input_shape = property(lambda self: self.problem.input_shape)
    base_params = property(lambda self: self.problem.base_params)
    uniform = property(lambda self: self.problem.uniform)
    no_uniform = property(lambda self: self.problem.no_uniform)

    def cost(self, removed: dict[str, int]) -> float:
        """What the budget limits, for a plan ({root: channels removed}): predicted ms with --latency, else MACs."""
        return self.problem.cost(removed)

    def fingerprint(self) -> dict[str, str]:
        """What must match for a stored study to be resumed."""
        assert self.splits is not None  # prepared with data
        extra = {"objective": self.cfg.objective.value} if self.cfg.objective is Objective.pareto else {}
        if self.cfg.score is Score.abn_ft:  # the trials' values are abn-ft scores of this short fine-tune
            extra["score"] = f"{Score.abn_ft.value}|{short_finetune(self.cfg).describe()}"
        problem = self.problem.fingerprint()
        return extra | {
            "model": self.cfg.model,
            "weights": self.digest[:16],
            "dataset": self.cfg.dataset,
            "data": self.splits.fingerprint,
            "space": problem["space"],
            "budget": problem["budget"],
        }


def short_finetune(cfg: RunConfig, steps: int | None = None) -> ShortFinetune:
    """The short fine-tune of ``--score abn-ft``, ``--rerank`` and `correlate`: the fine-tune's recipe, ``steps``
    long (None: ``--score-steps``)."""
    steps = cfg.score_steps if steps is None else steps
    return ShortFinetune(steps, cfg.lr, cfg.batch_size, cfg.weight_decay, cfg.seeds().finetune)


def make_scorer(p: Prepared) -> Scorer:
    """The abn-ft scorer of a prepared run (its train-part images drawn once)."""
    cfg = p.cfg
    assert p.splits is not None  # prepared with data
    search = p.splits.search_batches(cfg.eval_batch_size)
    return Scorer.build(short_finetune(cfg), p.splits.train, search, p.splits.augment, p.device)


def prepare(cfg: RunConfig, with_data: bool = True, progress: Progress = NULL, latency_table: bool = True) -> Prepared:
    """Load model and data, derive the search space and the budget, and check reachability.

    Everything the model alone decides (its outputs, the space, the budget window, the batch
    sizes its normalisation layers accept) is checked before any data file is read, so a
    mistyped command fails at once. ``with_data=False`` skips the dataset files (``splits`` is
    then None): the space and the budget depend on the model alone. With ``--latency`` the
    latency table is built (or read from its cache) here, with ``progress``; ``latency_table=False``
    skips it (a torchrun follower, which only fine-tunes: the budget is then left open, [0, base]).
    """
    device = resolve_device(cfg.device)
    if torch.device(device).type == "cuda":
        torch.backends.cudnn.benchmark = True  # every candidate repeats the same input shapes
    data_dir = Path(cfg.data_dir) if cfg.data_dir else None
    info = resolve_dataset(cfg.dataset, data_dir, cfg.image_size)
    ckpt = Path(cfg.checkpoint) if cfg.checkpoint else default_checkpoint(cfg.model, cfg.dataset)
    if ckpt is None and not with_data:  # the space and the budget do not depend on the weights
        log.warning("no checkpoint for %s on %s: using random weights to derive the space", cfg.model, cfg.dataset)
        torch.manual_seed(cfg.seed)
        model, digest = create_model(cfg.model, info.in_channels, info.num_classes).eval(), "random"
    elif ckpt is None:
        raise CheckpointError(
            f"no checkpoint ships for {cfg.model} on {cfg.dataset}; train one with "
            f"`fnnp-opt train --model {cfg.model} --dataset {cfg.dataset}` and pass it with --checkpoint"
        )
    else:
        model, digest = load_model(cfg.model, info.in_channels, info.num_classes, ckpt)
    input_shape = (1, info.in_channels, info.image_size, info.image_size)
    check_input(model, cfg.model, input_shape, info.num_classes)
    check_batch_sizes(model, cfg, input_shape)

    def problem_at(round_to: int) -> Problem:
        return Problem(
            model,
            torch.zeros(input_shape),
            budget=cfg.budget_text(),
            tolerance=cfg.latency_tolerance if cfg.latency is not None else cfg.flops_tolerance,
            max_rate=cfg.max_rate,
            round_to=round_to,
            min_channels=cfg.min_channels,
            exclude=cfg.exclude,
            num_classes=info.num_classes,
            latency=cfg.latency is not None,
            timing=cfg.timing(),
            device=device,
            progress=progress,
            timed=latency_table,
        )

    step = cfg.resolved_round_to()
    problem = default_rounding(problem_at, step, model) if cfg.round_to is None else problem_at(step)
    cfg = replace(cfg, round_to=problem.shaping.round_to)  # as the study records it: the same space on any machine
    p = Prepared(cfg, device, problem, None, digest)
    if not norm_layers(model):
        log.warning(
            "%s has no normalisation layer that keeps running statistics: ABN recomputes nothing, so every "
            "trial's score is the plain accuracy of the pruned network (PBN)",
            cfg.model,
        )
    if with_data:
        p.splits = load_splits(
            cfg.dataset,
            data_dir,
            search_size=cfg.search_size,
            search_per_class=cfg.search_per_class,
            abn_batches=cfg.calibration_batches(),
            abn_batch_size=cfg.abn_batch_size,
            calib_seed=cfg.seeds().calibration,
            image_size=cfg.image_size,
        )
        if cfg.epochs > 0:
            check_batch_fits(cfg.batch_size, len(p.splits.train))
        if cfg.score is Score.abn_ft or cfg.resolved_rerank(len(p.splits.train)):
            check_score_steps(cfg, len(p.splits.train))
        elif cfg.rerank is None and cfg.resolved_rerank():
            log.info(
                "no rerank: the default's short fine-tune (--score-steps %d x --batch-size %d images) exceeds the "
                "train part's %d images; the winner is the best ABN score",
                cfg.score_steps,
                cfg.batch_size,
                len(p.splits.train),
            )
    return p


def check_batch_sizes(model: torch.nn.Module, cfg: RunConfig, input_shape: tuple[int, ...]) -> None:
    """Raise :class:`UsageError` when a batch of ``--abn-batch-size`` (or ``--batch-size``) images leaves a
    normalisation layer in train mode one value per channel, which it cannot normalise.

    Only a batch of one image can do that (a BatchNorm1d head, or a map pooled to 1x1); it is
    run once on zeros, on a copy, to find out.
    """
    for flag, size in (("--abn-batch-size", cfg.abn_batch_size), ("--batch-size", cfg.batch_size)):
        if size != 1 or not norm_layers(model):
            continue
        probe = copy.deepcopy(model)
        calibration_mode(probe)
        try:
            with torch.no_grad():
                probe(torch.zeros(input_shape))
        except ValueError as exc:
            raise UsageError(
                f"{flag} 1: a normalisation layer of {cfg.model} sees one value per channel in a batch of one "
                f"image ({str(exc).splitlines()[0][:80]}); pass {flag} 2 or more"
            ) from None


def check_score_steps(cfg: RunConfig, train_images: int) -> None:
    """Raise :class:`UsageError` when abn-ft's short fine-tune would need more images than the train part holds."""
    if cfg.score_steps * cfg.batch_size > train_images:
        raise UsageError(
            f"--score-steps {cfg.score_steps} x --batch-size {cfg.batch_size} images exceed the train part's "
            f"{train_images}: the short fine-tune is at most one epoch; pass --score-steps "
            f"{max(1, train_images // cfg.batch_size)} or less"
        )


def uniform_macs(p: Prepared, ratio: float) -> int:
    """FLOPs with ``ratio`` in every group."""
    return p.flops.macs(p.pruner.counts(p.space.uniform(ratio)))


@dataclass
class RunResult:
    """The outcome of `fnnp-opt run` (or `fnnp-opt finetune`)."""

    study_name: str
    storage: str
    report: S.SearchReport
    budget: Budget
    best_trial: int | None = None  # the delivered trial (None for a Pareto search)
    best_value: float | None = None  # the delivered trial's value (its ABN accuracy, or abn-ft score)
    export: Path | None = None  # None when nothing was delivered by this process
    delivered_by: str | None = None  # another worker fine-tuning the winner (host:pid)
    front: list[dict] = field(default_factory=list)  # the Pareto front (--objective pareto)
    front_files: list[Path] = field(default_factory=list)  # its CSV and plot
    rerank: RerankReport | None = None  # --rerank K: the re-scores of the top K
    base: Measurement | None = None  # the base on the test set and timed (None when nothing was delivered)
    pruned: Measurement | None = None  # the delivered network, likewise
    finetune_losses: list[float] = field(default_factory=list)
    distilled: bool = False  # the fine-tune distilled from the unpruned network
    stage_seconds: dict = field(default_factory=dict)
    score_label: str = "ABN accuracy"  # what best_value is
    latency: dict | None = None  # --latency: the winner timed directly against its window
    onnx: dict | None = None  # --onnx: onnxruntime's agreement with PyTorch and its times (ms by batch)
    published: A.Published | None = None  # the delivered files and figures in the study's artifact store
    baselines: list[dict] = field(default_factory=list)  # each evaluated baseline against the winner
    speed_notes: list[str] = field(default_factory=list)  # where the speed-up falls short of the MACs'


def score_label(cfg: RunConfig, model: torch.nn.Module) -> str:
    """What a trial's value is, in words (plain accuracy when the model has no statistics for ABN to recompute)."""
    if cfg.score is Score.abn_ft:
        return "abn-ft score"
    return "ABN accuracy" if norm_layers(model) else "plain accuracy (no BN statistics: ABN = PBN)"


def _measure(base: torch.nn.Module, pruned: torch.nn.Module, input_shape: tuple[int, ...], batch: int) -> list[dict]:
    """The times of the base and the pruned network for their :class:`Measurement`: median CPU times at batch 1 and
    at ``batch``, side by side, each in its faster layout (:func:`fnnp_opt.latency.profile`)."""
    rows = profile(base, pruned, input_shape, (1, batch))
    one, many = rows[0], rows[-1]  # one row when batch is 1
    return [
        {
            "latency_ms": one[f"{k}_ms"],
            "latency_layout": one[f"{k}_layout"],
            "batch_ms": many[f"{k}_ms"],
            "batch_layout": many[f"{k}_layout"],
            "batch_images": batch,
            "threads": one["threads"],
        }
        for k in ("base", "pruned")
    ]


def _winner_latency(p: Prepared, study: optuna.Study, pruned: torch.nn.Module, trial) -> dict:
    """``--latency``: the delivered network timed directly at the study's setting, against its window, and
    the table's prediction error over the study's evaluated candidates (each timed directly too)."""
    import statistics

    assert p.latency is not None  # a --latency run
    table, b = p.latency, p.budget
    measured, ratio = table.measure(pruned, runs=100)
    within = b.contains(measured)
    timed = [t.user_attrs for t in study.get_trials(deepcopy=False) if "latency_measured_ms" in t.user_attrs]
    errors = [abs(a["latency_ms"] / a["latency_measured_ms"] - 1) for a in timed]
    row = {
        **table.setting.to_dict(),
        "target_ms": b.target,
        "window_ms": [b.low, b.high],
        "base_ms": b.base,
        "base_layout": table.base_layout,  # the base as deployed, as the summary's speed-up times it
        "predicted_ms": trial.user_attrs.get("latency_ms"),
        "measured_ms": measured,
        "measured_ratio": ratio,  # of the base, timed side by side now
        "within_window": within,
        "prediction_error_median": statistics.median(errors) if errors else None,  # |predicted / measured - 1|
        "candidates_timed": len(errors),
    }
    if not within:
        log.warning(
            "the delivered network runs in %s measured, outside the window [%s, %s] (predicted %s): the table's "
            "prediction missed; the study records its error per trial (latency_measured_ms)",
            b.fmt(measured),
            b.fmt(b.low),
            b.fmt(b.high),
            b.fmt(row["predicted_ms"] or float("nan")),
        )
    return row


def check_base(p: Prepared) -> float:
    """The unpruned model's accuracy on the search split: every trial's reference.

    Raises :class:`ModelError` when it is at or below chance (the share of the commonest label),
    as with weights for another dataset or a shifted label order, unless ``--no-check-base``.
    """
    assert p.splits is not None  # prepared with data
    search = p.splits.search_batches(p.cfg.eval_batch_size)
    acc, chance = accuracy(p.model, search, p.device, description="base"), chance_level(search)
    log.info("the unpruned model scores %.4f on the search split (chance: %.4f)", acc, chance)
    if acc <= chance and p.cfg.check_base:
        raise ModelError(
            f"the unpruned {p.cfg.model} scores {acc:.4f} on the search split, at or below chance ({chance:.4f}): "
            "its weights do not fit this dataset or its label order; check --checkpoint and --dataset "
            "(or pass --no-check-base to search untrained weights anyway)"
        )
    return acc


def open_study(
    cfg: RunConfig, p: Prepared, storage: BaseStorage, base_accuracy: float | None = None
) -> optuna.Study:
    """Resume the study of ``cfg`` in ``storage`` (opened by the caller, :func:`fnnp_opt.storage.opened`; its
    fingerprint must match) or create it with the uniform baselines queued.

    ``base_accuracy`` (the unpruned model's search-split accuracy) is stored as the study's
    ``base_accuracy`` user attribute, the reference of every trial's ``vs_base``.
    """
    url, name = cfg.resolved_storage(), cfg.resolved_study_name()
    config = cfg.to_dict()
    study, created = p.problem.resume_or_create(storage, url, name, p.fingerprint(), config, config, "--study-name")
    if base_accuracy is not None and "base_accuracy" not in study.user_attrs:  # (a study made before it was kept)
        study.set_user_attr("base_accuracy", base_accuracy)
    if not created:
        log.info("resuming study %r: %d evaluated so far", name, len(S.evaluated(study)))
    elif p.latency is not None:  # the setting it was timed in, the base's latency and the table's fit
        study.set_user_attr("latency", p.latency.describe())
    _describe_study(cfg, p, study)
    return study


def _describe_study(cfg: RunConfig, p: Prepared, study: optuna.Study) -> None:
    """What the dashboard shows of the study: its objectives' names, its note and where its artifacts go."""
    assert p.splits is not None  # prepared with data
    label = score_label(cfg, p.model)
    note = D.study_note(
        model=cfg.model,
        dataset=cfg.dataset,
        budget=(f"latency {cfg.latency} ({p.budget.describe()})" if p.latency is not None else p.budget.describe()),
        score=label,
        dims=p.space.describe(),
        max_rate=p.space.max_rate,
        search_images=len(p.splits.search),
        calibration=f"{cfg.abn_batches} batches of {cfg.abn_batch_size} training images",
        sampler=cfg.sampler.value,
        n_trials=cfg.n_trials,
        base_accuracy=study.user_attrs.get("base_accuracy"),
    )
    D.describe(study, D.metric_names(label, cfg.objective is Objective.pareto, p.latency is not None), note)
    url = cfg.resolved_storage()
    A.record(study, A.store_dir(url, cfg.artifact_dir, study), url)


def make_evaluator(cfg: RunConfig, p: Prepared, study: optuna.Study, progress: Progress = NULL) -> S.Evaluator:
    """The objective of this process's trials, with the study's sampler and pruner set for ``cfg``.

    On CUDA the calibration and search batches are moved to the device once, here, for every candidate.
    """
    assert p.splits is not None  # prepared with data
    seed = S.session_seed(cfg.seeds().sampler, St.next_session(study))
    study.sampler = S.make_sampler(cfg.sampler, seed, cfg.objective, p.problem.sampler_start(cfg.sampler))
    early = cfg.stops_early()
    if early:
        study.pruner = make_pruner()
    return S.Evaluator(
        p.pruner,
        p.space,
        p.budget,
        p.flops,
        resident(p.splits.calibration, p.device),
        resident(p.splits.search_batches(cfg.eval_batch_size), p.device),
        p.device,
        mode=cfg.resolved_constraint(),
        fit_budget=cfg.fit_budget,
        objective=cfg.objective,
        slots=St.Slots(study, cfg.n_trials),
        progress=progress,
        finetune=make_scorer(p) if cfg.score is Score.abn_ft else None,
        base_accuracy=study.user_attrs.get("base_accuracy"),
        latency=p.latency,
        early_stop=early,
        pbn=cfg.pbn,
        amp=cfg.amp,
    )


def search(cfg: RunConfig, p: Prepared, study: optuna.Study, progress: Progress = NULL, queue: bool = True):
    """Queue the study's baselines (the first process to get here computes them; ``queue`` False: the parent of
    the search workers has), then run this process's share of the search; returns its :class:`SearchReport`."""
    evaluator = make_evaluator(cfg, p, study, progress)
    if queue:
        queue_baselines(cfg, p, study, evaluator, progress)
    return S.optimize(study, evaluator, cfg.n_trials, cfg.max_draws, progress)


def queue_baselines(
    cfg: RunConfig, p: Prepared, study: optuna.Study, evaluator: S.Evaluator, progress: Progress = NULL
) -> None:
    """Queue ``--baselines`` beyond uniform L1 (:meth:`fnnp_opt.problem.Problem.enqueue_baselines`), under the study
    lock: one process computes them, the others find them queued."""
    wanted = [b for b in cfg.baseline_names() if b != "uniform"]
    missing = set(wanted) - S.strategies_queued(study)  # none: nothing to compute, only to check (no lock)
    assert p.splits is not None  # prepared with data
    taylor = "global" in missing and cfg.global_importance == "taylor"
    grads = list(itertools.islice(iter(p.splits.calibration), 8)) if taylor else None
    with St.study_lock(study) if missing else contextlib.nullcontext():
        p.problem.enqueue_baselines(
            study,
            wanted,
            score=evaluator.score_model,
            importance=cfg.global_importance,
            steps=cfg.sensitivity_steps,
            gradient_batches=grads,
            progress=progress,
        )
    S.warn_if_baselines_fill(study, cfg.n_trials)


def search_share(cfg: RunConfig) -> None:
    """A search worker's job (:func:`fnnp_opt.workers.search_parallel`): prepare ``cfg`` and search this process's
    share of its stored study, whose baselines the parent queued."""
    p = prepare(cfg)
    with St.opened(cfg.resolved_storage()) as storage:
        search(cfg, p, optuna.load_study(study_name=cfg.resolved_study_name(), storage=storage), queue=False)


def trial_ratios(space: SearchSpace, trial) -> dict[str, float]:
    """The ratios a trial applied (after --fit-budget), as {root: ratio}."""
    if "ratios" in trial.user_attrs:
        return space.from_named(trial.user_attrs["ratios"])
    return space.from_params(trial.params)


@dataclass(frozen=True)
class Winner:
    """What rank 0 hands the other torchrun processes: the candidate to fine-tune and how."""

    cfg: RunConfig  # rank 0's resolved configuration (settled from the study)
    study_name: str
    trial: optuna.trial.FrozenTrial
    output: Path  # the export folder: its finetune.pt holds the epoch checkpoint


def finetune_winner(cfg: RunConfig, p: Prepared, study_name: str, trial, output: Path, progress: Progress = NULL):
    """Prune ``trial``'s candidate, recompute its BN statistics (ABN) and fine-tune it, resuming from
    ``output/finetune.pt``. Under torchrun every process runs this together. Returns ``(pruned network, ratios
    {root: ratio}, Distill or None, training loss per epoch)``."""
    assert p.splits is not None  # prepared with data
    log.info("fine-tuning trial %d for %d epochs%s", trial.number, cfg.epochs, " (distilled)" if cfg.distills() else "")
    ratios = trial_ratios(p.space, trial)
    pruned = p.pruner.prune(ratios)
    calibrate_bn(pruned, p.splits.calibration, p.device)  # start fine-tuning from ABN statistics
    fit_cfg = FitConfig(cfg.epochs, cfg.lr, cfg.batch_size, weight_decay=cfg.weight_decay, seed=cfg.seeds().finetune)
    distill = Distill(cfg.distill_temperature, cfg.distill_weight) if cfg.distills() else None
    losses = fit(
        pruned,
        p.splits.train,
        fit_cfg,
        augment=p.splits.augment,
        device=p.device,
        checkpoint=output / "finetune.pt",
        tag=f"{study_name}|{trial.number}|{sorted(trial.params.items())}",
        progress=progress,
        teacher=p.model if distill else None,
        distill=distill,
    )
    return pruned, ratios, distill, losses


def follow(group: distributed.Group) -> None:
    """A torchrun process other than rank 0: wait for rank 0's :class:`Winner` (while it searches, perhaps for
    hours), then fine-tune it with rank 0. Touches no storage and writes nothing."""
    winner = group.receive()
    if winner is None:  # rank 0 has nothing to fine-tune (a Pareto front, another worker delivers) or failed
        return None
    assert isinstance(winner, Winner)  # what rank 0 publishes
    p = prepare(winner.cfg, latency_table=False)  # the same network and data as rank 0's, nothing timed
    finetune_winner(winner.cfg, p, winner.study_name, winner.trial, winner.output)
    return None


@dataclass
class Delivery:
    """What :func:`deliver` did for a trial."""

    base: Measurement  # the base, on the test set and timed
    pruned: Measurement  # the fine-tuned candidate, likewise
    losses: list[float]  # the fine-tune's training loss per epoch
    seconds: dict[str, float]  # wall time per stage: finetune, report
    distilled: bool  # whether the fine-tune distilled from the base
    latency: dict | None  # --latency: the winner timed directly against its window (as the export records it)
    onnx: dict | None  # --onnx: onnxruntime's agreement with PyTorch and its times (as the export records it)
    speed_notes: list[str]  # where the speed-up falls short of the MACs' (:func:`fnnp_opt.latency.speed_warnings`)


def deliver(
    cfg: RunConfig,
    p: Prepared,
    study: optuna.Study,
    trial,
    output: Path,
    progress: Progress = NULL,
    reranked: RerankReport | None = None,
) -> Delivery:
    """Fine-tune ``trial``'s candidate, measure it and the base on the test set, and export it.

    ``reranked`` (the rerank that chose ``trial``) records the winner's rerank score in the export.
    """
    assert p.splits is not None  # prepared with data
    seconds = Stopwatch()
    with seconds("finetune"):
        group = distributed.current()
        if group is not None:  # under torchrun, the other processes fine-tune the winner with this one
            group.send(Winner(cfg, study.study_name, trial, output))
        pruned, ratios, distill, losses = finetune_winner(cfg, p, study.study_name, trial, output, progress)

    with seconds("report"):
        log.info("testing the base and the pruned network, then exporting to %s", output)
        test = p.splits.test_batches(cfg.eval_batch_size)  # the only use of the test set
        base_acc = accuracy(p.model.to(p.device), test, p.device, progress, "test (base)")
        pruned_acc = accuracy(pruned, test, p.device, progress, "test (pruned)")
        pruned.cpu()
        p.model.cpu()
        times = _measure(p.model, pruned, p.input_shape, cfg.eval_batch_size)
        base = Measurement(base_acc, p.flops.base, p.base_params, **times[0])
        macs, params = count(pruned, p.input_shape)
        result_pruned = Measurement(pruned_acc, macs, params, **times[1])
        # --round-to auto is a remedy only where it was not applied and would change the network's counts
        roundable = p.problem.shaping.round_to == 1 and is_wide(p.model, vector_width(p.device))
        notes = speed_warnings(base, result_pruned, p.latency is not None, can_round=roundable)
        for note in notes:  # the CLI prints them too
            log.info("%s", note)
        latency = _winner_latency(p, study, pruned, trial) if p.latency is not None else None
    info = p.splits.info
    card = {
        "model": cfg.model,
        "in_channels": info.in_channels,
        "num_classes": info.num_classes,
        "input_shape": list(p.input_shape),
        "dataset": cfg.dataset,
        "mean": list(info.mean),
        "std": list(info.std),
        "study": {
            "name": study.study_name,
            "storage": St.redact_url(cfg.resolved_storage()),
            "trial": trial.number,
            "abn_accuracy": trial.user_attrs.get("abn_accuracy", trial.values[0]),
            "value": trial.values[0],  # the study's score: ABN accuracy, or abn-ft with --score abn-ft
            "score": cfg.score.value,
            **({"rerank": {reranked.key: reranked.scores[trial.number]}} if reranked is not None else {}),
        },
        "ratios": {d.name: ratios[d.root] for d in p.space.dims},
        "channels": trial.user_attrs.get("channels", {}),
        "metrics": {"base": base.to_dict(), "pruned": result_pruned.to_dict()},
        "config": cfg.to_dict(),
        "distilled": bool(distill),  # whether the fine-tune distilled from the base (config.distill None: default)
        **({"latency": latency} if latency is not None else {}),
    }
    if cfg.onnx:
        output.mkdir(parents=True, exist_ok=True)
        card["onnx"] = save_onnx(pruned, p.input_shape, output / "pruned.onnx", time_batches=(1, cfg.eval_batch_size))
        log.info("pruned.onnx matches PyTorch within %.2g", card["onnx"]["max_abs_diff"])
    save_pruned(pruned, output, card)
    study.set_user_attr(
        "result",
        {"trial": trial.number, "export": str(output), "base": base.to_dict(), "pruned": result_pruned.to_dict()}
        | ({"latency": latency} if latency is not None else {})
        | ({"rerank": reranked.key} if reranked is not None else {}),  # the trial attribute that chose the winner
    )
    return Delivery(base, result_pruned, losses, seconds, bool(distill), latency, card.get("onnx"), notes)


def publish(cfg: RunConfig, study: optuna.Study, trial, output: Path, report: bool = True) -> A.Published:
    """Write the study's report into ``output`` (:mod:`fnnp_opt.report`) unless ``report`` is False, and put it
    and the export of ``trial`` (None: a Pareto study's front) into the study's artifact store, on the trial."""
    files = A.export_files(output)
    if report:
        from fnnp_opt.report import write_report

        written = write_report(study, output, cfg.resolved_storage())
        files += written.files
    folder = A.store_dir(cfg.resolved_storage(), cfg.artifact_dir, study)
    published = A.publish(study, trial, files, folder, cfg.resolved_storage())
    log.info("artifacts: %s", published.describe())
    return published


def settle(cfg: RunConfig) -> RunConfig:
    """``cfg`` with the settings it leaves to its study filled in: a resumed study's stored values (so a study
    made under an older default resumes as it was made), else the defaults of a new study."""
    left = [key for key in St.STUDY_SETTINGS if getattr(cfg, key) is None]
    if not left:
        return cfg
    stored = St.stored_settings(cfg.resolved_storage(), cfg.resolved_study_name())
    # round_to None: prepare resolves the default (the vector width where it reaches the budget, else 1)
    fresh: dict[str, Any] = {
        "abn_batches": cfg.calibration_batches(),
        "early_stop": True,
        "calibration_seed": 0,
        "round_to": None,
    }
    return replace(cfg, **{key: stored.get(key, fresh[key]) for key in left})


def run(cfg: RunConfig, progress: Progress = NULL) -> RunResult | None:
    """The whole pipeline; resumes the study and the fine-tune when run again.

    Under torchrun (:func:`fnnp_opt.distributed.session`) rank 0 runs it all and the others only join the
    fine-tune (:func:`follow`); they return None.
    """
    group = distributed.current()
    if group is not None and not group.main:
        follow(group)
        return None
    seconds = Stopwatch()  # the summary's time per stage
    with seconds("prepare"):
        check_workers(cfg.workers)
        output = cfg.resolved_output()
        check_output_writable(output, folder=True)
        St.check_storage_writable(cfg.resolved_storage())
        if cfg.artifact_dir is not None:
            A.check_store(Path(cfg.artifact_dir))
        p = prepare(settle(cfg), progress=progress)
        cfg = p.cfg  # with the settings prepare resolves (the default --round-to)
        assert p.splits is not None  # prepared with data
        base_accuracy = check_base(p)
    with St.opened(cfg.resolved_storage()) as storage:  # closed however the run ends: a SQLite file holds it all
        with seconds("prepare"):
            study = open_study(cfg, p, storage, base_accuracy)
        result = RunResult(cfg.resolved_study_name(), St.redact_url(cfg.resolved_storage()), S.SearchReport(), p.budget)
        result.score_label = score_label(cfg, p.model)
        result.stage_seconds = seconds

        workers = cfg.resolved_workers()
        with seconds("search"):
            if workers > 1:  # the baselines first, here: computed once, with their progress, said once
                queue_baselines(cfg, p, study, make_evaluator(cfg, p, study, progress), progress)
                result.report = search_parallel(replace(cfg, workers=workers), study, search_share, progress)
            else:
                result.report = search(cfg, p, study, progress)
        report = result.report
        if report.total_evaluated == 0:
            raise FnnpError(
                f"no candidate landed in the window {p.budget.describe()} after {report.rejected} draws; "
                "widen --flops-tolerance or change --flops / --max-rate, or pass --fit-budget"
            )
        if report.hit_max_draws:
            log.warning(
                "stopped after %d rejected draws with %d of %d candidates evaluated: few draws land in the window; "
                "pass --fit-budget (every draw is moved into it), or widen it with %s-tolerance",
                report.rejected,
                report.total_evaluated,
                cfg.n_trials,
                p.budget.option,
            )
        if cfg.objective is Objective.pareto:
            result.front = front_rows(study)
            result.front_files = write_front(study, result.front, p.budget, output)
            result.published = publish(cfg, study, None, output)
            return result

        best = S.best_trial(study)
        k = cfg.resolved_rerank(len(p.splits.train))
        if k:
            with seconds("rerank"):
                result.rerank = rerank(
                    study,
                    p.pruner,
                    p.splits.calibration,
                    make_scorer(p),
                    k,
                    lambda trial: trial_ratios(p.space, trial),
                    progress,
                )
            best = next(trial for trial in S.evaluated(study) if trial.number == result.rerank.winner)
        result.best_trial, result.best_value = best.number, best.values[0]
        result.baselines = versus_baselines(study, best, result.rerank)
        result.delivered_by = St.claim_delivery(study, best.number)
        if result.delivered_by is not None:
            return result
        d = deliver(cfg, p, study, best, output, progress, result.rerank)
        result.export, result.base, result.pruned, result.finetune_losses = output, d.base, d.pruned, d.losses
        result.distilled, result.latency, result.onnx = d.distilled, d.latency, d.onnx
        result.speed_notes = d.speed_notes
        seconds.update(d.seconds)
        result.published = publish(cfg, study, best, output)
        return result


def versus_baselines(study: optuna.Study, best, reranked: RerankReport | None = None) -> list[dict]:
    """Each evaluated baseline trial (:func:`fnnp_opt.optimize.baseline_trials`) against the winner ``best``, by
    the score that chose the winner (the rerank's where there was one): ``{"strategy", "trial", "score",
    "winner_score", "flops_ratio"}``."""
    scores = reranked.scores if reranked is not None else {}

    def score(t) -> float | None:
        return scores.get(t.number) if reranked is not None else t.values[0]

    return [
        {
            "strategy": name,
            "trial": t.number,
            "score": score(t),
            "winner_score": score(best),
            "flops_ratio": t.user_attrs.get("flops_ratio"),
        }
        for name, t in S.baseline_trials(study).items()
    ]


def finetune_trial(
    storage: str, study_name: str | None, trial_number: int, overrides: dict, progress: Progress = NULL
) -> RunResult | None:
    """`fnnp-opt finetune`: fine-tune, test and export any evaluated trial of a stored study (a Pareto point).

    Under torchrun, rank 0 reads the study and exports; the others only join the fine-tune and return None.
    """
    from dataclasses import fields, replace

    from fnnp_opt.config import resolve

    group = distributed.current()
    if group is not None and not group.main:
        follow(group)
        return None

    St.check_exists(storage)
    St.check_storage_writable(storage)
    with St.opened(storage) as store:  # closed however it ends: a SQLite file then holds everything
        study = St.pick_study(store, storage, study_name)
        study_name = study.study_name
        stored = study.user_attrs.get("config")
        if stored is None:
            raise StorageError(
                f"study {study_name!r} in {St.redact_url(storage)} was not created by fnnp-opt; pass another "
                "--study-name"
            )
        known = {f.name for f in fields(RunConfig)}
        cfg = resolve(**{k: v for k, v in stored.items() if k in known})
        cfg = replace(
            cfg, storage=storage, study_name=study_name, **{k: v for k, v in overrides.items() if v is not None}
        ).validate()
        by_number = {t.number: t for t in S.evaluated(study)}
        if not by_number:
            raise UsageError(
                f"study {study_name!r} has no evaluated trial yet, so there is nothing to fine-tune; run the same "
                "`fnnp-opt run` command again to resume its search"
            )
        if trial_number not in by_number:
            what = "was not evaluated" if any(t.number == trial_number for t in study.trials) else "does not exist"
            raise UsageError(
                f"trial {trial_number} of study {study_name!r} {what} (only evaluated trials can be fine-tuned); pick "
                "an evaluated one (the front printed by `fnnp-opt run --objective pareto`, the dashboard, or `optuna "
                f"trials`), e.g. {', '.join(map(str, sorted(by_number)[:5]))}"
            )
        given = overrides.get("output")  # not the run's stored --output: that folder holds the run's own delivery
        output = Path(given) if given else Path("runs") / study_name / f"trial-{trial_number}"
        check_output_writable(output, folder=True)
        if cfg.artifact_dir is not None:
            A.check_store(Path(cfg.artifact_dir))
        p = prepare(cfg)
        St.check_fingerprint(study, p.fingerprint(), storage, cfg.to_dict())
        trial = by_number[trial_number]
        d = deliver(cfg, p, study, trial, output, progress)
        published = publish(cfg, study, trial, output, report=False)  # the study's report shows its own winner
        return RunResult(
            study_name,
            St.redact_url(storage),
            S.SearchReport(total_evaluated=len(by_number)),
            p.budget,
            trial_number,
            trial.values[0],
            output,
            base=d.base,
            pruned=d.pruned,
            finetune_losses=d.losses,
            distilled=d.distilled,
            stage_seconds=d.seconds,
            score_label=score_label(cfg, p.model),
            latency=d.latency,
            onnx=d.onnx,
            speed_notes=d.speed_notes,
            published=published,
        )


def evaluate_export(path: Path, data_dir: Path | None = None, device: str = "auto", progress: Progress = NULL) -> dict:
    """Reload an export and measure it on its dataset's test set, as `run` reported it."""
    from fnnp_opt.export import REGISTRY_FIELDS, load_pruned, read_plan

    doc, _ = read_plan(path, needs=(*REGISTRY_FIELDS, "input_shape", "dataset"))
    model = load_pruned(path)
    dev = resolve_device(device)
    cfg = doc.get("config", {})
    splits = load_splits(
        doc["dataset"],
        data_dir or cfg.get("data_dir"),
        search_size=cfg.get("search_size", 5000),
        search_per_class=cfg.get("search_per_class"),
        abn_batches=1,
        abn_batch_size=1,
        image_size=cfg.get("image_size"),
    )
    acc = accuracy(model.to(dev), splits.test_batches(cfg.get("eval_batch_size", 128)), dev, progress, "test")
    macs, params = count(model.cpu(), tuple(doc["input_shape"]))
    return {
        "test_accuracy": acc,
        "flops": macs,
        "params": params,
        "reported_test_accuracy": doc.get("metrics", {}).get("pruned", {}).get("test_accuracy"),
    }


@dataclass
class SpaceReport:
    """What `fnnp-opt space` prints: the dimensions, their weight in FLOPs, and the budget's reach."""

    dims: list[dict]  # param, channels, coupled, convs, flops_share (removed by this ratio alone at R)
    budget: Budget
    max_rate: float
    lowest: int  # FLOPs with every ratio at R
    draws: int  # random strategies drawn to estimate the acceptance rate
    accepted: int  # of which landed in the window
    uniform: list[dict[str, float]]  # the uniform L1 strategies queued first in a study, {root: ratio}
    no_uniform: list[str]  # for a target with no uniform strategy in the window: why
    round_to: int  # kept channels are multiples of this (the resolved --round-to)


def describe_space(cfg: RunConfig, draws: int = 300, progress: Progress = NULL) -> SpaceReport:
    """Derive the search space of ``cfg`` and measure how random sampling meets its budget."""
    import numpy as np

    p = prepare(cfg, with_data=False)
    rows = []
    for d, row in zip(p.space.dims, p.space.describe()):
        macs = p.flops.macs(p.pruner.counts({d.root: p.space.max_rate}))
        rows.append({**row, "flops_share": (p.budget.base - macs) / p.budget.base})
    rng = np.random.default_rng(cfg.seed)
    accepted = 0
    with progress.task("random draws", draws) as advance:
        for _ in range(draws):
            ratios = {d.root: float(r) for d, r in zip(p.space.dims, rng.uniform(0, p.space.max_rate, len(p.space)))}
            accepted += p.budget.contains(p.flops.macs(p.pruner.counts(ratios)))
            advance(1)
    lowest = uniform_macs(p, p.space.max_rate)
    return SpaceReport(
        rows, p.budget, p.space.max_rate, lowest, draws, accepted, p.uniform, p.no_uniform, p.problem.shaping.round_to
    )
