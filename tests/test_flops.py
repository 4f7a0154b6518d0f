from __future__ import annotations

import pytest

from fnnp_opt.errors import BudgetError
from fnnp_opt.flops import count, make_budget, parse_flops

BASE = 125_000_000


@pytest.mark.parametrize(
    "text, expected",
    [("0.5", 62_500_000), ("1", BASE), ("62.23M", 62_230_000), ("62230000", 62_230_000), ("0.1G", 100_000_000)],
)
def test_parse_flops(text, expected):
    assert parse_flops(text, BASE) == expected


@pytest.mark.parametrize(
    "text, message",
    [
        ("0", "positive"),
        ("-0.5", "must be a fraction"),
        ("abc", "must be a fraction"),
        ("2G", "above the base"),
        ("1.5", "neither a fraction"),
        ("", "must be a fraction"),
    ],
)
def test_bad_flops(text, message):
    with pytest.raises(BudgetError, match=message):
        parse_flops(text, BASE)


def test_window():
    b = make_budget("0.5", 0.02, BASE)
    assert (b.low, b.target, b.high) == (60_000_000, 62_500_000, 65_000_000)
    assert b.contains(61_000_000) and not b.contains(66_000_000)
    with pytest.raises(BudgetError, match="--flops-tolerance"):
        make_budget("0.5", 0.0, BASE)


def test_thop_counts_macs_of_resnet20(base_model):
    macs, params = count(base_model, (1, 1, 28, 28))
    assert params == sum(p.numel() for p in base_model.parameters())
    conv1 = 16 * 1 * 9 * 28 * 28  # the stem's MACs alone
    assert 30e6 < macs < 33e6 and macs > conv1
    assert not [b for b, _ in base_model.named_buffers() if "total_" in b]  # thop leaves no buffers behind


def test_ranges_for_the_pareto_objective():
    b = make_budget("0.2:0.8", 0.02, BASE)
    assert b.ranged and (b.low, b.high) == (25_000_000, 100_000_000)
    assert "range" in b.describe()
    with pytest.raises(BudgetError, match="LOW < HIGH"):
        make_budget("0.8:0.2", 0.02, BASE)


ANALYTIC_CASES = [
    ("resnet20", 1, 28, 100),
    ("resnet20", 3, 32, 100),
    ("resnet32", 3, 32, 50),
    ("resnet56", 1, 28, 100),
    ("resnet110", 3, 32, 20),
    ("mobilenet_v1_cifar", 3, 32, 50),
    ("mobilenet_v1", 3, 64, 20),
    ("resnet50", 3, 64, 10),  # torchvision: bottlenecks and projection shortcuts
    ("mobilenet_v2", 3, 32, 10),  # torchvision: depthwise convs and linear bottlenecks
    ("regnet_x_400mf", 3, 32, 10),  # torchvision: grouped convs, cut in whole positions of every group
]


@pytest.mark.integration
@pytest.mark.parametrize("name, in_channels, size, draws", ANALYTIC_CASES)
def test_the_analytic_count_equals_thop_on_random_strategies(name, in_channels, size, draws):
    """Every registered model: the channel-plan count is thop's count of the pruned network, exactly."""
    import numpy as np
    import torch

    from fnnp_opt.flops import FlopsModel
    from fnnp_opt.models import create_model, find_classifier
    from fnnp_opt.prune import Pruner

    torch.manual_seed(0)
    shape = (1, in_channels, size, size)
    model = create_model(name, in_channels, 10)
    pruner = Pruner(model, torch.zeros(shape), find_classifier(model, torch.zeros(shape), 10))
    flops = FlopsModel(model, shape, pruner.prune_counts, {g.root: g.block for g in pruner.groups})
    assert flops.exact
    rng = np.random.default_rng(0)
    for i in range(draws):
        top = 0.95 if i % 2 else 0.5  # mild and extreme plans, down to a single channel per group
        ratios = {g.root: float(rng.uniform(0, top)) for g in pruner.groups}
        removed = pruner.counts(ratios)
        assert flops.analytic(removed) == count(pruner.prune(ratios), shape)[0], ratios


def test_every_registered_model_is_covered_by_the_analytic_test():
    from fnnp_opt.models import list_models

    covered = {case[0] for case in ANALYTIC_CASES}
    assert {m.name for m in list_models()} <= covered, "add new models to the analytic test"
