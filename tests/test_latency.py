"""fnnp_opt.latency (timing, BN folding, the per-layer table, the --latency budget) and the ONNX export.

Timing tests assert ratios and cache behaviour, never absolute times.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import logging

import numpy as np
import optuna
import pytest
import torch
from torch import nn
from conftest import message_lines
from typer.testing import CliRunner

from fnnp_opt import latency as L
from fnnp_opt.cli import app
from fnnp_opt.config import Constraint, resolve
from fnnp_opt.errors import BudgetError, UsageError
from fnnp_opt.models import create_model, find_classifier
from fnnp_opt.pipeline import prepare
from fnnp_opt.problem import is_wide
from fnnp_opt.optimize import Evaluator

runner = CliRunner()


def _latency_study(tmp_path, **flags):
    # one thread: two on a 2-core machine shared with another process stall on each other's stragglers
    cfg = resolve(storage=f"sqlite:///{tmp_path}/s.db", **{"latency": "0.97x", "latency_threads": 1, **flags})
    return prepare(cfg, with_data=False)


def _reachable(tmp_path, **flags) -> tuple[str, float]:
    """A --latency target and tolerance inside what this machine reaches.

    How much faster a pruned ResNet-20 runs at 28x28 differs from one CPU to the next (0.55x here, 0.68x to
    0.92x on a CI machine), so a fixed target would test the machine, not the code. The table built here is
    cached beside the storage, so the study that follows reuses it and sees the same reach.
    """
    p = _latency_study(tmp_path, **flags)
    lowest = p.problem.uniform_cost(p.space.max_rate) / p.budget.base
    assert lowest < 0.99, f"pruning every group by {p.space.max_rate} should be predicted faster, got {lowest:.3f}x"
    return f"{(1 + lowest) / 2:.3f}x", (1 - lowest) / 5


def _random_plans(p, n: int, seed: int = 1) -> list[dict[str, int]]:
    rng = np.random.default_rng(seed)
    return [
        p.pruner.counts(
            {d.root: float(r) for d, r in zip(p.space.dims, rng.uniform(0, p.space.max_rate, len(p.space)))}
        )
        for _ in range(n)
    ]


def test_fold_bn_keeps_the_outputs_and_leaves_no_batchnorm(base_model):
    x = torch.randn(8, 1, 28, 28)
    folded = L.fold_bn(base_model)
    with torch.no_grad():
        assert torch.allclose(folded(x), base_model.eval()(x), atol=1e-4)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in base_model.modules())  # the original is untouched


def test_fold_bn_leaves_a_batchnorm_whose_conv_output_is_read_elsewhere():
    class Tap(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y  # the conv's output is read twice: folding would change it

    m = Tap().eval()
    m.bn.running_mean.uniform_()
    x = torch.randn(2, 3, 8, 8)
    folded = L.fold_bn(m)
    assert isinstance(folded.bn, nn.BatchNorm2d)
    with torch.no_grad():
        assert torch.allclose(folded(x), m(x))


def test_compare_ms_ranks_a_wider_layer_slower():
    narrow, wide = nn.Conv2d(64, 8, 3, padding=1), nn.Conv2d(64, 256, 3, padding=1)
    t_narrow, t_wide = L.compare_ms([narrow, wide], (1, 64, 32, 32), L.Setting(batch=4), runs=20)
    assert t_wide > 2 * t_narrow


def test_a_network_left_in_channels_last_is_timed_in_the_layout_asked_for(base_model):
    evaluated = copy.deepcopy(base_model).to(memory_format=torch.channels_last)  # as accuracy() leaves it
    for cl, layout in ((False, torch.contiguous_format), (True, torch.channels_last)):
        model, x = L._placed(copy.deepcopy(evaluated), (1, 1, 28, 28), L.Setting(), cl)
        convs = [m.weight for m in model.modules() if isinstance(m, nn.Conv2d)]
        assert x.is_contiguous(memory_format=layout) and all(w.is_contiguous(memory_format=layout) for w in convs)


def test_parse_latency():
    assert L.parse_latency("0.5x", 4.0) == pytest.approx(2.0)
    assert L.parse_latency("3ms", 4.0) == pytest.approx(3.0)
    assert L.parse_latency(" 0.25 x ", 4.0) == pytest.approx(1.0)
    for bad in ("fast", "0x", "-1ms", "3", "1.5x"):
        with pytest.raises(UsageError):
            L.parse_latency(bad, 4.0)
    b = L.make_latency_budget("0.5x", 0.05, 4.0)
    assert (b.low, b.target, b.high, b.unit) == (pytest.approx(1.8), pytest.approx(2.0), pytest.approx(2.2), "ms")
    with pytest.raises(BudgetError):
        L.make_latency_budget("5ms", 0.05, 4.0)


@pytest.mark.integration
def test_the_table_is_built_once_and_reused_from_its_cache(tmp_path, monkeypatch):
    first = _latency_study(tmp_path)
    files = list((tmp_path / "latency-cache").glob("latency-*.json"))
    assert len(files) == 1
    doc = json.loads(files[0].read_text())
    assert doc["setting"]["batch"] == 1 and len(doc["entries"]) == len(first.latency.entries) > 10

    assert [f.name[:7] for f in (tmp_path / "latency-cache").glob("layout-*.json")] == ["layout-"]
    timed = []
    real = L.compare_ms
    monkeypatch.setattr(L, "compare_ms", lambda *a, **k: timed.append(a) or real(*a, **k))
    again = _latency_study(tmp_path)
    assert timed == []  # the layout, every layer and every calibration network came from the cache
    assert again.latency.setting == first.latency.setting
    for plan in _random_plans(first, 5):
        assert again.latency.predict(plan) == pytest.approx(first.latency.predict(plan))

    _latency_study(tmp_path, latency_batch=2)  # another setting: its own table
    assert len(list((tmp_path / "latency-cache").glob("latency-*.json"))) == 2
    assert len(list((tmp_path / "latency-cache").glob("layout-*.json"))) == 2


@pytest.mark.integration
def test_a_prediction_agrees_with_a_direct_measurement(tmp_path):
    p = _latency_study(tmp_path, latency_layout="nchw")
    table = p.latency
    errors = []
    for plan in _random_plans(p, 6, seed=7):
        measured, _ = table.measure(p.pruner.prune_counts(plan))  # as the search times a candidate
        errors.append(abs(table.predict(plan) / measured - 1))
    assert np.median(errors) < 0.3, errors  # loose: a shared 2-core CI machine is noisy
    most = p.pruner.counts(p.space.uniform(p.space.max_rate))
    assert table.predict(most) < 0.99 * table.predict({})  # pruning is predicted to pay (how much: the CPU's say)


@pytest.fixture(scope="module")
def latency_prepared(tmp_path_factory):
    where = tmp_path_factory.mktemp("lat")
    target, tolerance = _reachable(where)
    return _latency_study(where, latency=target, latency_tolerance=tolerance)


def _evaluator(p, mode, fit_budget=False) -> Evaluator:
    g = torch.Generator().manual_seed(0)
    batch = (torch.randn(16, 1, 28, 28, generator=g), torch.randint(0, 10, (16,), generator=g))
    return Evaluator(
        p.pruner, p.space, p.budget, p.flops, [batch], [batch], mode=mode, fit_budget=fit_budget, latency=p.latency
    )


@pytest.mark.parametrize("mode", list(Constraint))
def test_every_constraint_mode_handles_a_latency_violation(latency_prepared, mode):
    p = latency_prepared
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.enqueue_trial({d.param: 0.0 for d in p.space.dims})  # the unpruned network: above the window
    study.optimize(_evaluator(p, mode), n_trials=1)
    t = study.trials[0]
    assert t.user_attrs["feasible"] is False and t.user_attrs["latency_ms"] > p.budget.high
    assert "ms" in t.user_attrs["reject_reason"] and t.user_attrs["violation"] > 0
    if mode is Constraint.reject:
        assert t.state is optuna.trial.TrialState.PRUNED
    elif mode is Constraint.penalize:
        assert t.value == pytest.approx(-t.user_attrs["violation"], abs=1e-6)
    else:
        assert t.constraints["latency"] == pytest.approx(t.user_attrs["violation"], abs=1e-6) and t.value < 0


def test_fit_budget_moves_a_draw_into_the_latency_window(latency_prepared):
    p = latency_prepared
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.enqueue_trial({d.param: 0.0 for d in p.space.dims})
    study.optimize(_evaluator(p, Constraint.reject, fit_budget=True), n_trials=1)
    t = study.trials[0]
    assert p.budget.contains(t.user_attrs["latency_ms"])  # moved into the window it was predicted in
    assert t.user_attrs["latency_measured_ms"] > 0  # every candidate predicted inside is also timed directly
    if t.state is not optuna.trial.TrialState.COMPLETE:  # a slow spell can put the measurement outside
        assert "measured latency" in t.user_attrs["reject_reason"]
    else:
        assert t.user_attrs["feasible"] is True and p.budget.contains(t.user_attrs["latency_measured_ms"])


@pytest.mark.parametrize("mode", [Constraint.reject, Constraint.constrain])
def test_a_candidate_predicted_inside_but_measured_outside_the_window_is_infeasible(latency_prepared, mode):
    p = latency_prepared
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.enqueue_trial({d.param: p.uniform[0][d.root] for d in p.space.dims})  # predicted inside
    evaluator = _evaluator(p, mode)
    table = copy.copy(p.latency)
    table.measure = lambda model, runs=30: (p.budget.high * 1.1, 0.0)  # as a slow spell of the machine would
    evaluator.latency = table
    study.optimize(evaluator, n_trials=1)
    t = study.trials[0]
    assert p.budget.contains(t.user_attrs["latency_ms"]) and t.user_attrs["latency_measured_ms"] > p.budget.high
    assert t.user_attrs["feasible"] is False and "measured latency" in t.user_attrs["reject_reason"]
    assert "abn_accuracy" not in t.user_attrs  # rejected before it was scored
    if mode is Constraint.reject:
        assert t.state is optuna.trial.TrialState.PRUNED
    else:
        assert t.constraints["latency"] == pytest.approx(t.user_attrs["violation"], abs=1e-6)
        assert t.constraints["latency"] > 0 and t.value < 0


def test_a_table_that_predicts_pruning_no_faster_says_what_to_try(latency_prepared):
    problem = copy.copy(latency_prepared.problem)
    problem.latency = copy.copy(problem.latency)
    problem.latency.predict = lambda removed: 2.0 * problem.budget.base  # as two stalled threads time it
    with pytest.raises(BudgetError, match=r"no faster than the base's .*--latency-threads 1"):
        problem.check_reachable()


def test_round_to_auto_keeps_multiples_of_the_vector_width():
    cfg = resolve(round_to="auto", max_rate=0.8)
    step = cfg.resolved_round_to()
    assert step == L.vector_width("cpu") and step in (4, 8, 16)
    p = prepare(cfg, with_data=False)
    for plan in _random_plans(p, 5):
        for g in p.pruner.groups:
            kept = g.channels - plan[g.root]
            assert kept % step == 0 or kept == g.channels, (g.root, kept)


def test_speed_warnings_compare_the_latency_gain_with_the_macs_gain():
    def row(flops: int, latency_ms: float, batch_ms: float) -> L.Measurement:
        return L.Measurement(0.9, flops, 10, latency_ms, "nchw", batch_ms, "nchw", 32, 1)

    base = row(100, 1.0, 10.0)
    fast = row(50, 0.6, 5.5)  # 2x fewer MACs: 1.67x and 1.82x faster
    slow = row(50, 0.9, 5.5)  # 1.11x at batch 1: 11% of a 100% gain
    assert L.speed_warnings(base, fast) == []
    (warning,) = L.speed_warnings(base, slow)
    assert "at 1 image" in warning and "runs 1.11x the base's speed for 2.00x fewer MACs" in warning
    assert warning.endswith("a larger batch, or a --latency budget)")
    (warning,) = L.speed_warnings(base, slow, latency_budget=True)  # a --latency run has one
    assert "--latency" not in warning and warning.endswith("try --round-to auto or a larger batch)")
    (warning,) = L.speed_warnings(base, slow, can_round=False)  # its channels are rounded already
    assert "--round-to" not in warning and warning.endswith("try a larger batch or a --latency budget)")
    (warning,) = L.speed_warnings(base, slow, latency_budget=True, can_round=False)  # one remedy left
    assert warning.endswith("pad; try a larger batch)")


def test_the_default_rounds_to_the_vector_width_where_the_budget_stays_within_reach(monkeypatch, caplog):
    monkeypatch.setattr(L, "vector_width", lambda device="cpu": 16)  # as on an AVX-512 CPU
    with caplog.at_level(logging.INFO, logger="fnnp_opt"):
        wide = prepare(resolve(model="mobilenet_v1_cifar", dataset="cifar10"), with_data=False)  # 32-1024 channels
    assert wide.cfg.round_to == 16 and wide.uniform
    assert any("rounded to multiples of 16" in r.getMessage() for r in caplog.records)  # the run says so
    kept = [g.channels - n for g, n in zip(wide.pruner.groups, wide.pruner.counts(wide.uniform[0]).values())]
    assert all(k % 16 == 0 or k == g.channels for k, g in zip(kept, wide.pruner.groups)), kept
    narrow = prepare(resolve(), with_data=False)  # ResNet-20 (median conv 32 channels): left unrounded
    assert is_wide(wide.model, 16) and not is_wide(narrow.model, 16) and not is_wide(wide.model, 1)
    assert narrow.cfg.round_to == 1 and narrow.uniform
    tight = prepare(resolve(model="mobilenet_v1_cifar", dataset="cifar10", flops_tolerance=0.0005), with_data=False)
    assert tight.cfg.round_to == 1 and tight.uniform  # steps of 16 channels jump over so narrow a window
    with pytest.raises(BudgetError, match="cannot be reached"):  # asked for, the rounding is kept, or refused
        prepare(resolve(round_to="auto"), with_data=False)


def test_a_resumed_study_keeps_the_rounding_it_was_made_with(tmp_path):
    from fnnp_opt.pipeline import settle

    storage = f"sqlite:///{tmp_path}/s.db"
    for name, config in (("made-rounded", {"round_to": 16}), ("made-before", {"seed": 0})):
        optuna.create_study(storage=storage, study_name=name).set_user_attr("config", config)
    assert settle(resolve(storage=storage, study_name="made-rounded")).round_to == 16  # on any machine
    assert settle(resolve(storage=storage, study_name="made-before")).round_to == 1  # the default then
    assert settle(resolve(storage=storage, study_name="new")).round_to is None  # prepare resolves it
    assert settle(resolve(storage=storage, study_name="made-rounded", round_to=8)).round_to == 8


def _padding_clock(models, input_shape, setting=L.Setting(), layouts=None, **timing) -> list[float]:
    """:func:`L.compare_ms` on a machine that times alike every time: 10 ns a weight in NCHW; in channels-last 40%
    less where every conv's output channels are multiples of 8, else 20% more (kernels that pad). The base (16, 32
    and 64 channels) then runs faster in channels-last, a pruned ResNet-20 (11, 23, ...) in NCHW, as on this CPU."""
    layouts = layouts or [setting.channels_last] * len(models)

    def ms(model: nn.Module, channels_last: bool) -> float:
        convs = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]
        factor = (0.6 if all(c % 8 == 0 for c in convs) else 1.2) if channels_last else 1.0
        return 1e-5 * factor * sum(w.numel() for w in model.parameters())

    return [ms(m, cl) for m, cl in zip(models, layouts)]


def test_a_relative_latency_budget_is_a_fraction_of_the_base_as_the_summary_times_it(tmp_path, monkeypatch):
    monkeypatch.setattr(L, "compare_ms", _padding_clock)
    p = _latency_study(tmp_path, latency="0.8x")  # layout auto: the candidates' (NCHW), not the base's
    typical = p.pruner.prune(p.space.uniform(p.space.max_rate / 2))
    (row,) = L.profile(p.model, typical, p.input_shape, [1])  # as the run's summary times base and pruned
    assert (row["base_layout"], row["pruned_layout"]) == ("channels-last", "nchw")
    assert p.budget.base == pytest.approx(row["base_ms"])  # 0.8x of the base as deployed, not in NCHW
    assert p.budget.target == pytest.approx(0.8 * row["base_ms"])
    assert p.latency.predict({}) > p.budget.base  # the unpruned network in the candidates' layout is slower
    _, ratio = p.latency.measure(typical)  # as the delivered network is checked against its window
    assert ratio == pytest.approx(1 / row["speedup"])  # the budget line's ratio is the summary's speed-up
    cached = json.loads(next((tmp_path / "latency-cache").glob("latency-*.json")).read_text())
    (fit,) = cached["fits"].values()  # what the study's later sessions and workers resolve the budget against
    assert (fit["base_ms"], fit["base_layout"]) == (pytest.approx(row["base_ms"]), "channels-last")


def test_a_busy_spell_while_one_layer_is_timed_does_not_skew_the_table(tmp_path, monkeypatch):
    calls = []

    def weights(model: nn.Module) -> int:
        return sum(w.numel() for w in model.parameters())

    def busy_clock(models, input_shape, setting=L.Setting(), layouts=None, **timing) -> list[float]:
        """A machine on which a pass takes 10 ns a weight, and every other timing run is 3x slower throughout."""
        calls.append(models)
        return [(3.0 if len(calls) % 2 else 1.0) * 1e-5 * weights(m) for m in models]

    monkeypatch.setattr(L, "compare_ms", busy_clock)
    p = _latency_study(tmp_path, latency="0.8x", latency_layout="nchw")
    assert len(calls) > 4  # the layers' grids came from timing runs of both kinds
    for plan in _random_plans(p, 5):
        # every layer on one scale: the predicted speed-up is the weights' (10 ns each, busy or not)
        predicted = p.latency.predict(plan) / p.latency.predict({})
        assert predicted == pytest.approx(weights(p.pruner.prune_counts(plan)) / weights(p.model), rel=0.05)
    reference = json.loads(next((tmp_path / "latency-cache").glob("latency-*.json")).read_text())["reference_ms"]
    assert reference == pytest.approx(3e-5 * weights(L.REFERENCE.build(64, 64)[0]))  # of the first, busy run


def test_a_fit_cached_before_the_base_was_timed_as_deployed_is_made_again(tmp_path, monkeypatch):
    monkeypatch.setattr(L, "compare_ms", _padding_clock)
    first = _latency_study(tmp_path)
    path = next((tmp_path / "latency-cache").glob("latency-*.json"))
    doc = json.loads(path.read_text())
    for fit in doc["fits"].values():  # as an earlier version cached it: the base in the candidates' layout
        fit["base_ms"] = first.latency.predict({})
        del fit["base_layout"]
    path.write_text(json.dumps(doc))
    again = _latency_study(tmp_path)
    assert again.latency.base_layout == "channels-last" and again.budget.base == pytest.approx(first.budget.base)


@pytest.mark.integration
def test_the_summary_of_a_latency_run_does_not_suggest_a_latency_budget(tmp_path, small_fmnist, monkeypatch):
    from conftest import SMALL_RUN

    monkeypatch.setattr(L, "compare_ms", _padding_clock)  # the pruned network gains far less than its MACs
    args = ["run", *SMALL_RUN, "--data-dir", str(small_fmnist), "--epochs", "0", "--latency", "0.8x"]
    args += ["--latency-tolerance", "0.1", "--latency-threads", "1", "--storage", f"sqlite:///{tmp_path}/s.db"]
    res = runner.invoke(app, [*args, "--output", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "note: at 1 image the pruned network runs" in text and "--latency budget" not in text
    assert "try a larger batch)" in text and "--round-to" not in text  # ResNet-20's 16-64 channels: no rounding helps
    card = json.loads((tmp_path / "out" / "pruned.json").read_text())
    base, pruned, lat = card["metrics"]["base"], card["metrics"]["pruned"], card["latency"]
    assert lat["base_ms"] == pytest.approx(base["latency_ms"]) and lat["base_layout"] == base["latency_layout"]
    speedup = base["latency_ms"] / pruned["latency_ms"]
    assert lat["measured_ratio"] == pytest.approx(1 / speedup)  # the budget line agrees with the table
    assert f"({lat['measured_ratio']:.2f}x the base's {lat['base_ms']:.3f} ms NHWC)" in text


@pytest.mark.integration
@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="the onnx extra is not installed")
@pytest.mark.parametrize("name", ["resnet20", "mobilenet_v1_cifar"])
def test_onnx_export_of_a_pruned_network_matches_pytorch(tmp_path, name):
    import onnxruntime as ort

    from fnnp_opt.export import ONNX_ATOL, ONNX_RTOL, save_onnx
    from fnnp_opt.prune import Pruner, Shaping

    torch.manual_seed(0)
    size = 28 if name == "resnet20" else 32
    model = create_model(name, 1, 10).eval()
    example = torch.zeros(1, 1, size, size)
    pruner = Pruner(model, example, find_classifier(model, example, 10), Shaping())
    pruned = pruner.prune({g.root: 0.1 + 0.5 * (k % 3) / 2 for k, g in enumerate(pruner.groups)})
    for m in pruned.modules():  # non-trivial statistics, so folding matters
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    out = tmp_path / "new" / "m.onnx"  # its folder is made, as an --output folder is
    r = save_onnx(pruned, (1, 1, size, size), out)
    assert r["max_abs_diff"] <= ONNX_ATOL + 1e-3 and r["ort_ms"][1] > 0
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = torch.randn(5, 1, size, size)  # a batch size it was not exported with
    got = session.run(None, {"images": x.numpy()})[0]
    with torch.no_grad():
        want = pruned.eval()(x).numpy()
    assert np.all(np.abs(got - want) <= ONNX_ATOL + ONNX_RTOL * np.abs(want))
    assert sorted(p.name for p in out.parent.iterdir()) == ["m.onnx"]  # no temporary file left


def test_a_missing_onnx_extra_is_one_line(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    for args in (["export", str(tmp_path), "--onnx"], ["run", "--onnx", "--storage", f"sqlite:///{tmp_path}/s.db"]):
        res = runner.invoke(app, args)
        assert res.exit_code == 2, res.output
        lines = message_lines(res.output)
        assert len(lines) == 1 and "pip install 'fnnp-opt[onnx]'" in " ".join(res.output.split()), res.output
    assert list(tmp_path.iterdir()) == []


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="the onnx extra is not installed")
def test_a_latency_study_runs_end_to_end_and_records_its_latencies(tmp_path, small_fmnist):
    from conftest import SMALL_RUN

    storage, out = f"sqlite:///{tmp_path}/s.db", tmp_path / "out"
    target, tolerance = _reachable(tmp_path)  # the run below reuses this table from the cache
    args = ["run", *SMALL_RUN, "--data-dir", str(small_fmnist), "--epochs", "0", "--latency", target, "--onnx"]
    args += ["--latency-tolerance", f"{tolerance:.4f}", "--latency-threads", "1"]
    res = runner.invoke(app, [*args, "--storage", storage, "--output", str(out)])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "latency budget (cpu" in text and "speed-up" in text and "pruned.onnx: onnxruntime matches" in text
    card = json.loads((out / "pruned.json").read_text())
    lat = card["latency"]
    assert lat["measured_ms"] > 0 and lat["predicted_ms"] > 0 and lat["window_ms"][0] < lat["target_ms"]
    assert card["onnx"]["max_abs_diff"] < 1e-3 and (out / "pruned.onnx").is_file()
    study = optuna.load_study(study_name=f"resnet20-fashion-mnist-latency{target}", storage=storage)
    assert study.user_attrs["latency"]["batch"] == 1 and study.user_attrs["latency"]["base_ms"] > 0
    timed = [t for t in study.trials if "latency_measured_ms" in t.user_attrs]
    assert len(timed) >= 2 and all(t.user_attrs["latency_ms"] > 0 for t in timed)
