"""The shipped recipes: one TOML file in ``studies/`` per experiment of the paper, plus the default.

A recipe is a flat table of `fnnp-opt run` options and two optional tables:
``[about]`` (``title``) and ``[paper]`` (what the paper reports: ``flops``, ``top1``,
``base_top1``, ``source``). `fnnp-opt run --recipe NAME` prints the paper's figures
beside the measured ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fnnp_opt.config import RECIPES, load_recipe, recipe_path


@dataclass(frozen=True)
class Recipe:
    """A TOML recipe: the run options it sets, and the paper's figures for its experiment."""

    name: str  # file stem, what --recipe accepts
    path: Path
    config: dict  # the run options it sets
    paper: dict  # the paper's reported result ({} for experiments not in the paper)
    title: str

    def paper_result(self) -> str:
        if not self.paper:
            return "-"
        top1 = f", {self.paper['top1']:.2f}% top-1" if "top1" in self.paper else ", top-1 not recorded"
        return f"{self.paper.get('flops', '?')} FLOPs{top1}"


def read_recipe(path: Path | str) -> Recipe:
    """The recipe ``path`` names: a TOML file, or the name of a shipped recipe (``resnet56-cifar10``)."""
    path = recipe_path(path)
    data = load_recipe(path)
    config = {k: v for k, v in data.items() if not isinstance(v, dict)}
    about = data.get("about", {})
    return Recipe(path.stem, path, config, data.get("paper", {}), about.get("title", path.stem))


def list_recipes(folder: Path = RECIPES) -> list[Recipe]:
    """Every recipe in ``folder``, sorted by name."""
    return [read_recipe(p) for p in sorted(Path(folder).glob("*.toml"))]
