from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

import fnnp_opt.optimize as S
from fnnp_opt.config import resolve
from fnnp_opt.early_stop import STEP_IMAGES, make_pruner, step_batches
from fnnp_opt.evaluate import accuracy, accuracy_in_steps, calibrate_bn
from fnnp_opt.latency import fold_bn
from fnnp_opt.pipeline import prepare, trial_ratios

SEARCH = 640  # images of the search split: 10 steps of 64 in these tests
SMALL = dict(search_size=SEARCH, abn_batches=4, abn_batch_size=32, flops_tolerance=0.05, device="cpu", epochs=0, rerank=0)


@pytest.fixture(scope="module")
def prepared(small_fmnist):
    return prepare(resolve(data_dir=str(small_fmnist), **SMALL))


def test_a_step_is_about_256_images_in_whole_batches():
    assert step_batches(128) == 2 and step_batches(64) == 4 and step_batches(1000) == 1
    assert step_batches(100) * 100 == pytest.approx(STEP_IMAGES, rel=0.25)


def test_scoring_in_steps_equals_plain_accuracy_and_stops_where_told(prepared, base_model):
    search = prepared.splits.search_batches(32)
    calibrate_bn(base_model, prepared.splits.calibration)
    seen = []
    full = accuracy_in_steps(base_model, search, "cpu", 2, lambda step, acc: seen.append((step, acc)) or False)
    assert not full.stopped and full.images == SEARCH and full.accuracy == accuracy(base_model, search)
    assert [s for s, _ in seen] == list(range(10))  # 20 batches of 32, two per step
    assert sum(acc for _, acc in seen) / 10 == pytest.approx(full.accuracy)

    part = accuracy_in_steps(base_model, search, "cpu", 2, lambda step, acc: step == 2)
    assert part.stopped and part.images == 3 * 64
    assert part.accuracy == accuracy(base_model, search[:6])  # the running accuracy of the images seen

    last = accuracy_in_steps(base_model, search, "cpu", 2, lambda step, acc: step == 9)
    assert not last.stopped and last.images == SEARCH  # nothing is left to save at the last step


def _study(p, params: list[dict], early: bool) -> optuna.Study:
    study = optuna.create_study(direction="maximize", pruner=make_pruner() if early else None)
    for ps in params:
        study.enqueue_trial(ps)
    search = p.splits.search_batches(32)
    evaluator = S.Evaluator(
        p.pruner, p.space, p.budget, p.flops, p.splits.calibration, search, fit_budget=True, early_stop=early
    )
    study.optimize(evaluator, n_trials=len(params))
    return study


@pytest.mark.integration
def test_early_stopping_never_stops_the_best_candidate_and_stopped_trials_record_their_images(prepared, monkeypatch):
    monkeypatch.setattr(S, "step_batches", lambda batch_size: 2)  # steps of 64 images: 10 on this split
    draw = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    params = []
    for _ in range(14):  # seeded draws, every one moved into the window (--fit-budget)
        trial = draw.ask()
        params.append({d.param: prepared.space.suggest(trial)[d.root] for d in prepared.space.dims})
        draw.tell(trial, 0.0)
    full = _study(prepared, params, early=False)
    early = _study(prepared, params, early=True)
    assert all(t.state is TrialState.COMPLETE for t in full.trials + early.trials)

    best = full.best_trial.number
    stopped = [t for t in early.trials if t.user_attrs.get("stopped_early")]
    assert stopped, "some clearly worse candidate should stop early in this seeded study"
    assert best not in {t.number for t in stopped} and early.best_trial.number == best
    assert early.best_trial.value == full.best_trial.value

    search = prepared.splits.search_batches(32)
    for t in early.trials:
        n = t.user_attrs["images_scored"]
        assert t.user_attrs["abn_accuracy"] == t.value
        assert len(t.intermediate_values) == n // 64  # one reported accuracy per step seen
        if t.user_attrs.get("stopped_early"):
            assert n < SEARCH and n % 64 == 0
            assert t.value < early.best_trial.value
            pruned = prepared.pruner.prune(trial_ratios(prepared.space, t))
            calibrate_bn(pruned, prepared.splits.calibration)  # scored as the search scores it: BN folded
            assert t.value == accuracy(fold_bn(pruned), search[: n // 32])  # the running accuracy over what it saw
        else:
            assert n == SEARCH and t.value == full.trials[t.number].value


def _best_and_one(best_steps: list[float] | None, steps: list[float]) -> tuple[optuna.Study, optuna.trial.FrozenTrial]:
    study = optuna.create_study(direction="maximize")
    values = {i: v for i, v in enumerate(best_steps or [])}
    study.add_trial(
        optuna.trial.create_trial(value=sum(best_steps or [0.9]) / len(best_steps or [1]), intermediate_values=values)
    )
    trial = optuna.trial.create_trial(state=TrialState.RUNNING, intermediate_values=dict(enumerate(steps)))
    return study, trial


@pytest.mark.parametrize(
    "best, steps, stops",
    [
        ([0.9] * 10, [0.5, 0.4, 0.5, 0.45], True),  # four steps, each far below the best's: clearly worse
        ([0.9] * 10, [0.5, 0.4, 0.5], False),  # three pairs are too few to test
        ([0.9] * 10, [0.89, 0.91, 0.88, 0.9, 0.92], False),  # within the steps' noise
        ([0.6, 0.6, 0.6, 0.6, 0.2], [0.55] * 4, False),  # lower step by step, but its mean is above the best's: never
        (None, [0.1] * 8, False),  # a best trial with no steps (scored before early stopping): never
    ],
)
def test_the_pruner_stops_only_a_candidate_clearly_below_the_best(best, steps, stops):
    study, trial = _best_and_one(best, steps)
    assert make_pruner().prune(study, trial) is stops
