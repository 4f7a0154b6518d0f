"""The ``fnnp-opt`` command line: option parsing, progress bars and the summary.

This module stays thin: every command resolves its options and calls one library
function. Library errors (:class:`fnnp_opt.errors.FnnpError`) become one line on
stderr and a non-zero exit (2 for usage errors, 1 otherwise).
"""

from __future__ import annotations

import logging
import math
import shlex
import signal
import sys
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Annotated, Callable, Iterator, NoReturn, Optional, TypeVar

import typer
import typer.core
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from fnnp_opt.errors import FnnpError
from fnnp_opt.redact import RedactingFilter, redact, redact_url


class _Commands(typer.core.TyperGroup):
    """fnnp-opt's commands, their options' help made to say what it means: Typer reads help as Rich markup, which
    would drop a ``[default: 30]`` or the ``[onnx]`` of ``fnnp-opt[onnx]``, so brackets are escaped; and `run`
    shows the :class:`RunConfig` default of each option left as None (for a recipe to set) whose help states none."""

    def __init__(self, *args, **kwargs) -> None:
        from dataclasses import MISSING, fields
        from enum import Enum

        from fnnp_opt.config import RunConfig

        super().__init__(*args, **kwargs)
        defaults = {f.name: f.default for f in fields(RunConfig) if f.default not in (MISSING, None, ())}
        for command in self.commands.values():
            for param in command.params:
                help_text = getattr(param, "help", None) or ""
                if command.name == "run" and param.name in defaults and "[default" not in help_text:
                    value = (
                        defaults[param.name].value if isinstance(defaults[param.name], Enum) else defaults[param.name]
                    )
                    param.show_default = ("on" if value else "off") if isinstance(value, bool) else str(value)
                if "[default" in help_text:  # the help says it already (a shared option with the same default)
                    param.show_default = False
                if help_text:
                    param.help = escape(help_text)


app = typer.Typer(
    cls=_Commands,
    add_completion=False,
    no_args_is_help=True,
    help="Search per-layer filter-pruning ratios with adaptive-BN evaluation (EagleEye) on Optuna.",
)
console = Console(stderr=True)
out = Console()
_state: dict = {"debug": False, "command": None}  # --debug, and the command being run
T = TypeVar("T")


class BarProgress:
    """Rich progress bars implementing :class:`fnnp_opt.progress.Progress`."""

    def __init__(self, progress: Progress) -> None:
        self._p = progress

    @contextmanager
    def task(self, description: str, total: int | None) -> Iterator[Callable[[int], None]]:
        tid = self._p.add_task(description, total=total)
        try:
            yield lambda n=1: self._p.advance(tid, n)
        finally:
            self._p.remove_task(tid)


@contextmanager
def bars() -> Iterator[BarProgress]:
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    if not console.is_terminal:  # a log file, a pipe, CI: plain lines at a steady pace instead of bars
        from fnnp_opt.progress import LineProgress

        yield LineProgress(lambda line: console.print(line, highlight=False, soft_wrap=True, markup=False))
        return
    with Progress(*columns, console=console, transient=True) as p:
        yield BarProgress(p)


def call(fn: Callable[..., T], *args, **kwargs) -> T:
    """Run a library call; turn an :class:`FnnpError` into one stderr line and an exit code."""
    try:
        return fn(*args, **kwargs)
    except FnnpError as exc:
        if _state["debug"]:
            raise
        console.print(f"[red]error:[/red] {escape(redact(str(exc)))}", highlight=False, soft_wrap=True)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        _interrupted()
    except Exception as exc:  # a library that, interrupted mid-write, raises its own error while handling Ctrl-C
        if isinstance(exc, (typer.Exit, typer.Abort)) or not _raised_by_ctrl_c(exc):
            raise
        _interrupted()


RESUMABLE = ("train", "run", "finetune", "correlate")  # the commands whose work a second call continues


def _interrupted() -> NoReturn:
    """Say that Ctrl-C (or SIGTERM) stopped the command, and how to go on; exit with 130."""
    if _state["command"] in RESUMABLE:
        console.print("interrupted; run the same command again to resume", highlight=False)
    else:
        console.print("stopped", highlight=False)
    raise typer.Exit(130)


@contextmanager
def _torchrun_job() -> Iterator:
    """Under torchrun, join its job for the block (:func:`fnnp_opt.distributed.session`); else nothing. A job
    that cannot be joined is one line, as any other error."""
    from fnnp_opt.distributed import session

    with ExitStack() as stack:
        command, _state["command"] = _state["command"], "join"  # Ctrl-C while joining: nothing ran, "stopped"
        try:
            group = call(stack.enter_context, session())
        finally:
            _state["command"] = command
        yield group


def _raised_by_ctrl_c(exc: BaseException) -> bool:
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def _stop_on_sigterm(signum, frame) -> None:
    raise KeyboardInterrupt  # a clean stop, as Ctrl-C: the study and the checkpoints stay resumable


@app.callback()
def main(
    ctx: typer.Context,
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks and debug logs.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show info logs.")] = False,
) -> None:
    _state["debug"], _state["command"] = debug, ctx.invoked_subcommand
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    if console.is_terminal:
        handler, fmt = RichHandler(console=console, show_path=False, show_time=False), "%(message)s"
    else:  # a log file, a pipe, CI: one timestamped line per event, each trial and epoch among them
        from fnnp_opt.progress import LOG_LINE

        handler, fmt = logging.StreamHandler(sys.stderr), LOG_LINE
    handler.addFilter(RedactingFilter())  # no storage password reaches the screen
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format=fmt, handlers=[handler], force=True)
    quiet = logging.WARNING if console.is_terminal else logging.INFO
    logging.getLogger("fnnp_opt").setLevel(logging.DEBUG if debug else logging.INFO if verbose else quiet)
    _check_torchrun(ctx.invoked_subcommand)


def _check_torchrun(command: str | None) -> None:
    """Refuse a command that runs in one process only when torchrun started several (each would do it all)."""
    from fnnp_opt.distributed import COMMANDS, launched

    launch = call(launched)  # torchrun's variables, checked here for every command: one line on a bad one
    if command not in COMMANDS and launch is not None:
        console.print(
            f"[red]error:[/red] fnnp-opt {command} runs in one process, but torchrun started several; only "
            f"{' and '.join(COMMANDS)} run under torchrun: run it without torchrun (or with --nproc-per-node 1)",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(2)


def _command_line() -> str:
    return redact("fnnp-opt " + " ".join(shlex.quote(redact_url(a)) for a in sys.argv[1:]))


DataDir = Annotated[
    Optional[Path], typer.Option(help="Folder with the dataset files (default: the dataset's system location).")
]
Device = Annotated[str, typer.Option(help="Torch device: auto, cpu, cuda, cuda:1 ...")]
RecipeShort = Annotated[Optional[Path], typer.Option(help="TOML recipe (file or name); flags override it.")]
CheckpointShort = Annotated[Optional[Path], typer.Option(help="Trained weights; default: the shipped ones.")]
Tolerance = Annotated[Optional[float], typer.Option(help="Window half-width. [default: 0.02]")]
MaxRate = Annotated[Optional[float], typer.Option(help="R. [default: 0.6]")]
ModelOpt = Annotated[
    Optional[str],
    typer.Option(
        "--model",
        help="A model from `fnnp-opt models`, any torchvision classification builder (resnet50, mobilenet_v2, "
        "vgg16_bn ...), or your own as package.module:callable. [default: resnet20]",
    ),
]
DatasetOpt = Annotated[
    Optional[str],
    typer.Option(
        "--dataset",
        help="fashion-mnist, cifar10, cifar100, imagenet, or folder (any ImageFolder tree). [default: fashion-mnist]",
    ),
]
ImageSize = Annotated[
    Optional[int], typer.Option(help="Network input side for image folders (imagenet, folder). [default: 224]")
]
SearchSize = Annotated[
    Optional[int],
    typer.Option(help="Images held out from the training file to score candidates. [default: 5000; folders: none]"),
]
SearchPerClass = Annotated[
    Optional[int],
    typer.Option(help="... or this many per class (stratified). [default: 10 for imagenet and folder]"),
]
RoundTo = Annotated[
    Optional[str],
    typer.Option(
        help="Keep channel counts multiples of N (e.g. 8), or auto: the device's vector width (16 with AVX-512, "
        "8 with AVX2, 8 on CUDA). [default: 1]"
    ),
]
MinChannels = Annotated[Optional[int], typer.Option(help="No layer group keeps fewer channels. [default: 1]")]
Exclude = Annotated[
    Optional[list[str]],
    typer.Option(help="Never prune the groups of layers matching this glob (repeatable), e.g. 'features.0*'."),
]


DistillOpt = Annotated[
    Optional[bool],
    typer.Option(
        "--distill/--no-distill",
        help="Fine-tune with knowledge distillation from the unpruned network (KL on softened logits), or plainly "
        "with cross-entropy (--no-distill). [default: on, where there is a fine-tune]",
    ),
]
ArtifactDir = Annotated[
    Optional[Path],
    typer.Option(
        help="Optuna artifact store (a folder) of the delivered files and figures, shown on the winning trial in "
        "the dashboard. [default: the study's recorded one, else 'artifacts' beside a SQLite or journal file]"
    ),
]
STORAGE_HELP = (
    "Optuna storage: sqlite:///path.db, postgresql://user@host/db, or an Optuna journal file, given as "
    "journal:///path.log (journal:////abs/path.log) or as any path ending in .log or .journal."
)
StorageOpt = Annotated[Optional[str], typer.Option(help=f"{STORAGE_HELP} [default: sqlite:///studies/fnnp.db]")]
StoredStorage = Annotated[str, typer.Option(help=STORAGE_HELP)]
_TEMPERATURE, _WEIGHT = "Distillation temperature T > 0.", "Share of the distillation term in the loss, in [0, 1]."
DistillTemperature = Annotated[Optional[float], typer.Option(help=f"{_TEMPERATURE} [default: 4.0]")]
DistillWeight = Annotated[Optional[float], typer.Option(help=f"{_WEIGHT} [default: 0.5]")]
StudysDistill = Annotated[  # finetune: what the study's run used, unless given
    Optional[bool], typer.Option("--distill/--no-distill", help="As `run --distill`. [default: the study's]")
]
StudysTemperature = Annotated[Optional[float], typer.Option(help=f"{_TEMPERATURE} [default: the study's]")]
StudysWeight = Annotated[Optional[float], typer.Option(help=f"{_WEIGHT} [default: the study's]")]


@app.command()
def train(
    model: ModelOpt = "resnet20",
    dataset: DatasetOpt = "fashion-mnist",
    data_dir: DataDir = None,
    image_size: ImageSize = None,
    epochs: Annotated[int, typer.Option(min=1, help="Training epochs.")] = 30,
    lr: Annotated[float, typer.Option(help="Peak learning rate (cosine schedule).")] = 0.1,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per step.")] = 128,
    seed: Annotated[int, typer.Option(help="Seed of initialisation, shuffling and augmentation.")] = 0,
    search_size: SearchSize = None,
    search_per_class: SearchPerClass = None,
    output: Annotated[
        Path, typer.Option(help="Where to write the .safetensors weights (a .json card goes beside).")
    ] = Path("runs/base.safetensors"),
    device: Device = "auto",
) -> None:
    """Train a base model from scratch (the search split stays held out)."""
    from fnnp_opt.config import resolve_device
    from fnnp_opt.finetune import FitConfig, train_base

    cfg = FitConfig(epochs=epochs, lr=lr, batch_size=batch_size, seed=seed)
    with bars() as progress:
        card = call(
            train_base,
            model,
            dataset,
            output,
            cfg,
            data_dir=data_dir,
            search_size=search_size,
            search_per_class=search_per_class,
            image_size=image_size,
            device=call(resolve_device, device),
            command=_command_line(),
            progress=progress,
        )
    out.print(f"test accuracy {card['test_accuracy']:.4f}; weights in {output}")


Opt = typer.Option


@app.command()
def run(
    recipe: Annotated[
        Optional[Path], Opt(help="TOML recipe: a file or a name from `fnnp-opt recipes`; flags override it.")
    ] = None,
    model: ModelOpt = None,
    dataset: DatasetOpt = None,
    data_dir: DataDir = None,
    image_size: ImageSize = None,
    checkpoint: Annotated[
        Optional[Path],
        Opt(
            help="Trained weights: .safetensors, or a state_dict saved by torch.save (also inside a training "
            "checkpoint's 'state_dict' / 'model'); default: the shipped one."
        ),
    ] = None,
    flops: Annotated[
        Optional[str],
        Opt(
            help="FLOPs (MACs) budget: a fraction of the base like 0.5, or a count like 62.23M; a range LOW:HIGH "
            "for --objective pareto. [default: 0.5; 0.2:0.8 for pareto]"
        ),
    ] = None,
    flops_tolerance: Annotated[
        Optional[float], Opt(help="Half-width of the accepted window, as a fraction of the base FLOPs. [default: 0.02]")
    ] = None,
    latency: Annotated[
        Optional[str],
        Opt(
            help="A latency budget instead of FLOPs: a fraction of the base's measured latency like 0.5x, or "
            "milliseconds like 3ms (a range 0.3x:0.9x for pareto). Timed in the deploy form (BN folded) on "
            "--device, the base in its faster layout as the summary times it; candidates are predicted from a "
            "per-layer table built once and cached beside the storage."
        ),
    ] = None,
    latency_tolerance: Annotated[
        Optional[float], Opt(help="Half-width of the latency window, a fraction of the base's latency. [default: 0.03]")
    ] = None,
    latency_batch: Annotated[Optional[int], Opt(help="Images per pass when timing. [default: 1]")] = None,
    latency_threads: Annotated[
        Optional[int], Opt(help="Torch threads when timing. [default: this process's, e.g. OMP_NUM_THREADS]")
    ] = None,
    latency_layout: Annotated[
        Optional[str],
        Opt(
            help="The candidates' layout (the base is timed in its faster one): nchw, channels-last, or auto: the "
            "faster for a typical candidate (every ratio R/2). [default: auto]"
        ),
    ] = None,
    max_rate: Annotated[
        Optional[float], Opt(help="R: every pruning ratio lies in [0, R]; must be in (0, 1). [default: 0.6]")
    ] = None,
    round_to: RoundTo = None,
    min_channels: MinChannels = None,
    exclude: Exclude = None,
    sampler: Annotated[
        Optional[str],
        Opt(
            help="random: uniform draws, the paper's choice (default) | tpe: multivariate TPE, learns from "
            "rejected draws | cmaes: CMA-ES, needs penalize or --fit-budget | qmc: scrambled Sobol, evenly "
            "spread random draws | gp: Gaussian process, fewest evaluations, ask() slows past ~200 trials | "
            "nsga2: NSGA-II, the sampler of --objective pareto."
        ),
    ] = None,
    constraint: Annotated[
        Optional[str],
        Opt(
            help="What a sampler is told of a draw outside the FLOPs window (never ABN-evaluated): reject (pruned "
            "trial), penalize (value -violation), constrain (Optuna constraint). [default: per sampler: reject for "
            "random/qmc/tpe, penalize for cmaes, constrain for gp/nsga2]"
        ),
    ] = None,
    fit_budget: Annotated[
        Optional[bool],
        Opt(
            "--fit-budget/--no-fit-budget",
            help="Move every draw into the FLOPs window (scaling its ratios toward 0 or R) so none is rejected; "
            "the trial keeps both the suggested and the applied ratios. [default: off]",
        ),
    ] = None,
    objective: Annotated[
        Optional[str],
        Opt(
            help="accuracy: best ABN accuracy in one window | pareto: the front of ABN accuracy vs FLOPs over "
            "a range (--flops 0.2:0.8); fine-tune any point with `fnnp-opt finetune --trial N`. [default: accuracy]"
        ),
    ] = None,
    n_trials: Annotated[
        Optional[int], Opt(help="Evaluated candidates in the study, in total across resumes. [default: 30]")
    ] = None,
    workers: Annotated[
        Optional[int],
        Opt(
            help="Search processes on this machine sharing the study (one storage; exactly --n-trials "
            "evaluations in all), cores // N torch threads each. Across machines, run the same command on each with "
            "a PostgreSQL --storage. [default: one per CPU core, at most 8 (single-threaded processes score the most "
            "candidates per minute: docs/speed.md); 1 on CUDA and with --latency]"
        ),
    ] = None,
    seed: Annotated[Optional[int], Opt(help="Base seed of sampling, calibration and fine-tuning. [default: 0]")] = None,
    abn_batches: Annotated[
        Optional[int],
        Opt(
            help="Adaptive-BN calibration batches; the ranking has settled by 10 on both shipped bases "
            "(docs/speed.md), the paper uses 100. [default: 10 for a new study; a resumed study keeps its own]"
        ),
    ] = None,
    abn_batch_size: Annotated[Optional[int], Opt(help="Images per calibration batch. [default: 64]")] = None,
    search_size: SearchSize = None,
    search_per_class: SearchPerClass = None,
    eval_batch_size: Annotated[
        Optional[int],
        Opt(
            help="Images per batch when scoring and testing (no effect on results), and of the batch timing. "
            "[default: 128]"
        ),
    ] = None,
    early_stop: Annotated[
        Optional[bool],
        Opt(
            "--early-stop/--no-early-stop",
            help="Score the search split in steps of 256 images and stop a candidate once a one-sided Wilcoxon test "
            "(the rule of Optuna's WilcoxonPruner) finds it below the best so far; its value is then its running "
            "accuracy, stored with images_scored. "
            "Only with --score abn and one budget. [default: on for a new study; a resumed study keeps its own]",
        ),
    ] = None,
    pbn: Annotated[
        Optional[bool],
        Opt(
            "--pbn/--no-pbn",
            help="Also score every candidate with its stale BN statistics (pbn_accuracy, one more pass over the "
            "search split); a diagnostic that chooses nothing. `fnnp-opt correlate` always records it. "
            "[default: off]",
        ),
    ] = None,
    amp: Annotated[
        Optional[bool],
        Opt(
            "--amp/--no-amp",
            help="On CUDA, run the calibration and scoring passes under bf16 autocast (fp16 on GPUs without bf16). "
            "No effect on CPU. [default: on]",
        ),
    ] = None,
    score: Annotated[
        Optional[str],
        Opt(
            help="A trial's value: abn: adaptive-BN accuracy on the search split (the paper) | abn-ft: ABN, then "
            "--score-steps SGD steps on a copy (the fine-tune's --lr and --batch-size, the same seeded images for "
            "every candidate), then accuracy on the search split; both are recorded. [default: abn]"
        ),
    ] = None,
    score_steps: Annotated[
        Optional[int], Opt(help="SGD steps of the short fine-tune of abn-ft and --rerank. [default: 100]")
    ] = None,
    rerank: Annotated[
        Optional[int],
        Opt(
            help="Two-stage search: when the study is complete, re-score the top K by ABN with abn-ft; the best "
            "re-scored candidate wins. Re-scores are stored on their trials and resume. [default: 0, off]"
        ),
    ] = None,
    epochs: Annotated[Optional[int], Opt(help="Fine-tune epochs of the winner (0 skips). [default: 3]")] = None,
    lr: Annotated[Optional[float], Opt(help="Fine-tune peak learning rate. [default: 0.02]")] = None,
    weight_decay: Annotated[Optional[float], Opt(help="Fine-tune weight decay. [default: 5e-4]")] = None,
    batch_size: Annotated[Optional[int], Opt(help="Fine-tune batch size. [default: 128]")] = None,
    distill: DistillOpt = None,
    distill_temperature: DistillTemperature = None,
    distill_weight: DistillWeight = None,
    check_base: Annotated[
        Optional[bool],
        Opt(
            "--check-base/--no-check-base",
            help="Refuse a base model that scores at or below chance on the search split (weights for another "
            "dataset or label order). [default: on]",
        ),
    ] = None,
    storage: StorageOpt = None,
    study_name: Annotated[Optional[str], Opt(help="Study name. [default: <model>-<dataset>-flops<budget>]")] = None,
    output: Annotated[Optional[Path], Opt(help="Export folder. [default: runs/<study name>]")] = None,
    artifact_dir: ArtifactDir = None,
    onnx: Annotated[
        Optional[bool],
        Opt(
            "--onnx/--no-onnx",
            help="Also export pruned.onnx, checked against PyTorch in onnxruntime (pip install 'fnnp-opt[onnx]'). "
            "[default: off]",
        ),
    ] = None,
    device: Annotated[Optional[str], Opt(help="auto, cpu, cuda[:N]. [default: auto]")] = None,
) -> None:
    """Search pruning ratios, fine-tune the best candidate, test it and export it.

    Running the same command again resumes the study and the fine-tune.
    """
    from fnnp_opt.config import resolve

    cfg = call(resolve, recipe, **_flags(locals()))
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # trial lines and failures come from fnnp-opt's own log
    from fnnp_opt.distributed import check_batch_size
    from fnnp_opt.pipeline import run as run_pipeline

    call(check_batch_size, cfg.batch_size)  # under torchrun, before the search rather than after it
    with _torchrun_job(), bars() as progress:
        result = call(run_pipeline, cfg, progress)
    if result is None:  # a torchrun process other than rank 0, which prints
        return
    _print_summary(result)
    if recipe is not None:
        from fnnp_opt.recipes import read_recipe

        _print_paper(call(read_recipe, recipe), result)


@app.command()
def finetune(
    trial: Annotated[int, Opt(help="Number of the evaluated trial to fine-tune (e.g. a point of the Pareto front).")],
    storage: StoredStorage = "sqlite:///studies/fnnp.db",
    study_name: Annotated[Optional[str], Opt(help="Study name. [default: the storage's only study]")] = None,
    data_dir: DataDir = None,
    epochs: Annotated[Optional[int], Opt(help="Fine-tune epochs. [default: the study's]")] = None,
    lr: Annotated[Optional[float], Opt(help="Fine-tune peak learning rate. [default: the study's]")] = None,
    batch_size: Annotated[Optional[int], Opt(help="Fine-tune batch size. [default: the study's]")] = None,
    distill: StudysDistill = None,
    distill_temperature: StudysTemperature = None,
    distill_weight: StudysWeight = None,
    output: Annotated[Optional[Path], Opt(help="Export folder. [default: runs/<study>/trial-<N>]")] = None,
    artifact_dir: ArtifactDir = None,
    device: Annotated[Optional[str], Opt(help="auto, cpu, cuda[:N]. [default: the study's]")] = None,
) -> None:
    """Fine-tune, test and export any evaluated trial of a stored study."""
    from fnnp_opt.pipeline import finetune_trial

    overrides = {k: v for k, v in _flags(locals()).items() if k not in ("storage", "study_name")}
    with _torchrun_job(), bars() as progress:
        result = call(finetune_trial, storage, study_name, trial, overrides, progress)
    if result is None:  # a torchrun process other than rank 0, which prints
        return
    _print_summary(result)


@app.command()
def report(
    storage: StoredStorage = "sqlite:///studies/fnnp.db",
    study_name: Annotated[Optional[str], Opt(help="Study name. [default: the storage's only study]")] = None,
    output: Annotated[
        Optional[Path],
        Opt(help="Folder for the figures and report.md. [default: the study's export, else runs/<study>/report]"),
    ] = None,
    upload: Annotated[
        bool,
        Opt(
            "--upload/--no-upload",
            help="Also put the files into the study's artifact store, on the delivered trial (the dashboard shows "
            "them); --no-upload only reads the storage.",
        ),
    ] = True,
    artifact_dir: ArtifactDir = None,
) -> None:
    """Draw a study's figures (channels per layer, score vs FLOPs, history, importances) and a Markdown summary."""
    from fnnp_opt.report import report_study

    r = call(report_study, storage, study_name, output, upload, artifact_dir)
    for name, reason in r.skipped.items():
        out.print(f"[yellow]skipped[/yellow] {name}: {escape(reason)}", highlight=False)
    out.print(f"report written to {r.folder}: {', '.join(p.name for p in r.files)}", highlight=False, soft_wrap=True)
    if r.published is not None:
        out.print(f"artifacts: {r.published.describe()}", highlight=False, soft_wrap=True)


def _flags(options: dict) -> dict:
    """A command's options that are RunConfig fields, with paths as strings (None: not given)."""
    from dataclasses import fields

    from fnnp_opt.config import RunConfig

    names = {f.name for f in fields(RunConfig)}
    return {k: str(v) if isinstance(v, Path) else v for k, v in options.items() if k in names}


def _threads(n: int) -> str:
    return f"{n} thread{'s' * (n > 1)}"


def _print_summary(r) -> None:
    from rich.table import Table

    from fnnp_opt.flops import human

    rep = r.report
    out.print(
        f"study [bold]{r.study_name}[/bold] ({r.storage}): {rep.total_evaluated} candidates evaluated "
        f"({rep.evaluated} this session, {rep.rejected} draws outside the window, {rep.failed} failed)"
    )
    if r.front:
        _print_front(r)
        return
    if r.rerank is not None:
        rr = r.rerank
        out.print(
            f"rerank: the top {len(rr.scores)} by ABN re-scored with {rr.key} ({rr.rescored} this session, "
            f"{rr.seconds:.0f}s); the winner scores {rr.scores[rr.winner]:.4f}"
        )
    out.print(
        f"trial {r.best_trial}: {r.score_label} {r.best_abn:.4f} on the search split; budget {r.budget.describe()}"
    )
    if r.delivered_by:
        out.print(f"trial {r.best_trial} is being fine-tuned by worker {r.delivered_by}; nothing left to do here")
        return
    from fnnp_opt.latency import speed_warnings

    b, p = r.base, r.pruned
    table = Table(
        title=f"base vs pruned: test set, FLOPs as MACs, median CPU times ({_threads(b['threads'])}, BN folded, "
        "each in its faster layout)"
    )
    for col in ("", "test acc", "FLOPs", "params", "CPU 1 image", f"CPU {b['batch_images']} images"):
        table.add_column(col, justify="right")
    short = {"nchw": "NCHW", "channels-last": "NHWC"}
    for label, m in (("base", b), ("pruned", p)):
        table.add_row(
            label,
            f"{m['test_accuracy']:.2%}",
            human(m["flops"]),
            human(m["params"]),
            f"{m['latency_ms']:.2f} ms {short[m['latency_layout']]}",
            f"{m['batch_ms']:.1f} ms {short[m['batch_layout']]}",
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
    for warning in speed_warnings(b, p, latency_budget=r.latency is not None):
        out.print(f"[yellow]note:[/yellow] {warning}", highlight=False)
    if r.latency is not None:
        lat = r.latency
        inside = "inside" if lat["within_window"] else "[yellow]outside[/yellow]"
        out.print(
            f"latency budget ({lat['device']}, {_threads(lat['threads'])}, batch {lat['batch']}, {lat['layout']}): "
            f"measured {lat['measured_ms']:.3f} ms ({lat['measured_ratio']:.2f}x the base's {lat['base_ms']:.3f} ms "
            f"{short[lat['base_layout']]}), {inside} the window [{lat['window_ms'][0]:.3f}, "
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
    _print_published(r)


def _print_published(r) -> None:
    if r.published is None:
        return
    if "report.md" in r.published.artifacts:
        out.print(f"report: {r.export or r.front_files[0].parent}/report.md and its figures", highlight=False)
    out.print(f"artifacts: {r.published.describe()} (fnnp-opt dashboard serves them)", highlight=False)


def _print_front(r) -> None:
    from rich.table import Table

    from fnnp_opt.flops import human

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
            "uniform" if row["uniform"] else "",
        )
    out.print(table)
    files = " + ".join(str(f) for f in r.front_files)
    out.print(
        f"front written to {files}; fine-tune a point with "
        f"`fnnp-opt finetune --study-name {r.study_name} --storage {r.storage} --trial N`"
    )
    _print_published(r)


@app.command()
def correlate(
    recipe: RecipeShort = None,
    model: ModelOpt = None,
    dataset: DatasetOpt = None,
    data_dir: DataDir = None,
    image_size: ImageSize = None,
    checkpoint: CheckpointShort = None,
    flops: Annotated[str, Opt(help="Comma-separated FLOPs budgets, each as for `run`.")] = "0.75,0.5,0.25,0.15",
    flops_tolerance: Tolerance = None,
    max_rate: Annotated[
        Optional[float], Opt(help="R (default here: 0.8 unless the recipe sets it; 0.6 cannot reach 15-25% FLOPs).")
    ] = None,
    candidates: Annotated[
        str, Opt(help="Random candidates per budget: one count for all, or one per budget (e.g. 12,12,30,30).")
    ] = "30",
    sweep: Annotated[str, Opt(help="ABN calibration batch counts to score, comma-separated.")] = "1,5,10,20,50,100",
    score_steps: Annotated[
        str,
        Opt(
            help="abn-ft short fine-tune lengths to score too, comma-separated (e.g. 50,100): columns abn_ft<steps>; "
            "stored candidates get the new columns without being fine-tuned again. [default: none]"
        ),
    ] = "",
    ft_epochs: Annotated[int, Opt(help="Fine-tune epochs of every candidate: the ground truth.")] = 1,
    lr: Annotated[Optional[float], Opt(help="Fine-tune peak learning rate. [default: 0.02]")] = None,
    batch_size: Annotated[Optional[int], Opt(help="Fine-tune batch size. [default: 128]")] = None,
    noise_candidates: Annotated[int, Opt(help="Candidates fine-tuned again to measure the ground truth's noise.")] = 3,
    noise_seeds: Annotated[int, Opt(help="Other fine-tune seeds for each of those.")] = 2,
    abn_batch_size: Annotated[Optional[int], Opt(help="Images per calibration batch. [default: 64]")] = None,
    search_size: SearchSize = None,
    search_per_class: SearchPerClass = None,
    seed: Annotated[Optional[int], Opt(help="Seed of the candidates, calibration and fine-tunes. [default: 0]")] = None,
    storage: StorageOpt = None,
    output: Annotated[Path, Opt(help="Folder for the CSVs and figures.")] = Path("runs/correlate"),
    device: Annotated[Optional[str], Opt(help="auto, cpu, cuda[:N]. [default: auto]")] = None,
) -> None:
    """Measure how PBN and ABN scores rank candidates against their fine-tuned accuracy (the paper's evidence).

    Running the same command again resumes where it stopped.
    """
    from rich import box
    from rich.table import Table

    from fnnp_opt.config import load_recipe, resolve
    from fnnp_opt.correlate import CORRELATE_MAX_RATE, CorrelateSettings, correlate as run_correlate

    flags = {k: v for k, v in _flags(locals()).items() if k not in ("flops", "score_steps")}
    if max_rate is None and (recipe is None or "max_rate" not in call(load_recipe, recipe)):
        flags["max_rate"] = CORRELATE_MAX_RATE
    cfg = call(resolve, recipe, **flags)
    settings = CorrelateSettings(
        budgets=tuple(call(_items, flops, "--flops", "0.75,0.5,0.25")),
        candidates=tuple(call(_ints, candidates, "--candidates")),
        sweep=tuple(call(_ints, sweep, "--sweep")),
        score_steps=tuple(call(_ints, score_steps, "--score-steps")),
        ft_epochs=ft_epochs,
        noise_candidates=noise_candidates,
        noise_seeds=noise_seeds,
        output=output,
    )
    call(settings.validate)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    with bars() as progress:
        result = call(run_correlate, cfg, settings, progress)
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


def _items(text: str, option: str, example: str) -> list[str]:
    """The comma-separated values of ``option``; :class:`UsageError` for an empty one (``0.5,,0.3``)."""
    from fnnp_opt.errors import UsageError

    if not text.strip():  # none given (the default of --score-steps)
        return []
    items = [v.strip() for v in text.split(",")]
    if not all(items):
        raise UsageError(f"{option} {text!r} has an empty value between its commas; write them like {example}")
    return items


def _ints(text: str, option: str) -> list[int]:
    from fnnp_opt.errors import UsageError

    items = _items(text, option, "1,5,10")
    try:
        return [int(v) for v in items]
    except ValueError:
        raise UsageError(f"{option} takes whole numbers separated by commas, like 1,5,10, got {text!r}") from None


@app.command()
def space(
    recipe: RecipeShort = None,
    model: ModelOpt = None,
    dataset: DatasetOpt = None,
    data_dir: DataDir = None,
    image_size: ImageSize = None,
    checkpoint: CheckpointShort = None,
    flops: Annotated[Optional[str], Opt(help="FLOPs budget, as for `run`. [default: 0.5]")] = None,
    flops_tolerance: Tolerance = None,
    max_rate: MaxRate = None,
    round_to: RoundTo = None,
    min_channels: MinChannels = None,
    exclude: Exclude = None,
    seed: Annotated[Optional[int], Opt(help="Seed of the random draws. [default: 0]")] = None,
    draws: Annotated[int, Opt(min=1, help="Random strategies drawn to estimate the acceptance rate.")] = 300,
) -> None:
    """Print the search space: its groups, their FLOPs shares, the budget's reach and random sampling's hit rate."""
    from rich.table import Table

    from fnnp_opt.config import resolve
    from fnnp_opt.flops import human
    from fnnp_opt.pipeline import describe_space

    cfg = call(resolve, recipe, **_flags(locals()))
    with bars() as progress:
        r = call(describe_space, cfg, draws, progress)
    table = Table(title=f"search space: {len(r.dims)} ratios in [0, {r.max_rate}]")
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
        from fnnp_opt.space import uniform_words

        out.print(f"uniform L1 baseline, queued first in every study: {', '.join(map(uniform_words, r.uniform))}")
    for line in r.no_uniform:
        out.print(f"uniform L1 baseline: {line}")


@app.command()
def evaluate(
    export: Annotated[Path, typer.Argument(help="Export folder (or its pruned.json) written by `fnnp-opt run`.")],
    data_dir: DataDir = None,
    device: Device = "auto",
) -> None:
    """Reload an exported pruned network and measure it on the test set."""
    from fnnp_opt.flops import human
    from fnnp_opt.pipeline import evaluate_export

    with bars() as progress:
        r = call(evaluate_export, export, data_dir, device, progress)
    reported = r["reported_test_accuracy"]
    note = "" if reported is None else f" (reported at export: {reported:.2%})"
    out.print(f"test accuracy {r['test_accuracy']:.2%}{note}; FLOPs {human(r['flops'])}; params {human(r['params'])}")


@app.command()
def export(
    path: Annotated[Path, typer.Argument(help="Export folder (or its pruned.json) written by `fnnp-opt run`.")],
    onnx: Annotated[
        bool, Opt("--onnx", help="Write ONNX, checked against PyTorch in onnxruntime (the onnx extra).")
    ] = False,
    output: Annotated[Optional[Path], Opt(help="The ONNX file. [default: <export folder>/pruned.onnx]")] = None,
) -> None:
    """Convert an exported pruned network to another format (today: ONNX, with --onnx)."""
    from fnnp_opt.export import export_onnx

    if not onnx:
        console.print("[red]error:[/red] fnnp-opt export needs a format to write; pass --onnx", highlight=False)
        raise typer.Exit(2)
    path, r = call(export_onnx, path, output)
    out.print(
        f"wrote {path}: onnxruntime matches PyTorch within {r['max_abs_diff']:.2g} (allowed {r['tolerance'][0]} + "
        f"{r['tolerance'][1]} x |logit|); {r['ort_ms'][1]:.3f} ms per image in onnxruntime (CPU)"
    )


@app.command()
def models() -> None:
    """List the built-in architectures, torchvision's builders and how to bring your own."""
    from fnnp_opt.models import UNSUPPORTED, list_models, torchvision_builders

    for info in list_models():
        out.print(f"{info.name:20s} {info.description}")
    names = [n for n in torchvision_builders() if n not in UNSUPPORTED]
    out.print(f"\ntorchvision builders ({len(names)}, random weights; pass --checkpoint with yours):")
    out.print("  " + ", ".join(names), soft_wrap=False)
    out.print(f"not prunable here: {', '.join(sorted(UNSUPPORTED))} (reasons in docs/models.md)")
    out.print(
        "your own model: --model package.module:callable (called with in_channels= and num_classes= if it takes them)"
    )


@app.command()
def recipes() -> None:
    """List the shipped recipes: the paper's experiments and the default, with the paper's figures."""
    from fnnp_opt.recipes import list_recipes

    out.print("fnnp-opt run --recipe NAME runs one; flags override its values", highlight=False)
    for r in call(list_recipes):
        c = r.config
        out.print(
            f"{r.name:26s} {c['model']} on {c['dataset']} at --flops {c['flops']}; paper: {r.paper_result()}",
            highlight=False,
            soft_wrap=True,
        )


def _print_paper(recipe, result) -> None:
    """The paper's figures beside this run's, for a recipe of a paper experiment."""
    from fnnp_opt.flops import human

    if not result.pruned or not recipe.paper:
        return
    got = result.pruned
    out.print(
        f"paper, {recipe.paper.get('source', recipe.name)}: {recipe.paper_result()} | this run: "
        f"{human(got['flops'])} FLOPs, {got['test_accuracy']:.2%} top-1 after {len(result.finetune_losses)} "
        f"fine-tune epochs (recipe: {recipe.config.get('epochs', '?')})",
        highlight=False,
        soft_wrap=True,
    )


@app.command()
def dashboard(
    storage: StoredStorage = "sqlite:///studies/fnnp.db",
    host: Annotated[str, Opt(help="Address to bind; 127.0.0.1 keeps it on this machine.")] = "127.0.0.1",
    port: Annotated[int, Opt(help="Port.", min=1, max=65535)] = 8080,
    artifact_dir: Annotated[
        Optional[Path],
        Opt(help="Artifact store to serve. [default: the one the storage's studies recorded]"),
    ] = None,
) -> None:
    """Serve optuna-dashboard for a storage and its artifact store (on 127.0.0.1 unless --host says otherwise)."""
    from fnnp_opt.dashboard import serve_dashboard

    call(
        serve_dashboard,
        storage,
        host,
        port,
        lambda url: out.print(f"optuna-dashboard on {url} (Ctrl-C stops)", highlight=False),
        artifact_dir,
    )
