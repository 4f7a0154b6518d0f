from __future__ import annotations

from pathlib import Path

import pytest

from fnnp_opt.config import RunConfig, Sampler, resolve
from fnnp_opt.errors import UsageError

RECIPE = Path(__file__).parents[1] / "studies" / "fashion-mnist-resnet20.toml"


def test_the_default_recipe_is_the_default_config():
    assert resolve(RECIPE) == resolve() == RunConfig(flops="0.5")


def test_flags_override_the_recipe(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text('n_trials = 5\nsampler = "tpe"\nflops = 0.4\n[paper]\ntop1 = 0.9\n')
    cfg = resolve(recipe, n_trials=7, seed=None)
    assert cfg.n_trials == 7 and cfg.sampler is Sampler.tpe and cfg.flops == "0.4" and cfg.seed == 0


@pytest.mark.parametrize(
    "text, message",
    [
        ("n_trails = 3", "unknown options \\['n_trails'\\]"),
        ("n_trials = ", "not valid TOML"),
        ("n_trials = 0", "--n-trials must be a whole number >= 1"),
        ('sampler = "grid"', "unknown sampler"),
        ("lr = -1.0", "--lr must be positive"),
        ("sensitivity_steps = 50", "--sensitivity-steps must be a whole number from 1 to 20"),
        ("baselines = 3", "baselines must be a string or a list of strings"),
        ('baselines = ["uniform", 3]', "baselines must be a string or a list of strings"),
        ('baselines = ["uniform", "lamp"]', "r.toml: --baselines takes uniform, global, sensitivity .* got 'lamp'"),
        ("baselines = []", "r.toml: --baselines names no strategy, got \\[\\]; pass --baselines none for uniform"),
        ('baselines = ","', "r.toml: --baselines names no strategy, got ','.*; fix that line"),
    ],
)
def test_bad_recipes(tmp_path, text, message):
    recipe = tmp_path / "r.toml"
    recipe.write_text(text + "\n")
    with pytest.raises(UsageError, match=message):
        resolve(recipe)


def test_a_recipe_lists_its_baselines_as_a_toml_list_or_a_string(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text('baselines = ["global", "uniform", "sensitivity"]\n')
    listed = resolve(recipe)
    assert listed.baselines == "global,uniform,sensitivity"
    assert listed.baseline_names() == ("uniform", "global", "sensitivity")  # in queue order
    recipe.write_text('baselines = "uniform,global"\n')
    assert resolve(recipe).baseline_names() == ("uniform", "global")


def test_missing_recipe():
    with pytest.raises(UsageError, match="does not exist"):
        resolve(Path("no/such.toml"))


def test_defaults_derive_names():
    cfg = RunConfig()
    assert cfg.resolved_study_name() == "resnet20-fashion-mnist-flops0.5"
    assert cfg.resolved_storage() == "sqlite:///studies/fnnp.db"
    assert cfg.resolved_output() == Path("runs/resnet20-fashion-mnist-flops0.5")


def test_distillation_is_on_by_default_wherever_there_is_a_fine_tune():
    assert resolve().distills() and resolve(distill=True).distills()
    assert not resolve(distill=False).distills()
    assert not resolve(epochs=0).distills()  # the default asks for nothing a 0-epoch run cannot do
    with pytest.raises(UsageError, match="--distill distils during the fine-tune, but --epochs is 0"):
        resolve(distill=True, epochs=0)


def test_onnx_with_a_pareto_study_is_refused_with_what_to_run_instead():
    with pytest.raises(UsageError, match=r"--objective pareto delivers none.*export <its folder> --onnx"):
        resolve(objective="pareto", flops="0.2:0.8", onnx=True)


def test_workers_default_to_one_process_per_cpu_core_and_one_when_timing(monkeypatch):
    import os

    from fnnp_opt.config import MAX_AUTO_WORKERS

    for cores, want in ((1, 1), (2, 2), (64, MAX_AUTO_WORKERS)):
        monkeypatch.setattr(os, "cpu_count", lambda: cores)
        assert resolve(device="cpu").resolved_workers() == want
    assert resolve(device="cpu", latency="0.8x").resolved_workers() == 1  # timed candidates need quiet cores
    assert resolve(device="cpu", workers=3).resolved_workers() == 3
    assert resolve(device="cpu", n_trials=3).resolved_workers() == 3  # no process without a trial to run
    with pytest.raises(UsageError, match="--workers 4 starts more search processes than the --n-trials 3 trials"):
        resolve(workers=4, n_trials=3)


def test_more_workers_than_cpu_cores_are_refused_where_they_would_start(monkeypatch):
    import os

    from fnnp_opt.config import check_workers

    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    check_workers(4)
    check_workers(None)  # the automatic count never exceeds the cores
    with pytest.raises(UsageError, match="--workers 5 is more than this machine's 4 CPU cores.*--workers 4 or less"):
        check_workers(5)
    assert resolve(workers=5).workers == 5  # a stored study's settings still read on a smaller machine


@pytest.mark.parametrize(
    "option, value",
    [("latency_batch", 4), ("latency_threads", 2), ("latency_layout", "nchw"), ("latency_tolerance", 0.1)],
)
def test_a_latency_timing_option_without_a_latency_budget_is_refused(option, value):
    with pytest.raises(UsageError, match=f"--{option.replace('_', '-')} {value} sets how a latency budget is timed"):
        resolve(**{option: value})
    assert getattr(resolve(latency="0.8x", **{option: value}), option) == value


def test_calibration_and_early_stopping_are_left_to_the_study_until_settled():
    cfg = resolve()
    assert cfg.abn_batches is None and cfg.early_stop is None and cfg.calibration_batches() == 10
    assert cfg.stops_early() and not resolve(early_stop=False).stops_early()
    assert not resolve(score="abn-ft").stops_early() and not resolve(objective="pareto").stops_early()
    assert resolve(abn_batches=100).calibration_batches() == 100


def test_the_default_rerank_is_5_where_a_run_can_rerank_and_0_where_it_cannot():
    assert resolve().resolved_rerank() == 5
    assert resolve(n_trials=3).resolved_rerank() == 3  # never more than the candidates
    assert resolve(score="abn-ft").resolved_rerank() == 0  # every candidate is scored with abn-ft already
    assert resolve(objective="pareto").resolved_rerank() == 0  # no single winner to pick
    assert resolve(score_steps=0).resolved_rerank() == 0  # no short fine-tune to re-score with
    assert resolve(rerank=0).resolved_rerank() == 0 and resolve(rerank=2).resolved_rerank() == 2


def test_the_default_rerank_is_off_where_the_short_fine_tune_exceeds_the_train_part():
    cfg = resolve(batch_size=128, score_steps=100)
    assert cfg.resolved_rerank(train_images=12_800) == 5 and cfg.resolved_rerank(train_images=12_799) == 0
    assert resolve(rerank=2).resolved_rerank(train_images=10) == 2  # asked for: prepare() refuses it in one line
