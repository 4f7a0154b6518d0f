"""Exceptions raised by fnnp-opt.

Every error derives from :class:`FnnpError`, so a caller (the CLI) can turn any of
them into one line on stderr. Messages state the rule, the value received and the
remedy.
"""

from __future__ import annotations


class FnnpError(Exception):
    """Raised for any failure that fnnp-opt reports to the user as one line."""

    exit_code = 1


class UsageError(FnnpError):
    """Raised when an option or recipe value is invalid."""

    exit_code = 2


class DataError(FnnpError):
    """Raised when a dataset is missing or its files are malformed."""


class CheckpointError(FnnpError):
    """Raised when a checkpoint is missing, corrupt or does not fit the model."""


class BudgetError(UsageError):
    """Raised when a FLOPs budget is unparsable or unreachable by the search space."""


class StorageError(FnnpError):
    """Raised when an Optuna storage is unreachable or holds an incompatible study."""


class OutputError(FnnpError):
    """Raised when an output path cannot be written."""


class ModelError(UsageError):
    """Raised when a model name is unknown or an architecture cannot be pruned."""


class MissingExtraError(UsageError):
    """Raised when an optional feature needs packages that are not installed (an extra of fnnp-opt)."""


class TrialError(FnnpError):
    """Raised when a candidate's evaluation fails on an unexpected error; its trial is marked FAIL in the study."""

    def __init__(self, number: int, cause: BaseException) -> None:
        super().__init__(
            f"trial {number} failed: {describe(cause)}; the study keeps what was evaluated: fix the cause and run "
            "the same command again to resume (--debug shows the traceback)"
        )
        self.number = number
        self.exit_code = cause.exit_code if isinstance(cause, FnnpError) else 1


def describe(exc: BaseException, limit: int | None = None) -> str:
    """``exc`` in one line: an :class:`FnnpError`'s message, or any other error's type and first line (cut to
    ``limit`` characters when given)."""
    if isinstance(exc, FnnpError):
        return str(exc)
    first = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")[:limit]
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def few(items: list[str], n: int = 3) -> str:
    """The first ``n`` of ``items`` joined by commas, and how many more there are: ``a, b, c (+4 more)``."""
    more = f" (+{len(items) - n} more)" if len(items) > n else ""
    return ", ".join(items[:n]) + more
