"""fnnp-opt: EagleEye filter-pruning search (adaptive-BN evaluation) on Optuna."""

from __future__ import annotations

from fnnp_opt.errors import FnnpError, UsageError

__all__ = ["FnnpError", "UsageError", "load_pruned"]
__version__ = "0.1.0"


def load_pruned(path):
    """Rebuild an exported pruned network (folder or ``pruned.json``) with its weights, without pickle."""
    from fnnp_opt.export import load_pruned as _load

    return _load(path)
