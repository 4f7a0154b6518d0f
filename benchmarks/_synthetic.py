"""Stand-ins for a user's files where only their shapes matter: an ImageFolder of label-coloured noise and a
network's random weights as a checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def image_folder(root: Path, classes: int, train: int, val: int, size: int = 32, jitter: int = 0) -> Path:
    """``root/train/<class>/*.JPEG`` and ``root/val/<class>/*.JPEG``: ``train`` and ``val`` images per class, each
    ``size`` px (the dataset's transform resizes them to the network's input): pixel noise on a colour of the
    class, shifted per image by up to ``jitter`` levels, so that neighbouring classes overlap (a task a network
    learns only in part, whose candidates score apart). Returns ``root``; a tree already there is kept."""
    from PIL import Image

    if (root / "val").is_dir():
        return root
    rng = np.random.default_rng(0)
    for part, n in (("train", train), ("val", val)):
        for k in range(classes):
            folder = root / part / f"c{k:04d}"
            folder.mkdir(parents=True, exist_ok=True)
            colour = (k * 37 + np.arange(3) * 60) % 256
            for i in range(n):
                shift = rng.integers(-jitter, jitter + 1, 3) if jitter else 0
                img = np.clip(colour + shift + rng.integers(0, 40, (size, size, 3)), 0, 255)
                Image.fromarray(img.astype(np.uint8)).save(folder / f"{i}.JPEG", quality=90)
    return root


def random_checkpoint(path: Path, model: str, num_classes: int, seed: int = 0) -> Path:
    """The registry ``model`` (3 input channels) with seeded random weights, as safetensors at ``path``: the same
    network in every process that builds it. Returns ``path``; a file already there is kept."""
    import torch
    from safetensors.torch import save_file

    from fnnp_opt.export import unique_tensors
    from fnnp_opt.models import create_model

    if path.is_file():
        return path
    torch.manual_seed(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(unique_tensors(create_model(model, 3, num_classes).state_dict()), str(path))
    return path
