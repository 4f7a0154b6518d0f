"""`fnnp-opt correlate` end to end on a tiny setting; resuming; the CSVs against the study."""

from __future__ import annotations

import csv

import numpy as np
import optuna
import torch
from scipy import stats
from typer.testing import CliRunner

from fnnp_opt.cli import app
from fnnp_opt.correlate import abn_sweep, draw_candidates
from fnnp_opt.data import load_splits
from fnnp_opt.evaluate import calibrate_bn

runner = CliRunner()


def _args(small_fmnist, tmp_path, candidates: int | str):
    return [
        "correlate", "--data-dir", str(small_fmnist), "--flops", "0.5,0.3", "--candidates", str(candidates),
        "--sweep", "1,3", "--ft-epochs", "1", "--batch-size", "512", "--noise-candidates", "1", "--noise-seeds", "1",
        "--abn-batch-size", "32", "--search-size", "300", "--flops-tolerance", "0.05", "--device", "cpu",
        "--storage", f"sqlite:///{tmp_path}/c.db", "--output", str(tmp_path / "out"),
    ]  # fmt: skip


def test_correlate_runs_resumes_and_writes_what_it_computed(small_fmnist, tmp_path):
    res = runner.invoke(app, _args(small_fmnist, tmp_path, 3))
    assert res.exit_code == 0, res.output
    first = list(csv.DictReader(open(tmp_path / "out" / "candidates.csv")))
    assert "abn_ft2" not in first[0]
    # one more candidate at 0.5, and the abn-ft column for all: resumed, stored candidates scored, not fine-tuned again
    res = runner.invoke(app, _args(small_fmnist, tmp_path, "4,3") + ["--score-steps", "2"])
    assert res.exit_code == 0, res.output
    printed = " ".join(res.output.split())
    assert "Spearman" in printed and "candidates.csv" in printed and "ABN-FT2" in printed
    for name in ("candidates.csv", "coefficients.csv", "sweep.csv", "scatter.png", "budgets.png", "iterations.png"):
        assert (tmp_path / "out" / name).stat().st_size > 0

    rows = list(csv.DictReader(open(tmp_path / "out" / "candidates.csv")))
    assert [r["budget"] for r in rows] == ["0.5"] * 4 + ["0.3"] * 3
    assert {"pbn", "abn_1", "abn_3", "abn_ema", "abn_ft2", "truth", "truth_seed1"} <= set(rows[0])
    again = {(r["budget"], r["candidate"]): r for r in rows}
    for r in first:  # the ground truth of stored candidates is kept, their new score filled in
        assert (
            again[r["budget"], r["candidate"]]["truth"] == r["truth"] and again[r["budget"], r["candidate"]]["abn_ft2"]
        )
    assert rows[0]["truth_seed1"] and not rows[1]["truth_seed1"]  # only the first candidate is repeated
    url = f"sqlite:///{tmp_path}/c.db"
    for budget, n, low, high in (("0.5", 4, 0.45, 0.55), ("0.3", 3, 0.25, 0.35)):
        study = optuna.load_study(study_name=f"correlate-resnet20-fashion-mnist-flops{budget}", storage=url)
        assert len(study.trials) == n  # 3 from the first run, 1 more at 0.5 from the second
        assert study.user_attrs["config"]["max_rate"] == 0.8  # correlate's R when neither flag nor recipe sets one
        mine = [r for r in rows if r["budget"] == budget]
        for r, t in zip(mine, sorted(study.trials, key=lambda t: t.user_attrs["candidate"])):
            assert float(r["abn_3"]) == t.user_attrs["abn_3"] == t.value
            assert float(r["abn_ft2"]) == t.user_attrs["abn_ft2"]  # in the storage too, for the dashboard
            assert low <= float(r["flops_ratio"]) <= high
        coefs = {
            (c["score"], c["metric"]): c
            for c in csv.DictReader(open(tmp_path / "out" / "coefficients.csv"))
            if c["budget"] == budget
        }
        x, y = [float(r["abn_3"]) for r in mine], [float(r["truth"]) for r in mine]
        want = stats.spearmanr(x, y)[0]
        got = coefs[("abn_3", "spearman")]["value"]
        assert (got == "" and np.isnan(want)) or abs(float(got) - want) < 1e-4
        assert coefs[("pbn", "kendall")]["within_noise"] in ("True", "False")
        want_ft = stats.spearmanr([float(r["abn_ft2"]) for r in mine], y)[0]
        got_ft = coefs[("abn_ft2", "spearman")]["value"]
        assert (got_ft == "" and np.isnan(want_ft)) or abs(float(got_ft) - want_ft) < 1e-4
        want_flops = stats.kendalltau([float(r["flops"]) for r in mine], y)[0]
        got_flops = coefs[("flops", "kendall")]["value"]  # the candidates' own size, a free baseline
        assert (got_flops == "" and np.isnan(want_flops)) or abs(float(got_flops) - want_flops) < 1e-4
        sweep = {r["batches"]: r for r in csv.DictReader(open(tmp_path / "out" / "sweep.csv")) if r["budget"] == budget}
        assert set(sweep) == {"1", "3"} and sweep["3"]["spearman_truth"] == got
        want_agree = stats.spearmanr([float(r["abn_1"]) for r in mine], x)[0]
        assert (sweep["1"]["spearman_full_calibration"] == "" and np.isnan(want_agree)) or abs(
            float(sweep["1"]["spearman_full_calibration"]) - want_agree
        ) < 1e-4

    args = _args(small_fmnist, tmp_path, "4,3")  # another sweep: named by the option correlate has
    res = runner.invoke(app, args[: args.index("--sweep") + 1] + ["1,2"] + args[args.index("--sweep") + 2 :])
    printed = " ".join(res.output.split())
    assert res.exit_code == 1 and "--sweep's largest count (ABN batches): stored 3, now 2" in printed, printed
    assert "--abn-batches" not in printed and "pass a new --storage" in printed


def test_candidate_counts_must_match_the_budgets(small_fmnist, tmp_path):
    res = runner.invoke(app, _args(small_fmnist, tmp_path, "3,3,3"))
    assert res.exit_code != 0
    assert "one per budget" in " ".join(res.output.split()) and not (tmp_path / "out").exists()
    res = runner.invoke(app, [a if a != "0.5,0.3" else "0.5,,0.3" for a in _args(small_fmnist, tmp_path, 3)])
    assert res.exit_code == 2 and "--flops '0.5,,0.3' has an empty value between its commas" in res.output
    res = runner.invoke(app, [a if a != "0.5,0.3" else "0.5,0.5" for a in _args(small_fmnist, tmp_path, 3)])
    assert res.exit_code == 2 and "names a budget twice" in res.output
    res = runner.invoke(app, [a if a != "0.5,0.3" else "0.5,abc" for a in _args(small_fmnist, tmp_path, 3)])
    assert res.exit_code == 2 and "got 'abc'" in res.output  # before the first budget's candidates
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob("*.db"))


def test_an_output_folder_that_cannot_be_written_is_refused_before_measuring(small_fmnist, tmp_path):
    """Checked before the first candidate (root writes anywhere, so the unwritable place here is under a file)."""
    (tmp_path / "a-file").write_text("")
    args = [
        a if a != str(tmp_path / "out") else str(tmp_path / "a-file" / "out") for a in _args(small_fmnist, tmp_path, 3)
    ]
    res = runner.invoke(app, args)
    assert res.exit_code == 1 and "lies under" in res.output and "which is a file" in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]  # no study either


def test_draws_are_in_the_window_distinct_and_seeded(small_fmnist):
    from fnnp_opt.config import resolve
    from fnnp_opt.pipeline import prepare

    p = prepare(
        resolve(data_dir=small_fmnist, flops="0.3", flops_tolerance=0.05, search_size=300, abn_batches=4, device="cpu")
    )
    a, b = draw_candidates(p, 6, seed=1), draw_candidates(p, 6, seed=1)
    assert a == b and draw_candidates(p, 6, seed=2) != a
    plans = {tuple(sorted(p.pruner.counts(r).items())) for r in a}
    assert len(plans) == 6
    assert all(p.budget.contains(p.flops.macs(p.pruner.counts(r))) for r in a)


def test_the_sweep_accumulates_exactly_as_one_calibration_would(small_fmnist, base_model):
    s = load_splits("fashion-mnist", small_fmnist, search_size=300, abn_batches=4, abn_batch_size=32)
    calibration, search = list(s.calibration), s.search.batches(300)
    import copy

    a, b = copy.deepcopy(base_model), copy.deepcopy(base_model)
    scores = abn_sweep(a, calibration, search, (2, 4), "cpu")
    calibrate_bn(b, calibration, "cpu")  # all four batches at once, cumulative average
    for ma, mb in zip(a.modules(), b.modules()):
        if isinstance(ma, torch.nn.BatchNorm2d):
            assert torch.allclose(ma.running_mean, mb.running_mean, atol=1e-6)
            assert torch.allclose(ma.running_var, mb.running_var, atol=1e-5)
    assert set(scores) == {2, 4}
