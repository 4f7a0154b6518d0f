"""Export a pruned network as a recipe (JSON channel plan) plus safetensors weights."""

from __future__ import annotations

import os
from pathlib import Path

from fnnp_opt.errors import OutputError


def check_writable(path: Path, folder: bool = False) -> None:
    """Raise :class:`OutputError` unless ``path`` (a file, or a folder when ``folder``) can be written."""
    path = Path(path).absolute()
    if path.exists() and path.is_dir() != folder:
        kind = "a folder" if path.is_dir() else "a file"
        raise OutputError(f"output path {path} is {kind}; pass a path to a {'folder' if folder else 'file'}")
    if path.exists() and not os.access(path, os.W_OK):
        raise OutputError(f"output path {path} is not writable; choose another path")
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise OutputError(f"output path {path} lies under {parent}, which is a file; choose another path")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"output path {path} cannot be created: {parent} is not writable; choose another path")


FORMAT = "fnnp-opt/pruned-v1"


def unique_tensors(state: dict) -> dict:
    """``state`` as safetensors can hold it: CPU, contiguous, and each tensor once.

    A module registered under two names puts its tensors in the state dict twice; safetensors
    refuses tensors that share memory, so only the first name is kept.
    :func:`fnnp_opt.models.load_weights` fills the other names back in from the model's aliases.
    """
    seen, out = set(), {}
    for k, v in state.items():
        key = (v.device, v.data_ptr(), v.dtype, tuple(v.shape)) if v.numel() else None
        if key is not None and key in seen:
            continue
        seen.add(key)
        out[k] = v.detach().cpu().contiguous()
    return out


def save_pruned(model, folder: Path, card: dict) -> Path:
    """Write ``folder/pruned.safetensors`` and ``folder/pruned.json``; return the JSON path.

    The JSON is the recipe: the architecture name, the per-layer channel counts and
    whatever ``card`` adds (config, strategy, metrics). Files are written to temporary
    names first, so an interrupted export leaves the previous one intact.
    """
    import json

    from safetensors.torch import save_file

    from fnnp_opt.prune import layer_shapes

    folder = Path(folder)
    check_writable(folder, folder=True)
    folder.mkdir(parents=True, exist_ok=True)
    weights, recipe = folder / "pruned.safetensors", folder / "pruned.json"
    doc = {"format": FORMAT, **card, "layers": layer_shapes(model)}
    tmp_w, tmp_r = weights.with_suffix(".safetensors.tmp"), recipe.with_suffix(".json.tmp")
    save_file(unique_tensors(model.state_dict()), str(tmp_w))
    tmp_r.write_text(json.dumps(doc, indent=2) + "\n")
    os.replace(tmp_w, weights)
    os.replace(tmp_r, recipe)
    return recipe


def read_recipe(path: Path) -> tuple[dict, Path]:
    """Return (recipe dict, weights path) for an export folder or its ``pruned.json``."""
    import json

    from fnnp_opt.errors import CheckpointError

    path = Path(path)
    recipe = path / "pruned.json" if path.is_dir() else path
    if not recipe.is_file():
        raise CheckpointError(f"{recipe} does not exist; pass an export folder written by `fnnp-opt run`")
    try:
        doc = json.loads(recipe.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{recipe} is not valid JSON ({exc}); re-export the model") from None
    if doc.get("format") != FORMAT:
        raise CheckpointError(f"{recipe} has format {doc.get('format')!r}, expected {FORMAT!r}")
    return doc, recipe.with_name("pruned.safetensors")


def load_pruned(path: Path):
    """Rebuild a pruned network from an export folder (or its ``pruned.json``), without pickle."""
    from fnnp_opt.models import create_model, load_weights, read_state_dict
    from fnnp_opt.prune import apply_shapes

    doc, weights = read_recipe(path)
    model = create_model(doc["model"], doc["in_channels"], doc["num_classes"])
    apply_shapes(model, doc["layers"])
    load_weights(model, read_state_dict(weights), str(weights))
    return model.eval()
