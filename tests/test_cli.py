from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import torch
import pytest
from optuna.storages import RetryHeartbeatStaleTrialCallback
from safetensors.torch import save_file
from typer.testing import CliRunner

import fnnp_opt
import fnnp_opt.storage as St
from fnnp_opt.cli import app
from fnnp_opt.data import load_splits
from fnnp_opt.evaluate import accuracy

from conftest import SMALL_RUN, message_lines, without

runner = CliRunner()


def _run(args, tmp_path, *extra):
    storage = f"sqlite:///{tmp_path}/study.db"
    return runner.invoke(
        app, ["run", *SMALL_RUN, "--storage", storage, "--output", str(tmp_path / "out"), *args, *extra]
    )


@pytest.mark.integration
def test_run_end_to_end_and_the_export_reproduces_the_accuracy(small_fmnist, tmp_path):
    res = _run(["--data-dir", str(small_fmnist)], tmp_path)
    assert res.exit_code == 0, res.output
    assert "base vs pruned" in res.output and "2 candidates evaluated" in res.output
    doc = json.loads((tmp_path / "out" / "pruned.json").read_text())
    printed = doc["metrics"]["pruned"]["test_accuracy"]
    assert f"{printed:.2%}" in res.output
    model = fnnp_opt.load_pruned(tmp_path / "out")
    test = load_splits("fashion-mnist", small_fmnist, search_size=300, abn_batches=4, abn_batch_size=32).test
    assert accuracy(model, test.batches(500)) == printed
    again = runner.invoke(app, ["evaluate", str(tmp_path / "out"), "--data-dir", str(small_fmnist)])
    assert again.exit_code == 0 and f"test accuracy {printed:.2%} (reported at export: {printed:.2%})" in again.output
    assert 0.45 <= doc["metrics"]["pruned"]["flops"] / doc["metrics"]["base"]["flops"] <= 0.55
    study = optuna.load_study(study_name="resnet20-fashion-mnist-flops0.5", storage=f"sqlite:///{tmp_path}/study.db")
    assert study.user_attrs["config"]["n_trials"] == 2 and study.user_attrs["result"]["trial"] == doc["study"]["trial"]


@pytest.mark.system
def test_stock_optuna_cli_lists_trials_with_attributes(searched, tmp_path):
    shutil.copy(searched, tmp_path / "study.db")  # as `_run([..., "--epochs", "0"], tmp_path)` leaves it
    optuna_cli = Path(sys.executable).with_name("optuna")
    proc = subprocess.run(
        [
            str(optuna_cli),
            "trials",
            "--storage",
            f"sqlite:///{tmp_path}/study.db",
            "--study-name",
            "resnet20-fashion-mnist-flops0.5",
            "-f",
            "json",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    trials = json.loads(proc.stdout)
    done = [t for t in trials if t["state"] == "COMPLETE"]
    assert len(done) == 2
    attrs = done[0]["user_attrs"]
    assert attrs["feasible"] is True and "images_scored" in attrs and "flops" in attrs and "channels" in attrs
    assert "pbn_accuracy" not in attrs  # PBN is recorded when asked (--pbn)


@pytest.mark.integration
def test_existing_study_with_other_data_is_refused_and_kept(searched, small_fmnist, tmp_path, fmnist_arrays):
    shutil.copy(searched, tmp_path / "study.db")  # as `_run([..., "--epochs", "0"], tmp_path)` leaves it
    db = tmp_path / "study.db"
    before = db.read_bytes()
    from fnnp_opt.data import write_idx

    other = tmp_path / "other"
    other.mkdir()
    for part, key, n in (("train", "train", 2500), ("t10k", "test", 1000)):
        write_idx(other / f"{part}-images-idx3-ubyte.gz", fmnist_arrays[f"{key}_x"][-n:])
        write_idx(other / f"{part}-labels-idx1-ubyte.gz", fmnist_arrays[f"{key}_y"][-n:])
    res = _run(["--data-dir", str(other), "--epochs", "0"], tmp_path)
    assert res.exit_code == 1 and "created with different settings (--data-dir: stored" in " ".join(res.output.split())
    assert db.read_bytes() == before


def test_debug_shows_the_traceback(small_fmnist, tmp_path):
    res = runner.invoke(app, ["--debug", "run", "--model", "nope"])
    assert res.exit_code != 0 and res.exception is not None


def test_models_lists_the_registry():
    res = runner.invoke(app, ["models"])
    assert res.exit_code == 0 and "resnet20" in res.output and "mobilenet_v1_cifar" in res.output
    assert "torchvision builders" in res.output and "efficientnet_b0" in res.output
    assert "not prunable here:" in res.output and "swin_t" in res.output and "module:callable" in res.output


def _count_complete(url: str, name: str) -> int:
    study = optuna.load_study(study_name=name, storage=url)
    return sum(t.state.name == "COMPLETE" for t in study.trials)


def _peek_complete(db: Path) -> int:
    """COMPLETE trials in a SQLite study another process is writing, read-only: an Optuna
    storage opened here could race the writer's schema creation."""
    import sqlite3

    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            return conn.execute("SELECT count(*) FROM trials WHERE state = 'COMPLETE'").fetchone()[0]
    except sqlite3.Error:  # not created yet
        return 0


@pytest.mark.system
@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "kill-9"])
def test_interrupted_run_resumes_to_exactly_n_trials(sig, small_fmnist, tmp_path):
    url, name = f"sqlite:///{tmp_path}/study.db", "resnet20-fashion-mnist-flops0.5"
    cmd = [
        sys.executable,
        str(Path(__file__).parents[1] / "cli.py"),
        "run",
        *SMALL_RUN,
        "--n-trials",
        "12",
        "--epochs",
        "0",
        "--storage",
        url,
        "--output",
        str(tmp_path / "out"),
        "--data-dir",
        str(small_fmnist),
    ]
    # a shell that starts jobs in the background (as CI may) hands them SIGINT ignored: undo that
    log = tmp_path / "first.log"
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:  # wait until the study is under way
        time.sleep(0.5)
        if _peek_complete(tmp_path / "study.db") >= 2:
            break
    assert proc.poll() is None, f"the run ended before it could be interrupted: {log.read_text()}"
    proc.send_signal(sig)
    try:
        proc.wait(timeout=60)
    finally:
        proc.kill()
    if sig == signal.SIGINT:
        assert proc.returncode == 130  # "interrupted; run the same command again to resume"
    interrupted_at = _count_complete(url, name)
    assert 2 <= interrupted_at < 12
    if sig == signal.SIGKILL:
        time.sleep(St.GRACE_S + 1)  # the dead run's heartbeat goes stale
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert _count_complete(url, name) == 12
    study = optuna.load_study(study_name=name, storage=url)
    assert not [t for t in study.trials if t.state.name == "RUNNING"]
    if sig == signal.SIGKILL:
        for failed in [t for t in study.trials if t.state.name == "FAIL"]:
            retries = [
                t for t in study.trials if RetryHeartbeatStaleTrialCallback.retried_trial_number(t) == failed.number
            ]
            assert retries, f"trial {failed.number} was failed but not retried"


@pytest.mark.integration
def test_train_writes_weights_and_a_card_that_run_accepts(small_fmnist, tmp_path):
    from safetensors.torch import load_file

    outs = []
    for name in ("a", "b"):
        out = tmp_path / f"{name}.safetensors"
        res = runner.invoke(
            app,
            ["train", "--data-dir", str(small_fmnist), "--search-size", "300", "--epochs", "1", "--output", str(out)],
        )
        assert res.exit_code == 0, res.output
        outs.append(load_file(str(out)))
    assert all(torch.equal(outs[0][k], outs[1][k]) for k in outs[0])  # seeded: the same weights twice
    card = json.loads((tmp_path / "a.json").read_text())
    assert card["fit"]["epochs"] == 1 and 0.0 < card["test_accuracy"] <= 1.0
    assert card["train_images"] == 2700 and card["held_out_search_images"] == 300
    assert card["machine"]["cpu_cores"] == os.cpu_count() and card["wall_minutes"] >= 0  # where and how long
    mode = (tmp_path / "a.json").stat().st_mode & 0o777
    assert (tmp_path / "a.safetensors").stat().st_mode & 0o777 == mode  # the umask's, as the card (not 0600)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "a.safetensors", "b.json", "b.safetensors"]
    res = _run(
        ["--data-dir", str(small_fmnist), "--checkpoint", str(tmp_path / "a.safetensors"), "--epochs", "0"], tmp_path
    )
    assert res.exit_code == 0, res.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["--lr", "0"], "--lr must be positive and finite, got 0.0"),
        (["--lr", "nan"], "--lr must be positive and finite, got nan"),
        (["--seed", "-1"], "--seed must be a whole number in [0, 2**32), got -1"),
        (["--batch-size", "100000"], "--batch-size 100000 is larger than the train part's 2700 images"),
        (["--search-per-class", "0"], "--search-per-class must be a whole number >= 1, got 0"),
        (["--search-per-class", "-3"], "--search-per-class must be a whole number >= 1, got -3"),
    ],
)
def test_train_refuses_bad_values_in_one_line_and_writes_nothing(small_fmnist, tmp_path, args, message):
    out = tmp_path / "base.safetensors"
    res = runner.invoke(
        app, ["train", "--data-dir", str(small_fmnist), "--search-size", "300", "--output", str(out), *args]
    )
    assert res.exit_code == 2 and message in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())


def test_space_prints_the_dimensions_and_the_hit_rate():  # needs the model only, no data files
    res = runner.invoke(app, ["space", "--data-dir", "/nonexistent", "--draws", "40", "--flops-tolerance", "0.99"])
    assert res.exit_code == 0, res.output
    assert "12 ratios in [0, 0.6]" in res.output and "ratio.layer2.residual" in res.output
    assert "multiples of" not in res.output  # ResNet-20 is left unrounded
    assert "40 of 40 draws land in the window (100.0%)" in res.output  # the window covers every reachable count
    res = runner.invoke(app, ["space", "--data-dir", "/nonexistent", "--draws", "1", "--round-to", "8"])
    assert res.exit_code == 0 and "12 ratios in [0, 0.6], kept channels in multiples of 8" in res.output, res.output
    res = runner.invoke(app, ["space", "--flops", "0.05", "--max-rate", "0.3"])
    assert res.exit_code == 2 and "cannot be reached" in res.output


@pytest.fixture()
def received(monkeypatch) -> dict:
    """The RunConfig that `fnnp-opt run` hands to the library (the library itself is not run)."""
    import fnnp_opt.pipeline as pipeline

    seen = {}

    def fake_run(cfg, progress):
        seen["cfg"] = cfg
        raise fnnp_opt.FnnpError("stop here")

    monkeypatch.setattr(pipeline, "run", fake_run)
    return seen


def test_run_passes_flags_over_the_recipe_to_the_library(received, tmp_path):
    from fnnp_opt.config import RunConfig, Sampler

    recipe = tmp_path / "r.toml"
    recipe.write_text('n_trials = 5\nsampler = "cmaes"\nepochs = 9\n')
    res = runner.invoke(
        app, ["run", "--recipe", str(recipe), "--n-trials", "7", "--data-dir", str(tmp_path), "--flops", "62.23M"]
    )
    assert res.exit_code == 1 and "stop here" in res.output
    cfg = received["cfg"]
    assert (cfg.n_trials, cfg.sampler, cfg.epochs) == (7, Sampler.cmaes, 9)  # flag beats recipe beats default
    assert cfg.data_dir == str(tmp_path) and cfg.flops == "62.23M"
    assert cfg.max_rate == RunConfig().max_rate and cfg.storage is None


def test_search_engine_flags_reach_the_library(received):
    from fnnp_opt.config import Constraint, Objective, Sampler

    args = ["run", "--sampler", "tpe", "--constraint", "constrain", "--fit-budget", "--workers", "3"]
    res = runner.invoke(app, args)
    assert res.exit_code == 1 and "stop here" in res.output
    cfg = received["cfg"]
    assert (cfg.sampler, cfg.constraint, cfg.fit_budget, cfg.workers) == (Sampler.tpe, Constraint.constrain, True, 3)
    res = runner.invoke(app, ["run", "--objective", "pareto", "--sampler", "nsga2"])
    cfg = received["cfg"]
    assert (cfg.objective, cfg.flops, cfg.resolved_constraint()) == (Objective.pareto, "0.2:0.8", Constraint.constrain)
    assert cfg.resolved_study_name() == "resnet20-fashion-mnist-flops0.2-0.8-pareto"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--sampler", "cmaes", "--constraint", "reject"], "CMA-ES learns nothing from rejected draws"),
        (["--sampler", "random", "--constraint", "constrain"], "random sampling ignores constraints"),
        (["--constraint", "soft"], "unknown constraint 'soft'"),
        (["--objective", "pareto", "--flops", "0.5"], "pass a range like --flops 0.2:0.8"),
        (["--objective", "pareto", "--sampler", "cmaes"], "multi-objective sampler"),
        (["--flops", "0.2:0.6"], "only --objective pareto searches"),
        (["--workers", "0"], "--workers must be a whole number >= 1"),
        (["--score-steps", "-5"], "--score-steps must be a whole number >= 0, got -5"),
        (["--score", "abn-ft", "--score-steps", "0"], "--score-steps is 0"),
        (["--score", "loss"], "unknown score 'loss'; choose one of: abn, abn-ft"),
        (["--rerank", "40", "--n-trials", "30"], "--rerank 40 re-scores the top K of --n-trials 30"),
        (["--rerank", "5", "--score", "abn-ft"], "already scores every candidate that way"),
        (["--distill", "--epochs", "0"], "--distill distils during the fine-tune, but --epochs is 0"),
        (["--distill-weight", "1.5"], "--distill-weight must be in [0, 1], got 1.5"),
        (["--distill-temperature", "0"], "--distill-temperature must be positive"),
    ],
)
def test_unsupported_search_settings_fail_in_one_line(args, message, tmp_path):
    res = runner.invoke(app, ["run", "--storage", f"sqlite:///{tmp_path}/x.db", *args])
    assert res.exit_code == 2 and message in res.output
    assert len(res.output.strip().splitlines()) <= 2 and not (tmp_path / "x.db").exists()


@pytest.mark.integration
@pytest.mark.slow
def test_pareto_run_reports_a_front_and_finetune_delivers_any_point(small_fmnist, tmp_path):
    url = f"sqlite:///{tmp_path}/p.db"
    common = ["--data-dir", str(small_fmnist), "--storage", url]
    res = runner.invoke(
        app,
        ["run", "--objective", "pareto", "--sampler", "nsga2", "--flops", "0.3:0.8", "--output", str(tmp_path / "p")]
        + without(SMALL_RUN, "--n-trials", "--flops-tolerance")
        + ["--n-trials", "8", *common],
    )
    assert res.exit_code == 0, res.output
    assert "Pareto front" in res.output and "uniform" in res.output
    rows = (tmp_path / "p" / "pareto.csv").read_text().splitlines()
    assert rows[0].startswith("trial,flops,flops_ratio,abn_accuracy") and len(rows) >= 2
    header = rows[0].split(",")
    on_front = [r.split(",")[0] for r in rows[1:] if r.split(",")[header.index("strategy")] == "uniform"]
    text = " ".join(res.output.split())
    if on_front:  # the summary names the baseline trials on the front, as the CSV marks them
        trials = f"trial{'s' * (len(on_front) > 1)} {', '.join(on_front)}"
        assert f"baselines on the front: uniform ({trials}); every other baseline trial is dominated" in text
    else:
        assert "baselines on the front: none; every baseline trial is dominated" in text
    assert (tmp_path / "p" / "pareto.png").stat().st_size > 10_000
    point = int(rows[-1].split(",")[0])
    out = tmp_path / "point"
    res = runner.invoke(
        app, ["finetune", "--storage", url, "--trial", str(point), "--epochs", "1", "--output", str(out)]
    )
    assert res.exit_code == 0, res.output
    card = json.loads((out / "pruned.json").read_text())
    assert card["study"]["trial"] == point and card["metrics"]["pruned"]["flops"] < card["metrics"]["base"]["flops"]
    res = runner.invoke(app, ["finetune", "--storage", url, "--trial", "9999"])
    assert res.exit_code == 2 and "trial 9999 of study" in res.output and "does not exist" in res.output


def test_finetune_refuses_distillation_without_epochs_and_touches_nothing(searched, tmp_path):
    shutil.copy(searched, tmp_path / "study.db")  # as `_run([..., "--epochs", "0"], tmp_path)` leaves it
    db = tmp_path / "study.db"
    before = db.read_bytes()
    out = tmp_path / "ft"
    res = runner.invoke(
        app,
        [
            "finetune",
            "--storage",
            f"sqlite:///{db}",
            "--trial",
            "0",
            "--distill",
            "--epochs",
            "0",
            "--output",
            str(out),
        ],
    )
    assert res.exit_code == 2 and "--distill distils during the fine-tune, but --epochs is 0" in res.output
    assert len(res.output.strip().splitlines()) == 1 and db.read_bytes() == before and not out.exists()


@pytest.mark.integration
@pytest.mark.slow
def test_the_second_shipped_base_runs_the_whole_pipeline_without_a_checkpoint_flag(small_fmnist, tmp_path):
    res = _run(["--data-dir", str(small_fmnist), "--model", "mobilenet_v1_cifar", "--flops", "0.5"], tmp_path)
    assert res.exit_code == 0, res.output
    card = json.loads((tmp_path / "out" / "pruned.json").read_text())
    assert card["model"] == "mobilenet_v1_cifar" and card["config"]["checkpoint"] is None
    assert len(card["ratios"]) == 14  # the stem and the 13 pointwise convs; each depthwise conv follows its input
    assert card["metrics"]["pruned"]["flops"] < 0.56 * card["metrics"]["base"]["flops"]
    assert card["metrics"]["base"]["test_accuracy"] > 0.8  # the shipped weights, not random ones


# --------------------------------------------------------------------------- replayed failures of user models


def _user_run(name, small_fmnist, tmp_path, *extra):
    """`fnnp-opt run --model usermodels:<name>` (tests/usermodels.py) with random weights."""
    from conftest import random_checkpoint

    ckpt = random_checkpoint(tmp_path / f"{name}.safetensors", f"usermodels:{name}", 1, 10)
    args = ["--model", f"usermodels:{name}", "--checkpoint", str(ckpt), "--data-dir", str(small_fmnist)]
    return _run([*args, "--no-check-base", "--flops-tolerance", "0.2", *extra], tmp_path)


def _one_error_line(res, code, message, tmp_path):
    assert res.exit_code == code, res.output
    lines = message_lines(res.output)
    assert len(lines) == 1 and lines[0].startswith("error:"), res.output
    assert message in " ".join(res.output.split())
    assert not (tmp_path / "study.db").exists() and not (tmp_path / "out").exists()


@pytest.mark.integration
def test_a_model_without_normalisation_runs_with_a_warning_and_plain_accuracy(small_fmnist, tmp_path):
    res = _user_run("no_norm", small_fmnist, tmp_path, "--epochs", "0", "--pbn")
    assert res.exit_code == 0, res.output
    printed = " ".join(res.output.split())
    assert "no normalisation layer that keeps running statistics: ABN recomputes nothing" in printed
    assert "plain accuracy (no BN statistics: ABN = PBN)" in printed
    study = optuna.load_study(study_name=None, storage=f"sqlite:///{tmp_path}/study.db")
    done = [t for t in study.trials if "abn_accuracy" in t.user_attrs]
    assert len(done) == 2 and all(t.user_attrs["abn_accuracy"] == t.user_attrs["pbn_accuracy"] for t in done)


@pytest.mark.integration
def test_batchnorm_without_running_stats_is_left_alone_and_the_study_runs(small_fmnist, tmp_path):
    res = _user_run("untracked_bn", small_fmnist, tmp_path, "--epochs", "0")
    assert res.exit_code == 0, res.output
    assert "2 candidates evaluated" in " ".join(res.output.split())
    study = optuna.load_study(study_name=None, storage=f"sqlite:///{tmp_path}/study.db")
    assert not [t for t in study.trials if t.state.name == "FAIL"]


def test_a_batch_of_one_that_batchnorm_cannot_normalise_is_refused_first(small_fmnist, tmp_path):
    res = _user_run("bn1d_head", small_fmnist, tmp_path, "--abn-batch-size", "1")
    _one_error_line(
        res, 2, "--abn-batch-size 1: a normalisation layer of usermodels:bn1d_head sees one value", tmp_path
    )


@pytest.mark.parametrize(
    "name, message",
    [
        ("tuple_out", "returns a tuple, but fnnp-opt needs its forward to return one logits tensor (1, 10)"),
        ("needs_width", "needs_width() requires 'width', which fnnp-opt cannot give"),
    ],
)
def test_user_models_fnnp_opt_cannot_call_are_refused_in_one_line(name, message, tmp_path):
    res = runner.invoke(app, ["space", "--model", f"usermodels:{name}", "--flops", "0.5"])
    assert res.exit_code == 2, res.output
    assert message in " ".join(res.output.split()) and "Traceback" not in res.output


def test_a_base_at_chance_is_refused_before_the_study(small_fmnist, shipped_checkpoint, tmp_path):
    """The shipped weights with the classifier rows rolled by one, as after a label-order mismatch."""
    from safetensors.torch import load_file

    state = load_file(str(shipped_checkpoint))
    state["fc.weight"], state["fc.bias"] = state["fc.weight"].roll(1, 0), state["fc.bias"].roll(1, 0)
    save_file(state, str(tmp_path / "rolled.safetensors"))
    res = _run(["--data-dir", str(small_fmnist), "--checkpoint", str(tmp_path / "rolled.safetensors")], tmp_path)
    _one_error_line(res, 2, "search split, at or below chance", tmp_path)


def test_trials_record_their_score_relative_to_the_base(searched, tmp_path):
    shutil.copy(searched, tmp_path / "study.db")  # as `_run([..., "--epochs", "0"], tmp_path)` leaves it
    study = optuna.load_study(study_name=None, storage=f"sqlite:///{tmp_path}/study.db")
    base = study.user_attrs["base_accuracy"]
    assert 0.8 < base <= 1
    for t in study.trials:
        if t.state.name == "COMPLETE":
            assert t.user_attrs["vs_base"] == pytest.approx(t.value - base, abs=1e-6)


def test_a_bad_budget_is_refused_before_any_data_is_read(tmp_path):
    res = _run(["--flops", "0.05", "--max-rate", "0.3", "--data-dir", str(tmp_path / "no-data-here")], tmp_path)
    _one_error_line(res, 2, "cannot be reached with ratios in [0, 0.3]", tmp_path)


def test_a_resume_with_another_setting_names_the_flag_and_both_values(searched, small_fmnist, tmp_path):
    shutil.copy(searched, tmp_path / "study.db")  # as `_run([..., "--epochs", "0"], tmp_path)` leaves it
    before = (tmp_path / "study.db").read_bytes()
    res = _run(["--data-dir", str(small_fmnist), "--epochs", "0", "--max-rate", "0.7"], tmp_path)
    assert res.exit_code == 1 and "--max-rate: stored 0.6, now 0.7" in " ".join(res.output.split()), res.output
    assert (tmp_path / "study.db").read_bytes() == before


@pytest.mark.integration
def test_a_study_made_under_older_defaults_resumes_with_its_stored_calibration_and_scoring(small_fmnist, tmp_path):
    storage = f"sqlite:///{tmp_path}/study.db"
    args = without(SMALL_RUN, "--abn-batches") + [
        "--epochs",
        "0",
        "--data-dir",
        str(small_fmnist),
    ]
    common = ["run", *args, "--storage", storage, "--output", str(tmp_path / "out")]
    # an older release's study: 20 calibration batches (its default then), and no early_stop setting at all
    assert runner.invoke(app, [*common, "--abn-batches", "20", "--no-early-stop"]).exit_code == 0
    study = optuna.load_study(study_name=None, storage=storage)
    config = dict(study.user_attrs["config"])
    del config["early_stop"]
    study.set_user_attr("config", config)

    res = runner.invoke(app, [*common, "--n-trials", "4"])  # no --abn-batches: the stored 20 wins over 10
    assert res.exit_code == 0, res.output
    study = optuna.load_study(study_name=None, storage=storage)
    done = [t for t in study.trials if t.state.name == "COMPLETE" and "abn_accuracy" in t.user_attrs]
    assert len(done) == 4 and study.user_attrs["config"]["abn_batches"] == 20
    assert all(not t.intermediate_values for t in done)  # resumed as it was made: scored without early stopping

    from fnnp_opt.config import resolve
    from fnnp_opt.pipeline import settle

    fresh = settle(resolve(storage=storage, study_name="fresh"))  # a new study in the same storage: the defaults
    assert fresh.abn_batches == 10 and fresh.early_stop is True


@pytest.mark.integration
def test_a_new_seed_resumes_the_study_with_its_calibration_images_and_draws_afresh(searched, small_fmnist, tmp_path):
    shutil.copy(searched, tmp_path / "study.db")  # made with --seed 0
    res = _run(["--data-dir", str(small_fmnist), "--epochs", "0", "--seed", "5", "--n-trials", "3"], tmp_path)
    assert res.exit_code == 0, res.output
    study = optuna.load_study(study_name=None, storage=f"sqlite:///{tmp_path}/study.db")
    assert sum(t.state.name == "COMPLETE" for t in study.trials) == 3
    assert study.user_attrs["config"]["calibration_seed"] == 0  # the data the study was made with


@pytest.mark.integration
def test_a_study_made_before_calibration_seed_resumes_with_the_images_its_seed_drew(small_fmnist, tmp_path):
    storage = f"sqlite:///{tmp_path}/study.db"
    common = ["run", *SMALL_RUN, "--epochs", "0", "--data-dir", str(small_fmnist), "--storage", storage]
    common += ["--output", str(tmp_path / "out"), "--seed", "3"]
    assert runner.invoke(app, [*common, "--calibration-seed", "3"]).exit_code == 0
    study = optuna.load_study(study_name=None, storage=storage)
    config = dict(study.user_attrs["config"])
    del config["calibration_seed"]  # as an older release stored it: its calibration was drawn with --seed
    study.set_user_attr("config", config)
    res = runner.invoke(app, [*common, "--n-trials", "3"])
    assert res.exit_code == 0, res.output
    assert sum(t.state.name == "COMPLETE" for t in optuna.load_study(study_name=None, storage=storage).trials) == 3


@pytest.mark.integration
def test_a_module_under_two_names_exports_and_reloads_bit_identically(small_fmnist, tmp_path):
    res = _user_run("shared_conv", small_fmnist, tmp_path, "--epochs", "1")
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "out" / "pruned.json").read_text())
    model = fnnp_opt.load_pruned(tmp_path / "out")
    assert model.shared is model.block.conv and model.shared.out_channels == doc["layers"]["block.conv"]["out"] < 32
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "out" / "pruned.safetensors"))
    assert sum(k.startswith(("shared.", "block.conv.")) for k in saved) == 2  # the conv's weight and bias, once
    for k, v in model.state_dict().items():
        assert torch.equal(v, saved[k] if k in saved else saved[k.replace("shared.", "block.conv.")])
    printed = doc["metrics"]["pruned"]["test_accuracy"]
    again = runner.invoke(app, ["evaluate", str(tmp_path / "out"), "--data-dir", str(small_fmnist)])
    assert again.exit_code == 0 and f"test accuracy {printed:.2%} (reported at export: {printed:.2%})" in again.output


@pytest.mark.integration
def test_groupnorm_channels_are_cut_in_multiples_of_its_groups(small_fmnist, tmp_path):
    res = _user_run("group_norm", small_fmnist, tmp_path, "--epochs", "0", "--flops", "0.4", "--max-rate", "0.8")
    assert res.exit_code == 0, res.output
    study = optuna.load_study(study_name=None, storage=f"sqlite:///{tmp_path}/study.db")
    kept = [t.user_attrs["channels"] for t in study.trials if "channels" in t.user_attrs]
    assert kept and all(c % 8 == 0 for plan in kept for c in plan.values())
    assert any(c < 32 for plan in kept for c in plan.values())  # pruned, in whole multiples of 8


def test_a_layer_that_cannot_be_pruned_gets_an_exclude_hint_that_works(small_fmnist, tmp_path):
    res = runner.invoke(app, ["space", "--model", "usermodels:fixed_width", "--flops", "0.7"])
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    printed = " ".join(res.output.split())
    assert "fails in module 'fc'" in printed or "fails in the forward()" in printed
    hint = printed.split("--exclude '")[1].split("'")[0]
    res = runner.invoke(app, ["space", "--model", "usermodels:fixed_width", "--flops", "0.7", "--exclude", hint])
    assert res.exit_code == 0, res.output
    assert "ratio.stem" in res.output and f"ratio.{hint}" not in res.output


def test_an_error_raised_while_handling_ctrl_c_still_exits_130():
    import typer

    from fnnp_opt.cli import call

    def interrupted_mid_write():
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise RuntimeError("this session's transaction has been rolled back")  # as sqlalchemy may

    with pytest.raises(typer.Exit) as stop:
        call(interrupted_mid_write)
    assert stop.value.exit_code == 130
    with pytest.raises(RuntimeError):  # an error of its own is not an interruption
        call(lambda: (_ for _ in ()).throw(RuntimeError("a bug")))


@pytest.mark.parametrize("command, said", [("dashboard", "stopped"), ("report", "stopped"), ("run", "resume")])
def test_ctrl_c_offers_a_resume_only_where_the_command_resumes(monkeypatch, tmp_path, command, said):
    import fnnp_opt.dashboard as D
    import fnnp_opt.pipeline as P
    import fnnp_opt.report as R

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(D, "serve_dashboard", ctrl_c)
    monkeypatch.setattr(R, "report_study", ctrl_c)
    monkeypatch.setattr(P, "run", ctrl_c)
    res = runner.invoke(app, [command, "--storage", f"sqlite:///{tmp_path}/s.db"])
    assert res.exit_code == 130 and res.output.strip().splitlines() == [
        "interrupted; run the same command again to resume" if said == "resume" else "stopped"
    ], res.output


@pytest.mark.system
@pytest.mark.slow
@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_run_through_a_pipe_logs_every_trial_and_epoch(small_fmnist, tmp_path, workers):
    """Off a terminal (a log file, CI) there are no bars: each evaluated trial, each epoch and the search's k/n
    are plain lines, from the search workers too (whose run skips the fine-tune: its lines come from one process)."""
    args = without(SMALL_RUN, "--workers", "--n-trials", "--epochs")
    epochs = "2" if workers == "1" else "0"
    cmd = [sys.executable, str(Path(__file__).parents[1] / "cli.py"), "run", *args, "--workers", workers]
    cmd += ["--n-trials", "3", "--epochs", epochs, "--data-dir", str(small_fmnist)]
    cmd += ["--storage", f"sqlite:///{tmp_path}/study.db", "--output", str(tmp_path / "out")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "COLUMNS": "80"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stderr
    trials = re.findall(r"INFO trial (\d+): ABN (0\.\d{4}).*FLOPs", log)
    study = optuna.load_study(study_name="resnet20-fashion-mnist-flops0.5", storage=f"sqlite:///{tmp_path}/study.db")
    evaluated = {t.number: t.user_attrs["abn_accuracy"] for t in study.trials if t.user_attrs.get("abn_accuracy")}
    assert {int(n): float(a) for n, a in trials} == {n: round(a, 4) for n, a in evaluated.items()}
    assert len(evaluated) == 3
    if epochs == "2":
        assert re.search(r"INFO epoch 1/2: loss \d", log) and re.search(r"INFO epoch 2/2: loss \d", log)
    assert "\x1b[" not in log and "━" not in log  # no escape codes, no bars
    assert "Warning" not in log, log  # no Python warning (Optuna's experimental APIs) reaches a user's log


def test_help_shows_every_default_and_bracketed_text():
    res = runner.invoke(app, ["run", "--help"], env={"COLUMNS": "200"}, terminal_width=200)
    text = " ".join(res.output.replace("│", " ").split())
    assert res.exit_code == 0
    assert "resumes. [default: 30]" in text  # written in the help (Rich markup would drop it)
    assert "[default: 0.6]" in text and "[default: 0.02]" in text  # --max-rate, --flops-tolerance
    assert "[default: random]" in text or "paper's choice (default)" in text  # --sampler
    assert "rejected; the trial keeps both the suggested and the applied ratios. [default: off]" in text  # RunConfig's
    assert "pip install 'fnnp-opt[onnx]'" in text


@pytest.mark.integration
def test_finetune_without_output_leaves_the_runs_delivery_alone(searched, tmp_path, monkeypatch):
    shutil.copy(searched, tmp_path / "study.db")
    delivered = {f.name: f.read_bytes() for f in (searched.parent / "out").iterdir() if f.is_file()}
    monkeypatch.chdir(tmp_path)  # the default folder, runs/<study>/trial-<N>, is relative
    args = ["finetune", "--storage", f"sqlite:///{tmp_path}/study.db", "--trial", "0", "--epochs", "0"]
    res = runner.invoke(app, [*args, "--artifact-dir", str(tmp_path / "artifacts")])
    assert res.exit_code == 0, res.output
    card = json.loads((tmp_path / "runs" / "resnet20-fashion-mnist-flops0.5" / "trial-0" / "pruned.json").read_text())
    assert card["study"]["trial"] == 0
    assert {f.name: f.read_bytes() for f in (searched.parent / "out").iterdir() if f.is_file()} == delivered
