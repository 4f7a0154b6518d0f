"""The shipped recipes, run on tiny data of their formats; a user's own model, end to end."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from fnnp_opt.cli import app
from fnnp_opt.config import RECIPES, resolve
from fnnp_opt.datasets import get_dataset_info
from fnnp_opt.recipes import list_recipes, read_recipe

from conftest import random_checkpoint

runner = CliRunner()
RECIPE_NAMES = [r.name for r in list_recipes()]
# How each format's tiny copy is split and fine-tuned: one fine-tune step (batch = the whole train part).
TINY = {
    "fashion-mnist": ("small_fmnist", ["--search-size", "300", "--batch-size", "2700"]),
    "cifar10": ("tiny_cifar10", ["--search-size", "40", "--batch-size", "160"]),
    "imagenet": ("tiny_imagenet", ["--search-per-class", "2", "--batch-size", "18", "--eval-batch-size", "6"]),
}


def test_the_paper_experiments_are_all_there():
    names = set(RECIPE_NAMES)
    assert {"resnet56-cifar10", "mobilenet_v1-imagenet", "fashion-mnist-resnet20"} <= names
    assert {f"resnet50-imagenet-{f}" for f in ("3G", "2G", "1G")} <= names
    assert {f"mobilenet_v1-cifar10-{f}" for f in ("26p5M", "12p1M", "3p3M")} <= names
    for r in list_recipes():
        resolve(r.path)  # every value is a valid option
        assert r.config["dataset"] in TINY, "add the dataset's tiny copy to TINY"
        if r.name != "fashion-mnist-resnet20":
            assert r.paper["flops"] and r.paper["source"].startswith("EagleEye")
    assert read_recipe("resnet50-imagenet-1G").paper["top1"] == 74.2


# Recipes that differ from one that runs end to end by their budget alone: run in the zoo tier (`make test-all`);
# the integration tier checks their budget against what their R reaches (test_a_sibling_recipes_budget_is_reachable).
SIBLINGS = {"resnet50-imagenet-2G", "resnet50-imagenet-3G"}


def _tier(name: str) -> pytest.MarkDecorator:
    """A recipe run's tier: an image folder is decoded in worker processes (system)."""
    if name in SIBLINGS:
        return pytest.mark.zoo
    return pytest.mark.system if read_recipe(name).config["dataset"] == "imagenet" else pytest.mark.integration


@pytest.mark.slow
@pytest.mark.parametrize("name", [pytest.param(n, marks=_tier(n)) for n in RECIPE_NAMES])
def test_every_recipe_runs_on_tiny_data_of_its_format(name, tmp_path, request):
    recipe = read_recipe(name)
    dataset = recipe.config["dataset"]
    fixture, extra = TINY[dataset]
    data_dir = request.getfixturevalue(fixture)
    args = ["run", "--recipe", name, "--data-dir", str(data_dir), "--workers", "1", *extra]
    if dataset != "fashion-mnist":  # no weights ship for these: random ones stand in
        info = get_dataset_info(dataset)
        classes = 3 if dataset == "imagenet" else info.num_classes
        ckpt = random_checkpoint(tmp_path / "w.safetensors", recipe.config["model"], info.in_channels, classes)
        args += ["--checkpoint", str(ckpt), "--no-check-base"]  # random weights score at chance
    args += ["--n-trials", "2", "--abn-batches", "2", "--abn-batch-size", "4", "--epochs", "1", "--device", "cpu"]
    args += ["--storage", f"sqlite:///{tmp_path}/s.db", "--output", str(tmp_path / "out")]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    printed = " ".join(res.output.split())  # the console wraps lines at the terminal's width
    assert "2 candidates evaluated" in printed
    doc = json.loads((tmp_path / "out" / "pruned.json").read_text())
    assert doc["model"] == recipe.config["model"] and doc["config"]["epochs"] == 1
    if recipe.paper:  # the paper's figure beside the measured one
        assert f"paper, {recipe.paper['source']}: {recipe.paper['flops']} FLOPs" in printed
        assert "| this run:" in printed


@pytest.mark.integration
@pytest.mark.parametrize("name", sorted(SIBLINGS))
def test_a_sibling_recipes_budget_is_reachable(name, tmp_path):
    from fnnp_opt.pipeline import prepare

    cfg = resolve(name, storage=f"sqlite:///{tmp_path}/s.db", device="cpu")
    p = prepare(cfg, with_data=False)  # raises BudgetError when R cannot reach the window
    (plan,) = p.uniform
    assert all(0 < r <= p.space.max_rate for r in plan.values())
    assert p.budget.contains(p.flops.macs(p.pruner.counts(plan)))


def test_recipes_command_lists_them_with_the_papers_figures():
    res = runner.invoke(app, ["recipes"])
    assert res.exit_code == 0, res.output
    assert "resnet56-cifar10" in res.output and "94.66% top-1" in res.output and "62.23M" in res.output


def test_a_recipe_name_or_a_missing_one(tmp_path):
    assert resolve("resnet56-cifar10").model == "resnet56"
    assert (RECIPES / "resnet56-cifar10.toml").is_file()
    from fnnp_opt.errors import UsageError

    with pytest.raises(UsageError, match="`fnnp-opt recipes` lists the shipped ones"):
        resolve("no-such-recipe")
    # a flag sizing the search split replaces the recipe's way of sizing it
    cfg = resolve("resnet50-imagenet-1G", search_size=5000)
    assert (cfg.search_size, cfg.search_per_class) == (5000, None)


USER_MODEL = """
import torch
from torch import nn


class Tiny(nn.Module):
    def __init__(self, classes):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        )
        self.head = nn.Linear(32, classes)

    def forward(self, x):
        return self.head(self.body(x).mean((2, 3)))


def build(num_classes=10):  # takes no in_channels: fnnp-opt adapts the stem to the data
    return Tiny(num_classes)
"""


@pytest.mark.integration
def test_a_user_model_given_as_module_callable_runs_end_to_end(small_fmnist, tmp_path, monkeypatch):
    (tmp_path / "mynets.py").write_text(USER_MODEL)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    ckpt = random_checkpoint(tmp_path / "mine.safetensors", "mynets:build", 1, 10)
    common = ["--model", "mynets:build", "--checkpoint", str(ckpt), "--storage", f"sqlite:///{tmp_path}/s.db"]
    res = runner.invoke(app, ["space", *common[:4], "--flops", "0.5"])
    assert res.exit_code == 0, res.output
    assert "ratio.body.0" in res.output and "ratio.body.3" in res.output and "head" not in res.output
    args = ["run", *common, "--data-dir", str(small_fmnist), "--search-size", "300", "--n-trials", "2"]
    args += ["--abn-batches", "2", "--abn-batch-size", "16", "--epochs", "1", "--batch-size", "512"]
    args += [
        "--round-to",
        "4",
        "--output",
        str(tmp_path / "out"),
        "--device",
        "cpu",
        "--no-check-base",
        "--workers",
        "1",
    ]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "out" / "pruned.json").read_text())
    assert doc["model"] == "mynets:build" and doc["layers"]["body.0"]["in"] == 1  # adapted to 1-channel images
    assert all(doc["layers"][n]["out"] % 4 == 0 for n in ("body.0", "body.3", "body.6"))
    res = runner.invoke(app, ["evaluate", str(tmp_path / "out"), "--data-dir", str(small_fmnist)])
    assert res.exit_code == 0 and "test accuracy" in res.output, res.output


def test_bad_model_specs_fail_in_one_line(tmp_path):
    for spec, message in (
        ("nosuchmodule:build", "cannot be imported"),
        ("json:nothing_here", "has no callable"),
        ("swin_t", "cannot be pruned here"),
        ("resnet5", "unknown model 'resnet5'.*torchvision"),
    ):
        res = runner.invoke(app, ["space", "--model", spec])
        assert res.exit_code != 0 and res.output.count("\n") <= 3, res.output
        import re

        assert re.search(message, res.output.replace("\n", " ")), res.output


def test_a_recipe_that_is_binary_or_a_folder_is_one_clear_error(tmp_path):
    from fnnp_opt.errors import UsageError

    (tmp_path / "bin.toml").write_bytes(bytes(range(128, 256)))
    with pytest.raises(UsageError, match="is not text \\(not UTF-8\\); pass a TOML recipe file"):
        resolve(tmp_path / "bin.toml")
    (tmp_path / "folder.toml").mkdir()
    with pytest.raises(UsageError, match="is a folder, not a TOML file"):
        resolve(tmp_path / "folder.toml")


def test_the_dashboard_refuses_a_port_out_of_range(tmp_path):
    res = CliRunner().invoke(app, ["dashboard", "--storage", f"sqlite:///{tmp_path}/none.db", "--port", "99999"])
    assert res.exit_code == 2 and "65535" in res.output and "Traceback" not in res.output


def test_a_setting_only_a_recipe_has_is_named_as_the_recipes_key(tmp_path):
    import inspect
    from dataclasses import fields

    from fnnp_opt import cli
    from fnnp_opt.config import RECIPE_ONLY, RunConfig
    from fnnp_opt.errors import UsageError

    assert set(RECIPE_ONLY) == {f.name for f in fields(RunConfig)} - set(inspect.signature(cli.run).parameters)
    recipe = tmp_path / "r.toml"
    recipe.write_text("max_draws = 0\n")
    with pytest.raises(UsageError, match="the recipe's max_draws must be a whole number >= 1, got 0") as err:
        resolve(recipe)
    assert "--max-draws" not in str(err.value)
