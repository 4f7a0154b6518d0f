"""The command line's options: the annotated option types that several commands share, the help that says what
each option's default is, and the reading of option values into what :mod:`fnnp_opt.commands` takes."""

from __future__ import annotations

from dataclasses import MISSING, fields
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
import typer.core
from rich.markup import escape

from fnnp_opt import UsageError
from fnnp_opt.commands import RunConfig


class CommandGroup(typer.core.TyperGroup):
    """fnnp-opt's commands, their options' help made to say what it means: Typer reads help as Rich markup, which
    would drop a ``[default: 30]`` or the ``[onnx]`` of ``fnnp-opt[onnx]``, so brackets are escaped; and `run`
    shows the :class:`RunConfig` default of each option left as None (for a recipe to set) whose help states none."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        defaults = {f.name: f.default for f in fields(RunConfig) if f.default not in (MISSING, None, ())}
        for command in self.commands.values():
            for param in command.params:
                if not isinstance(param, (typer.core.TyperOption, typer.core.TyperArgument)):  # each of a Typer app
                    continue
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


Opt = typer.Option
DataDir = Annotated[
    Optional[Path], typer.Option(help="Folder with the dataset files (default: the dataset's system location).")
]
Device = Annotated[str, typer.Option(help="Torch device: auto, cpu, cuda, cuda:1 ...")]
RunDevice = Annotated[Optional[str], Opt(help="auto, cpu, cuda[:N]. [default: auto]")]  # run's, a recipe may set it
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
        "8 with AVX2, 8 on CUDA). [default: a resumed study's; else auto for a network whose median conv has at "
        "least 8 vector widths of channels (ResNet-50, MobileNetV2; not ResNet-20) where the budget stays within "
        "reach, else 1]"
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
StoredStudy = Annotated[Optional[str], Opt(help="Study name. [default: the storage's only study]")]
AbnBatchSize = Annotated[Optional[int], Opt(help="Images per calibration batch. [default: 64]")]
FinetuneLr = Annotated[Optional[float], Opt(help="Fine-tune peak learning rate. [default: 0.02]")]
FinetuneBatchSize = Annotated[Optional[int], Opt(help="Fine-tune batch size. [default: 128]")]
_TEMPERATURE, _WEIGHT = "Distillation temperature T > 0.", "Share of the distillation term in the loss, in [0, 1]."
DistillTemperature = Annotated[Optional[float], typer.Option(help=f"{_TEMPERATURE} [default: 4.0]")]
DistillWeight = Annotated[Optional[float], typer.Option(help=f"{_WEIGHT} [default: 0.5]")]
StudysDistill = Annotated[  # finetune: what the study's run used, unless given
    Optional[bool], typer.Option("--distill/--no-distill", help="As `run --distill`. [default: the study's]")
]
StudysTemperature = Annotated[Optional[float], typer.Option(help=f"{_TEMPERATURE} [default: the study's]")]
StudysWeight = Annotated[Optional[float], typer.Option(help=f"{_WEIGHT} [default: the study's]")]


def config_flags(options: dict) -> dict:
    """A command's options that are RunConfig fields, with paths as strings (None: not given)."""
    names = {f.name for f in fields(RunConfig)}
    return {k: str(v) if isinstance(v, Path) else v for k, v in options.items() if k in names}


def comma_list(text: str, option: str, example: str) -> list[str]:
    """The comma-separated values of ``option``; :class:`UsageError` for an empty one (``0.5,,0.3``)."""
    if not text.strip():  # none given (the default of --score-steps)
        return []
    items = [v.strip() for v in text.split(",")]
    if not all(items):
        raise UsageError(f"{option} {text!r} has an empty value between its commas; write them like {example}")
    return items


def comma_ints(text: str, option: str) -> list[int]:
    """The whole numbers of comma-separated ``option``; :class:`UsageError` for anything else."""
    items = comma_list(text, option, "1,5,10")
    try:
        return [int(v) for v in items]
    except ValueError:
        raise UsageError(f"{option} takes whole numbers separated by commas, like 1,5,10, got {text!r}") from None
