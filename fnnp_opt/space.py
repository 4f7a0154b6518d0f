"""The search space: which channel groups are searchable, their names and bounds.

Computed once from the model. Each group gets one ratio in [0, R] under a stable,
readable Optuna parameter name: ``ratio.<root conv>`` for the internal conv of a
block (with its depthwise conv, if any), ``ratio.<stage>.residual`` for channels coupled
by residual additions.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from fnnp_opt.errors import UsageError, option
from fnnp_opt.prune import GroupInfo

PREFIX = "ratio."


@dataclass(frozen=True)
class Dimension:
    """One searchable group: one ratio of the strategy vector."""

    name: str  # readable name; the Optuna parameter is ``ratio.<name>``
    root: str  # root conv of the Torch-Pruning group
    channels: int  # channels of the group in the base model
    coupled: bool  # True when several convs share these channels (residual sums)
    producers: tuple[str, ...]  # convs whose filters are removed together

    @property
    def param(self) -> str:
        return PREFIX + self.name


def _common_prefix(names: tuple[str, ...]) -> str:
    parts = [n.split(".") for n in names]
    prefix = []
    for level in zip(*parts):
        if len(set(level)) > 1:
            break
        prefix.append(level[0])
    return ".".join(prefix)


def _dimension(group: GroupInfo) -> Dimension:
    # a depthwise conv follows its input's channels; it does not make a group a shared one
    coupled = len([p for p in group.producers if p not in group.depthwise]) > 1
    if coupled:
        stem = _common_prefix(group.producers) or "+".join(dict.fromkeys(p.split(".")[0] for p in group.producers))
        name = f"{stem}.residual"
    else:
        name = group.root
    return Dimension(name, group.root, group.channels, coupled, group.producers)


@dataclass(frozen=True)
class SearchSpace:
    """The strategy vector's dimensions and their common upper bound R."""

    dims: tuple[Dimension, ...]
    max_rate: float  # R: each ratio lies in [0, R]

    @classmethod
    def from_groups(cls, groups: list[GroupInfo], max_rate: float) -> "SearchSpace":
        check_max_rate(max_rate)
        dims, seen = [], set()
        for g in groups:
            d = _dimension(g)
            if d.name in seen:  # two shared groups under one prefix: name them by their root instead
                d = Dimension(f"{g.root}.shared", d.root, d.channels, d.coupled, d.producers)
            seen.add(d.name)
            dims.append(d)
        return cls(tuple(dims), max_rate)

    def __len__(self) -> int:
        return len(self.dims)

    def suggest(self, trial) -> dict[str, float]:
        """Ask an Optuna trial for one ratio per dimension; returns {root: ratio}."""
        return {d.root: trial.suggest_float(d.param, 0.0, self.max_rate) for d in self.dims}

    def from_params(self, params: dict[str, float]) -> dict[str, float]:
        """Map Optuna parameters (``ratio.<name>``) back to {root: ratio}."""
        return {d.root: float(params[d.param]) for d in self.dims}

    def named(self, ratios: dict[str, float]) -> dict[str, float]:
        """{root: ratio} as {dimension name: ratio}."""
        return {d.name: float(ratios[d.root]) for d in self.dims}

    def from_named(self, named: dict[str, float]) -> dict[str, float]:
        """The inverse of :meth:`named`."""
        return {d.root: float(named[d.name]) for d in self.dims}

    def uniform(self, ratio: float) -> dict[str, float]:
        """The same ratio for every dimension, as {root: ratio}."""
        return {d.root: ratio for d in self.dims}

    def describe(self) -> list[dict]:
        return [
            {"param": d.param, "root": d.root, "channels": d.channels, "coupled": d.coupled, "convs": list(d.producers)}
            for d in self.dims
        ]

    def fingerprint(self) -> str:
        blob = json.dumps({"R": self.max_rate, "dims": self.describe()}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def check_max_rate(max_rate: float) -> None:
    """Raise :class:`UsageError` unless ``max_rate`` (R) is a number in (0, 1)."""
    if isinstance(max_rate, bool) or not isinstance(max_rate, (int, float)) or not 0.0 < max_rate < 1.0:
        raise UsageError(f"{option('max_rate')} must be in (0, 1), got {max_rate}; e.g. {option('max_rate', 0.7)}")


def uniform_words(ratios: dict[str, float]) -> str:
    """A uniform strategy's ratios in words: ``ratio 0.289 everywhere``, or, where the groups' whole channel counts
    made the window need it, the range its groups were cut to from one ratio."""
    low, high = min(ratios.values()), max(ratios.values())
    if high - low < 5e-7:
        return f"ratio {high:.4f} everywhere"
    return f"ratios {low:.4f}-{high:.4f} (one ratio in whole channels: some groups cut one channel step further)"
