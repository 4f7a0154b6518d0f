"""The Python API (fnnp_opt.search, Problem, Objective, finetune, save, load) on the user's own model and data: the
shipped ResNet-20 on real Fashion-MNIST images handed over as plain (x, y) batches, and small models of other
shapes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import optuna
import pytest
import torch
from torch import nn

import fnnp_opt
from fnnp_opt.data import get_dataset_info
from fnnp_opt.errors import BudgetError, CheckpointError, FnnpError, ModelError, UsageError
from fnnp_opt.evaluate import NonFiniteError
from fnnp_opt.plan import Plan
from fnnp_opt.prune import layer_shapes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def fmnist_batches(fmnist_arrays):
    """The user's own data: normalised training images as (x, y) batches of 64; calibration from the first 640,
    a held-out split of 512 after them (the test file is not touched)."""
    info = get_dataset_info("fashion-mnist")
    x = torch.tensor(fmnist_arrays["train_x"][:1152]).float().div(255).unsqueeze(1)
    x = (x - info.mean[0]) / info.std[0]
    y = torch.tensor(fmnist_arrays["train_y"][:1152]).long()
    batches = [(x[i : i + 64], y[i : i + 64]) for i in range(0, 1152, 64)]
    return batches[:10], batches[10:]


def _search(base_model, batches, **kwargs):
    calibration, held_out = batches
    args = dict(calibration=calibration, evaluation=held_out, budget="0.5", n_trials=3, calibration_batches=4)
    return fnnp_opt.search(base_model, torch.zeros(1, 1, 28, 28), **(args | kwargs))


def test_one_call_returns_the_study_the_winner_its_plan_and_the_uniform_baseline(base_model, fmnist_batches):
    result = _search(base_model, fmnist_batches)
    evaluated = [t for t in result.study.trials if t.state is optuna.trial.TrialState.COMPLETE]
    assert len(evaluated) == 3
    assert result.baseline is not None and result.baseline.number == 0
    assert result.baseline.user_attrs["strategy"] == "uniform"
    assert result.best.value == max(t.value for t in evaluated)
    plan = result.plan
    assert set(plan.ratios) == {d.name for d in result.problem.space.dims}
    assert all(0 <= r <= 0.6 for r in plan.ratios.values())
    assert plan.channels == result.best.user_attrs["channels"]
    net = result.build()
    assert fnnp_opt.Plan is type(plan)
    x = fmnist_batches[1][0][0][:8]
    assert net(x).shape == (8, 10)
    budget = result.problem.budget
    from fnnp_opt.flops import count

    assert budget.low <= count(net, (1, 1, 28, 28))[0] <= budget.high
    assert not net.training and base_model is result.problem.model  # the base is not changed by pruning
    assert not any(p.is_inference() for p in base_model.parameters())  # and can be trained, or searched again


def test_a_callable_scores_a_network_that_is_not_a_classifier_with_its_head_ignored():
    torch.manual_seed(0)

    class Dense(nn.Module):  # per-pixel outputs: no logits to find a classifier by
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(
                nn.Conv2d(3, 16, 3, padding=1),
                nn.BatchNorm2d(16),
                nn.ReLU(),
                nn.Conv2d(16, 16, 3, padding=1),
                nn.BatchNorm2d(16),
                nn.ReLU(),
            )
            self.head = nn.Conv2d(16, 2, 1)

        def forward(self, x):
            return self.head(self.body(x))

    model = Dense().eval()
    images = [torch.randn(8, 3, 16, 16) for _ in range(4)]
    target = [(x.mean(1, keepdim=True) > 0).long().squeeze(1) for x in images]
    seen = []

    def pixel_accuracy(net):
        seen.append(net.training)
        return sum(float((net(x).argmax(1) == t).float().mean()) for x, t in zip(images, target)) / len(images)

    with pytest.raises(FnnpError, match="ignored_layers"):
        fnnp_opt.search(model, images[0][:1], calibration=images, evaluation=pixel_accuracy, n_trials=1)
    result = fnnp_opt.search(
        model,
        images[0][:1],
        calibration=images,
        evaluation=pixel_accuracy,
        ignored_layers=[model.head],
        n_trials=3,
        budget="0.6",
    )
    assert result.build().head.out_channels == 2  # the head keeps its outputs
    assert all(t.user_attrs["abn_score"] == t.value for t in result.study.trials if t.value is not None)
    assert seen and not any(seen)  # the metric ran in eval mode


def test_optuna_native_with_any_sampler_and_a_callback(base_model, fmnist_batches):
    calibration, held_out = fmnist_batches
    problem = fnnp_opt.Problem(base_model, torch.zeros(1, 1, 28, 28), budget="0.5", max_rate=0.7)
    objective = fnnp_opt.Objective(problem, calibration, held_out, calibration_batches=2, fit_budget=True)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=1))
    problem.enqueue_uniform(study)
    problem.enqueue_uniform(study)  # queued once
    calls = []
    study.optimize(objective, n_trials=3, callbacks=[lambda s, t: calls.append(t.number)])
    assert calls == [0, 1, 2]
    assert study.trials[0].user_attrs["strategy"] == "uniform"
    best = objective.best(study)
    assert best.value == max(t.value for t in study.trials)
    net = objective.build(best)
    assert problem.plan(best).layers == layer_shapes(net)


def test_save_then_load_into_a_fresh_instance_reproduces_the_outputs_bit_for_bit(tmp_path, base_model, fmnist_batches):
    from fnnp_opt.models import create_model

    calibration, _ = fmnist_batches
    problem = fnnp_opt.Problem(base_model, torch.zeros(1, 1, 28, 28), budget="0.4", max_rate=0.8)
    ratios = problem.uniform[0]
    net = problem.prune(ratios)
    plan = problem.plan(ratios)
    fnnp_opt.save(net, tmp_path / "out", plan)
    fresh = create_model("resnet20", 1, 10)  # the user's own class, built as before pruning
    loaded = fnnp_opt.load(tmp_path / "out", model=fresh)
    x = calibration[0][0]
    assert torch.equal(net.eval()(x), loaded(x))
    assert Plan.from_dict(plan.to_dict()) == plan

    other = create_model("resnet32", 1, 10)
    with pytest.raises(CheckpointError, match=r"^model= does not match .* layer 'layer1\.3\.conv1' is missing"):
        fnnp_opt.load(tmp_path / "out", model=other)
    wider = create_model("resnet20", 1, 12)
    with pytest.raises(CheckpointError, match=r"layer 'fc' has sizes \{'in': 64, 'out': 10\} in the saved"):
        fnnp_opt.load(tmp_path / "out", model=wider)
    with pytest.raises(CheckpointError, match=r"fnnp_opt.load\(path, model="):
        fnnp_opt.load_pruned(tmp_path / "out")


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        ({"max_rate": 1.2}, r"^max_rate= must be in \(0, 1\), got 1.2; e.g. max_rate=0.7$"),
        ({"budget": "half"}, r"^budget= must be a fraction of the base"),
        ({"budget": "0.05", "max_rate": 0.3}, r"raise max_rate= to at least"),
        ({"round_to": 0}, r"^round_to= must be a whole number >= 1"),
        ({"round_to": "wide"}, r"^round_to= must be a whole number >= 1 or 'auto', got 'wide'; e.g. round_to=8$"),
        ({"round_to": True}, r"^round_to= must be a whole number >= 1, got True"),
        ({"n_trials": 0}, r"^n_trials= must be a whole number >= 1, got 0$"),
        ({"sampler": "annealing"}, r"^sampler= must be one of random, tpe"),
        ({"score": "abn-ft"}, r"pass train="),
        ({"calibration": 5}, r"^calibration must be an iterable of batches"),
        ({"evaluation": [torch.zeros(2, 1, 28, 28)]}, r"^evaluation yields batches without labels"),
        ({"exclude": ["nothing.*"]}, r"^exclude=\['nothing.\*'\] matches no prunable layer"),
        ({"device": "tpu"}, r"^device= must be auto, cpu or cuda"),
        ({"max_rate": "0.5"}, r"^max_rate= must be in \(0, 1\), got 0.5"),
        ({"storage": Path("s.db")}, r"^storage must be an Optuna storage URL"),
        ({"rerank": 2}, r"^rerank=2 re-scores with a short fine-tune: pass train="),
        ({"calibration": [torch.zeros(4, 3, 28, 28)]}, r"^calibration yields images of shape \(3, 28, 28\)"),
        ({"evaluation": [(torch.zeros(4, 1, 28, 28), torch.zeros(4, 10))]}, r"^evaluation fails on the unpruned model"),
        ({"evaluation": lambda: 0.5}, r"^evaluation fails on the unpruned model \(TypeError"),
        ({"lr": -1, "score": "abn-ft"}, r"^lr= must be positive and finite, got -1; pass a value such as lr=0.02$"),
    ],
)
def test_a_bad_argument_raises_one_line_naming_the_python_argument(base_model, fmnist_batches, kwargs, pattern):
    with pytest.raises(FnnpError, match=pattern) as err:
        _search(base_model, fmnist_batches, **kwargs)
    assert "\n" not in str(err.value) and "--" not in str(err.value)
    assert isinstance(err.value, (UsageError, BudgetError))


def test_the_default_rounding_is_the_clis_and_a_resumed_study_keeps_its_own(monkeypatch, tmp_path, caplog):
    """round_to=None rounds kept channels to the vector width in a wide network (as `fnnp-opt run` does), "auto"
    asks for it, a narrow network stays unrounded, and a study resumes with the rounding it was made with."""
    import logging

    import fnnp_opt.api as api

    monkeypatch.setattr(api, "vector_width", lambda device="cpu": 16)  # as on an AVX-512 CPU
    torch.manual_seed(0)

    def net(width: int) -> nn.Module:
        return nn.Sequential(
            *[m for _ in range(3) for m in (nn.LazyConv2d(width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())],
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.LazyLinear(4),
        )

    wide, narrow = net(256), net(32)
    x = torch.randn(8, 3, 16, 16)
    data = [(x, torch.arange(8) % 4)] * 2

    def search(model, **kwargs):
        args = dict(calibration=data, evaluation=data, budget="0.5", n_trials=1, calibration_batches=1, rerank=0)
        return fnnp_opt.search(model, x[:1], **(args | kwargs))

    with caplog.at_level(logging.INFO, logger="fnnp_opt"):
        rounded = search(wide)
    assert rounded.problem.shaping.round_to == 16
    said = [r.getMessage() for r in caplog.records]
    assert any("rounded to multiples of 16" in m and "round_to=1 keeps" in m for m in said), said
    kept = rounded.plan.channels
    assert kept and all(c % 16 == 0 for c in kept.values()), kept
    assert search(narrow).problem.shaping.round_to == 1  # 32 channels: two widths, kept whole or halved
    assert search(narrow, round_to="auto").problem.shaping.round_to == 16  # asked for
    with pytest.raises(UsageError, match=r"^model must be a torch.nn.Module, got a str$"):  # before any rounding
        search("resnet20")
    storage = f"sqlite:///{tmp_path}/s.db"
    assert search(wide, round_to=1, storage=storage, study_name="made-unrounded").problem.shaping.round_to == 1
    again = search(wide, storage=storage, study_name="made-unrounded", n_trials=2)  # the default resumes it as made
    assert again.problem.shaping.round_to == 1 and len(again.study.trials) >= 2


def test_a_model_that_does_not_run_on_the_example_or_returns_no_tensor_is_refused_in_one_line(base_model):
    with pytest.raises(ModelError, match=r"^model does not run on example_input of shape \(1, 3, 28, 28\)"):
        fnnp_opt.Problem(base_model, torch.zeros(1, 3, 28, 28))

    class Pair(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = base_model

        def forward(self, x):
            return self.net(x), x

    with pytest.raises(ModelError, match=r"^model returns a tuple"):
        fnnp_opt.Problem(Pair(), torch.zeros(1, 1, 28, 28))


def test_a_score_that_diverges_on_every_candidate_stops_the_search_and_says_so(base_model, fmnist_batches):
    base_params = sum(p.numel() for p in base_model.parameters())

    def score(net):  # finite on the base, NaN on every pruned candidate
        return 0.5 if sum(p.numel() for p in net.parameters()) == base_params else float("nan")

    t = time.monotonic()
    with pytest.raises(NonFiniteError, match=r"^the last 10 candidates failed one after another"):
        _search(base_model, fmnist_batches, evaluation=score, n_trials=20, fit_budget=True)
    assert time.monotonic() - t < 120


def test_data_that_fail_on_the_base_leave_no_study_behind(base_model, fmnist_batches, tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    wrong = [(x, torch.nn.functional.one_hot(y, 10)) for x, y in fmnist_batches[1]]
    with pytest.raises(UsageError, match="evaluation fails on the unpruned model"):
        _search(base_model, fmnist_batches, evaluation=wrong, storage=url, study_name="s")
    assert not optuna.get_all_study_names(url)


def test_a_process_killed_before_it_queued_the_baseline_has_it_queued_on_resume(
    base_model, fmnist_batches, tmp_path, monkeypatch
):
    url = f"sqlite:///{tmp_path}/s.db"

    def killed(self, study):
        raise KeyboardInterrupt  # as a kill between creating the study and queuing its baseline

    with monkeypatch.context() as m:
        m.setattr(fnnp_opt.Problem, "enqueue_uniform", killed)
        with pytest.raises(KeyboardInterrupt):
            _search(base_model, fmnist_batches, storage=url, study_name="s")
    assert optuna.load_study(study_name="s", storage=url).trials == []
    result = _search(base_model, fmnist_batches, storage=url, study_name="s")
    assert result.baseline is not None and result.baseline.number == 0


def test_a_plans_ratios_build_the_same_network(base_model, fmnist_batches):
    result = _search(base_model, fmnist_batches, n_trials=2)
    names = result.plan.ratios
    assert set(names) == {d.name for d in result.problem.space.dims}
    assert layer_shapes(result.problem.prune(names)) == layer_shapes(result.build())
    assert result.problem.plan(names).channels == result.plan.channels
    with pytest.raises(UsageError, match=r"^ratios name groups that are not searched: \['nope'\]"):
        result.problem.prune({"nope": 0.5})


def test_finetune_takes_a_dataloader_and_distils_from_the_base(base_model, fmnist_batches):
    calibration, held_out = fmnist_batches
    problem = fnnp_opt.Problem(base_model, torch.zeros(1, 1, 28, 28), budget="0.5")
    net = problem.prune(problem.uniform[0])
    xs, ys = torch.cat([x for x, _ in calibration]), torch.cat([y for _, y in calibration])
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(xs, ys), batch_size=64, shuffle=True)
    before = [p.detach().clone() for p in net.parameters()]
    losses = fnnp_opt.finetune(net, loader, epochs=2, lr=0.01, teacher=base_model)
    assert len(losses) == 2 and all(l > 0 for l in losses)
    assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters()))
    assert not net.training
    with pytest.raises(UsageError, match=r"^epochs= must be a whole number >= 1"):
        fnnp_opt.finetune(net, loader, epochs=0)
    wrong = [(x, y + 10) for x, y in calibration]  # labels beyond the 10 outputs
    with pytest.raises(UsageError, match=r"^train_loader's first batch fails in net's loss \(IndexError"):
        fnnp_opt.finetune(net, wrong)
    with pytest.raises(UsageError, match=r"^train_loader's first batch fails in teacher's loss"):
        fnnp_opt.finetune(net, calibration, teacher=nn.Linear(3, 3))


@pytest.mark.system
def test_import_fnnp_opt_loads_neither_torch_nor_optuna():
    code = "import sys, fnnp_opt; print('torch' in sys.modules, 'optuna' in sys.modules, sorted(fnnp_opt.__all__)[0])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.split() == ["False", "False", "BudgetError"]


_KILLED_SEARCH = textwrap.dedent(
    """
    import sys, torch, fnnp_opt
    from pathlib import Path
    from fnnp_opt.models import load_model, default_checkpoint
    from fnnp_opt.data import DATASETS, get_dataset_info, load_fashion_mnist
    model, _ = load_model("resnet20", 1, 10, default_checkpoint("resnet20", "fashion-mnist"))
    a = load_fashion_mnist(Path(DATASETS["fashion-mnist"].default_dir))
    info = get_dataset_info("fashion-mnist")
    x = (torch.from_numpy(a["train_x"][:640]).float().div(255).unsqueeze(1) - info.mean[0]) / info.std[0]
    y = torch.from_numpy(a["train_y"][:640]).long()
    batches = [(x[i:i + 64], y[i:i + 64]) for i in range(0, 640, 64)]
    fnnp_opt.search(model, torch.zeros(1, 1, 28, 28), calibration=batches[:4], evaluation=batches[4:],
                    calibration_batches=2, n_trials=int(sys.argv[2]), storage=sys.argv[1], study_name="killed")
    """
)


@pytest.mark.system
def test_a_search_from_python_resumes_after_kill_9_to_exactly_n_trials(tmp_path):
    url, n = f"sqlite:///{tmp_path}/s.db", 6
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    script = tmp_path / "search.py"
    script.write_text(_KILLED_SEARCH)
    proc = subprocess.Popen([sys.executable, str(script), url, str(n)], env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:  # kill once two candidates are in
        time.sleep(0.5)
        assert proc.poll() is None, f"the search ended before it was killed: {proc.stderr.read()}"
        try:
            done = [t for t in optuna.load_study(study_name="killed", storage=url).trials if t.value is not None]
        except KeyError:
            continue
        if len(done) >= 2:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    subprocess.run([sys.executable, str(script), url, str(n)], env=env, check=True, timeout=400)
    study = optuna.load_study(study_name="killed", storage=url)
    complete = [t for t in study.trials if t.state is optuna.trial.TrialState.COMPLETE]
    assert len(complete) == n
    # a trial killed while it held an evaluation slot was failed and retried; one killed before it claimed a slot
    # (a draw outside the window, or waiting for one) may still read RUNNING until a later session fails it
    assert not [t for t in study.trials if t.state is optuna.trial.TrialState.RUNNING and "slot" in t.user_attrs]


def test_flops_are_counted_per_image_whatever_the_example_batch(base_model):
    one = fnnp_opt.Problem(base_model, torch.zeros(1, 1, 28, 28))
    eight = fnnp_opt.Problem(base_model, torch.zeros(8, 1, 28, 28))
    assert eight.budget == one.budget and eight.input_shape == (1, 1, 28, 28)


@pytest.mark.integration
def test_abn_ft_with_the_users_train_batches_or_hook_and_a_rerank(base_model, fmnist_batches, tmp_path):
    calibration, _ = fmnist_batches
    result = _search(base_model, fmnist_batches, score="abn-ft", train=calibration, score_steps=2, n_trials=2)
    assert all(t.value == t.user_attrs["abn_ft2"] for t in result.study.trials if t.value is not None)
    trained = []
    hooked = _search(base_model, fmnist_batches, score="abn-ft", short_finetune=trained.append, n_trials=2)
    assert len(trained) == 2 and all(m is not base_model for m in trained)
    assert all("abn_ft" in t.user_attrs for t in hooked.study.trials if t.value is not None)
    url = f"sqlite:///{tmp_path}/s.db"
    reranked = _search(base_model, fmnist_batches, rerank=2, train=calibration, score_steps=2, n_trials=3, storage=url)
    assert reranked.best.number == reranked.rerank.winner
    done = sorted(reranked.study.trials, key=lambda t: (-(t.value or -1), t.number))
    pool = {t.number for t in done[:2]} | {t.number for t in reranked.baselines.values()}  # top 2 and baselines
    assert set(reranked.rerank.scores) == pool
    # the default with train=: a rerank of the top 5 (at most n_trials) and the baselines, in memory too
    default = _search(base_model, fmnist_batches, train=calibration, score_steps=2, n_trials=3)
    evaluated = {t.number for t in default.study.trials if t.state is optuna.trial.TrialState.COMPLETE}
    assert default.rerank is not None and set(default.rerank.scores) == evaluated
    assert default.best.number == default.rerank.winner
    assert _search(base_model, fmnist_batches, n_trials=2).rerank is None  # no train=: ABN alone
