from __future__ import annotations

from fnnp_opt.progress import LineProgress


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_line_progress_prints_at_a_steady_pace_and_once_at_the_end():
    clock, lines = FakeClock(), []
    progress = LineProgress(lines.append, every_s=10.0, clock=clock)
    with progress.task("search", 30) as advance:
        for _ in range(30):
            clock.t += 2.0  # a candidate every 2 s: a line every 5 candidates
            advance(1)
    assert lines[0] == "search: 5/30 (17%), 0:00:10"
    assert len(lines) == 30 * 2 // 10 + 1 and lines[-1] == "search: 30/30 (100%) done, 0:01:00"


def test_short_tasks_and_unknown_totals_stay_plain():
    clock, lines = FakeClock(), []
    progress = LineProgress(lines.append, every_s=10.0, clock=clock)
    with progress.task("calibrate", 10) as advance:  # shorter than the pace: silent
        for _ in range(10):
            clock.t += 0.1
            advance(1)
    assert lines == []
    with progress.task("stream", None) as advance:
        clock.t += 11
        advance(3)
    assert lines == ["stream: 3, 0:00:11", "stream: 3 done, 0:00:11"]
