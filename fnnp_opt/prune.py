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
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

from fnnp_opt.errors import ModelError


@dataclass(frozen=True)
class GroupInfo:
    """One set of output channels that must be pruned together."""

    root: str  # the conv whose out-channels key the group
    channels: int  # channel count of the group in the base model
    producers: tuple[str, ...]  # convs/linears whose out-channels the group removes
    consumers: tuple[str, ...]  # layers whose in-channels (or features) shrink with it


def _conv_like(module: nn.Module) -> bool:
    return isinstance(module, (nn.Conv2d, nn.Linear))


class Pruner:
    """Prunes copies of one base model by per-group ratios, ranking filters by L1 norm."""

    def __init__(self, model: nn.Module, example_input: torch.Tensor, classifier: str) -> None:
        self.base = model.eval()
        self._names = {m: n for n, m in model.named_modules()}
        try:
            clf = model.get_submodule(classifier)
        except AttributeError:
            raise ModelError(f"classifier {classifier!r} is not a submodule of the model") from None
        try:
            self.graph = tp.DependencyGraph().build_dependency(model, example_inputs=example_input)
        except Exception as exc:
            raise ModelError(f"Torch-Pruning could not trace the model ({type(exc).__name__}: {exc})") from None
        model.eval()  # tracing may leave the model in another mode
        order = {n: i for i, n in enumerate(self._names.values())}
        groups = self.graph.get_all_groups(ignored_layers=[clf], root_module_types=[nn.Conv2d, nn.Linear])
        infos = [self._describe(g) for g in groups]
        self.groups: list[GroupInfo] = sorted(infos, key=lambda g: order[g.root])
        self._order = {g.root: self._l1_order(g) for g in self.groups}

    # ----------------------------------------------------------------- structure

    def _describe(self, group) -> GroupInfo:
        root = group[0].dep.target.module
        producers, consumers = [], []
        for item in group:
            module = item.dep.target.module
            name = self._names.get(module)
            if name is None:  # a functional node (add, relu, ...)
                continue
            if _conv_like(module):
                out = self.graph.is_out_channel_pruning_fn(item.dep.handler)
                (producers if out else consumers).append(name)
            else:
                consumers.append(name)
        return GroupInfo(
            root=self._names[root],
            channels=self.graph.get_out_channels(root),
            producers=tuple(dict.fromkeys(producers)),
            consumers=tuple(dict.fromkeys(consumers)),
        )

    def _l1_order(self, group: GroupInfo) -> torch.Tensor:
        """Channel indices of ``group`` from the least to the most important."""
        score = torch.zeros(group.channels)
        for name in group.producers:
            w = self.base.get_submodule(name).weight.detach()
            score += w.abs().flatten(1).sum(1)
        return torch.argsort(score, stable=True)

    # ----------------------------------------------------------------- pruning

    @staticmethod
    def removed_count(ratio: float, channels: int) -> int:
        """Channels removed at ``ratio``: the nearest whole count, always keeping one."""
        return min(int(round(ratio * channels)), channels - 1)

    def counts(self, ratios: dict[str, float]) -> dict[str, int]:
        """Channels removed from each group at ``ratios`` ({group root: ratio})."""
        unknown = set(ratios) - {g.root for g in self.groups}
        if unknown:
            raise ModelError(f"ratios name groups that do not exist: {sorted(unknown)}")
        return {g.root: self.removed_count(ratios.get(g.root, 0.0), g.channels) for g in self.groups}

    def prune(self, ratios: dict[str, float]) -> nn.Module:
        """Return a pruned deep copy of the base model; ``ratios`` maps group roots to [0, 1)."""
        return self.prune_counts(self.counts(ratios))

    def prune_counts(self, removed: dict[str, int]) -> nn.Module:
        """Return a deep copy of the base model with ``removed[root]`` lowest-L1 channels cut from each group."""
        model = copy.deepcopy(self.base)
        for group in self.groups:
            n = removed.get(group.root, 0)
            if n == 0:
                continue
            idxs = self._order[group.root][:n].tolist()
            root = self.base.get_submodule(group.root)
            plan = self.graph.get_pruning_group(
                root, tp.prune_conv_out_channels if isinstance(root, nn.Conv2d) else tp.prune_linear_out_channels, idxs
            )
            for item in plan:
                name = self._names.get(item.dep.target.module)
                if name is not None:
                    item.dep.handler(model.get_submodule(name), item.idxs)
        return model.eval()


# --------------------------------------------------------------------------- shapes


def layer_shapes(model: nn.Module) -> dict[str, dict[str, int]]:
    """Channel counts of every conv, linear and BN layer: the architecture of a pruned net."""
    shapes: dict[str, dict[str, int]] = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            shapes[name] = {"in": m.in_channels, "out": m.out_channels, "groups": m.groups}
        elif isinstance(m, nn.Linear):
            shapes[name] = {"in": m.in_features, "out": m.out_features}
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            shapes[name] = {"features": m.num_features}
    return shapes


def apply_shapes(model: nn.Module, shapes: dict[str, dict[str, int]]) -> nn.Module:
    """Resize the layers of a freshly built ``model`` to ``shapes`` (weights are left uninitialised)."""
    for name, s in shapes.items():
        try:
            old = model.get_submodule(name)
        except AttributeError:
            raise ModelError(f"the channel plan names layer {name!r}, which the model does not have") from None
        if isinstance(old, nn.Conv2d):
            new = nn.Conv2d(
                s["in"],
                s["out"],
                old.kernel_size,
                old.stride,
                old.padding,
                old.dilation,
                s["groups"],
                old.bias is not None,
                old.padding_mode,
            )
        elif isinstance(old, nn.Linear):
            new = nn.Linear(s["in"], s["out"], old.bias is not None)
        elif isinstance(old, nn.modules.batchnorm._BatchNorm):
            new = type(old)(s["features"], old.eps, old.momentum, old.affine, old.track_running_stats)
        else:
            raise ModelError(f"the channel plan resizes {name!r}, a {type(old).__name__}, which cannot be resized")
        model.set_submodule(name, new)
    return model
