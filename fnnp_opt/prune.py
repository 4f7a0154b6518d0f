"""L1 filter pruning into a physically smaller network (the only user of Torch-Pruning).

The dependency graph is traced once per base model. Each coupled group of channels
(the filters of a conv plus everything that must shrink with them: its BN, the
consumers' input channels, and for residual stages every conv feeding the same sum)
is pruned as one unit, keyed by its root conv.

The paper's criterion ranks a group's channels by the L1 norm of the pruned conv's
own filters. For a residual group, several convs lose the same channel index, so a
channel's score is the sum of the L1 norms of its filters in all of them.
"""

from __future__ import annotations

import copy
import fnmatch
import logging
import math
import re
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from fnnp_opt.errors import ModelError, UsageError, option, repeated
from fnnp_opt.probe import EVAL, RUNS, Failure, brief, first_failure, runs_until, tracked

log = logging.getLogger(__name__)

CUT = "cut"  # the run of a :class:`Failure` in which Torch-Pruning itself could not cut the channels


@dataclass(frozen=True)
class GroupInfo:
    """One set of output channels that must be pruned together."""

    root: str  # the conv whose out-channels key the group
    channels: int  # channel count of the group in the base model
    producers: tuple[str, ...]  # convs/linears whose out-channels the group removes
    consumers: tuple[str, ...]  # layers whose in-channels (or features) shrink with it
    depthwise: tuple[str, ...] = ()  # the producers that are depthwise convs (they follow their input)
    block: int = 1  # channels go in blocks of this: the group count of a grouped conv it feeds or is
    # kept channels are a multiple of this: ``block``, and the num_groups of every GroupNorm that
    # normalises the group (it splits its channels into that many equal groups)
    multiple: int = 1


@dataclass(frozen=True)
class _Step:
    """One pruning operation of a group's plan: a handler applied to a module or parameter."""

    name: str  # dotted name of the module (or parameter) in the model
    is_param: bool  # an unwrapped nn.Parameter, replaced rather than edited in place
    handler: object  # Torch-Pruning's pruning function
    pruning_dim: int  # the dimension the handler cuts
    idxs: np.ndarray  # indices in the target, for every channel of the group
    root_idxs: np.ndarray  # the group channel each index belongs to


@dataclass(frozen=True)
class Shaping:
    """Channel-count rules applied to every group: rounding, a floor, and excluded layers."""

    round_to: int = 1  # kept channels are a multiple of this (unless a group has fewer)
    min_channels: int = 1  # never keep fewer channels than this (nor more than the group has)
    exclude: tuple[str, ...] = ()  # glob patterns of layer names whose groups are never pruned

    def __post_init__(self) -> None:
        if isinstance(self.round_to, bool) or not isinstance(self.round_to, int) or self.round_to < 1:
            raise UsageError(
                f"{option('round_to')} must be a whole number >= 1, got {self.round_to!r}; e.g. {option('round_to', 8)}"
            )
        if isinstance(self.min_channels, bool) or not isinstance(self.min_channels, int) or self.min_channels < 1:
            raise UsageError(f"{option('min_channels')} must be a whole number >= 1, got {self.min_channels!r}")

    def kept(self, ratio: float, channels: int, block: int = 1) -> int:
        """Channels a group of ``channels`` keeps at ``ratio``; a multiple of ``block`` (the group count of
        grouped convs, the num_groups of GroupNorms: :attr:`GroupInfo.multiple`)."""
        keep = channels - int(round(ratio * channels))
        step = math.lcm(self.round_to, block)
        if step > 1:
            keep = max(int(round(keep / step)) * step, step)
        keep = max(keep, self.min_channels, 1)
        if block > 1:
            keep = -(-keep // block) * block
        return int(min(channels, keep))

    def kept_below(self, channels: int, block: int = 1) -> int:
        """The most channels short of all ``channels`` a group keeps at some ratio (``channels`` when none)."""
        cuts = (self.kept(i / channels, channels, block) for i in range(1, channels))  # kept falls as i grows
        return next((k for k in cuts if k < channels), channels)

    def excludes(self, group: GroupInfo, patterns: tuple[str, ...] | None = None) -> bool:
        """Whether a pattern of ``--exclude`` (or of ``patterns``) matches a layer of ``group``.

        A pattern is a glob over module names, matched against each layer's name and each of its
        parents' names: a module name covers its children (``layer3`` excludes ``layer3.0.conv1``).
        """
        names = [
            ".".join(parts[:k])
            for n in (group.root, *group.producers)
            for parts in [n.split(".")]
            for k in range(1, len(parts) + 1)
        ]
        return any(
            fnmatch.fnmatchcase(n, pat) for pat in (self.exclude if patterns is None else patterns) for n in names
        )

    def check_exclude(self, groups: list[GroupInfo]) -> None:
        """Raise :class:`UsageError` for an ``--exclude`` pattern that matches no layer of ``groups``."""
        for pat in self.exclude:
            if not any(self.excludes(g, (pat,)) for g in groups):
                names = list(dict.fromkeys(n for g in groups for n in (g.root, *g.producers)))
                more = f" (+{len(names) - 10} more; `fnnp-opt space` lists them)" if len(names) > 10 else ""
                raise UsageError(
                    f"{repeated('exclude', [pat])} matches no prunable layer; the layers are {', '.join(names[:10])}{more}; a "
                    "pattern is a glob over module names, and a module covers its children ('layer3' or 'layer3.*')"
                )


@contextmanager
def _trainable(model: nn.Module) -> Iterator[None]:
    """Every parameter of ``model`` requires a gradient within the block (the ones that did not, as a frozen or
    deployed model's, are given back as they were): Torch-Pruning traces the graph through autograd, so layers
    before the first parameter that requires one would not be seen, nor pruned."""
    frozen = [p for p in model.parameters() if not p.requires_grad]
    for p in frozen:
        p.requires_grad_(True)
    try:
        yield
    finally:
        for p in frozen:
            p.requires_grad_(False)


def _conv_like(module: nn.Module) -> bool:
    return isinstance(module, (nn.modules.conv._ConvNd, nn.Linear))


def _is_depthwise(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.conv._ConvNd) and module.groups > 1 and module.groups == module.out_channels


class Pruner:
    """Prunes copies of one base model by per-group ratios, ranking filters by L1 norm.

    Every group's pruning plan (which indices of which layers go with each of its channels)
    is built once, at construction; pruning a copy then only slices tensors.
    """

    def __init__(
        self,
        model: nn.Module,
        example_input: torch.Tensor,
        classifier: str | Sequence[str],
        shaping: Shaping = Shaping(),
        check: bool = True,
    ) -> None:
        """``classifier``: the name of the layer whose outputs are the logits, or the names of every layer whose
        outputs must keep all their channels (the heads of a model that is not a classifier); Torch-Pruning's
        ``ignored_layers``."""
        self.base = model.eval()
        self.shaping = shaping
        self._names = {m: n for n, m in model.named_modules()}
        self._params = {p: n for n, p in model.named_parameters()}
        ignored = []
        for name in [classifier] if isinstance(classifier, str) else classifier:
            try:
                ignored.append(model.get_submodule(name))
            except AttributeError:
                raise ModelError(f"layer {name!r} is not a submodule of the model") from None
        with tracked(model) as tracker, _trainable(model):
            try:
                self.graph = tp.DependencyGraph().build_dependency(model, example_inputs=example_input)
                groups = list(
                    self.graph.get_all_groups(ignored_layers=ignored, root_module_types=[nn.Conv2d, nn.Linear])
                )
            except Exception as exc:
                where = self._graph_node(exc) or tracker.where()
                raise ModelError(
                    f"Torch-Pruning could not trace the model{where} ({brief(exc)}); "
                    "see docs/models.md for the architectures that cannot be pruned"
                ) from None
        model.eval()  # tracing may leave the model in another mode
        order = {n: i for i, n in enumerate(self._names.values())}
        described: list[tuple[GroupInfo, list[_Step], object]] = []
        for g in groups:
            info, plan = self._describe(g)
            if info is not None:
                described.append((info, plan, g))
        described.sort(key=lambda d: order[d[0].root])
        self.all_groups: list[GroupInfo] = [info for info, _, _ in described]
        # Torch-Pruning's own group of each root: what its importance criteria score (fnnp_opt.baselines)
        self.tp_groups = {info.root: g for info, _, g in described}
        self._by_root = {info.root: info for info in self.all_groups}
        shaping.check_exclude(self.all_groups)
        kept = [g for g in self.all_groups if not shaping.excludes(g)]
        # a group whose channels feed a grouped conv in whole multiples of all of them (a depthwise conv with a
        # channel multiplier fed by a conv) keeps every channel at any ratio and any --round-to or --min-channels:
        # it is no dimension of the search (one the user's rules keep whole stays: check_reachable names them)
        self.groups: list[GroupInfo] = [g for g in kept if Shaping().kept_below(g.channels, g.multiple) < g.channels]
        for g in kept:
            if g not in self.groups:
                log.info("group %s is not searched: its %d channels can only be kept whole", g.root, g.channels)
        self._plans = {info.root: plan for info, plan, _ in described}
        self._order = {info.root: self._l1_order(info) for info in self.groups}
        # what _check cuts: the fewest and the most channels a study may cut from each group, by position
        self._positions = {g.root: _ranked(np.arange(g.channels, dtype=float), g.block) for g in self.groups}
        self._smallest_cut = {g.root: g.channels - shaping.kept_below(g.channels, g.multiple) for g in self.groups}
        self._largest_cut = {g.root: g.channels - shaping.kept(1.0, g.channels, g.multiple) for g in self.groups}
        if not self.groups:
            raise ModelError(
                "the model has no prunable channel group"
                + (f" outside {option('exclude', list(shaping.exclude))}" if shaping.exclude else "")
            )
        if check:
            self._check(example_input)

    def _graph_node(self, exc: Exception) -> str:
        """Name the graph node (and the nearest module feeding it) at which Torch-Pruning's analysis raised."""
        from torch_pruning.dependency.node import Node

        tb, node = exc.__traceback__, None
        while tb is not None:  # the innermost frame's operation node (an add, a reshape ...) is the culprit
            for value in tb.tb_frame.f_locals.values():
                if isinstance(value, Node) and value.module not in self._names:
                    node = value
            tb = tb.tb_next
        if node is None:
            return ""
        seen, queue = set(), [node]
        while queue:  # breadth-first back through the inputs to the nearest named module
            n = queue.pop(0)
            if n.module in self._names and self._names[n.module]:
                if n is node:
                    return f" in module {self._names[n.module]!r}"
                return f" at {getattr(node, 'name', 'an operation')}, after module {self._names[n.module]!r}"
            seen.add(id(n))
            queue += [i for i in n.inputs if id(i) not in seen]
        return f" at operation {getattr(node, 'name', '?')}"

    # ----------------------------------------------------------------- structure

    def _describe(self, group) -> tuple[GroupInfo | None, list[_Step]]:
        root = group[0].dep.target.module
        if root not in self._names:
            return None, []
        producers, consumers, depthwise, plan = [], [], [], []
        for item in group:
            dep = item.dep
            target = dep.target.module
            if isinstance(target, nn.Parameter):
                name, is_param = self._params.get(target), True
            else:
                name, is_param = self._names.get(target), False
            if name is None:  # a functional node (add, cat, flatten ...): nothing to cut
                continue
            plan.append(
                _Step(
                    name,
                    is_param,
                    dep.handler,
                    dep.target.pruning_dim,
                    np.asarray(item.idxs, dtype=np.int64),
                    np.asarray(item.root_idxs, dtype=np.int64),
                )
            )
            if is_param:
                consumers.append(name)
            elif _conv_like(target) and self.graph.is_out_channel_pruning_fn(dep.handler):
                producers.append(name)
                if _is_depthwise(target):
                    depthwise.append(name)
            else:
                consumers.append(name)
        block = norm_groups = 1
        for step in plan:
            module = None if step.is_param else self.base.get_submodule(step.name)
            if isinstance(module, nn.modules.conv._ConvNd) and module.groups > 1 and not _is_depthwise(module):
                block = math.lcm(block, module.groups)
            if isinstance(module, nn.GroupNorm):
                norm_groups = math.lcm(norm_groups, module.num_groups)
        root_name = self._names[root]
        plain = [p for p in producers if p not in depthwise]
        if root_name in depthwise and plain:  # name the group after the conv that makes its channels
            root_name = plain[0]
        info = GroupInfo(
            root=root_name,
            channels=self.graph.get_out_channels(root),
            producers=tuple(dict.fromkeys(producers)),
            consumers=tuple(dict.fromkeys(consumers)),
            depthwise=tuple(dict.fromkeys(depthwise)),
            block=block,
            multiple=math.lcm(block, norm_groups),
        )
        return info, plan

    def _l1_order(self, group: GroupInfo) -> torch.Tensor:
        """Channel indices of ``group`` from the least to the most important.

        A channel's score is the L1 norm of its filters, summed over every producer that loses it.
        """
        score = np.zeros(group.channels)
        producers = set(group.producers)
        for step in self._plans[group.root]:
            if step.name not in producers or step.is_param:
                continue
            weight = self.base.get_submodule(step.name).weight
            assert isinstance(weight, torch.Tensor)  # a producer: a conv or linear layer
            w = weight.detach()
            l1 = w.abs().flatten(1).sum(1).double().numpy()
            np.add.at(score, step.root_idxs, l1[step.idxs])
        return _ranked(score, group.block)

    def _split_grouped_conv(self, group: GroupInfo) -> str:
        """The grouped conv of which ``group`` cuts only some input channels, or "" when there is none.

        A grouped conv keeps equal groups only when every one of them loses the same positions; a
        group that feeds part of its inputs (one input of a concatenation, say) would cut some of its
        groups and not the others, which no conv of equal groups can hold.
        """
        for step in self._plans[group.root]:
            module = None if step.is_param else self.base.get_submodule(step.name)
            if (
                isinstance(module, nn.modules.conv._ConvNd)
                and module.groups > 1
                and not _is_depthwise(module)
                and not self.graph.is_out_channel_pruning_fn(step.handler)
                and not np.array_equal(np.sort(step.idxs), np.arange(module.in_channels))
            ):
                return step.name
        return ""

    def _probe(
        self, groups: list[GroupInfo], example: torch.Tensor, classes: tuple[int, ...], runs: tuple[str, ...] = RUNS
    ) -> Failure | None:
        """Cut ``groups`` as a study may and run the copy as a study does; the first failure, or None.

        Two cuts, by channel position rather than by weight, so that the outcome does not hang on the
        weights: the smallest cut each group allows, from its first channels (a ``chunk`` or ``split``
        of the channels then comes out uneven), run in ``runs`` (by default every mode of
        :data:`fnnp_opt.probe.RUNS`); and the largest, keeping each group's last channels, run in eval mode.
        """
        for cut, runs in ((self._smallest_cut, runs), (self._largest_cut, (EVAL,))):
            gone = {g.root: self._positions[g.root][: cut[g.root]] for g in groups if cut.get(g.root)}
            if not gone:
                continue
            try:
                model = self._cut(gone)
            except Exception as exc:  # Torch-Pruning's handlers refuse the indices
                return Failure(CUT, "", brief(exc))
            failure = first_failure(model, example, classes, runs, copied=True)
            if failure is not None:
                return failure
        return None

    def _check(self, example: torch.Tensor) -> None:
        """Refuse the model, in one line naming every group that cannot be cut and the ``--exclude`` patterns
        that leave them alone, when a cut of its groups breaks a run of the pruned copy.

        All groups are cut at once first (one probe when the model prunes). When that breaks, the
        groups are probed in halves down to the single groups that break alone; where only a set of
        groups breaks, the last group of the shortest breaking run of them is taken. The patterns
        suggested are checked: the groups they leave are probed again, until those prune.
        """
        with torch.no_grad():
            classes = tuple(self.base.eval()(example).shape[1:])
        shaping = self.shaping
        cuttable = [g for g in self.groups if self._smallest_cut[g.root]]
        split = {g.root: conv for g in cuttable if (conv := self._split_grouped_conv(g))}
        failures: dict[str, Failure] = {}
        breaking = [g for g in cuttable if g.root in split]
        left = [g for g in cuttable if g.root not in split]
        failure = self._probe(left, example, classes)
        if failure is not None and (base := first_failure(self.base, example, classes, runs_until(failure.run))):
            raise ModelError(base.refusal("the model"))  # not the cut: the model itself fails in a run
        while failure is not None:
            runs = runs_until(failure.run)  # the search probes only as far as the failing run
            found = self._isolate(left, example, classes, runs, failure, failures)
            if not found:  # only a set of groups breaks: the group that completes the smallest breaking prefix
                found = [self._completing(left, example, classes, runs, failure, failures)]
            breaking += found
            patterns = tuple(_literal(g.root) for g in breaking)
            left = [g for g in cuttable if not shaping.excludes(g, patterns)]
            failure = self._probe(left, example, classes)
        if breaking:
            raise ModelError(self._refusal(breaking, left, split, failures))

    def _isolate(
        self,
        groups: list[GroupInfo],
        example: torch.Tensor,
        classes: tuple[int, ...],
        runs: tuple[str, ...],
        failure: Failure | None,
        failures: dict[str, Failure],
    ) -> list[GroupInfo]:
        """The groups of ``groups`` (whose cut together fails with ``failure``, or None when not yet probed)
        that break in ``runs`` when cut alone, found by probing halves; each one's failure goes into
        ``failures``."""
        if failure is None:
            failure = self._probe(groups, example, classes, runs)
        if failure is None:
            return []
        if len(groups) == 1:
            failures[groups[0].root] = failure
            return list(groups)
        half = len(groups) // 2
        return self._isolate(groups[:half], example, classes, runs, None, failures) + self._isolate(
            groups[half:], example, classes, runs, None, failures
        )

    def _completing(
        self,
        groups: list[GroupInfo],
        example: torch.Tensor,
        classes: tuple[int, ...],
        runs: tuple[str, ...],
        failure: Failure,
        failures: dict[str, Failure],
    ) -> GroupInfo:
        """The last group of the shortest prefix of ``groups`` whose cut fails in ``runs`` (all of ``groups``
        fail together, with ``failure``); the prefix's failure goes into ``failures``."""
        lo, hi = 1, len(groups)  # the prefix of hi groups fails; find the shortest one that does
        while lo < hi:
            mid = (lo + hi) // 2
            probed = self._probe(groups[:mid], example, classes, runs)
            if probed is None:
                lo = mid + 1
            else:
                hi, failure = mid, probed
        failures[groups[hi - 1].root] = failure
        return groups[hi - 1]

    def _refusal(
        self, breaking: list[GroupInfo], left: list[GroupInfo], split: dict[str, str], failures: dict[str, Failure]
    ) -> str:
        """The one line naming the groups that cannot be cut (``left`` are those the remedy leaves to cut)."""
        first = breaking[0]
        if first.root in split:
            why = (
                f"cutting group {first.root!r} would cut only some of the input channels of the grouped conv "
                f"{split[first.root]!r}, whose groups must stay equal"
            )
        elif failures[first.root].run == CUT:
            why = f"Torch-Pruning cannot cut group {first.root!r} ({failures[first.root].error})"
        else:
            f = failures[first.root]
            stage = "backward" if f.backward else "forward"
            why = (
                f"the pruned model's {stage} pass fails{f.where}, in {f.how}, when group {first.root!r} is cut "
                f"({f.error})"
            )
        names = ", ".join(repr(g.root) for g in breaking)
        if not left:
            outside = f" outside {option('exclude', list(self.shaping.exclude))}" if self.shaping.exclude else ""
            return f"{why}; no group{outside} of this architecture can be cut by fnnp-opt (see docs/models.md)"
        flags = repeated("exclude", [_literal(g.root) for g in breaking])
        which = f"group {names} of this architecture" if len(breaking) == 1 else f"groups {names} of this architecture"
        return f"{why}; fnnp-opt cannot cut {which}: add {flags} to prune the others (see docs/models.md)"

    # ----------------------------------------------------------------- pruning

    def removed_count(self, ratio: float, channels: int, block: int = 1) -> int:
        """Channels removed at ``ratio``: the nearest whole count, after --round-to and --min-channels."""
        return channels - self.shaping.kept(ratio, channels, block)

    def counts(self, ratios: dict[str, float]) -> dict[str, int]:
        """Channels removed from each group at ``ratios`` ({group root: ratio})."""
        unknown = set(ratios) - {g.root for g in self.groups}
        if unknown:
            raise ModelError(f"ratios name groups that do not exist: {sorted(unknown)}")
        return {g.root: self.removed_count(ratios.get(g.root, 0.0), g.channels, g.multiple) for g in self.groups}

    def prune(self, ratios: dict[str, float]) -> nn.Module:
        """Return a pruned deep copy of the base model; ``ratios`` maps group roots to [0, 1)."""
        return self.prune_counts(self.counts(ratios))

    def prune_counts(self, removed: dict[str, int]) -> nn.Module:
        """Return a deep copy of the base model with ``removed[root]`` lowest-L1 channels cut from each group."""
        return self._cut({root: self._order[root][:n] for root, n in removed.items() if n})

    def _cut(self, gone: dict[str, torch.Tensor]) -> nn.Module:
        """Return a deep copy of the base model with the channels ``gone[root]`` (indices into the group) cut.

        The plans index the base model. Where groups share a tensor (the inputs of a layer
        after a concatenation), their indices are merged and cut in one operation, so no
        group's cut shifts another's indices.
        """
        cuts: dict[tuple, list[int]] = {}
        for root, channels in gone.items():
            mask = np.zeros(self._by_root[root].channels, dtype=bool)
            mask[np.asarray(channels)] = True
            for step in self._plans[root]:
                key = (step.name, step.is_param, step.handler, step.pruning_dim)
                cuts.setdefault(key, []).extend(step.idxs[mask[step.root_idxs]].tolist())
        model = copy.deepcopy(self.base)
        for (name, is_param, handler, dim), idxs in cuts.items():
            idxs = sorted(set(idxs))
            if not idxs:
                continue
            handler.__self__.pruning_dim = dim
            if is_param:
                owner, _, attr = name.rpartition(".")
                parent = model.get_submodule(owner) if owner else model
                setattr(parent, attr, handler(getattr(parent, attr), idxs))
            else:
                handler(model.get_submodule(name), idxs)
        return model.eval()


def _literal(name: str) -> str:
    """An ``--exclude`` pattern that matches the module name ``name`` itself (its glob characters escaped)."""
    return re.sub(r"([*?[])", r"[\1]", name)


def _ranked(score: np.ndarray, block: int) -> torch.Tensor:
    """A group's channel indices by ascending ``score``; for a group in ``block`` equal blocks (the groups of a
    grouped conv), positions ranked by their score summed over the blocks, each listed in every block together,
    so that any prefix of ``k * block`` indices cuts the same positions from every block."""
    if block == 1:
        return torch.argsort(torch.from_numpy(score), stable=True)
    width = len(score) // block
    columns = np.argsort(score.reshape(block, width).sum(0), kind="stable")
    return torch.from_numpy((np.arange(block)[None, :] * width + columns[:, None]).reshape(-1))


# --------------------------------------------------------------------------- shapes


_RESIZED = (nn.Conv2d, nn.Linear, nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)


def layer_shapes(model: nn.Module) -> dict[str, dict]:
    """The architecture of a pruned net: the sizes of every conv, linear and norm layer, and the
    shape of every other parameter (a layer scale, a class token ...)."""
    shapes: dict[str, dict] = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            shapes[name] = {"in": m.in_channels, "out": m.out_channels, "groups": m.groups}
        elif isinstance(m, nn.Linear):
            shapes[name] = {"in": m.in_features, "out": m.out_features}
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            shapes[name] = {"features": m.num_features}
        elif isinstance(m, nn.LayerNorm):
            shapes[name] = {"normalized_shape": list(m.normalized_shape)}
        elif isinstance(m, nn.GroupNorm):
            shapes[name] = {"groups": m.num_groups, "channels": m.num_channels}
        else:
            for pname, param in m.named_parameters(recurse=False):
                shapes[f"{name}.{pname}" if name else pname] = {"param": list(param.shape)}
    return shapes


_KINDS = (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


def layer_kinds(model: nn.Module) -> dict[str, str]:
    """The class name of every conv, linear and norm layer of ``model``, by module name: what pruning leaves as it
    is, so a fresh instance of the class a network was pruned from has the same."""
    return {name: type(m).__name__ for name, m in model.named_modules() if isinstance(m, _KINDS)}


def _resized(old: nn.Module, s: dict, name: str) -> nn.Module:
    if isinstance(old, nn.Conv2d) and {"in", "out", "groups"} <= set(s):
        # the ignores: torch's stubs type a conv's kernel_size, stride, padding and dilation tuple[int, ...] and
        # Conv2d's arguments int | tuple[int, int], though a Conv2d's attributes are those 2-tuples
        return nn.Conv2d(
            s["in"],
            s["out"],
            old.kernel_size,  # type: ignore[arg-type]
            old.stride,  # type: ignore[arg-type]
            old.padding,  # type: ignore[arg-type]
            old.dilation,  # type: ignore[arg-type]
            s["groups"],
            old.bias is not None,
            old.padding_mode,
        )
    if isinstance(old, nn.Linear) and {"in", "out"} <= set(s):
        return nn.Linear(s["in"], s["out"], old.bias is not None)
    if isinstance(old, nn.modules.batchnorm._BatchNorm) and "features" in s:
        return type(old)(s["features"], old.eps, old.momentum, old.affine, old.track_running_stats)
    if isinstance(old, nn.LayerNorm) and "normalized_shape" in s:
        new = copy.deepcopy(old)  # keeps subclasses (torchvision's LayerNorm2d) and their forward
        new.normalized_shape = tuple(s["normalized_shape"])
        for pname in ("weight", "bias"):
            if getattr(old, pname, None) is not None:
                setattr(new, pname, nn.Parameter(torch.empty(new.normalized_shape)))
        return new
    if isinstance(old, nn.GroupNorm) and {"groups", "channels"} <= set(s):
        return nn.GroupNorm(s["groups"], s["channels"], old.eps, old.affine)
    raise ModelError(f"the channel plan resizes {name!r}, a {type(old).__name__}, which cannot be resized")


def apply_shapes(model: nn.Module, shapes: dict[str, dict]) -> nn.Module:
    """Resize the layers of a freshly built ``model`` to ``shapes`` (weights are left uninitialised).

    A module registered under several names (``self.shared = self.block.conv``) is resized once
    and the new module set under every name, so the aliases stay one module.
    """
    aliases: dict[int, list[str]] = {}
    for alias, m in model.named_modules(remove_duplicate=False):
        aliases.setdefault(id(m), []).append(alias)
    for name, s in shapes.items():
        if "param" in s:
            owner, _, attr = name.rpartition(".")
            try:
                parent = model.get_submodule(owner) if owner else model
                getattr(parent, attr)
            except AttributeError:
                raise ModelError(f"the channel plan names parameter {name!r}, which the model does not have") from None
            setattr(parent, attr, nn.Parameter(torch.empty(s["param"])))
            continue
        try:
            old = model.get_submodule(name)
        except AttributeError:
            raise ModelError(f"the channel plan names layer {name!r}, which the model does not have") from None
        new = _resized(old, s, name)
        for alias in aliases.get(id(old), [name]):
            model.set_submodule(alias, new)
    return model
