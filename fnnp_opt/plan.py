"""A pruned architecture as data (a :class:`Plan`), and a pruned network of any class saved and loaded without
pickle: the plan and every layer's sizes in JSON, the weights in safetensors.

:func:`load` applies the saved sizes to a fresh instance of the user's own class (as Torch-Pruning replays its
pruning history on a fresh model) and loads the weights into it. Networks of fnnp-opt's registry also load
without an instance (:func:`fnnp_opt.export.load_pruned`).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from torch import nn

from fnnp_opt.errors import CheckpointError, UsageError
from fnnp_opt.export import FORMAT, check_output_writable, load_pruned, read_plan, save_weights_and_card
from fnnp_opt.models import load_weights, read_state_dict
from fnnp_opt.prune import apply_shapes, layer_kinds, layer_shapes


@dataclass(frozen=True)
class Plan:
    """Which channels a pruned network keeps: the searched ratios and the sizes of every layer."""

    ratios: dict[str, float]  # searched group (its name in the study) -> share of its channels removed, in [0, R]
    channels: dict[str, int]  # searched group -> channels kept
    layers: dict[str, dict] = field(default_factory=dict)  # every layer's sizes after pruning (prune.layer_shapes)
    base_layers: dict[str, dict] = field(default_factory=dict)  # the same of the unpruned model

    def to_dict(self) -> dict:
        """The plan as plain JSON values (what :func:`save` writes as ``plan``)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: dict) -> "Plan":
        """The plan a :meth:`to_dict` wrote (a saved network's ``plan``)."""
        return cls(
            {str(k): float(v) for k, v in doc.get("ratios", {}).items()},
            {str(k): int(v) for k, v in doc.get("channels", {}).items()},
            dict(doc.get("layers", {})),
            dict(doc.get("base_layers", {})),
        )


def save(net: nn.Module, path: str | Path, plan: Plan | None = None) -> Path:
    """Save a pruned network (any ``nn.Module``) into the folder ``path``: ``pruned.safetensors`` (its weights)
    and ``pruned.json`` (its class, every layer's sizes, and ``plan`` when given). Returns the JSON's path.

    Nothing is pickled. Each file is written to a temporary name and moved into place, so an interrupted save
    leaves the previous one whole. Reload with :func:`load` and a fresh instance of the class.

    Raises:
        OutputError: ``path`` is a file, or cannot be written.
    """
    if not isinstance(net, nn.Module):
        raise UsageError(f"net must be a torch.nn.Module, got a {type(net).__name__}")
    if plan is not None and not isinstance(plan, Plan):
        raise UsageError(
            f"plan must be a fnnp_opt.Plan (result.plan, problem.plan(trial)) or None, got a {type(plan).__name__}"
        )
    if not isinstance(path, (str, os.PathLike)):
        raise UsageError(f"path must be a folder path, got a {type(path).__name__}")
    folder = Path(path)
    check_output_writable(folder, folder=True)
    cls = type(net)
    card = {
        "format": FORMAT,
        "class": f"{cls.__module__}.{cls.__qualname__}",
        "kinds": layer_kinds(net),
        **({"plan": plan.to_dict()} if plan is not None else {}),
        "layers": layer_shapes(net),
    }
    recipe = folder / "pruned.json"
    save_weights_and_card(net, folder / "pruned.safetensors", recipe, card)
    return recipe


def load(path: str | Path, model: nn.Module | None = None) -> nn.Module:
    """Load a network saved by :func:`save` (or exported by ``fnnp-opt run``) into ``model``, a fresh instance
    of the class it was pruned from (built as before pruning: same arguments, any weights): its layers are resized
    to the saved sizes and the saved weights loaded. Returns ``model``, in eval mode. Without ``model`` only an
    export of a registry model loads (:func:`fnnp_opt.export.load_pruned`).

    Raises:
        CheckpointError: the files are missing, damaged or not fnnp-opt's; ``model`` is not the class the network
            was pruned from, or was built with other sizes (the message names the first layer that differs).
    """
    if model is None:
        return load_pruned(Path(path))
    if not isinstance(model, nn.Module):
        raise UsageError(f"model= must be a fresh instance of the pruned network's class, got a {type(model).__name__}")
    doc, weights = read_plan(Path(path), needs=("layers",))
    where = weights.with_name("pruned.json")
    saved_kinds = doc.get("kinds")
    if isinstance(saved_kinds, dict):
        _check_same(layer_kinds(model), saved_kinds, where, "is a", "")
    plan = doc.get("plan")
    base = plan.get("base_layers") if isinstance(plan, dict) else None
    if base:
        _check_same(layer_shapes(model), base, where, "has sizes", " before pruning")
    if not weights.is_file():
        raise CheckpointError(f"{weights} does not exist beside {where}; save the network again with fnnp_opt.save")
    apply_shapes(model, doc["layers"])
    load_weights(model, read_state_dict(weights), str(weights), f"they are not the weights of {where}: save it again")
    return model.eval()


def _check_same(mine: dict, saved: dict, where: Path, what: str, when: str) -> None:
    """Raise :class:`CheckpointError` naming the first layer (in ``saved``'s order, then ``mine``'s) whose entry
    differs between ``model=`` (``mine``) and the saved network (``saved``)."""
    for name in list(saved) + [n for n in mine if n not in saved]:
        if mine.get(name) != saved.get(name):
            theirs = f"{what} {saved[name]}" if name in saved else "is missing"
            ours = f"{what} {mine[name]}" if name in mine else "is missing"
            raise CheckpointError(
                f"model= does not match {where}: layer {name!r} {theirs} in the saved network{when} but {ours} in "
                "model=; pass a fresh instance of the class the network was pruned from, built with the same "
                "arguments"
            )
