"""Timing Optuna trials from outside: seconds inside the objective, and wall seconds per trial."""

from __future__ import annotations

import time


class TrialClock:
    """Wraps an objective; pass ``clock.tick`` as a callback. Per trial number, ``inside`` holds the
    objective's seconds and ``walls`` the seconds since the previous trial ended (ask + objective +
    tell + callbacks), so ``walls[n] - inside[n]`` is the study's own time for trial ``n``."""

    def __init__(self, objective) -> None:
        self.objective = objective
        self.inside: dict[int, float] = {}
        self.walls: dict[int, float] = {}
        self._last = time.perf_counter()

    def __call__(self, trial):
        t0 = time.perf_counter()
        try:
            return self.objective(trial)
        finally:
            self.inside[trial.number] = time.perf_counter() - t0

    def tick(self, study, trial) -> None:
        now = time.perf_counter()
        self.walls[trial.number] = now - self._last
        self._last = now

    def outside(self, number: int) -> float:
        return self.walls[number] - self.inside[number]
