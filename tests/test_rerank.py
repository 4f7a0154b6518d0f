from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import optuna
import pytest

import fnnp_opt.rerank as R
import fnnp_opt.storage as St
from fnnp_opt.config import resolve
from fnnp_opt.pipeline import make_scorer, prepare, run, trial_ratios

from conftest import SMALL_RUN, without

SMALL = dict(search_size=300, abn_batches=4, abn_batch_size=32, flops_tolerance=0.05, device="cpu", epochs=0, workers=1, rerank=0)


def _fresh(url: str, name: str) -> optuna.Study:
    """The study as another process sees it (no cache of finished trials)."""
    return optuna.load_study(study_name=name, storage=url)


@pytest.fixture(scope="module")
def reranked(small_fmnist, tmp_path_factory):
    folder = tmp_path_factory.mktemp("rerank")
    cfg = resolve(
        data_dir=str(small_fmnist),
        storage=f"sqlite:///{folder}/s.db",
        output=str(folder / "out"),
        n_trials=5,
        score_steps=4,
        **{**SMALL, "rerank": 2},
    )
    return cfg, run(cfg)


def test_rerank_rescores_exactly_the_top_k_and_delivers_the_best(reranked):
    cfg, result = reranked
    study = _fresh(cfg.resolved_storage(), result.study_name)
    done = sorted((t for t in study.trials if St.is_evaluated(t)), key=lambda t: (-t.value, t.number))
    assert len(done) == 5
    # the top K by ABN, and every baseline trial (uniform L1, the global ranking) outside them
    top = [t.number for t in done[:2]] + [t.number for t in done[2:] if t.user_attrs.get("strategy")]
    assert {t.user_attrs.get("strategy") for t in done} >= {"uniform", "global"}
    assert sorted(result.rerank.scores) == sorted(top) and result.rerank.rescored == len(top) > 2
    ledger = study.user_attrs["rerank:abn_ft4"]
    assert {int(k): v for k, v in ledger["scores"].items()} == result.rerank.scores and not ledger["claims"]
    marked = {t.number: t.user_attrs["abn_ft4"] for t in study.trials if "abn_ft4" in t.user_attrs}
    assert marked == result.rerank.scores  # stored on exactly the re-scored trials, as the dashboard shows them
    assert result.best_trial == max(top, key=lambda n: (result.rerank.scores[n], -n)) == result.rerank.winner


def test_the_report_compares_the_baselines_by_the_rerank_score(reranked):
    cfg, result = reranked
    study = _fresh(cfg.resolved_storage(), result.study_name)
    assert study.user_attrs["result"]["rerank"] == "abn_ft4"
    text = (Path(cfg.output) / "report.md").read_text()
    scores = result.rerank.scores
    assert f"(delivered: the best abn-ft in the rerank, {scores[result.best_trial]:.4f})" in text
    for b in result.baselines:  # the same margins as the run's summary line, by the score that chose the winner
        line = next(x for x in text.splitlines() if f"trial {b['trial']}, abn-ft " in x)
        assert f"abn-ft {scores[b['trial']]:.4f} in the rerank" in line
        assert f"({scores[result.best_trial] - scores[b['trial']]:+.4f} for the winner)" in line


def test_a_second_rerank_redoes_nothing(reranked):
    cfg, result = reranked
    again = run(cfg)
    assert again.rerank.rescored == 0 and again.rerank.scores == result.rerank.scores


@pytest.mark.system
def test_a_dead_workers_claim_is_taken_over_and_finished_scores_are_kept(reranked, small_fmnist):
    cfg, result = reranked
    cfg = replace(cfg, rerank=3)
    p = prepare(cfg)
    study = optuna.load_study(study_name=result.study_name, storage=St.open_storage(cfg.resolved_storage()))
    scorer = make_scorer(p)
    name = R.ledger_name(scorer)
    # the next trial by ABN outside the first rerank's (its baselines are in it already)
    k, third = next(
        (k, t.number) for k in range(3, 6) for t in R.top_k(study, k) if t.number not in result.rerank.scores
    )
    ledger = study.user_attrs[name]
    ledger["claims"][str(third)] = f"{St.worker_id().rsplit(':', 1)[0]}:{_dead_pid()}"
    study.set_user_attr(name, ledger)
    report = R.rerank(study, p.pruner, p.splits.calibration, scorer, k, lambda t: trial_ratios(p.space, t), poll_s=0.05)
    assert report.rescored == 1 and set(report.scores) == set(result.rerank.scores) | {third}
    assert all(report.scores[n] == v for n, v in result.rerank.scores.items())  # not redone


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _ledger_scores(db: Path, key: str) -> int:
    import sqlite3

    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            row = conn.execute("SELECT value_json FROM study_user_attributes WHERE key = ?", (key,)).fetchone()
    except sqlite3.Error:
        return 0
    return len(json.loads(row[0])["scores"]) if row else 0


@pytest.mark.system
@pytest.mark.slow
def test_kill_9_in_the_rerank_and_in_the_distilled_fine_tune_then_resume(small_fmnist, tmp_path):
    """`run --rerank 3 --distill` killed with SIGKILL while re-scoring, and again while fine-tuning, then finished."""
    url = f"sqlite:///{tmp_path}/study.db"
    out = tmp_path / "out"
    small = without(SMALL_RUN, "--n-trials", "--epochs")
    cmd = [sys.executable, str(Path(__file__).parents[1] / "cli.py"), "run", *small]
    cmd += ["--n-trials", "4", "--rerank", "3", "--score-steps", "20", "--distill", "--epochs", "2"]
    cmd += ["--storage", url, "--output", str(out), "--data-dir", str(small_fmnist)]

    def start_and_kill(ready, what):
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None and not ready():
            time.sleep(0.1)
        assert proc.poll() is None, f"the run ended before it could be killed {what}"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()

    start_and_kill(lambda: _ledger_scores(tmp_path / "study.db", "rerank:abn_ft20") >= 1, "in the rerank")
    first = _fresh(url, "resnet20-fashion-mnist-flops0.5").user_attrs["rerank:abn_ft20"]["scores"]
    pool = len(R.top_k(_fresh(url, "resnet20-fashion-mnist-flops0.5"), 3))  # the top 3 and the baselines
    assert 1 <= len(first) < pool
    start_and_kill(lambda: (out / "finetune.pt").exists(), "in the fine-tune")  # after its first epoch
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())
    assert "re-scored with abn_ft20 (0 this session" in text  # the second run finished the rerank
    study = _fresh(url, "resnet20-fashion-mnist-flops0.5")
    scores = study.user_attrs["rerank:abn_ft20"]["scores"]
    assert len(scores) == pool and all(scores[k] == v for k, v in first.items())
    card = json.loads((out / "pruned.json").read_text())
    assert card["config"]["distill"] is True and scores[str(card["study"]["trial"])] == max(scores.values())
    assert card["study"]["rerank"] == {"abn_ft20": max(scores.values())}
    assert "fine-tune: 2 epochs" in text
