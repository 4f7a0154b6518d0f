"""benchmarks/quality.py's choices: each method picks what its `fnnp-opt run` counterpart would pick."""

from __future__ import annotations

import importlib.util
from argparse import Namespace
from pathlib import Path

import pytest

SPEC = importlib.util.spec_from_file_location("quality", Path(__file__).parents[1] / "benchmarks" / "quality.py")
Q = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(Q)
U = Q.UNIFORM


def _scores(abn: list[float], ft: list[float], uniform: tuple[float, float]) -> dict[int, dict]:
    rows = {i: {"abn": a, "abn_s": 1.0, "pbn": a / 2, "pbn_s": 0.5, "abn_ft100": f, "abn_ft100_s": 4.0}
            for i, (a, f) in enumerate(zip(abn, ft))}  # fmt: skip
    rows[U] = {"abn": uniform[0], "abn_s": 1.0, "pbn": 0.0, "pbn_s": 0.5, "abn_ft100": uniform[1], "abn_ft100_s": 4.0}
    return rows


ARGS = Namespace(score_steps=100, rerank=2)
ABN = [0.30, 0.50, 0.40, 0.20]
FT = [0.90, 0.70, 0.80, 0.95]


def test_the_papers_methods_never_see_uniform_and_the_run_methods_do():
    scores = _scores(ABN, FT, uniform=(0.60, 0.99))  # uniform L1 leads both scores
    old = ["eagleeye", "eagleeye_run", "rerank", "rerank_run", "abn_ft", "abn_ft_run", "rerank_u", "pbn_winner"]
    picks = Q._picks(ARGS, 0, scores, 4, old)
    chosen = {m: i for m, (i, _) in picks.items()}
    assert chosen["eagleeye"] == 1 and chosen["abn_ft"] == 3 and chosen["rerank"] == 2  # top 2 by ABN: 1, 2
    assert chosen["eagleeye_run"] == chosen["abn_ft_run"] == chosen["rerank_run"] == chosen["rerank_u"] == U
    assert chosen["pbn_winner"] == 1
    costs = {m: c for m, (_, c) in picks.items()}
    assert costs["eagleeye"] == {"search_s": 4.0, "abn_evals": 4, "ft_evals": 0}
    assert costs["eagleeye_run"] == {"search_s": 5.0, "abn_evals": 5, "ft_evals": 0}
    assert costs["abn_ft_run"] == {"search_s": 20.0, "abn_evals": 5, "ft_evals": 5}
    assert costs["rerank_run"] == {"search_s": 5.0 + 8.0, "abn_evals": 5, "ft_evals": 2}  # uniform and trial 1
    assert costs["rerank_u"] == {"search_s": 4.0 + 12.0, "abn_evals": 4, "ft_evals": 3}


@pytest.mark.parametrize("method", ["eagleeye_run", "abn_ft_run", "rerank_u"])
def test_uniform_wins_a_tie_as_trial_0_and_loses_otherwise(method):
    tie = _scores(ABN, FT, uniform=(0.50, 0.95))
    assert Q._picks(ARGS, 0, tie, 4, [method])[method][0] == U
    behind = _scores(ABN, FT, uniform=(0.10, 0.10))
    assert Q._picks(ARGS, 0, behind, 4, [method])[method][0] != U


def test_the_abn_ft_scores_asked_for_are_exactly_those_the_methods_read():
    scores = _scores(ABN, FT, uniform=(0.45, 0.5))  # uniform L1 second by ABN
    assert Q._need_ft(ARGS, scores, 4, ["eagleeye", "pbn_winner"]) == set()
    assert Q._need_ft(ARGS, scores, 4, ["rerank"]) == {1, 2}
    assert Q._need_ft(ARGS, scores, 4, ["rerank_run"]) == {1, U}
    assert Q._need_ft(ARGS, scores, 4, ["rerank_u"]) == {1, 2, U}
    assert Q._need_ft(ARGS, scores, 4, ["abn_ft_run", "rerank"]) == {0, 1, 2, 3, U}


def _with_baselines(glob: tuple[float, float], sens: tuple[float, float]) -> dict[int, dict]:
    scores = _scores(ABN, FT, uniform=(0.45, 0.5))
    for index, (abn, ft) in ((Q.GLOBAL, glob), (Q.SENSITIVITY, sens)):
        scores[index] = {"abn": abn, "abn_s": 1.0, "pbn": 0.0, "pbn_s": 0.5, "abn_ft100": ft, "abn_ft100_s": 4.0}
    return scores


def test_the_default_reranks_the_top_k_and_every_baseline_and_counts_the_baselines_cost():
    scores = _with_baselines(glob=(0.35, 0.97), sens=(0.10, 0.20))  # global: third by ABN, best by abn-ft
    assert Q._rerank_pool(scores, [0, 1, 2, 3], 2) == [U, Q.GLOBAL, Q.SENSITIVITY, 1]  # top 2 by ABN: 1, U
    assert Q._need_ft(ARGS, scores, 4, ["run_rerank"]) == {U, Q.GLOBAL, Q.SENSITIVITY, 1}
    picks = Q._picks(ARGS, 0, scores, 4, ["run_rerank", "run_abn"], found=(30.0, 9))
    assert picks["run_rerank"][0] == Q.GLOBAL and picks["run_abn"][0] == 1
    assert picks["run_rerank"][1] == {"search_s": 7.0 + 16.0 + 30.0, "abn_evals": 7 + 9, "ft_evals": 4}
    assert picks["run_abn"][1] == {"search_s": 7.0 + 30.0, "abn_evals": 7 + 9, "ft_evals": 0}


def test_the_best_baseline_row_is_the_best_equal_flops_baseline_of_each_seed():
    rows = [
        {"seed": 0, "method": "tp_global", "test": 0.90},
        {"seed": 0, "method": "sensitivity", "test": 0.91},
        {"seed": 0, "method": "uniform", "test": 0.95},  # at the budget's target, not the default's FLOPs
        {"seed": 1, "method": "uniform_eq", "test": 0.92},
        {"seed": 1, "method": "tp_lamp", "test": 0.89},
    ]
    best = Q.best_baseline(rows)
    assert [(r["seed"], r["of"], r["test"]) for r in best] == [(0, "sensitivity", 0.91), (1, "uniform_eq", 0.92)]
    assert all(r["method"] == "best_baseline" for r in best)
