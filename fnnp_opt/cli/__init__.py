"""The ``fnnp-opt`` command line: one client of :mod:`fnnp_opt.commands`, the application API.

Each command declares its options, resolves them and calls one function of :mod:`fnnp_opt.commands`;
:mod:`~fnnp_opt.cli.render` prints the result, :mod:`~fnnp_opt.cli.calls` turns a library error
(:class:`fnnp_opt.FnnpError`) into one line on stderr and a non-zero exit (2 for usage errors, 1 otherwise), and
:mod:`~fnnp_opt.cli.options` holds the options that several commands share. Importing it loads neither torch nor
Optuna, so ``fnnp-opt --help`` is quick.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from fnnp_opt import commands
from fnnp_opt.cli.calls import (
    call,
    check_torchrun,
    command_line,
    configure_logging,
    state,
    stop_on_sigterm,
    torchrun_job,
)
from fnnp_opt.cli.options import (
    AbnBatchSize,
    ArtifactDir,
    CheckpointShort,
    CommandGroup,
    DataDir,
    DatasetOpt,
    Device,
    DistillOpt,
    DistillTemperature,
    DistillWeight,
    Exclude,
    FinetuneBatchSize,
    FinetuneLr,
    ImageSize,
    MaxRate,
    MinChannels,
    ModelOpt,
    Opt,
    RecipeShort,
    RoundTo,
    RunDevice,
    SearchPerClass,
    SearchSize,
    StorageOpt,
    StoredStorage,
    StoredStudy,
    StudysDistill,
    StudysTemperature,
    StudysWeight,
    Tolerance,
    comma_ints,
    comma_list,
    config_flags,
)
from fnnp_opt.cli.render import bars, console, out, print_correlation, print_paper, print_space, print_summary

__all__ = ["app", "call"]

app = typer.Typer(
    cls=CommandGroup,
    add_completion=False,
    no_args_is_help=True,
    help="Search per-layer filter-pruning ratios with adaptive-BN evaluation (EagleEye) on Optuna.",
)


@app.callback()
def main(
    ctx: typer.Context,
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks and debug logs.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show info logs.")] = False,
) -> None:
    state["debug"], state["command"] = debug, ctx.invoked_subcommand
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    configure_logging(debug, verbose)
    check_torchrun(ctx.invoked_subcommand)


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
    cfg = commands.FitConfig(epochs=epochs, lr=lr, batch_size=batch_size, seed=seed)
    with bars() as progress:
        card = call(
            commands.train,
            model,
            dataset,
            output,
            cfg,
            data_dir=data_dir,
            search_size=search_size,
            search_per_class=search_per_class,
            image_size=image_size,
            device=device,
            command=command_line(),
            progress=progress,
        )
    out.print(f"test accuracy {card['test_accuracy']:.4f}; weights in {output}")


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
    seed: Annotated[
        Optional[int],
        Opt(
            help="Seed of the sampler, and of the fine-tune and the latency table unless given their own. [default: 0]"
        ),
    ] = None,
    calibration_seed: Annotated[
        Optional[int],
        Opt(
            help="Seed of the draw of ABN's calibration images, part of the study's data (a new --seed keeps them). "
            "[default: 0 for a new study; a resumed study keeps its own]"
        ),
    ] = None,
    finetune_seed: Annotated[
        Optional[int], Opt(help="Seed of the fine-tune's and abn-ft's shuffling and augmentation. [default: --seed]")
    ] = None,
    abn_batches: Annotated[
        Optional[int],
        Opt(
            help="Adaptive-BN calibration batches; the ranking has settled by 10 on both shipped bases "
            "(docs/speed.md), the paper uses 100. [default: 10 for a new study; a resumed study keeps its own]"
        ),
    ] = None,
    abn_batch_size: AbnBatchSize = None,
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
            help="Two-stage search: when the study is complete, re-score the top K by ABN and every baseline with "
            "abn-ft (a baseline in the top K counts toward K); the best re-scored candidate wins. Re-scores are "
            "stored on their trials and resume. 0 picks by ABN alone. [default: 5 (at most --n-trials) for an ABN "
            "search of one objective, else 0]"
        ),
    ] = None,
    baselines: Annotated[
        Optional[str],
        Opt(
            help="Strategies queued first in the study and scored like any candidate (comma-separated): uniform "
            "(uniform L1, always trial 0) | global (Torch-Pruning's global ranking, stepped to the budget) | "
            "sensitivity (each group pruned alone, then one drop threshold bisected to the budget: groups x "
            "--sensitivity-steps + 1 evaluations) | none. [default: uniform,global]"
        ),
    ] = None,
    global_importance: Annotated[
        Optional[str],
        Opt(
            help="The global baseline's Torch-Pruning criterion: magnitude (L2, mean-normalised per group) | lamp | "
            "taylor (|weight x gradient| over 8 calibration batches). [default: magnitude]"
        ),
    ] = None,
    sensitivity_steps: Annotated[
        Optional[int], Opt(help="Ratios per group of the sensitivity baseline's curves, 1 to 20. [default: 4]")
    ] = None,
    epochs: Annotated[Optional[int], Opt(help="Fine-tune epochs of the winner (0 skips). [default: 3]")] = None,
    lr: FinetuneLr = None,
    weight_decay: Annotated[Optional[float], Opt(help="Fine-tune weight decay. [default: 5e-4]")] = None,
    batch_size: FinetuneBatchSize = None,
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
    device: RunDevice = None,
) -> None:
    """Search pruning ratios, fine-tune the best candidate, test it and export it.

    Running the same command again resumes the study and the fine-tune.
    """
    cfg = call(commands.resolve, recipe, **config_flags(locals()))
    commands.quiet_optuna()
    call(commands.check_batch_size, cfg.batch_size)  # under torchrun, before the search rather than after it
    with torchrun_job(), bars() as progress:
        result = call(commands.run, cfg, progress)
    if result is None:  # a torchrun process other than rank 0, which prints
        return
    print_summary(result)
    if recipe is not None:
        print_paper(call(commands.read_recipe, recipe), result)


@app.command()
def finetune(
    trial: Annotated[int, Opt(help="Number of the evaluated trial to fine-tune (e.g. a point of the Pareto front).")],
    storage: StoredStorage = "sqlite:///studies/fnnp.db",
    study_name: StoredStudy = None,
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
    overrides = {k: v for k, v in config_flags(locals()).items() if k not in ("storage", "study_name")}
    with torchrun_job(), bars() as progress:
        result = call(commands.finetune, storage, study_name, trial, overrides, progress)
    if result is None:  # a torchrun process other than rank 0, which prints
        return
    print_summary(result)


@app.command()
def report(
    storage: StoredStorage = "sqlite:///studies/fnnp.db",
    study_name: StoredStudy = None,
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
    r = call(commands.report, storage, study_name, output, upload, artifact_dir)
    for name, reason in r.skipped.items():
        out.print(f"[yellow]skipped[/yellow] {name}: {escape(reason)}", highlight=False)
    out.print(f"report written to {r.folder}: {', '.join(p.name for p in r.files)}", highlight=False, soft_wrap=True)
    if r.published is not None:
        out.print(f"artifacts: {r.published.describe()}", highlight=False, soft_wrap=True)


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
    lr: FinetuneLr = None,
    batch_size: FinetuneBatchSize = None,
    noise_candidates: Annotated[int, Opt(help="Candidates fine-tuned again to measure the ground truth's noise.")] = 3,
    noise_seeds: Annotated[int, Opt(help="Other fine-tune seeds for each of those.")] = 2,
    abn_batch_size: AbnBatchSize = None,
    search_size: SearchSize = None,
    search_per_class: SearchPerClass = None,
    seed: Annotated[Optional[int], Opt(help="Seed of the candidates, calibration and fine-tunes. [default: 0]")] = None,
    storage: StorageOpt = None,
    output: Annotated[Path, Opt(help="Folder for the CSVs and figures.")] = Path("runs/correlate"),
    device: RunDevice = None,
) -> None:
    """Measure how PBN and ABN scores rank candidates against their fine-tuned accuracy (the paper's evidence).

    Running the same command again resumes where it stopped.
    """
    flags = {k: v for k, v in config_flags(locals()).items() if k not in ("flops", "score_steps")}
    cfg = call(commands.correlate_config, recipe, **flags)
    settings = commands.CorrelateSettings(
        budgets=tuple(call(comma_list, flops, "--flops", "0.75,0.5,0.25")),
        candidates=tuple(call(comma_ints, candidates, "--candidates")),
        sweep=tuple(call(comma_ints, sweep, "--sweep")),
        score_steps=tuple(call(comma_ints, score_steps, "--score-steps")),
        ft_epochs=ft_epochs,
        noise_candidates=noise_candidates,
        noise_seeds=noise_seeds,
        output=output,
    )
    call(settings.validate)
    commands.quiet_optuna()
    with bars() as progress:
        result = call(commands.correlate, cfg, settings, progress)
    print_correlation(result, settings)


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
    cfg = call(commands.resolve, recipe, **config_flags(locals()))
    with bars() as progress:
        r = call(commands.space, cfg, draws, progress)
    print_space(r)


@app.command()
def evaluate(
    export: Annotated[Path, typer.Argument(help="Export folder (or its pruned.json) written by `fnnp-opt run`.")],
    data_dir: DataDir = None,
    device: Device = "auto",
) -> None:
    """Reload an exported pruned network and measure it on the test set."""
    with bars() as progress:
        r = call(commands.evaluate, export, data_dir, device, progress)
    reported, human = r["reported_test_accuracy"], commands.human
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
    if not onnx:
        console.print("[red]error:[/red] fnnp-opt export needs a format to write; pass --onnx", highlight=False)
        raise typer.Exit(2)
    path, r = call(commands.export, path, output)
    out.print(
        f"wrote {path}: onnxruntime matches PyTorch within {r['max_abs_diff']:.2g} (allowed {r['tolerance'][0]} + "
        f"{r['tolerance'][1]} x |logit|); {r['ort_ms'][1]:.3f} ms per image in onnxruntime (CPU)"
    )


@app.command()
def models() -> None:
    """List the built-in architectures, torchvision's builders and how to bring your own."""
    catalog = commands.models()
    for info in catalog.builtin:
        out.print(f"{info.name:20s} {info.description}")
    names = catalog.torchvision
    out.print(f"\ntorchvision builders ({len(names)}, random weights; pass --checkpoint with yours):")
    out.print("  " + ", ".join(names), soft_wrap=False)
    out.print(f"not prunable here: {', '.join(catalog.unsupported)} (reasons in docs/models.md)")
    out.print(
        "your own model: --model package.module:callable (called with in_channels= and num_classes= if it takes them)"
    )


@app.command()
def recipes() -> None:
    """List the shipped recipes: the paper's experiments and the default, with the paper's figures."""
    out.print("fnnp-opt run --recipe NAME runs one; flags override its values", highlight=False)
    for r in call(commands.recipes):
        c = r.config
        out.print(
            f"{r.name:26s} {c['model']} on {c['dataset']} at --flops {c['flops']}; paper: {r.paper_result()}",
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
    call(
        commands.dashboard,
        storage,
        host,
        port,
        lambda url: out.print(f"optuna-dashboard on {url} (Ctrl-C stops)", highlight=False),
        artifact_dir,
    )
