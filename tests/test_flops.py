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
