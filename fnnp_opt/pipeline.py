"""`fnnp-opt run`: search, fine-tune the winner, report on the test set, export.

Everything that can be checked is checked before the storage or the output folder
is touched, so bad input leaves both as they were.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fnnp_opt import search as S
from fnnp_opt.config import RunConfig, resolve_device
from fnnp_opt.data import DataSplits, get_dataset_info, load_splits
from fnnp_opt.errors import BudgetError, CheckpointError, FnnpError
from fnnp_opt.evaluate import accuracy, calibrate_bn, latency_ms
from fnnp_opt.export import check_writable, save_pruned
from fnnp_opt.finetune import FitConfig, fit
from fnnp_opt.flops import Budget, count, human, make_budget
from fnnp_opt.models import default_checkpoint, get_model_info, load_model
from fnnp_opt.progress import NULL, Progress
from fnnp_opt.prune import Pruner
from fnnp_opt.space import SearchSpace

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    """The model, data, space and budget of a run, loaded and validated."""

    cfg: RunConfig
    device: str
    splits: DataSplits | None  # None when prepared without data
    model: torch.nn.Module
    digest: str  # sha256 of the base weights
    pruner: Pruner
    space: SearchSpace
    budget: Budget
    base_params: int
    input_shape: tuple[int, ...]

    def fingerprint(self) -> dict[str, str]:
        """What must match for a stored study to be resumed."""
        return {
            "model": self.cfg.model,
            "weights": self.digest[:16],
            "dataset": self.cfg.dataset,
            "data": self.splits.fingerprint,
            "space": self.space.fingerprint(),
            "budget": f"{self.budget.low}-{self.budget.high}",
        }


def prepare(cfg: RunConfig, with_data: bool = True) -> Prepared:
    """Load data and model, derive the search space and the budget, and check reachability.

    ``with_data=False`` skips the dataset files (``splits`` is then None): the space and
    the budget depend on the model alone.
    """
    device = resolve_device(cfg.device)
    splits = None
    if with_data:
        splits = load_splits(
            cfg.dataset,
            Path(cfg.data_dir) if cfg.data_dir else None,
            search_size=cfg.search_size,
            abn_batches=cfg.abn_batches,
            abn_batch_size=cfg.abn_batch_size,
            calib_seed=cfg.seed,
        )
    info = get_dataset_info(cfg.dataset)
    ckpt = Path(cfg.checkpoint) if cfg.checkpoint else default_checkpoint(cfg.model, cfg.dataset)
    if ckpt is None:
        raise CheckpointError(
            f"no checkpoint ships for {cfg.model} on {cfg.dataset}; train one with "
            f"`fnnp-opt train --model {cfg.model} --dataset {cfg.dataset}` and pass it with --checkpoint"
        )
    model, digest = load_model(cfg.model, info.in_channels, info.num_classes, ckpt)
    input_shape = (1, info.in_channels, info.image_size, info.image_size)
    pruner = Pruner(model, torch.zeros(input_shape), get_model_info(cfg.model).classifier)
    space = SearchSpace.from_groups(pruner.groups, cfg.max_rate)
    base_macs, base_params = count(model, input_shape)
    budget = make_budget(cfg.flops, cfg.flops_tolerance, base_macs)
    check_reachable(pruner, space, budget, input_shape)
    return Prepared(cfg, device, splits, model, digest, pruner, space, budget, base_params, input_shape)


def uniform_macs(pruner: Pruner, space: SearchSpace, ratio: float, input_shape: tuple[int, ...]) -> int:
    return count(pruner.prune(space.uniform(ratio)), input_shape)[0]


def check_reachable(pruner: Pruner, space: SearchSpace, budget: Budget, input_shape: tuple[int, ...]) -> None:
    """Raise :class:`BudgetError` when no ratio vector in [0, R] lands in the window."""
    lowest = uniform_macs(pruner, space, space.max_rate, input_shape)  # FLOPs fall in every ratio
    if lowest <= budget.high:
        return
    lo, hi = space.max_rate, 0.99
    if uniform_macs(pruner, space, hi, input_shape) > budget.high:
        hint = "no --max-rate below 1 reaches it; raise --flops"
    else:
        for _ in range(20):
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if uniform_macs(pruner, space, mid, input_shape) <= budget.high else (mid, hi)
        hint = f"raise --max-rate to at least {hi:.3f}, or raise --flops"
    raise BudgetError(
        f"the budget window [{human(budget.low)}, {human(budget.high)}] cannot be reached with ratios in "
        f"[0, {space.max_rate}]: they reach [{human(lowest)}, {human(budget.base)}]; {hint}"
    )


@dataclass
class RunResult:
    """The outcome of `fnnp-opt run`."""

    study_name: str
    storage: str
    export: Path
    report: S.SearchReport
    best_trial: int
    best_abn: float
    budget: Budget
    base: dict = field(default_factory=dict)  # test_accuracy, flops, params, latency_ms, batch_ms
    pruned: dict = field(default_factory=dict)
    finetune_losses: list[float] = field(default_factory=list)
    stage_seconds: dict = field(default_factory=dict)


def _measure(model, acc: float, macs: int, params: int, input_shape: tuple[int, ...], batch: int) -> dict:
    """The summary row of one network: test accuracy, FLOPs, params and median CPU times."""
    return {
        "test_accuracy": acc,
        "flops": macs,
        "params": params,
        "latency_ms": latency_ms(model, input_shape),
        "batch_ms": latency_ms(model, (batch, *input_shape[1:]), runs=20),
        "batch_images": batch,
    }


def run(cfg: RunConfig, progress: Progress = NULL) -> RunResult:
    """The whole pipeline; resumes the study and the fine-tune when run again."""
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    output = cfg.resolved_output()
    check_writable(output, folder=True)
    p = prepare(cfg)
    url, name = cfg.resolved_storage(), cfg.resolved_study_name()
    storage = S.open_storage(url)
    study = S.existing_study(storage, name)
    fingerprint = p.fingerprint()
    if study is not None:
        S.check_fingerprint(study, fingerprint, url)
        log.info("resuming study %r: %d evaluated so far", name, len(S.completed(study)))
    else:
        study = S.create_study(storage, name, fingerprint, cfg.to_dict(), p.space, p.budget)
    study.sampler = S.make_sampler(cfg.sampler, S.session_seed(cfg.seed, len(study.trials)))
    seconds["prepare"] = time.perf_counter() - t0

    t = time.perf_counter()
    evaluator = S.Evaluator(
        p.pruner,
        p.space,
        p.budget,
        p.splits.calibration,
        p.splits.search_batches(cfg.eval_batch_size),
        p.input_shape,
        p.device,
        progress,
    )
    report = S.optimize(study, evaluator, cfg.n_trials, cfg.max_draws, progress)
    seconds["search"] = time.perf_counter() - t
    if report.total_evaluated == 0:
        raise FnnpError(
            f"no candidate landed in the window {p.budget.describe()} after {report.rejected} draws; "
            "widen --flops-tolerance or change --flops / --max-rate"
        )
    if report.stopped_early:
        log.warning(
            "stopped after %d rejected draws with %d of %d candidates evaluated",
            report.rejected,
            report.total_evaluated,
            cfg.n_trials,
        )
    best = study.best_trial
    ratios = p.space.from_params(best.params)

    t = time.perf_counter()
    pruned = p.pruner.prune(ratios)
    calibrate_bn(pruned, p.splits.calibration, p.device)  # start fine-tuning from ABN statistics
    fit_cfg = FitConfig(epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size, seed=cfg.seed)
    losses = fit(
        pruned,
        p.splits.train,
        fit_cfg,
        augment=p.splits.augment,
        device=p.device,
        checkpoint=output / "finetune.pt",
        tag=f"{name}|{best.number}|{sorted(best.params.items())}",
        progress=progress,
    )
    seconds["finetune"] = time.perf_counter() - t

    t = time.perf_counter()
    test = p.splits.test_batches(cfg.eval_batch_size)  # the only use of the test set
    base_acc = accuracy(p.model.to(p.device), test, p.device, progress, "test (base)")
    pruned_acc = accuracy(pruned, test, p.device, progress, "test (pruned)")
    pruned.cpu()
    p.model.cpu()
    base = _measure(p.model, base_acc, p.budget.base, p.base_params, p.input_shape, cfg.eval_batch_size)
    result_pruned = _measure(pruned, pruned_acc, *count(pruned, p.input_shape), p.input_shape, cfg.eval_batch_size)
    seconds["report"] = time.perf_counter() - t
    info = p.splits.info
    card = {
        "model": cfg.model,
        "in_channels": info.in_channels,
        "num_classes": info.num_classes,
        "input_shape": list(p.input_shape),
        "dataset": cfg.dataset,
        "mean": list(info.mean),
        "std": list(info.std),
        "study": {"name": name, "storage": url, "trial": best.number, "abn_accuracy": best.value},
        "ratios": {d.name: ratios[d.root] for d in p.space.dims},
        "channels": best.user_attrs.get("channels", {}),
        "metrics": {"base": base, "pruned": result_pruned},
        "config": cfg.to_dict(),
    }
    save_pruned(pruned, output, card)
    study.set_user_attr("result", {"trial": best.number, "export": str(output), "base": base, "pruned": result_pruned})
    return RunResult(name, url, output, report, best.number, best.value, p.budget, base, result_pruned, losses, seconds)


def evaluate_export(path: Path, data_dir: Path | None = None, device: str = "auto", progress: Progress = NULL) -> dict:
    """Reload an export and measure it on its dataset's test set, as `run` reported it."""
    from fnnp_opt.export import load_pruned, read_recipe

    doc, _ = read_recipe(path)
    model = load_pruned(path)
    dev = resolve_device(device)
    cfg = doc.get("config", {})
    splits = load_splits(
        doc["dataset"],
        data_dir or cfg.get("data_dir"),
        search_size=cfg.get("search_size", 5000),
        abn_batches=1,
        abn_batch_size=1,
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


def describe_space(cfg: RunConfig, draws: int = 300, progress: Progress = NULL) -> SpaceReport:
    """Derive the search space of ``cfg`` and measure how random sampling meets its budget."""
    import numpy as np

    p = prepare(cfg, with_data=False)
    rows = []
    for d, row in zip(p.space.dims, p.space.describe()):
        macs = count(p.pruner.prune({d.root: p.space.max_rate}), p.input_shape)[0]
        rows.append({**row, "flops_share": (p.budget.base - macs) / p.budget.base})
    rng = np.random.default_rng(cfg.seed)
    accepted = 0
    with progress.task("random draws", draws) as advance:
        for _ in range(draws):
            ratios = {d.root: float(r) for d, r in zip(p.space.dims, rng.uniform(0, p.space.max_rate, len(p.space)))}
            accepted += p.budget.contains(count(p.pruner.prune(ratios), p.input_shape)[0])
            advance(1)
    lowest = uniform_macs(p.pruner, p.space, p.space.max_rate, p.input_shape)
    return SpaceReport(rows, p.budget, p.space.max_rate, lowest, draws, accepted)
