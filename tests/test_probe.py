"""User models (tests/usermodels.py) either prune, train and score, or are refused before any data is read in one
line whose remedy works."""

from __future__ import annotations

import copy
import re

import pytest
import torch
import usermodels
from conftest import SMALL_RUN, message_lines, random_checkpoint
from typer.testing import CliRunner

from fnnp_opt.cli import app
from fnnp_opt.errors import ModelError
from fnnp_opt.flops import FlopsModel, count
from fnnp_opt.models import check_input, find_classifier
from fnnp_opt.prune import Pruner, Shaping

runner = CliRunner()
SHAPE = (1, 1, 28, 28)

PRUNES = ["depthwise", "depthwise_x2", "depthwise_x2_into_fc", "grouped_x2", "resnext", "group_norm", "shared_conv"]
# a cut of a group breaks forward(): the error names the groups and the --exclude flags that leave them alone
EXCLUDED = {
    "split_widths": ["expand"],
    "chunk_halves": ["expand"],
    "two_breakers": ["block1.conv", "f2"],
    "fixed_width": ["mid"],
    "cat_grouped": ["a", "b"],  # a grouped conv fed by a concatenation of two separately cut convs
}
# the model itself fails in a way a study runs it: the error says how, and the builder's fixed=True variant prunes
FIXED = {
    "view_flatten": "fails in eval mode in channels-last layout (how fnnp-opt scores and times networks), in the "
    "forward() of _ViewFlatten itself (RuntimeError: view size is not compatible",
    "inplace_add": "fails in train mode with a backward pass (how fnnp-opt fine-tunes networks), in the backward pass "
    "(RuntimeError: one of the variables needed for gradient computation has been modified by an inplace",
    "aux_in_train": "fails in train mode with a backward pass (how fnnp-opt fine-tunes networks) (it returned a "
    "tuple, not one logits tensor (2, 10)); make forward() return one logits tensor in every mode",
    "uncopyable": "cannot be deep-copied (TypeError: cannot pickle '_thread.lock' object); fnnp-opt prunes and "
    "fine-tunes deep copies of it: keep what cannot be copied (locks, open files, generators) out of its attributes",
}


def _run_without_data(name: str, tmp_path, *extra: str):
    """`fnnp-opt run --model usermodels:<name>` whose --data-dir does not exist: a model that passes every check
    gets as far as reading the data, and fails there."""
    ckpt = random_checkpoint(tmp_path / f"{name}.safetensors", f"usermodels:{name}", 1, 10)
    args = ["run", *SMALL_RUN, "--model", f"usermodels:{name}", "--checkpoint", str(ckpt), "--flops", "0.7"]
    args += ["--data-dir", str(tmp_path / "no-data-here"), "--storage", f"sqlite:///{tmp_path}/study.db"]
    return runner.invoke(app, [*args, "--output", str(tmp_path / "out"), *extra])


def _refused_before_data(res, tmp_path) -> str:
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    lines = message_lines(res.output)
    assert len(lines) == 1 and lines[0].startswith("error:"), res.output
    assert not (tmp_path / "study.db").exists() and not (tmp_path / "out").exists()
    return " ".join(res.output.split())


def _reaches_the_data(res) -> None:
    assert res.exit_code == 1 and "no-data-here" in res.output, res.output  # the model passed; the data is missing


def _prunes(model: torch.nn.Module, exclude: tuple[str, ...] = ()) -> None:
    """``model`` prunes at several ratios, and each pruned copy runs as a study runs it."""
    example = torch.zeros(SHAPE)
    check_input(model, "user model", SHAPE, 10)
    pruner = Pruner(model, example, find_classifier(model, example, 10), Shaping(exclude=exclude))
    assert pruner.groups
    flops = FlopsModel(model, SHAPE, pruner.prune_counts, {g.root: g.multiple for g in pruner.groups})
    x = torch.randn(4, *SHAPE[1:])
    for ratio in (0.2, 0.5, 0.8):
        pruned = pruner.prune({g.root: ratio for g in pruner.groups})
        assert flops.macs(pruner.counts({g.root: ratio for g in pruner.groups})) == count(pruned, SHAPE)[0]
        with torch.no_grad():
            assert pruned.eval()(x).shape == (4, 10)
        copy.deepcopy(pruned).train()(x).logsumexp(1).mean().backward()  # fine-tuning
        pruned.to(memory_format=torch.channels_last)
        with torch.no_grad():  # scoring and timing
            assert pruned(x.contiguous(memory_format=torch.channels_last)).shape == (4, 10)
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", PRUNES)
def test_grouped_and_depthwise_user_models_prune_and_run_as_a_study_runs_them(name):
    _prunes(getattr(usermodels, name)())


@pytest.mark.parametrize("name", ["depthwise_x2", "depthwise_x2_into_fc"])
def test_a_group_that_feeds_a_channel_multiplier_conv_is_no_dimension(name):
    """Its channels go to the multiplier conv's groups one each: any cut removes a whole group's input, which
    fnnp-opt never does, so the stem is kept whole and left out of the space rather than cut to nothing."""
    model = getattr(usermodels, name)()
    pruner = Pruner(model, torch.zeros(SHAPE), "fc")
    assert "stem" in {g.root for g in pruner.all_groups} and "stem" not in {g.root for g in pruner.groups}
    assert pruner.prune({g.root: 0.8 for g in pruner.groups}).stem.out_channels == 16


@pytest.mark.parametrize("name", sorted(EXCLUDED))
def test_a_group_whose_cut_breaks_forward_is_named_with_an_exclude_that_works(name, tmp_path):
    printed = _refused_before_data(_run_without_data(name, tmp_path), tmp_path)
    flags = re.findall(r"--exclude '([^']+)'", printed)
    assert flags == EXCLUDED[name], printed  # every group that breaks, at once: one retry
    assert "to prune the others (see docs/models.md)" in printed
    again = tmp_path / "again"
    again.mkdir()
    _reaches_the_data(_run_without_data(name, again, *[a for f in flags for a in ("--exclude", f)]))
    _prunes(getattr(usermodels, name)(), tuple(flags))


@pytest.mark.parametrize("name", sorted(FIXED))
def test_a_user_model_that_breaks_as_a_study_runs_it_is_refused_with_a_remedy_that_works(name, tmp_path):
    printed = _refused_before_data(_run_without_data(name, tmp_path), tmp_path)
    assert f"error: model 'usermodels:{name}' {FIXED[name]}" in printed
    with pytest.raises(ModelError) as err:  # the Pruner alone says the same of the model, not of a cut
        Pruner(getattr(usermodels, name)(), torch.zeros(SHAPE), "fc")
    assert str(err.value).startswith(f"the model {FIXED[name]}")
    _prunes(getattr(usermodels, name)(fixed=True))


class _OneFullBranch(torch.nn.Module):
    """Runs while either branch keeps its 16 channels: a cut of 'a' alone or of 'b' alone runs, of both fails."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.Conv2d(1, 16, 3, padding=1)
        self.fc = torch.nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.a(x), self.b(x)
        if a.shape[1] < 16 and b.shape[1] < 16:
            raise RuntimeError("one branch must keep 16 channels")
        return self.fc(torch.cat([a, b], 1).mean((2, 3)))


def test_groups_that_break_only_together_are_found_and_the_remedy_leaves_one_alone():
    model = _OneFullBranch()
    with pytest.raises(ModelError) as err:
        Pruner(model, torch.zeros(SHAPE), "fc")
    message = str(err.value)
    assert "when group 'b' is cut (RuntimeError: one branch must keep 16 channels)" in message
    assert re.findall(r"--exclude '([^']+)'", message) == ["b"]
    pruner = Pruner(model, torch.zeros(SHAPE), "fc", Shaping(exclude=("b",)))
    assert [g.root for g in pruner.groups] == ["a"]
