"""The suite's tiers (tests/conftest.py): every test module has a tier, slow tests are not unit tests, and a unit or
integration test that starts a process or opens a socket fails."""

from __future__ import annotations

import multiprocessing
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import MODULE_TIERS, TIERS, TIMEOUT_S, TierError

HERE = Path(__file__).parent


def test_every_test_module_has_a_line_and_every_line_a_module():
    modules = {p.stem for p in HERE.glob("test_*.py")}
    assert set(MODULE_TIERS) == modules, "give each tests/test_*.py a line in MODULE_TIERS (tests/conftest.py)"
    assert set(MODULE_TIERS.values()) <= set(TIERS) and set(TIMEOUT_S) == set(TIERS)


def test_each_collected_test_has_exactly_one_tier_and_slow_ones_are_not_unit(request):
    for item in request.session.items:
        tiers = {m.name for m in item.iter_markers() if m.name in TIERS}
        assert len(tiers) == 1, (item.nodeid, tiers)
        assert not (tiers == {"unit"} and item.get_closest_marker("slow")), f"{item.nodeid} is slow: not unit"


@pytest.mark.parametrize(
    "start",
    [
        lambda: subprocess.run([sys.executable, "-c", "pass"]),
        lambda: multiprocessing.get_context("spawn").Process(target=print).start(),
        lambda: multiprocessing.get_context("fork").Process(target=print).start(),
    ],
    ids=["subprocess", "spawn", "fork"],
)
def test_a_unit_test_cannot_start_a_process(start, tier_guard):
    with pytest.raises(TierError, match="a test of the unit tier may not start a process"):
        start()
    assert tier_guard == ["start a process"]  # the test fails at its end even where the code under test caught it ...
    tier_guard.clear()  # ... but this one expects it


def test_a_unit_test_cannot_open_a_socket(tier_guard):
    with socket.socket() as s, pytest.raises(TierError, match="a test of the unit tier may not open a socket"):
        s.bind(("127.0.0.1", 0))
    assert tier_guard == ["open a socket"]
    tier_guard.clear()

