"""The narrow interface through which long library work reports progress.

The library never prints. It calls ``progress.task(description, total)`` and advances
the returned handle; the CLI passes an implementation that draws progress bars on a
terminal, and :class:`LineProgress` (plain lines at a steady pace) elsewhere.
"""

from __future__ import annotations

import time
from contextlib import AbstractContextManager, contextmanager
from typing import Callable, Iterator, Protocol

Advance = Callable[[int], None]
LOG_LINE = "%(asctime)s %(levelname)s %(message)s"  # a log line off a terminal (files, pipes, CI, search workers)


class Stopwatch(dict):
    """Seconds per stage, summed over ``with stopwatch(stage):`` blocks (a trial's timings, a run's stages)."""

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        t = time.perf_counter()
        try:
            yield
        finally:
            self[stage] = self.get(stage, 0.0) + time.perf_counter() - t


class Progress(Protocol):
    """Receives progress reports from long-running library calls."""

    def task(self, description: str, total: int | None) -> AbstractContextManager[Advance]:
        """Open a task of ``total`` steps (None: unknown); the handle advances it by n."""
        ...


def _advance_nothing(n: int = 1) -> None:
    """The handle of a task that reports nothing."""


class NullProgress:
    """Progress that reports nothing (the library default)."""

    @contextmanager
    def task(self, description: str, total: int | None) -> Iterator[Advance]:
        yield _advance_nothing


NULL = NullProgress()


class LineProgress:
    """Progress as plain lines, for logs, pipes and CI (where bars are not drawn).

    A task prints ``description k/n (p%), elapsed`` at most every ``every_s`` seconds while it advances, and a
    final line when it ends, if it printed before. Tasks shorter than ``every_s`` print nothing, so the
    per-candidate passes of a search stay quiet while the search itself reports k/n.
    """

    def __init__(self, emit: Callable[[str], None], every_s: float = 10.0, clock: Callable[[], float] = time.monotonic):
        self.emit, self.every_s, self.clock = emit, every_s, clock

    @contextmanager
    def task(self, description: str, total: int | None) -> Iterator[Advance]:
        start = last = self.clock()
        done, printed = 0, False

        def line(what: str = "") -> str:
            of = f"/{total} ({done / total:.0%})" if total else ""
            return f"{description}: {done}{of}{what}, {_clock(self.clock() - start)}"

        def advance(n: int = 1) -> None:
            nonlocal done, last, printed
            done += n
            now = self.clock()
            if now - last >= self.every_s:
                self.emit(line())
                last, printed = now, True

        yield advance
        if printed:
            self.emit(line(" done"))


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}"
