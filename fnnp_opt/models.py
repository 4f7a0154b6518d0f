"""Model registry, the CIFAR-style ResNets, and safe checkpoint loading."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from fnnp_opt.errors import CheckpointError, ModelError

ASSETS = Path(__file__).parent / "assets"


@dataclass(frozen=True)
class ModelInfo:
    """What the registry knows about an architecture."""

    name: str  # registry key, e.g. "resnet20"
    builder: Callable[..., nn.Module]  # builder(in_channels=, num_classes=) -> module
    classifier: str  # dotted name of the final classifier, never pruned
    description: str  # one line for `fnnp-opt models`


_REGISTRY: dict[str, ModelInfo] = {}


def register_model(name: str, classifier: str, description: str):
    """Decorator adding a builder to the registry under ``name``."""

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _REGISTRY[name] = ModelInfo(name, fn, classifier, description)
        return fn

    return wrap


def list_models() -> list[ModelInfo]:
    """Return every registered architecture, sorted by name."""
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


def get_model_info(name: str) -> ModelInfo:
    """Return the registry entry for ``name`` or raise :class:`ModelError`."""
    if name not in _REGISTRY:
        known = ", ".join(sorted(_REGISTRY))
        raise ModelError(f"unknown model {name!r}; choose one of: {known}")
    return _REGISTRY[name]


def create_model(name: str, in_channels: int, num_classes: int) -> nn.Module:
    """Build a registered architecture with random weights."""
    return get_model_info(name).builder(in_channels=in_channels, num_classes=num_classes)


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual; a 1x1 projection when the shape changes."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """The CIFAR ResNet of He et al. (2016): a 3x3 stem and three stages of 16/32/64 filters.

    Downsampling shortcuts are 1x1 projections (option B), so every residual
    coupling is a real conv that structural pruning can follow.
    """

    def __init__(self, depth: int, in_channels: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ModelError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        planes, layers = 16, []
        for i, width in enumerate((16, 32, 64)):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(BasicBlock(planes, width, stride))
                planes = width
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


@register_model("resnet20", "fc", "CIFAR-style ResNet-20 (0.27M params); the default")
def resnet20(in_channels: int = 3, num_classes: int = 10) -> nn.Module:
    return CifarResNet(20, in_channels, num_classes)


@register_model("resnet56", "fc", "CIFAR-style ResNet-56 (0.85M params), the paper's CIFAR model")
def resnet56(in_channels: int = 3, num_classes: int = 10) -> nn.Module:
    return CifarResNet(56, in_channels, num_classes)


# --------------------------------------------------------------------------- checkpoints


def default_checkpoint(model: str, dataset: str) -> Path | None:
    """Return the checkpoint shipped in the package for (model, dataset), if any."""
    path = ASSETS / f"{model}-{dataset}.safetensors"
    return path if path.is_file() else None


def file_digest(path: Path) -> str:
    """Return the sha256 hex digest of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read tensors from a safetensors file or a ``torch.save`` file, without pickle code.

    A training checkpoint dict holding the weights under ``state_dict``, ``model`` or
    ``model_state_dict`` is accepted too.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; pass an existing file to --checkpoint")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt files raise many different types
        raise CheckpointError(
            f"checkpoint {path} could not be read ({type(exc).__name__}: {exc}); "
            "pass a safetensors file or a state_dict saved with torch.save"
        ) from None
    if isinstance(state, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"checkpoint {path} holds no state_dict of tensors")
    return state


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` into ``model`` strictly, naming the keys that differ on mismatch."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {_few(missing)}")
        if unexpected:
            parts.append(f"unexpected {_few(unexpected)}")
        if shapes:
            parts.append(f"shape mismatch {_few(shapes)}")
        raise CheckpointError(
            f"checkpoint {source} does not fit the model: {'; '.join(parts)}; "
            "pass the checkpoint trained for this --model and --dataset"
        )
    model.load_state_dict(state)


def _few(items: list[str], n: int = 3) -> str:
    more = f" (+{len(items) - n} more)" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def load_model(name: str, in_channels: int, num_classes: int, checkpoint: Path | None) -> tuple[nn.Module, str]:
    """Build ``name`` and load its trained weights; return the model and the weights' digest."""
    model = create_model(name, in_channels, num_classes)
    if checkpoint is None:
        raise CheckpointError(
            f"no trained checkpoint is shipped for model {name!r} on this dataset; "
            "train one with `fnnp-opt train` and pass it with --checkpoint"
        )
    load_weights(model, read_state_dict(checkpoint), str(checkpoint))
    return model.eval(), file_digest(Path(checkpoint))
