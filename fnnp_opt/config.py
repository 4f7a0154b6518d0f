"""The resolved configuration of a run: defaults < recipe file < command-line flags.

One dataclass holds every option. It is validated once, saved with the study
(as user attributes) and with the exported model, so each result can be reproduced.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import asdict, dataclass, fields, replace
from enum import Enum
from pathlib import Path

from fnnp_opt.errors import UsageError, option
from fnnp_opt.options import (  # noqa: F401  (the enums and checks are imported from here too)
    IMPORTANCES,
    Constraint,
    Objective,
    Sampler,
    Score,
    check_batch_fits,
    check_lr,
    check_seed,
    check_split,
    check_sensitivity_steps,
    parse_baselines,
)

RECIPES = Path(__file__).resolve().parent.parent / "studies"  # the shipped recipes, in a checkout

DEFAULT_FLOPS = {Objective.accuracy: "0.5", Objective.pareto: "0.2:0.8"}
# ABN calibration batches of a new study: where the ranking has saturated on both shipped bases (Spearman >= 0.99
# against 100 batches at every budget measured, docs/speed.md); the paper's 100 is --abn-batches 100
DEFAULT_ABN_BATCHES = 10
# the rerank of a default run: ABN falls toward chance at aggressive budgets (ResNet-20 at 25% FLOPs), where its
# winner fine-tunes far below uniform L1; re-scoring the top 5 and the baselines with abn-ft recovers it at the
# cost of 5 + baselines short fine-tunes (docs/quality.md)
DEFAULT_RERANK = 5
# On CPU, single-threaded search processes score more candidates per minute than one process with every core as
# torch threads (1.37x on 2 cores, benchmarks/workers.py, docs/speed.md); past this many processes the cores go
# to threads
MAX_AUTO_WORKERS = 8
# settings a recipe may set that no command-line option does (tests/test_recipes.py keeps this list true)
RECIPE_ONLY = ("max_draws",)
# the options that only a latency budget (--latency) uses
LATENCY_OPTIONS = ("latency_tolerance", "latency_batch", "latency_threads", "latency_layout")


@dataclass(frozen=True)
class Seeds:
    """One seed per purpose, so that changing one draw leaves the others (and the study's data) as they were."""

    sampler: int  # the Optuna sampler's draws (each process of a study draws apart from it: session_seed)
    calibration: int  # which train-part images calibrate ABN: part of the study's data fingerprint
    finetune: int  # the fine-tune's and abn-ft's shuffling, augmentation and image draws
    latency: int  # the random channel plans the latency table is fitted on


@dataclass(frozen=True)
class RunConfig:
    """Every option of `fnnp-opt run`, resolved."""

    # model and data
    model: str = "resnet20"  # registry name, torchvision builder, or package.module:callable
    dataset: str = "fashion-mnist"  # dataset name
    data_dir: str | None = None  # dataset folder; None = the dataset's system location
    image_size: int | None = None  # network input side for image folders; None = the dataset's (224)
    checkpoint: str | None = None  # trained weights; None = the checkpoint shipped for (model, dataset)
    # search space and budget
    flops: str | None = None  # budget: 0.5 of the base or a count (62.23M); a range 0.2:0.8 for pareto
    flops_tolerance: float = 0.02  # half-width of the window, as a fraction of the base FLOPs
    max_rate: float = 0.6  # R: each pruning ratio lies in [0, R]
    # a latency budget instead of FLOPs: 0.5x of the base's measured latency, or 3ms (a range 0.3x:0.9x for
    # pareto); measured in the deploy form (BN folded) on --device, see fnnp_opt.latency
    latency: str | None = None
    latency_tolerance: float = 0.03  # half-width of the latency window, as a fraction of the base's latency
    latency_batch: int = 1  # images per forward pass when timing
    latency_threads: int | None = None  # torch threads when timing; None = this process's count
    latency_layout: str = "auto"  # nchw, channels-last, or auto: the faster for a typical candidate (ratios R/2)
    # kept channel counts are multiples of this; "auto": the device's vector width; None: a resumed study's, else the
    # vector width in a wide network where the budget stays within reach with it, else 1 (see docs/latency.md)
    round_to: int | str | None = None
    min_channels: int = 1  # no group keeps fewer channels
    exclude: tuple[str, ...] = ()  # glob patterns of layer names never pruned (e.g. "features.0.*")
    # adaptive-BN evaluation
    # calibration batches; None: a resumed study's stored count, else DEFAULT_ABN_BATCHES (the paper's: 100)
    abn_batches: int | None = None
    abn_batch_size: int = 64  # images per calibration batch
    search_size: int | None = None  # images held out from the training file to score candidates (None: dataset's)
    search_per_class: int | None = None  # ... or this many per class (None: the dataset's; ImageNet: 10)
    eval_batch_size: int = 128  # batch size when scoring (no effect on results; 128 is fastest on CPUs)
    # stop scoring a candidate once it is clearly below the best so far (the rule of Optuna's WilcoxonPruner over
    # fixed steps of the search split, fnnp_opt.early_stop); None: a resumed study's stored choice, else on
    early_stop: bool | None = None
    pbn: bool = False  # also score each candidate with its stale statistics (PBN, a diagnostic; correlate always does)
    amp: bool = True  # on CUDA, score candidates under bf16 autocast (fp16 where bf16 is missing); no effect on CPU
    # the candidate score
    score: Score = Score.abn  # a trial's value: ABN accuracy, or ABN + a short fine-tune (abn-ft)
    score_steps: int = 100  # SGD steps of abn-ft's short fine-tune (batch --batch-size, peak lr --lr, cosine)
    # when > 0: after the search, re-score the top K by ABN and the baselines with abn-ft; the winner is the best.
    # None: DEFAULT_RERANK where the run can (an ABN score, one objective, --score-steps > 0), else 0
    rerank: int | None = None
    # the strategies queued first in every study (fnnp_opt.baselines): uniform L1, Torch-Pruning's global ranking,
    # per-layer sensitivity; each is scored like any candidate and marked with its `strategy`
    baselines: str = "uniform,global"
    # the global ranking's Torch-Pruning criterion (magnitude, lamp or taylor) and the ratios per group of the
    # sensitivity curves (groups x steps + 1 evaluations); None: the defaults for a new baseline, and a resumed
    # study's own without a word (given, a resume that holds one made otherwise says so)
    global_importance: str | None = None
    sensitivity_steps: int | None = None
    # the study
    sampler: Sampler = Sampler.random
    constraint: Constraint | None = None  # None = the sampler's default (see fnnp_opt.constraints)
    fit_budget: bool = False  # project every draw into the window before it is evaluated
    objective: Objective = Objective.accuracy
    n_trials: int = 30  # evaluated (feasible) candidates in the study, in total across resumes
    # search processes on this machine sharing the study; None: on CPU one per core (at most MAX_AUTO_WORKERS), else 1
    workers: int | None = None
    max_draws: int = 5000  # stop drawing after this many rejected candidates in one session
    seed: int = 0  # the sampler's seed, and the fine-tune's and the latency table's unless given their own
    # which train-part images calibrate ABN: part of the study's data, so a new --seed is not a new study;
    # None: a resumed study's stored value (its --seed, for a study made before this setting), else 0
    calibration_seed: int | None = None
    finetune_seed: int | None = None  # the fine-tune's and abn-ft's shuffling, augmentation and draws; None: --seed
    storage: str | None = None  # Optuna storage URL; None = sqlite:///studies/fnnp.db
    study_name: str | None = None  # None = <model>-<dataset>-flops<budget>
    # fine-tuning of the winner
    epochs: int = 3  # fine-tune epochs
    lr: float = 0.02  # fine-tune peak learning rate
    weight_decay: float = 5e-4  # fine-tune L2 penalty on conv and linear weights
    batch_size: int = 128  # fine-tune batch size
    # knowledge distillation from the unpruned network in the fine-tune: None = on (the default, measured
    # better than plain fine-tuning at equal epochs: docs/distill.md); False = plain cross-entropy
    distill: bool | None = None
    distill_temperature: float = 4.0  # softening temperature T of the distillation
    distill_weight: float = 0.5  # share of the KL term in the fine-tune loss, in [0, 1]
    # refuse a base that scores at or below chance on the search split (wrong weights or label order)
    check_base: bool = True
    # outputs
    output: str | None = None  # export folder; None = runs/<study name>
    # Optuna artifact store of the delivered files and figures; None = the one the study recorded, else the folder
    # "artifacts" beside a SQLite or journal file (./studies/artifacts for a server storage)
    artifact_dir: str | None = None
    onnx: bool = False  # also export pruned.onnx, checked against PyTorch in onnxruntime (the onnx extra)
    device: str = "auto"  # torch device

    def resolved_rerank(self, train_images: int | None = None) -> int:
        """``--rerank``, or the default: :data:`DEFAULT_RERANK` (at most ``--n-trials``) for an ABN search of one
        objective with a short fine-tune to re-score with (``--score-steps`` batches of ``--batch-size`` within the
        ``train_images`` of the train part, where known), else 0."""
        if self.rerank is not None:
            return self.rerank
        fits = train_images is None or self.score_steps * self.batch_size <= train_images
        if self.score is Score.abn and self.objective is Objective.accuracy and self.score_steps > 0 and fits:
            return min(DEFAULT_RERANK, self.n_trials)
        return 0

    def baseline_names(self) -> tuple[str, ...]:
        """``--baselines`` as names in queue order (:func:`fnnp_opt.baselines.parse`)."""
        return parse_baselines(self.baselines)

    def resolved_workers(self) -> int:
        """``--workers``, or the default: one search process per CPU core, at most :data:`MAX_AUTO_WORKERS` and
        ``--n-trials``; one on CUDA (one device) and under ``--latency`` (candidates are timed, which needs quiet
        cores)."""
        import os

        if self.workers is not None:
            return self.workers
        if self.latency is not None or resolve_device(self.device).startswith("cuda"):
            return 1
        return max(1, min(os.cpu_count() or 1, MAX_AUTO_WORKERS, self.n_trials))

    def calibration_batches(self) -> int:
        """``--abn-batches``, or the default of a new study (:data:`DEFAULT_ABN_BATCHES`)."""
        return DEFAULT_ABN_BATCHES if self.abn_batches is None else self.abn_batches

    def stops_early(self) -> bool:
        """Whether candidates are scored with early stopping: asked for (or the default), and the score is ABN
        accuracy in one window (the pruner compares against one best trial; abn-ft's value is not ABN's)."""
        return self.early_stop is not False and self.score is Score.abn and self.objective is Objective.accuracy

    def distills(self) -> bool:
        """Whether the fine-tune distils from the unpruned network (the default, unless --no-distill)."""
        return self.distill is not False and self.epochs > 0

    def resolved_storage(self) -> str:
        return self.storage or "sqlite:///studies/fnnp.db"

    def resolved_flops(self) -> str:
        return self.flops if self.flops is not None else DEFAULT_FLOPS[self.objective]

    def budget_text(self) -> str:
        """The budget as given: ``--latency``'s when set, else ``--flops``'s."""
        return self.latency if self.latency is not None else self.resolved_flops()

    def resolved_round_to(self) -> int:
        """``--round-to`` as a number: ``auto`` (and the default, None) is the device's vector width
        (:func:`fnnp_opt.latency.vector_width`); the default falls back to 1 where that cannot reach the budget
        (:func:`fnnp_opt.problem.default_rounding`)."""
        if self.round_to in ("auto", None):
            from fnnp_opt.latency import vector_width

            return vector_width(resolve_device(self.device))
        assert isinstance(self.round_to, int)  # validate refuses other text
        return self.round_to

    def timing(self):
        """How a latency budget is timed (:class:`fnnp_opt.latency.Timing`); its table is cached in
        ``latency-cache`` beside a SQLite or journal storage, else in ``./studies``."""
        from fnnp_opt.latency import Timing
        from fnnp_opt.storage import beside

        folder = beside(self.resolved_storage(), "latency-cache")
        return Timing(self.latency_batch, self.latency_threads, self.latency_layout, folder, self.seeds().latency)

    def seeds(self) -> "Seeds":
        """One seed per purpose (:class:`Seeds`)."""
        return Seeds(
            sampler=self.seed,
            calibration=self.calibration_seed or 0,
            finetune=self.seed if self.finetune_seed is None else self.finetune_seed,
            latency=self.seed,
        )

    def resolved_constraint(self) -> Constraint:
        from fnnp_opt.constraints import default_constraint

        return self.constraint or default_constraint(self.sampler)

    def resolved_study_name(self) -> str:
        if self.study_name:
            return self.study_name
        suffix = "-pareto" if self.objective is Objective.pareto else ""
        kind = "latency" if self.latency is not None else "flops"
        return f"{self.model}-{self.dataset}-{kind}{self.budget_text().replace(':', '-')}{suffix}"

    def resolved_output(self) -> Path:
        return Path(self.output) if self.output else Path("runs") / self.resolved_study_name()

    def validate(self) -> "RunConfig":
        """Check every value that can be checked without loading anything."""
        from fnnp_opt.data import get_dataset_info
        from fnnp_opt.flops import check_tolerance
        from fnnp_opt.models import get_model_info
        from fnnp_opt.space import check_max_rate

        from fnnp_opt.prune import Shaping

        get_model_info(self.model)
        get_dataset_info(self.dataset)
        check_max_rate(self.max_rate)
        if not (
            self.round_to in ("auto", None) or (isinstance(self.round_to, int) and not isinstance(self.round_to, bool))
        ):
            raise UsageError(
                f"--round-to must be a whole number >= 1 or auto, got {self.round_to!r}; e.g. --round-to 8"
            )
        Shaping(self.resolved_round_to(), self.min_channels, self.exclude)
        check_split(self.search_size, self.search_per_class, self.image_size)
        for name in ("abn_batches", "workers"):  # None: left to the study or the machine
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise UsageError(f"--{name.replace('_', '-')} must be a whole number >= 1, got {value!r}")
        for name in (
            "abn_batch_size",
            "eval_batch_size",
            "n_trials",
            "max_draws",
            "epochs",
            "batch_size",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value < (0 if name == "epochs" else 1):
                opt = f"the recipe's {name}" if name in RECIPE_ONLY else "--" + name.replace("_", "-")
                raise UsageError(f"{opt} must be a whole number >= {0 if name == 'epochs' else 1}, got {value!r}")
        if not isinstance(self.score_steps, int) or self.score_steps < 0:
            raise UsageError(f"--score-steps must be a whole number >= 0, got {self.score_steps!r}")
        self.baseline_names()
        if self.global_importance is not None and self.global_importance not in IMPORTANCES:
            raise UsageError(
                f"--global-importance must be one of {', '.join(IMPORTANCES)}, got {self.global_importance!r}"
            )
        if self.sensitivity_steps is not None:
            check_sensitivity_steps(self.sensitivity_steps)
        if self.rerank is not None and (not isinstance(self.rerank, int) or self.rerank < 0):
            raise UsageError(f"--rerank must be a whole number >= 0 (0: no rerank), got {self.rerank!r}")
        rerank = self.rerank or 0  # (the default, None, adapts to the rest: nothing below holds it)
        if self.workers is not None and self.workers > self.n_trials:
            raise UsageError(
                f"--workers {self.workers} starts more search processes than the --n-trials {self.n_trials} trials "
                f"they share (each would load the model and the data for nothing); pass --workers {self.n_trials} "
                "or less"
            )
        if rerank > self.n_trials:
            raise UsageError(
                f"--rerank {rerank} re-scores the top K of --n-trials {self.n_trials} evaluated candidates, so "
                f"K <= n-trials must hold; pass --rerank {self.n_trials} or less, or raise --n-trials"
            )
        if (self.score is Score.abn_ft or rerank) and self.score_steps == 0:
            what = "--score abn-ft" if self.score is Score.abn_ft else f"--rerank {rerank}"
            raise UsageError(f"{what} needs a short fine-tune, but --score-steps is 0; pass --score-steps 100")
        if self.score is Score.abn_ft and rerank:
            raise UsageError(
                f"--rerank {rerank} re-scores ABN candidates with abn-ft, but --score abn-ft already scores "
                "every candidate that way; drop one of them"
            )
        if rerank and self.objective is Objective.pareto:
            raise UsageError("--rerank picks one winner, which --objective pareto does not; drop --rerank")
        if self.distill is True and self.epochs == 0:
            raise UsageError("--distill distils during the fine-tune, but --epochs is 0; pass --epochs 1 or more")
        if not (self.distill_temperature > 0 and math.isfinite(self.distill_temperature)):
            raise UsageError(f"--distill-temperature must be positive, got {self.distill_temperature}")
        if not 0 <= self.distill_weight <= 1:
            raise UsageError(f"--distill-weight must be in [0, 1], got {self.distill_weight}")
        check_lr(self.lr)
        check_seed(self.seed)
        for name in ("calibration_seed", "finetune_seed"):
            if getattr(self, name) is not None:
                check_seed(getattr(self, name), name)
        check_tolerance(self.flops_tolerance)
        self._check_latency()
        if self.onnx and self.objective is Objective.pareto:
            raise UsageError(
                "--onnx exports the delivered network, and --objective pareto delivers none (it writes the front); "
                "fine-tune a point with `fnnp-opt finetune ... --trial N`, then `fnnp-opt export <its folder> --onnx`"
            )
        if self.onnx:
            from fnnp_opt.export import require_onnx

            require_onnx()
        check_study_name(self.study_name)
        resolve_device(self.device)
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            raise UsageError(f"--weight-decay must be >= 0, got {self.weight_decay}")
        from fnnp_opt.constraints import check_combination

        check_combination(self.sampler, self.resolved_constraint(), self.objective, self.fit_budget)
        ranged = ":" in self.budget_text()
        flag, example = (
            ("--latency", ("0.3x:0.9x", "0.5x")) if self.latency is not None else ("--flops", ("0.2:0.8", "0.5"))
        )
        if self.objective is Objective.pareto and not ranged:
            raise UsageError(
                f"--objective pareto searches a {'latency' if self.latency else 'FLOPs'} range, got {flag} "
                f"{self.budget_text()}; pass a range like "
                f"{flag} {example[0]}"
            )
        if self.objective is Objective.accuracy and ranged:
            raise UsageError(
                f"{flag} {self.budget_text()} is a range, which only --objective pareto searches; pass one budget "
                f"like {example[1]}"
            )
        return self

    def _check_latency(self) -> None:
        from fnnp_opt.latency import LAYOUTS, check_latency

        if self.latency is None:
            unused = [f for f in LATENCY_OPTIONS if getattr(self, f) != getattr(RunConfig, f)]
            if unused:
                given = ", ".join(f"--{f.replace('_', '-')} {getattr(self, f)}" for f in unused)
                raise UsageError(
                    f"{given} set{'s' * (len(unused) == 1)} how a latency budget is timed, but there is no latency "
                    "budget (--latency); pass --latency 0.5x (say) to search under one, or drop "
                    f"{'it' if len(unused) == 1 else 'them'}"
                )
            return
        if self.flops is not None:
            raise UsageError(
                f"--latency {self.latency} and --flops {self.flops} are both budgets, and fnnp-opt searches under one; "
                "pass one of them (the summary reports both FLOPs and latency)"
            )
        check_latency(self.latency)
        if not 0.0 < self.latency_tolerance < 1.0:
            raise UsageError(
                "--latency-tolerance must be in (0, 1) (a fraction of the base's latency), "
                f"got {self.latency_tolerance}"
            )
        for name in ("latency_batch", "latency_threads"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise UsageError(f"--{name.replace('_', '-')} must be a whole number >= 1, got {value!r}")
        if self.latency_layout not in LAYOUTS:
            raise UsageError(f"--latency-layout must be one of {', '.join(LAYOUTS)}, got {self.latency_layout!r}")

    def to_dict(self) -> dict:
        """The settings as plain values, the storage URL's password shown as ``***``: what studies, exports
        and logs keep."""
        from fnnp_opt.redact import redact_url

        d = asdict(self)
        for key, value in d.items():
            if isinstance(value, Enum):
                d[key] = value.value
        if d["storage"]:
            d["storage"] = redact_url(d["storage"])
        return d


def recipe_path(path: Path | str) -> Path:
    """The recipe file ``path`` names: a file, or the name of a shipped recipe (``resnet56-cifar10``)."""
    path = Path(path)
    if not path.is_file() and path.suffix != ".toml" and "/" not in str(path):
        shipped = RECIPES / f"{path}.toml"
        if shipped.is_file():
            return shipped
    return path


def load_recipe(path: Path | str) -> dict:
    """Read a TOML recipe: a flat table of RunConfig fields (extra tables such as [paper] are kept aside)."""
    path = recipe_path(path)
    if not path.is_file():
        what = "is a folder, not a TOML file" if path.is_dir() else "does not exist"
        raise UsageError(f"recipe {path} {what}; `fnnp-opt recipes` lists the shipped ones")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"recipe {path} is not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise UsageError(f"recipe {path} is not text (not UTF-8); pass a TOML recipe file") from None
    return data


RECIPE_TABLES = {"about", "paper"}  # a recipe's tables: its title, and what the paper reports


def _check_recipe_types(recipe: Path | str, data: dict) -> None:
    """Raise :class:`UsageError` for a recipe value of the wrong TOML type (``max_rate = "high"``).

    The type is read from the :class:`RunConfig` field: int, float (an int is accepted), bool,
    str (also for the enum choices), or a list of strings (``exclude``).
    """
    kinds = {f.name: str(f.type) for f in fields(RunConfig)}
    for key, value in data.items():
        kind = kinds[key].replace(" | None", "")
        if kind == "float":
            ok, want = isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
        elif kind == "int":
            ok, want = isinstance(value, int) and not isinstance(value, bool), "a whole number"
        elif kind == "bool":
            ok, want = isinstance(value, bool), "true or false"
        elif kind.startswith("tuple"):
            ok, want = isinstance(value, list) and all(isinstance(v, str) for v in value), "a list of strings"
        elif key == "round_to":
            ok, want = value == "auto" or (isinstance(value, int) and not isinstance(value, bool)), '"auto" or a number'
        elif key == "flops":
            ok, want = isinstance(value, (str, int, float)) and not isinstance(value, bool), "a number or a string"
        elif key == "baselines":
            ok = isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value))
            want = 'a string or a list of strings ("uniform,global" or ["uniform", "global"])'
            if ok:
                try:
                    parse_baselines(value)
                except UsageError as exc:
                    raise UsageError(f"recipe {recipe}: {exc}; fix that line") from None
        else:
            ok, want = isinstance(value, str), "a string"
        if not ok:
            raise UsageError(
                f"recipe {recipe}: {key} must be {want}, got {value!r} ({type(value).__name__}); fix that line"
            )


def resolve(recipe: Path | str | None = None, **flags) -> RunConfig:
    """Defaults, overridden by the recipe, overridden by flags that are not None."""
    known = {f.name for f in fields(RunConfig)}
    values: dict = {}
    if recipe is not None:
        data = load_recipe(recipe)
        tables = {k for k, v in data.items() if isinstance(v, dict)}
        if tables - RECIPE_TABLES:
            raise UsageError(
                f"recipe {recipe} has unknown tables {sorted(tables - RECIPE_TABLES)}; options go at the top level "
                f"(n_trials = 30), and the only tables are {sorted(RECIPE_TABLES)}"
            )
        data = {k: v for k, v in data.items() if k not in tables}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UsageError(f"recipe {recipe} sets unknown options {unknown}; known: {sorted(known)}")
        _check_recipe_types(recipe, data)
        values.update(data)
    given = {k: v for k, v in flags.items() if v is not None and v != []}
    if {"search_size", "search_per_class"} & set(given):  # a flag sizing the split replaces the recipe's way
        values.pop("search_size", None)
        values.pop("search_per_class", None)
    values.update(given)
    if isinstance(values.get("exclude"), (list, tuple)):
        values["exclude"] = tuple(str(v) for v in values["exclude"])
    elif "exclude" in values:
        raise UsageError(f"exclude must be a list of layer-name patterns, got {values['exclude']!r}")
    if "latency" in given and "flops" not in given:  # a --latency flag replaces the recipe's FLOPs budget
        values.pop("flops", None)
    if isinstance(values.get("round_to"), str) and values["round_to"] != "auto":
        try:
            values["round_to"] = int(values["round_to"])
        except ValueError:
            raise UsageError(f"--round-to must be a whole number >= 1 or auto, got {values['round_to']!r}") from None
    if "flops" in values:
        values["flops"] = str(values["flops"])
    if isinstance(values.get("baselines"), list):  # a recipe's TOML list: the flag's comma-separated form
        values["baselines"] = ",".join(values["baselines"])
    for key, enum in (("sampler", Sampler), ("constraint", Constraint), ("objective", Objective), ("score", Score)):
        if key in values:
            try:
                values[key] = enum(values[key])
            except ValueError:
                choices = ", ".join(e.value for e in enum)
                raise UsageError(f"unknown {key} {values[key]!r}; choose one of: {choices}") from None
    cfg = replace(RunConfig(), **values)
    if cfg.latency is None:
        cfg = replace(cfg, flops=cfg.resolved_flops())
    return cfg.validate()


def check_workers(workers: int | None) -> None:
    """Raise :class:`UsageError` when ``--workers`` asks for more search processes than this machine has CPU cores:
    each scores candidates on a core of its own, so one beyond them only slows the others (and holds its own copy
    of the model and data). Checked where the processes start, not when a stored study's settings are read."""
    import os

    cores = os.cpu_count() or 1
    if workers is not None and workers > cores:
        raise UsageError(
            f"--workers {workers} is more than this machine's {cores} CPU cores: each search process needs a core "
            f"of its own; pass --workers {cores} or less (for more, run the same command on other machines, with a "
            "PostgreSQL --storage)"
        )


def check_study_name(name: str | None) -> None:
    """Raise :class:`UsageError` unless ``name`` can name a study and its default export folder ``runs/<name>``.

    One path component: not empty, no ``/`` or ``\\``, not ``.`` or ``..``, no control characters.
    """
    if name is None:
        return
    if not name.strip() or name in (".", "..") or any(c in name for c in "/\\") or any(ord(c) < 32 for c in name):
        raise UsageError(
            f"--study-name {name!r} names a study and its export folder runs/<name>, so it must be one folder name "
            "(no '/', '\\' or '..', not empty); pass e.g. --study-name resnet20-half"
        )


def resolve_device(name: str) -> str:
    """Map ``auto`` to cuda when available, else cpu; validate explicit names."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise UsageError(f"{option('device')} must be auto, cpu or cuda[:N], got {name!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(
            f"{option('device', name)} asks for CUDA, but none is available; use {option('device', 'cpu')}"
        )
    return name
