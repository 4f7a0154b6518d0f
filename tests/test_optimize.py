from __future__ import annotations

import time

import optuna
import pytest
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

import fnnp_opt.optimize as S
import fnnp_opt.storage as St
from fnnp_opt import optuna_private as P
from fnnp_opt.config import Sampler, resolve
from fnnp_opt.errors import StorageError
from fnnp_opt.evaluate import NonFiniteError
from fnnp_opt.pipeline import prepare, run, uniform_macs

SMALL = dict(search_size=300, abn_batches=4, abn_batch_size=32, flops_tolerance=0.05, device="cpu", epochs=0, workers=1, rerank=0)


@pytest.fixture(scope="module")
def prepared(small_fmnist):
    return prepare(resolve(data_dir=str(small_fmnist), **SMALL))


def _evaluator(p, **options):
    return S.Evaluator(
        p.pruner, p.space, p.budget, p.flops, p.splits.calibration, p.splits.search_batches(300), **options
    )


def _uniform_in_window(p) -> float:
    lo, hi = 0.0, p.space.max_rate  # FLOPs fall as the ratio rises: bisect to the target
    for _ in range(12):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if uniform_macs(p, mid) > p.budget.target else (lo, mid)
    return hi


def test_outside_the_window_is_rejected_before_evaluation(prepared, monkeypatch):
    calls = []
    monkeypatch.setattr(S, "calibrate_bn", lambda *a, **k: calls.append(1))
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial({d.param: 0.0 for d in prepared.space.dims})
    study.optimize(_evaluator(prepared), n_trials=1)
    t = study.trials[0]
    assert t.state is TrialState.PRUNED and t.value is None and not calls
    assert t.user_attrs["feasible"] is False and t.user_attrs["flops"] == prepared.budget.base
    assert "channels" not in t.user_attrs  # rejected draws write as little as possible
    assert "outside" in t.user_attrs["reject_reason"]


@pytest.mark.parametrize("pbn", [False, True])
def test_inside_the_window_records_scores_and_attributes_and_pbn_only_when_asked(prepared, pbn):
    r = _uniform_in_window(prepared)
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial({d.param: r for d in prepared.space.dims})
    study.optimize(_evaluator(prepared, pbn=pbn), n_trials=1)
    t = study.trials[0]
    assert t.state is TrialState.COMPLETE and 0.0 <= t.value <= 1.0
    a = t.user_attrs
    assert a["feasible"] is True and prepared.budget.contains(a["flops"])
    assert a["abn_accuracy"] == t.value and a["images_scored"] == 300 and "stopped_early" not in a
    assert set(a["timings"]) >= {"strategy", "prune", "flops", "abn_calibrate", "abn_score", "storage"}
    assert set(a["channels"]) == {d.name for d in prepared.space.dims}
    assert ("pbn_accuracy" in a) is pbn and ("pbn_score" in a["timings"]) is pbn
    if pbn:
        assert 0.0 <= a["pbn_accuracy"] <= 1.0 and a["pbn_accuracy"] != a["abn_accuracy"]


def test_abn_ft_score_is_the_value_and_abn_is_kept_beside_it(prepared):
    from dataclasses import replace

    from fnnp_opt.pipeline import make_scorer

    r = _uniform_in_window(prepared)
    values = {}
    for name, finetune in (
        ("abn", None),
        ("abn-ft", make_scorer(replace(prepared, cfg=replace(prepared.cfg, score_steps=3)))),
    ):
        study = optuna.create_study(direction="maximize")
        study.enqueue_trial({d.param: r for d in prepared.space.dims})
        study.optimize(_evaluator(prepared, finetune=finetune), n_trials=1)
        values[name] = study.trials[0]
    plain, ft = values["abn"], values["abn-ft"]
    assert plain.user_attrs["abn_accuracy"] == plain.value == ft.user_attrs["abn_accuracy"]  # the same ABN score
    assert ft.value == ft.user_attrs["abn_ft3"] != plain.value and "abn_ft3" not in plain.user_attrs
    assert "short_finetune" in ft.user_attrs["timings"]


def test_optimize_counts_only_evaluated_candidates(prepared):
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    report = S.optimize(study, _evaluator(prepared), n_trials=2, max_draws=1000)
    states = [t.state for t in study.trials]
    assert states.count(TrialState.COMPLETE) == 2 == report.total_evaluated
    assert report.rejected == states.count(TrialState.PRUNED)
    assert S.optimize(study, _evaluator(prepared), n_trials=2, max_draws=1000).evaluated == 0


def test_nan_candidate_fails_and_the_study_goes_on(prepared, monkeypatch):
    real = S.calibrate_bn
    calls = []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise NonFiniteError("adaptive BN produced NaN or inf running statistics")
        return real(*args, **kwargs)

    monkeypatch.setattr(S, "calibrate_bn", flaky)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=1))
    report = S.optimize(study, _evaluator(prepared), n_trials=1, max_draws=1000)
    failed = [t for t in study.trials if t.state is TrialState.FAIL]
    assert report.failed == 1 and len(failed) == 1
    assert "NaN" in failed[0].user_attrs["fail_reason"]
    assert report.total_evaluated == 1


def test_session_seeds_differ_as_the_study_grows():
    assert S.session_seed(0, 0) != S.session_seed(0, 5) != S.session_seed(1, 5)
    assert S.session_seed(0, 5) == S.session_seed(0, 5)


@pytest.mark.parametrize("kind", list(Sampler))
def test_every_sampler_is_seeded(kind, prepared):
    def draws():
        study = optuna.create_study(direction="maximize", sampler=S.make_sampler(kind, 7))
        study.optimize(lambda t: sum(prepared.space.suggest(t).values()), n_trials=3)
        return [t.params for t in study.trials]

    assert draws() == draws()


def test_cmaes_starts_from_uniform_l1_and_the_other_samplers_take_no_start(prepared):
    start = prepared.problem.sampler_start(Sampler.cmaes)
    (uniform,) = prepared.uniform
    assert start == {d.param: uniform[d.root] for d in prepared.space.dims}
    assert all(prepared.problem.sampler_start(k) is None for k in Sampler if k is not Sampler.cmaes)

    def first_generation_mean(ratio: float) -> float:  # trial 0 is CMA-ES's one random start-up draw
        at = {d.param: ratio for d in prepared.space.dims}
        study = optuna.create_study(direction="maximize", sampler=S.make_sampler(Sampler.cmaes, 3, start=at))
        study.optimize(lambda t: sum(prepared.space.suggest(t).values()), n_trials=9)
        draws = [v for t in study.trials[1:] for v in t.params.values()]
        return sum(draws) / len(draws)

    for ratio in (0.25, 0.55):  # sigma0 = R / 6 ~ 0.13 around the start; a centre start would sit at R / 2 = 0.4
        assert abs(first_generation_mean(ratio) - ratio) < 0.06


@pytest.mark.integration
def test_resume_continues_to_the_total_without_replaying(small_fmnist, tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    common = dict(data_dir=str(small_fmnist), storage=url, study_name="s", output=str(tmp_path / "out"), **SMALL)
    run(resolve(n_trials=2, **common))
    result = run(resolve(n_trials=4, **common))
    study = optuna.load_study(study_name="s", storage=url)
    done = [t for t in study.trials if t.state is TrialState.COMPLETE]
    assert len(done) == 4 and result.report.evaluated == 2
    params = [tuple(sorted(t.params.items())) for t in study.trials]
    assert len(set(params)) == len(params)  # no strategy drawn twice
    assert study.user_attrs["config"]["model"] == "resnet20"
    assert set(study.user_attrs["fingerprint"]) == {"model", "weights", "dataset", "data", "space", "budget"}


@pytest.mark.integration
def test_a_study_made_with_other_settings_is_refused(small_fmnist, tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    common = dict(data_dir=str(small_fmnist), storage=url, study_name="s", output=str(tmp_path / "o"), **SMALL)
    run(resolve(n_trials=1, **common))
    before = len(optuna.load_study(study_name="s", storage=url).trials)
    with pytest.raises(StorageError, match=r"--flops: stored '0.5', now '0.4'\); pass a new --study-name"):
        run(resolve(n_trials=3, **{**common, "flops": "0.4"}))
    with pytest.raises(StorageError, match="--max-rate: stored 0.6, now 0.7"):
        run(resolve(n_trials=3, **{**common, "max_rate": 0.7}))
    assert len(optuna.load_study(study_name="s", storage=url).trials) == before


def test_a_setting_left_to_its_default_is_named_as_such():
    changes = St._changes("data", {"data": "a"}, {"data": "b"}, {"search_size": None}, {"search_size": 500})
    assert changes == ["--search-size: stored the default, now 500"]


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_a_dead_workers_trial_is_failed_and_retried(prepared, tmp_path, monkeypatch):
    monkeypatch.setattr(St, "HEARTBEAT_S", 1)
    monkeypatch.setattr(St, "GRACE_S", 2)
    storage = St.open_storage(f"sqlite:///{tmp_path}/h.db")
    study = optuna.create_study(storage=storage, direction="maximize")
    r = _uniform_in_window(prepared)
    study.enqueue_trial({d.param: r for d in prepared.space.dims})
    dead = study.ask()  # a worker takes the trial ...
    prepared.space.suggest(dead)
    storage.record_heartbeat(P.trial_id(dead))
    time.sleep(3)  # ... and dies: no heartbeat for longer than the grace period
    S.optimize(study, _evaluator(prepared), n_trials=1, max_draws=1000)
    trials = study.get_trials()
    assert trials[0].state is TrialState.FAIL
    retry = [t for t in trials if RetryHeartbeatStaleTrialCallback.retried_trial_number(t) == dead.number]
    assert len(retry) == 1 and retry[0].state is TrialState.COMPLETE and retry[0].params == trials[0].params


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_a_trial_killed_before_its_first_heartbeat_is_recovered(prepared, tmp_path, monkeypatch):
    monkeypatch.setattr(St, "GRACE_S", 1)
    storage = St.open_storage(f"sqlite:///{tmp_path}/h.db")
    study = optuna.create_study(storage=storage, direction="maximize")
    orphan = study.ask()  # RUNNING, with params but no heartbeat: its worker died at once
    prepared.space.suggest(orphan)
    assert St.recover_dead_trials(study) == 0  # too young to call dead
    time.sleep(1.5)
    assert St.recover_dead_trials(study) == 1
    trials = study.get_trials()
    assert trials[0].state is TrialState.FAIL
    assert trials[1].state is TrialState.WAITING and trials[1].params == trials[0].params


@pytest.mark.parametrize(
    "url, message",
    [
        ("nosuchdb://x", "could not be opened"),
        ("sqlite:////proc/no/such/dir/x.db", "could not be opened"),
        ("sqlite:////dev/null/x.db", "not a folder"),
        ("not a url", "could not be opened"),
    ],
)
def test_bad_storage_urls(url, message):
    with pytest.raises(StorageError, match=message):
        St.open_storage(url)


def test_describe_space_is_consistent_with_the_pruner(small_fmnist):
    from fnnp_opt.pipeline import describe_space

    cfg = resolve(data_dir=str(small_fmnist), **{**SMALL, "flops_tolerance": 0.02})
    r = describe_space(cfg, draws=30)
    p = prepare(cfg)
    assert r.lowest == uniform_macs(p, p.space.max_rate)
    assert [d["param"] for d in r.dims] == [d.param for d in p.space.dims]
    assert all(0.0 < d["flops_share"] < 1.0 for d in r.dims)
    coupled = [d["flops_share"] for d in r.dims if d["coupled"]]
    single = [d["flops_share"] for d in r.dims if not d["coupled"]]
    assert min(coupled) > max(single)  # a residual ratio shrinks several convs at once
    assert 0 < r.accepted < r.draws == 30


def _combinations():
    from fnnp_opt.config import Constraint, Objective
    from fnnp_opt.constraints import check_combination
    from fnnp_opt.errors import UsageError

    for objective in Objective:
        for sampler in Sampler:
            for mode in Constraint:
                for fit in (False, True):
                    try:
                        check_combination(sampler, mode, objective, fit)
                    except UsageError:
                        continue
                    yield pytest.param(
                        sampler,
                        mode,
                        objective,
                        fit,
                        id=f"{objective.value}-{sampler.value}-{mode.value}-{'fit' if fit else 'raw'}",
                    )


COMBINATIONS = list(_combinations())


def test_the_combination_matrix_is_what_the_docs_say():
    ids = {p.id for p in COMBINATIONS}
    assert len(ids) == 33
    assert "accuracy-cmaes-penalize-raw" in ids and "accuracy-cmaes-reject-raw" not in ids
    assert "accuracy-cmaes-reject-fit" in ids and "pareto-cmaes-penalize-raw" not in ids


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize("sampler, mode, objective, fit", COMBINATIONS)
def test_every_allowed_combination_runs_a_small_study(small_fmnist, tmp_path, sampler, mode, objective, fit):
    from fnnp_opt.config import Constraint, Objective
    from fnnp_opt.pipeline import open_study, search

    # a range queues uniform L1 at 5 targets, each evaluated: 3 more trials are the sampler's draws
    flops = {"flops": "0.3:0.7", "baselines": "uniform"} if objective is Objective.pareto else {}
    n = 8 if objective is Objective.pareto else 5
    cfg = resolve(
        data_dir=str(small_fmnist),
        storage=f"sqlite:///{tmp_path}/s.db",
        n_trials=n,
        sampler=sampler.value,
        constraint=mode.value,
        objective=objective.value,
        fit_budget=fit,
        **{**SMALL, "flops_tolerance": 0.03},
        **flops,
    )
    p = prepare(cfg)
    study = open_study(cfg, p, St.open_storage(cfg.resolved_storage()))
    report = search(cfg, p, study)
    trials = study.get_trials()
    evaluated = S.evaluated(study)
    assert report.total_evaluated == len(evaluated) == n
    assert len([t for t in evaluated if not t.user_attrs.get("strategy")]) >= 3  # the sampler's own draws
    assert trials[0].user_attrs["strategy"] == "uniform" and St.is_evaluated(trials[0])
    assert all(p.budget.contains(t.user_attrs["flops"]) for t in evaluated)
    infeasible = [t for t in trials if t.user_attrs.get("feasible") is False]
    if fit:
        assert not infeasible and report.rejected == 0
        assert all("fit_step" in t.user_attrs for t in trials)
    for t in infeasible:
        if mode is Constraint.reject:
            assert t.state is TrialState.PRUNED and t.values is None
        else:
            assert t.state is TrialState.COMPLETE and t.values[0] < 0  # below every real score
        if mode is Constraint.constrain:
            assert t.constraints["flops"] == pytest.approx(t.user_attrs["violation"], abs=1e-6)
            assert t.constraints["flops"] > 0
    if objective is Objective.pareto:
        from fnnp_opt.pareto import pareto_front

        front = pareto_front(study)
        assert front and all(t in evaluated for t in front)
        assert [t.values[1] for t in front] == sorted(t.values[1] for t in front)
        assert [t.values[0] for t in front] == sorted(t.values[0] for t in front)  # more FLOPs, more accuracy
    else:
        assert St.is_evaluated(S.best_trial(study))


# --------------------------------------------------------------------------- the uniform baseline, always there


def _cli_run(*args: str):
    from typer.testing import CliRunner

    from fnnp_opt.cli import app

    return CliRunner().invoke(app, ["run", *args])


@pytest.mark.integration
def test_a_finished_study_whose_baseline_failed_evaluates_it_when_resumed(searched, small_fmnist, tmp_path):
    """Trial 0 (uniform L1) failed while the other trials filled the study: a resume queues it again and evaluates
    it even though the study already holds n_trials, so the finished study has its baseline."""
    import shutil
    import sqlite3

    from conftest import SMALL_RUN, without

    db = tmp_path / "study.db"
    shutil.copy(searched, db)
    with sqlite3.connect(db) as con:  # as a trial 0 that raised would have left it
        (trial_id,) = con.execute("SELECT trial_id FROM trials WHERE number = 0").fetchone()
        con.execute("UPDATE trials SET state = 'FAIL' WHERE trial_id = ?", (trial_id,))
        con.execute("DELETE FROM trial_values WHERE trial_id = ?", (trial_id,))
    url = f"sqlite:///{db}"
    before = optuna.load_study(study_name=None, storage=url)
    done = len(S.evaluated(before))
    (failed,) = [t for t in before.trials if t.user_attrs.get("strategy") == "uniform"]
    assert failed.state is TrialState.FAIL and done >= 1

    args = [*without(SMALL_RUN, "--n-trials"), "--n-trials", str(done), "--data-dir", str(small_fmnist)]
    res = _cli_run(*args, "--epochs", "0", "--storage", url, "--output", str(tmp_path / "out"))
    assert res.exit_code == 0, res.output
    study = optuna.load_study(study_name=None, storage=url)
    uniform = [t for t in study.trials if t.user_attrs.get("strategy") == "uniform"]
    assert [t.state for t in uniform] == [TrialState.FAIL, TrialState.COMPLETE]
    assert uniform[1].params == failed.params and len(S.evaluated(study)) == done + 1
    report = (tmp_path / "out" / "report.md").read_text()
    assert f"uniform L1** (the same ratio everywhere): trial {uniform[1].number}" in report
    _cli_run(*args, "--epochs", "0", "--storage", url, "--output", str(tmp_path / "out"))  # resumed again: no more
    assert len(optuna.load_study(study_name=None, storage=url).trials) == len(study.trials)


@pytest.mark.integration
def test_the_uniform_baseline_lands_in_the_window_of_a_small_model_or_the_study_says_it_has_none(
    small_fmnist, tmp_path
):
    """GroupNorm(8, C) keeps channels in eights: one ratio everywhere jumps over +-5% windows. At 40% of the FLOPs the
    groups cut one at a time land inside it; at 50% nothing within one step of one ratio does, and the run, `space`
    and the report say so instead of promising a baseline."""
    from conftest import SMALL_RUN, random_checkpoint

    ckpt = random_checkpoint(tmp_path / "gn.safetensors", "usermodels:group_norm", 1, 10)
    model = ["--model", "usermodels:group_norm", "--checkpoint", str(ckpt), "--no-check-base"]
    common = [*SMALL_RUN, *model, "--data-dir", str(small_fmnist)]
    url = f"sqlite:///{tmp_path}/s.db"

    res = _cli_run(*common, "--flops", "0.4", "--epochs", "0", "--storage", url, "--output", str(tmp_path / "a"))
    assert res.exit_code == 0, res.output
    study = optuna.load_study(study_name="usermodels:group_norm-fashion-mnist-flops0.4", storage=url)
    first = study.trials[0]
    assert first.user_attrs["strategy"] == "uniform" and first.state is TrialState.COMPLETE
    assert 0.35 <= first.user_attrs["flops_ratio"] <= 0.45
    base = {"0": 16, "3": 32}  # the convs' channels; they are kept in eights
    ratios = {name: 1 - kept / base[name] for name, kept in first.user_attrs["channels"].items()}
    step = {name: 8 / base[name] for name in base}  # one ratio lies within one step of every group's ratio
    assert max(ratios[n] - step[n] for n in base) <= min(ratios[n] + step[n] for n in base)

    res = _cli_run(*common, "--flops", "0.5", "--epochs", "0", "--storage", url, "--output", str(tmp_path / "b"))
    assert res.exit_code == 0, res.output
    assert "no uniform L1 strategy lands in the window" in " ".join(res.output.split())
    study = optuna.load_study(study_name="usermodels:group_norm-fashion-mnist-flops0.5", storage=url)
    assert not any(t.user_attrs.get("strategy") for t in study.trials)
    assert "**uniform L1**: none evaluated" in (tmp_path / "b" / "report.md").read_text()

    from typer.testing import CliRunner

    from fnnp_opt.cli import app

    res = CliRunner().invoke(app, ["space", *model[:4], "--flops", "0.5", "--flops-tolerance", "0.05"])
    assert res.exit_code == 0, res.output
    printed = " ".join(res.output.split())
    assert "uniform L1 baseline: no uniform L1 strategy lands" in printed and "queued first" not in printed
