"""Exceptions raised by fnnp-opt.

Every error derives from :class:`FnnpError`, so a caller (the CLI) can turn any of
them into one line on stderr. Messages state the rule, the value received and the
remedy.
"""

from __future__ import annotations

import contextvars
from contextlib import contextmanager
from typing import Iterator

# whether messages name settings as Python arguments (python_names) rather than command-line flags
_PYTHON_NAMES: contextvars.ContextVar[bool] = contextvars.ContextVar("fnnp_opt_python_names", default=False)


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
        again = (
            "call it again to resume (the error's __cause__ holds the traceback)"
            if _PYTHON_NAMES.get()
            else "run the same command again to resume (--debug shows the traceback)"
        )
        super().__init__(
            f"trial {number} failed: {describe(cause)}; the study keeps what was evaluated: fix the cause and {again}"
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


# --------------------------------------------------------------------------- naming a setting in a message

# settings whose Python argument is named otherwise than the command-line flag
_ARGUMENT = {"flops": "budget", "latency": "budget", "flops_tolerance": "tolerance", "latency_tolerance": "tolerance"}
_UNSET = object()


def option(key: str, value: object = _UNSET) -> str:
    """How a message names the setting ``key`` (a :class:`fnnp_opt.config.RunConfig` field): its flag on the
    command line (``--max-rate``, or ``--max-rate 0.7`` with ``value``), its argument inside :func:`python_names`
    (``max_rate=``, ``max_rate=0.7``), as the Python API calls fnnp-opt."""
    if _PYTHON_NAMES.get():
        name = _ARGUMENT.get(key, key)
        return f"{name}=" if value is _UNSET else f"{name}={value!r}"
    flag = "--" + key.replace("_", "-")
    return flag if value is _UNSET else f"{flag} {value}"


def repeated(key: str, values: list[str]) -> str:
    """A list setting as a message names it: the flag once per value on the command line (``--exclude 'a'
    --exclude 'b'``), the argument with a list inside :func:`python_names` (``exclude=['a', 'b']``)."""
    if _PYTHON_NAMES.get():
        return f"{_ARGUMENT.get(key, key)}={list(values)!r}"
    return " ".join(f"--{key.replace('_', '-')} '{v}'" for v in values)


@contextmanager
def python_names() -> Iterator[None]:
    """Within the block, error messages name settings as Python arguments (:func:`option`)."""
    token = _PYTHON_NAMES.set(True)
    try:
        yield
    finally:
        _PYTHON_NAMES.reset(token)
