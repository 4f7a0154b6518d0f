"""The narrow interface through which long library work reports progress.

The library never prints. It calls ``progress.task(description, total)`` and advances
the returned handle; the CLI passes an implementation that draws progress bars.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, contextmanager
from typing import Callable, Iterator, Protocol

Advance = Callable[[int], None]


class Progress(Protocol):
    """Receives progress reports from long-running library calls."""

    def task(self, description: str, total: int | None) -> AbstractContextManager[Advance]:
        """Open a task of ``total`` steps (None: unknown); the handle advances it by n."""
        ...


class NullProgress:
    """Progress that reports nothing (the library default)."""

    @contextmanager
    def task(self, description: str, total: int | None) -> Iterator[Advance]:
        yield lambda n=1: None


NULL = NullProgress()
