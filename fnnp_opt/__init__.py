"""fnnp-opt: EagleEye filter-pruning search (adaptive-BN evaluation) on Optuna, for any PyTorch CNN.

The public API (each name documented in docs/api/):

* :func:`search` prunes a model in one call and returns a :class:`SearchResult`;
* :class:`Problem` and :class:`Objective` run the same search in your own Optuna study;
* :func:`finetune` is fnnp-opt's fine-tune (with distillation) for a DataLoader;
* :func:`save` and :func:`load` keep a pruned network of any class without pickle (:class:`Plan`);
  :func:`load_pruned` reloads an export of a registry model;
* :mod:`fnnp_opt.commands` runs the command-line tool's commands from Python;
* every error is an :class:`FnnpError`.

``import fnnp_opt`` imports neither torch nor Optuna: the names above load their modules when first used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from fnnp_opt.errors import (
    BudgetError,
    CheckpointError,
    DataError,
    FnnpError,
    ModelError,
    OutputError,
    StorageError,
    TrialError,
    UsageError,
)

if TYPE_CHECKING:
    from fnnp_opt.api import Objective, SearchResult, finetune, search
    from fnnp_opt.evaluate import NonFiniteError
    from fnnp_opt.export import load_pruned
    from fnnp_opt.plan import Plan, load, save
    from fnnp_opt.problem import Problem

__version__ = "0.1.0"

# public name -> the module that defines it, imported on first use
_LAZY = {
    "search": "fnnp_opt.api",
    "SearchResult": "fnnp_opt.api",
    "Objective": "fnnp_opt.api",
    "finetune": "fnnp_opt.api",
    "Problem": "fnnp_opt.problem",
    "Plan": "fnnp_opt.plan",
    "save": "fnnp_opt.plan",
    "load": "fnnp_opt.plan",
    "load_pruned": "fnnp_opt.export",
    "NonFiniteError": "fnnp_opt.evaluate",
}

__all__ = [
    "BudgetError",
    "CheckpointError",
    "DataError",
    "FnnpError",
    "ModelError",
    "NonFiniteError",
    "Objective",
    "OutputError",
    "Plan",
    "Problem",
    "SearchResult",
    "StorageError",
    "TrialError",
    "UsageError",
    "finetune",
    "load",
    "load_pruned",
    "save",
    "search",
]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'fnnp_opt' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
