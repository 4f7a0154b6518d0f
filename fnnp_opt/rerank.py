"""``--rerank K``: the two-stage search. Every candidate is scored by ABN; once the study is
complete, the top K by ABN and every baseline trial are re-scored with ``abn-ft`` (ABN plus a short
fine-tune), and the winner is the best re-scored one.

Re-scores survive interruption and are shared by every process of a study. Each is kept in a
ledger in the study's user attributes, ``rerank:abn_ft<steps>``::

    {"recipe": "...", "scores": {"12": 0.8731, ...}, "claims": {"7": "host:pid", ...}}

and is copied onto its trial as the user attribute ``abn_ft<steps>``, where optuna-dashboard
shows it (a journal file cannot change a finished trial: there it goes into the study's
``trial_attrs:abn_ft<steps>``, read back by :func:`fnnp_opt.storage.trial_user_attrs`). A
process claims a candidate under the study lock before scoring it, so no two processes score
the same one; the claim of a dead process (``kill -9``) is taken over.
A ledger made with another short fine-tune (``recipe``) is started afresh.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import optuna
from optuna.trial import FrozenTrial

from fnnp_opt import storage as St
from fnnp_opt.data import EvalBatches
from fnnp_opt.progress import NULL, Progress
from fnnp_opt.prune import Pruner
from fnnp_opt.score import Scorer, abn_ft_key, rescore
from fnnp_opt.optimize import evaluated

log = logging.getLogger(__name__)


@dataclass
class RerankReport:
    """What the rerank stage found."""

    key: str  # the trial attribute holding the re-score, e.g. abn_ft100
    scores: dict[int, float] = field(default_factory=dict)  # trial number -> abn-ft score, for the top K
    rescored: int = 0  # re-scores computed by this process (the rest came from the ledger)
    winner: int | None = None  # the best re-scored trial
    seconds: float = 0.0  # wall time of this process's rerank


def top_k(study: optuna.Study, k: int) -> list[FrozenTrial]:
    """What the rerank re-scores: the ``k`` evaluated trials with the highest first value (ABN accuracy; ties go
    to the earlier trial), and every evaluated baseline (the user attribute ``strategy``: uniform L1, global,
    sensitivity) outside them, so that the winner is never one a baseline beats by the rerank's own score."""
    ranked = sorted(evaluated(study), key=lambda t: (-t.values[0], t.number))
    top = ranked[:k]
    return top + [t for t in ranked[k:] if t.user_attrs.get(St.BASELINE)]


def ledger_name(scorer: Scorer) -> str:
    return f"rerank:{abn_ft_key(scorer.short.steps)}"


def _ledger(study: optuna.Study, name: str, recipe: str) -> dict:
    stored = study.user_attrs.get(name)  # a copy: a journal's replay hands out its own dicts
    if stored is None or stored.get("recipe") != recipe:
        if stored is not None:
            log.warning(
                "the stored rerank was made with another short fine-tune (%s); re-scoring", stored.get("recipe")
            )
        return {"recipe": recipe, "scores": {}, "claims": {}}
    return stored


def _claim(study: optuna.Study, name: str, recipe: str, numbers: list[int]) -> tuple[int | None, dict]:
    """Claim the next top-K trial nobody has scored or is scoring; (None, ledger) when none is free now."""
    me = St.worker_id()
    with St.study_lock(study):
        ledger = _ledger(study, name, recipe)
        for n in numbers:
            if str(n) in ledger["scores"]:
                continue
            owner = ledger["claims"].get(str(n))
            if owner is None or owner == me or not St.alive(owner):
                ledger["claims"][str(n)] = me
                study.set_user_attr(name, ledger)
                return n, ledger
        return None, ledger


def _record(study: optuna.Study, name: str, recipe: str, trial: FrozenTrial, key: str, score: float) -> None:
    # the trial's copy first, the ledger last: a process killed between the two re-scores the trial on resume
    # (and rewrites the copy), where the other order would leave a score in the ledger and none on the trial
    St.set_finished_trial_user_attr(study, trial, key, score)
    with St.study_lock(study):
        ledger = _ledger(study, name, recipe)
        ledger["scores"][str(trial.number)] = score
        ledger["claims"].pop(str(trial.number), None)
        study.set_user_attr(name, ledger)


def rerank(
    study: optuna.Study,
    pruner: Pruner,
    calibration: EvalBatches,
    scorer: Scorer,
    k: int,
    ratios_of,
    progress: Progress = NULL,
    poll_s: float = St.POLL_S,
) -> RerankReport:
    """Re-score the top ``k`` trials of ``study`` by ABN with ``scorer`` (abn-ft); return the report.

    ``ratios_of(trial)`` gives the ratios a trial applied. Returns when all ``k`` re-scores are in
    the ledger, waiting for those that live processes are computing.
    """
    t0 = time.perf_counter()
    name, recipe, key = ledger_name(scorer), scorer.short.describe(), abn_ft_key(scorer.short.steps)
    top = top_k(study, k)
    by_number = {t.number: t for t in top}
    numbers = [t.number for t in top]
    log.info("rerank: re-scoring the top %d by ABN and the baselines (trials %s) with %s", k, numbers, key)
    report = RerankReport(key)
    with progress.task(f"rerank {len(top)}", len(top)) as advance:
        shown = 0
        while True:
            n, ledger = _claim(study, name, recipe, numbers)
            done = sum(str(m) in ledger["scores"] for m in numbers)
            advance(done - shown)
            shown = done
            if n is None:
                if done == len(numbers):
                    break
                time.sleep(poll_s)  # the rest are being re-scored by live processes
                continue
            trial = by_number[n]
            model = pruner.prune(ratios_of(trial))
            score = rescore(model, calibration, scorer)
            _record(study, name, recipe, trial, key, score)
            report.rescored += 1
            log.info("rerank: trial %d ABN %.4f -> %s %.4f", n, trial.values[0], key, score)
    report.scores = {m: ledger["scores"][str(m)] for m in numbers}
    report.winner = max(numbers, key=lambda m: (report.scores[m], by_number[m].values[0], -m))
    report.seconds = time.perf_counter() - t0
    return report
