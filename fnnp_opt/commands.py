"""The file-driven application API: one function per ``fnnp-opt`` command, the API behind the CLI.

Each command reads its inputs from files (a recipe, checkpoints, datasets, an Optuna storage), writes its outputs
to files and returns what the CLI prints. :mod:`fnnp_opt.cli` is one client of this module; a Python user is
another::

    from fnnp_opt import commands

    result = commands.run(commands.resolve("resnet56-cifar10", n_trials=50))
    print(result.best_trial, result.export)

Besides the commands it holds their configuration types and the few helpers that rendering their results needs.
Importing it is cheap (neither torch nor Optuna): each command imports the library it calls, and the names below
that live in modules built on torch are loaded on first use.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from fnnp_opt.config import RunConfig, load_recipe, resolve
from fnnp_opt.distributed import COMMANDS as _TORCHRUN_COMMANDS
from fnnp_opt.distributed import check_batch_size, launched, session
from fnnp_opt.progress import LOG_LINE, NULL, LineProgress, Progress
from fnnp_opt.recipes import Recipe, read_recipe
from fnnp_opt.redact import RedactingFilter, redact, redact_url

if TYPE_CHECKING:
    from fnnp_opt.correlate import CorrelateResult, CorrelateSettings
    from fnnp_opt.training import FitConfig
    from fnnp_opt.flops import human
    from fnnp_opt.models import ModelInfo
    from fnnp_opt.pipeline import RunResult, SpaceReport
    from fnnp_opt.report import Report
    from fnnp_opt.space import uniform_words

__all__ = [
    # configuration
    "RunConfig",
    "FitConfig",
    "CorrelateSettings",
    "Recipe",
    "resolve",
    "correlate_config",
    "read_recipe",
    # the commands and what they return
    "run",
    "finetune",
    "train",
    "correlate",
    "space",
    "evaluate",
    "export",
    "report",
    "models",
    "ModelCatalog",
    "recipes",
    "dashboard",
    "RunResult",
    "SpaceReport",
    "CorrelateResult",
    "Report",
    # torchrun
    "TORCHRUN_COMMANDS",
    "launched",
    "session",
    "check_batch_size",
    # progress, logs and rendering
    "Progress",
    "LineProgress",
    "LOG_LINE",
    "quiet_optuna",
    "human",
    "uniform_words",
    "redact",
    "redact_url",
    "RedactingFilter",
]

#: The commands that run under torchrun with several processes (every other one runs in one process).
TORCHRUN_COMMANDS: tuple[str, ...] = _TORCHRUN_COMMANDS

# Public names whose modules import torch (or Optuna): loaded on first use, so that importing this module (and the
# CLI, for `fnnp-opt --help`) stays fast.
_LATER = {
    "FitConfig": "fnnp_opt.training",
    "CorrelateSettings": "fnnp_opt.correlate",
    "RunResult": "fnnp_opt.pipeline",
    "SpaceReport": "fnnp_opt.pipeline",
    "CorrelateResult": "fnnp_opt.correlate",
    "Report": "fnnp_opt.report",
    "human": "fnnp_opt.flops",
    "uniform_words": "fnnp_opt.space",
}


def __getattr__(name: str) -> Any:
    """The names of :data:`_LATER`, imported from their module when first asked for."""
    if name not in _LATER:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LATER[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The module's names, those loaded on first use included."""
    return sorted({*globals(), *_LATER})


# --------------------------------------------------------------------------- configuration


def correlate_config(recipe: Path | str | None = None, **flags: Any) -> RunConfig:
    """The run options of :func:`correlate`: :func:`resolve`'s, with R at ``CORRELATE_MAX_RATE`` (0.8, where
    random draws reach the small budgets) unless ``flags`` or the recipe set ``max_rate``."""
    from fnnp_opt.correlate import CORRELATE_MAX_RATE

    if flags.get("max_rate") is None and (recipe is None or "max_rate" not in load_recipe(Path(recipe))):
        flags["max_rate"] = CORRELATE_MAX_RATE
    return resolve(recipe, **flags)


# --------------------------------------------------------------------------- the commands


def run(cfg: RunConfig, progress: Progress = NULL) -> RunResult | None:
    """`fnnp-opt run`: search pruning ratios, fine-tune the best candidate, test it and export it.

    Running it again resumes the study and the fine-tune. Under torchrun (inside :func:`session`) rank 0 does it all
    and returns the result; the other processes only join the fine-tune and return None.
    """
    from fnnp_opt import pipeline

    return pipeline.run(cfg, progress)


def finetune(
    storage: str, study_name: str | None, trial: int, overrides: dict[str, Any], progress: Progress = NULL
) -> RunResult | None:
    """`fnnp-opt finetune`: fine-tune, test and export any evaluated trial of a stored study (a Pareto point).

    ``overrides``: :class:`RunConfig` fields that replace the study's (None: keep the study's). Under torchrun,
    as :func:`run`.
    """
    from fnnp_opt import pipeline

    return pipeline.finetune_trial(storage, study_name, trial, overrides, progress)


def train(
    model: str,
    dataset: str,
    output: Path,
    fit: FitConfig,
    *,
    data_dir: Path | None = None,
    image_size: int | None = None,
    search_size: int | None = None,
    search_per_class: int | None = None,
    device: str = "auto",
    command: str = "",
    progress: Progress = NULL,
) -> dict[str, Any]:
    """`fnnp-opt train`: train a base model from scratch (the search split held out) into ``output``
    (.safetensors, a .json card beside it); returns the card. ``command`` is recorded in the card."""
    from fnnp_opt import training as F
    from fnnp_opt.config import resolve_device

    return F.train_base(
        model,
        dataset,
        output,
        fit,
        data_dir=data_dir,
        search_size=search_size,
        search_per_class=search_per_class,
        image_size=image_size,
        device=resolve_device(device),
        command=command,
        progress=progress,
    )


def correlate(cfg: RunConfig, settings: CorrelateSettings, progress: Progress = NULL) -> CorrelateResult:
    """`fnnp-opt correlate`: measure how PBN and ABN scores rank candidates against their fine-tuned accuracy,
    per budget (``cfg`` from :func:`correlate_config`). Running it again resumes where it stopped."""
    from fnnp_opt import correlate as C

    return C.correlate(cfg, settings, progress)


def space(cfg: RunConfig, draws: int = 300, progress: Progress = NULL) -> SpaceReport:
    """`fnnp-opt space`: the search space of ``cfg`` (groups, FLOPs shares, the budget's reach) and how many of
    ``draws`` random strategies land in its budget window."""
    from fnnp_opt import pipeline

    return pipeline.describe_space(cfg, draws, progress)


def evaluate(
    export: Path, data_dir: Path | None = None, device: str = "auto", progress: Progress = NULL
) -> dict[str, Any]:
    """`fnnp-opt evaluate`: reload an export (folder or pruned.json) and measure it on the test set; returns
    ``test_accuracy``, ``flops``, ``params`` and the ``reported_test_accuracy`` of the export (or None)."""
    from fnnp_opt import pipeline

    return pipeline.evaluate_export(export, data_dir, device, progress)


def export(path: Path, output: Path | None = None) -> tuple[Path, dict[str, Any]]:
    """`fnnp-opt export --onnx`: write an export's network as ONNX (default: pruned.onnx beside it), checked against
    PyTorch in onnxruntime; returns the file and the check (``max_abs_diff``, ``tolerance``, ``ort_ms``)."""
    from fnnp_opt import export as E

    return E.export_onnx(path, output)


def report(
    storage: str,
    study_name: str | None = None,
    output: Path | None = None,
    upload: bool = True,
    artifact_dir: Path | None = None,
) -> Report:
    """`fnnp-opt report`: draw a study's figures and a Markdown summary into ``output`` (default: the study's
    export); with ``upload``, also put them into its artifact store on the delivered trial."""
    from fnnp_opt import report as R

    return R.report_study(storage, study_name, output, upload, artifact_dir)


@dataclass(frozen=True)
class ModelCatalog:
    """What `fnnp-opt models` lists."""

    builtin: list[ModelInfo]  # fnnp-opt's registered architectures, by name
    torchvision: list[str]  # torchvision's classification builders that fnnp-opt can prune (random weights)
    unsupported: list[str]  # those it cannot, sorted (the reasons are in docs/models.md)


def models() -> ModelCatalog:
    """`fnnp-opt models`: the built-in architectures and torchvision's builders, prunable or not."""
    from fnnp_opt import models as M

    names = M.torchvision_builders()
    return ModelCatalog(M.list_models(), [n for n in names if n not in M.UNSUPPORTED], sorted(M.UNSUPPORTED))


def recipes() -> list[Recipe]:
    """`fnnp-opt recipes`: the shipped recipes (the paper's experiments and the default), sorted by name."""
    from fnnp_opt.recipes import list_recipes

    return list_recipes()


def dashboard(
    storage: str,
    host: str = "127.0.0.1",
    port: int = 8080,
    announce: Callable[[str], None] = lambda url: None,
    artifact_dir: Path | None = None,
) -> None:
    """`fnnp-opt dashboard`: serve optuna-dashboard for ``storage`` and its artifact store until interrupted;
    ``announce`` receives the URL once it serves."""
    from fnnp_opt import dashboard as D

    D.serve_dashboard(storage, host, port, announce, artifact_dir)


# --------------------------------------------------------------------------- logs


def quiet_optuna() -> None:
    """Keep Optuna's own log to errors: fnnp-opt logs its trials and their failures itself."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
