"""Architectures: the registry, torchvision's zoo, user models, and safe checkpoint loading.

A model name is one of

* a registry entry (`fnnp-opt models`): the CIFAR ResNets and MobileNetV1, built here;
* a torchvision classification builder (``resnet50``, ``mobilenet_v2``, ``vgg16_bn`` ...),
  built with random weights (nothing is downloaded);
* ``package.module:callable``, a user's own builder.

Every model is adapted to the dataset: the classifier gets ``num_classes`` outputs and the
stem conv takes ``in_channels`` channels. The classifier (never pruned) is found by
tracing: the last conv or linear layer that runs.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import re
import sys
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import torch
from torch import nn
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

from fnnp_opt.errors import CheckpointError, ModelError, describe, few
from fnnp_opt.probe import RUNS, first_failure

ASSETS = Path(__file__).parent / "assets"


@dataclass(frozen=True)
class ModelInfo:
    """What fnnp-opt knows about an architecture."""

    name: str  # registry key, torchvision builder name, or module:callable
    builder: Callable[..., nn.Module]  # builder(in_channels=, num_classes=) -> module
    description: str  # one line for `fnnp-opt models`


_REGISTRY: dict[str, ModelInfo] = {}


def register_model(name: str, description: str):
    """Decorator adding a builder to the registry under ``name``."""

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _REGISTRY[name] = ModelInfo(name, fn, description)
        return fn

    return wrap


def list_models() -> list[ModelInfo]:
    """Return every registered architecture, sorted by name."""
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


# --------------------------------------------------------------------------- torchvision

# Builders that cannot be searched, with the reason measured here (Torch-Pruning 1.6.1, torchvision 0.29).
# They are refused before anything is built; `docs/models.md` lists them. Builders that fail for a
# reason found at run time (an untraceable graph, a forward that breaks once pruned) are refused by
# the pruner's own checks, naming the module at fault.
UNSUPPORTED: dict[str, str] = {
    "maxvit_t": "Torch-Pruning's group building runs for minutes without finishing (window attention)",
    "swin_t": "Torch-Pruning's group building runs for minutes without finishing (shifted-window attention)",
    "swin_s": "Torch-Pruning cannot build its dependency graph (shifted-window attention)",
    "swin_b": "Torch-Pruning cannot build its dependency graph (shifted-window attention)",
    "swin_v2_t": "Torch-Pruning's group building runs for minutes without finishing (shifted-window attention)",
    "swin_v2_s": "Torch-Pruning's group building runs for minutes without finishing (shifted-window attention)",
    "swin_v2_b": "Torch-Pruning's group building runs for minutes without finishing (shifted-window attention)",
    **{
        f"shufflenet_v2_{v}": "Torch-Pruning cannot trace its channel shuffle (a view, transpose and chunk)"
        for v in ("x0_5", "x1_0", "x1_5", "x2_0")
    },
    **{
        f"vit_{v}": "prunes, but the pruned model's forward fails: torchvision's VisionTransformer reshapes "
        "with its stored hidden_dim"
        for v in ("b_16", "b_32", "l_16", "l_32", "h_14")
    },
}
# torchvision builder options fnnp-opt sets: no auxiliary heads (they only serve training from
# scratch, and a graph traced in eval mode misses them), and no ImageNet-specific input transform.
_TV_OPTIONS = {
    "googlenet": {"aux_logits": False, "init_weights": True, "transform_input": False},
    "inception_v3": {"aux_logits": False, "init_weights": True, "transform_input": False},
}


def torchvision_builders() -> list[str]:
    """Names of torchvision's classification builders."""
    import torchvision

    return list(torchvision.models.list_models(module=torchvision.models))


def _torchvision_info(name: str) -> ModelInfo:
    import torchvision

    if name in UNSUPPORTED:
        raise ModelError(f"torchvision model {name!r} cannot be pruned here: {UNSUPPORTED[name]}; see docs/models.md")

    def build(in_channels: int = 3, num_classes: int = 1000) -> nn.Module:
        model = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **_TV_OPTIONS.get(name, {}))
        return adapt_input(model, in_channels)

    return ModelInfo(name, build, "torchvision, random weights")


# --------------------------------------------------------------------------- user models


def _user_info(spec: str) -> ModelInfo:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ModelError(f"model {spec!r}: a user model is given as package.module:callable, like mynets:build")
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))  # let `module:callable` find modules in the working directory
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        missing = isinstance(exc, ModuleNotFoundError) and module_name.startswith(str(exc.name))
        if missing:  # the module itself (or its package) is not on the path
            raise ModelError(
                f"model {spec!r}: module {module_name!r} cannot be imported ({exc}); "
                "run from the folder that holds it or add that folder to PYTHONPATH"
            ) from None
        raise ModelError(  # it fails while it runs (SyntaxError, NameError, a missing dependency ...): its own error
            f"model {spec!r}: module {module_name!r} fails while it is imported ({describe(exc)}); fix it, and "
            f"check it with `python -c 'import {module_name}'`"
        ) from None
    fn: object = module
    for part in attr.split("."):
        fn = getattr(fn, part, None)
    if not callable(fn):
        raise ModelError(f"model {spec!r}: {module_name} has no callable {attr!r}")

    params: Mapping[str, inspect.Parameter]
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        params = {}
    wanted = ("in_channels", "num_classes")
    required = [
        n
        for n, q in params.items()
        if q.default is q.empty
        and q.kind in (q.POSITIONAL_ONLY, q.POSITIONAL_OR_KEYWORD, q.KEYWORD_ONLY)
        and n not in wanted
    ]
    if required:
        raise ModelError(
            f"model {spec!r}: {attr}() requires {', '.join(map(repr, required))}, which fnnp-opt cannot give; "
            "it calls the builder with in_channels= and num_classes= only (each if accepted): give the other "
            "arguments defaults, or point --model at a function that fills them in"
        )

    def build(in_channels: int = 3, num_classes: int = 10) -> nn.Module:
        kwargs = {k: v for k, v in {"in_channels": in_channels, "num_classes": num_classes}.items() if k in params}
        try:
            model = fn(**kwargs)
        except Exception as exc:  # the user's builder failed: its own error, in one line
            given = ", ".join(f"{k}={v}" for k, v in kwargs.items())
            raise ModelError(
                f"model {spec!r}: {attr}({given}) raised {describe(exc)}; fix the builder (--debug shows the traceback)"
            ) from exc
        if not isinstance(model, nn.Module):
            raise ModelError(f"model {spec!r} returned a {type(model).__name__}, not a torch.nn.Module")
        return adapt_input(model, in_channels)

    return ModelInfo(spec, build, "user model")


def get_model_info(name: str) -> ModelInfo:
    """Resolve ``name`` (registry, torchvision builder or module:callable), or raise :class:`ModelError`."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    if ":" in name:
        return _user_info(name)
    if name in UNSUPPORTED or name in torchvision_builders():
        return _torchvision_info(name)
    known = ", ".join(sorted(_REGISTRY))
    raise ModelError(
        f"unknown model {name!r}; choose one of: {known}, a torchvision classification builder "
        "(resnet50, mobilenet_v2, ...), or your own as package.module:callable"
    )


def create_model(name: str, in_channels: int, num_classes: int) -> nn.Module:
    """Build ``name`` with random weights for ``in_channels`` input channels and ``num_classes`` classes."""
    return get_model_info(name).builder(in_channels=in_channels, num_classes=num_classes)


# --------------------------------------------------------------------------- structure


def _out_size(m: nn.modules.conv._ConvNd | nn.Linear) -> int:
    return m.out_channels if isinstance(m, nn.modules.conv._ConvNd) else m.out_features


def _first_conv(model: nn.Module) -> tuple[str, nn.Conv2d] | None:
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            return name, m
    return None


def adapt_input(model: nn.Module, in_channels: int) -> nn.Module:
    """Give the first conv (in definition order) ``in_channels`` input channels, freshly initialised."""
    found = _first_conv(model)
    if found is None or found[1].in_channels == in_channels:
        return model
    name, old = found
    if old.groups != 1:
        raise ModelError(f"the stem conv {name!r} is grouped; it cannot be adapted to {in_channels} input channels")
    # the ignore: torch's stubs type a conv's kernel_size, stride, padding and dilation tuple[int, ...] and Conv2d's
    # arguments int | tuple[int, int], though a Conv2d's attributes are those 2-tuples
    new = nn.Conv2d(
        in_channels,
        old.out_channels,
        old.kernel_size,  # type: ignore[arg-type]
        old.stride,  # type: ignore[arg-type]
        old.padding,  # type: ignore[arg-type]
        old.dilation,  # type: ignore[arg-type]
        1,
        old.bias is not None,
    )
    model.set_submodule(name, new)
    return model


def execution_order(model: nn.Module, example: torch.Tensor) -> list[str]:
    """Names of the conv and linear layers in the order one forward pass runs them."""
    names = {m: n for n, m in model.named_modules()}
    order: list[str] = []
    hooks = [
        m.register_forward_hook(lambda mod, args, out: order.append(names[mod]))
        for m in model.modules()
        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))
    ]
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(example)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return list(dict.fromkeys(order))


def find_classifier(model: nn.Module, example: torch.Tensor, num_classes: int) -> str:
    """The layer whose outputs are the logits: the last conv or linear layer a forward pass runs.

    Raises :class:`ModelError` when it does not have ``num_classes`` outputs.
    """
    order = execution_order(model, example)
    if not order:
        raise ModelError("the model has no conv or linear layer to prune")
    last = model.get_submodule(order[-1])
    assert isinstance(last, (nn.modules.conv._ConvNd, nn.Linear))  # what execution_order names
    if _out_size(last) != num_classes:
        raise ModelError(
            f"the model's last layer {order[-1]!r} has {_out_size(last)} outputs, but the dataset has "
            f"{num_classes} classes; build the model with num_classes={num_classes}"
        )
    return order[-1]


def check_input(model: nn.Module, name: str, input_shape: tuple[int, ...], num_classes: int | None = None) -> None:
    """Raise :class:`ModelError` unless ``model`` runs on one input of ``input_shape`` and returns logits, also
    as a study runs it (:func:`fnnp_opt.probe.first_failure`: a deep copy, channels-last, adaptive BN, train
    mode with a backward pass).

    The output rule: ``forward`` returns one tensor of shape (N, num_classes). A tuple, a list or a
    dict (logits plus an embedding, auxiliary heads) is refused, naming the type found: wrap the
    model so that it returns the logits alone.
    """
    try:
        with torch.no_grad():
            out = model.eval()(torch.zeros(input_shape))
    except Exception as exc:
        side = input_shape[-1]
        raise ModelError(
            f"model {name!r} does not run on {input_shape[1]}x{side}x{side} inputs ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:160]}); pick a model for small images or a dataset with larger ones "
            "(--image-size for image folders)"
        ) from None
    want = f"(1, {num_classes})" if num_classes else "(N, classes)"
    if not isinstance(out, torch.Tensor):
        raise ModelError(
            f"model {name!r} returns a {type(out).__name__}, but fnnp-opt needs its forward to return one logits "
            f"tensor {want}; wrap it in a module whose forward returns only the logits (see docs/models.md)"
        )
    if out.dim() != 2 or (num_classes and out.shape[1] != num_classes):
        raise ModelError(
            f"model {name!r} returns a tensor of shape {tuple(out.shape)}, but fnnp-opt needs logits {want}; "
            "build it for this dataset's classes and flatten its output (see docs/models.md)"
        )
    failure = first_failure(model, torch.zeros(input_shape), tuple(out.shape[1:]), RUNS[1:])  # eval ran above
    if failure is not None:
        raise ModelError(failure.refusal(f"model {name!r}"))


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


def _cifar_resnet(depth: int, description: str) -> None:
    def build(in_channels: int = 3, num_classes: int = 10) -> nn.Module:
        return CifarResNet(depth, in_channels, num_classes)

    register_model(f"resnet{depth}", description)(build)


_cifar_resnet(20, "CIFAR ResNet-20 (0.27M params, 41.6M FLOPs at 32px); the default")
_cifar_resnet(32, "CIFAR ResNet-32 (0.47M params, 70.4M FLOPs at 32px)")
_cifar_resnet(56, "CIFAR ResNet-56 (0.86M params, 127.9M FLOPs at 32px), the paper's CIFAR model")
_cifar_resnet(110, "CIFAR ResNet-110 (1.73M params, 257.4M FLOPs at 32px)")


class MobileNetV1(nn.Module):
    """MobileNetV1 (Howard et al., 2017): a 3x3 stem, then 13 depthwise-separable blocks.

    ``cifar=True`` is the variant for 32x32 inputs: a stride-1 stem, so the five
    downsamplings of the blocks take 32px to 2px (the ImageNet model's stride-2 stem takes
    224px to 7px).
    """

    # (output channels, stride) of the 13 depthwise-separable blocks
    BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)) + ((512, 1),) * 5 + ((1024, 2), (1024, 1))

    def __init__(self, in_channels: int = 3, num_classes: int = 1000, width: float = 1.0, cifar: bool = False):
        super().__init__()

        def ch(c: int) -> int:
            return max(8, int(c * width))

        layers = [self._conv_bn(in_channels, ch(32), 3, 1 if cifar else 2, 1)]
        planes = ch(32)
        for out, stride in self.BLOCKS:
            layers.append(self._conv_bn(planes, planes, 3, stride, planes))  # depthwise
            layers.append(self._conv_bn(planes, ch(out), 1, 1, 1))  # pointwise
            planes = ch(out)
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(planes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    @staticmethod
    def _conv_bn(cin: int, cout: int, k: int, stride: int, groups: int) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


@register_model("mobilenet_v1", "MobileNetV1 1.0 for ImageNet-size inputs (4.2M params, 589M FLOPs at 224px)")
def mobilenet_v1(in_channels: int = 3, num_classes: int = 1000) -> nn.Module:
    return MobileNetV1(in_channels, num_classes)


@register_model("mobilenet_v1_cifar", "MobileNetV1 1.0 for 32px inputs, stride-1 stem (3.2M params, 48.0M FLOPs)")
def mobilenet_v1_cifar(in_channels: int = 3, num_classes: int = 10) -> nn.Module:
    return MobileNetV1(in_channels, num_classes, cifar=True)


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


# Where training scripts keep the weights inside a checkpoint dict, most specific first.
_STATE_KEYS = ("state_dict", "model_state_dict", "model", "net", "network", "weights", "params")


def _tensor_count(obj) -> int:
    """How many tensors ``obj`` holds, if it is a dict with string keys (the shape of a state dict); else 0."""
    if not isinstance(obj, dict) or not all(isinstance(k, str) for k in obj):
        return 0
    return sum(isinstance(v, torch.Tensor) for v in obj.values())


def _find_state(obj) -> dict | None:
    """The state dict in a loaded checkpoint: the object itself, a known key, or the one dict of tensors it holds.

    A state dict may hold entries that are not tensors (a module's extra state, or a stray value that
    ``load_state_dict`` refuses by name), so the object itself is the state dict when it holds more
    tensors than any dict inside it.
    """
    if not isinstance(obj, dict):
        return None
    if obj and _tensor_count(obj) == len(obj):
        return obj
    for key in _STATE_KEYS:
        if _tensor_count(obj.get(key)):
            return obj[key]
    nested = [v for v in obj.values() if _tensor_count(v)]
    if _tensor_count(obj) > max(map(_tensor_count, nested), default=0):
        return obj
    return nested[0] if len(nested) == 1 else None


def read_state_dict(path: Path) -> dict:
    """Read a state dict from a safetensors file or a ``torch.save`` file, without pickle code.

    Accepted layouts: a plain state dict; a training checkpoint dict holding it under
    ``state_dict``, ``model_state_dict``, ``model``, ``net``, ``network``, ``weights`` or
    ``params``, or as its only dict of tensors (``{'net': ..., 'acc': 93.1, 'epoch': 199}``). The
    state dict comes back as saved (its keys, any entry that is not a tensor, the module versions
    torch.save keeps in ``_metadata``): :func:`load_weights` fits it to a model.

    Raises:
        CheckpointError: the file is missing or unreadable, holds no state dict (the message names
            its top-level keys), or holds NaN or inf weights.
    """
    path = Path(path)
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise CheckpointError(f"checkpoint {path} {what}; pass an existing weights file to --checkpoint")
    with open(path, "rb") as fh:
        head = fh.read(9)
    safetensors = path.suffix == ".safetensors" or (len(head) == 9 and head[8:9] == b"{")
    if not safetensors and not head.startswith((b"PK\x03\x04", b"\x80")):  # torch.save: a zip, or a legacy pickle
        raise CheckpointError(
            f"checkpoint {path} is neither a safetensors file nor a torch.save file (it starts with {head[:8]!r}); "
            "pass a safetensors file or a state_dict saved with torch.save"
        )
    try:
        if safetensors:
            from safetensors.torch import load_file

            obj = load_file(str(path))
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt files raise many different types
        text = str(exc)
        found = re.search(r"GLOBAL (\S+)", text)
        if found:  # torch's advice (drop weights_only) is not ours to give: it runs the file's code
            raise CheckpointError(
                f"checkpoint {path} pickles the Python object {found.group(1)}, which fnnp-opt does not load (it "
                "would run code from the file); save model.state_dict() with torch.save, or as safetensors, and "
                "pass that"
            ) from None
        raise CheckpointError(
            f"checkpoint {path} could not be read ({type(exc).__name__}: {(text.splitlines() or [''])[0][:160]}); "
            "pass a safetensors file or a state_dict saved with torch.save"
        ) from None
    state = _find_state(obj)
    if state is None:
        if isinstance(obj, dict):
            held = f"a dict with keys {few(sorted(map(str, obj)), 6)}" if obj else "an empty dict"
        else:
            held = type(obj).__name__
        raise CheckpointError(
            f"checkpoint {path} holds no state_dict of tensors (found {held}); save model.state_dict(), or a "
            f"dict holding it under one of {', '.join(_STATE_KEYS)}"
        )
    bad = [
        k for k, v in state.items() if isinstance(v, torch.Tensor) and v.is_floating_point() and not v.isfinite().all()
    ]
    if bad:
        raise CheckpointError(
            f"checkpoint {path} holds NaN or inf weights in {few(bad)}; the training that wrote it diverged: "
            "pass an earlier checkpoint"
        )
    return state


def _strip_wrapper(state: OrderedDict, keys: set[str]) -> str:
    """Remove, in place, the names that every key of ``state`` starts with (DataParallel's ``module.``,
    torch.compile's ``_orig_mod.``, a Lightning module's ``model.``, nested ones), as many as bring its keys
    closest to ``keys``; return what was removed."""
    heads: list[str] = []
    names, best, most = list(state), [], len(state.keys() & keys)
    while names and all(isinstance(k, str) and "." in k for k in names):
        head = names[0].split(".", 1)[0] + "."
        if not all(k.startswith(head) for k in names):
            break
        names, heads = [k[len(head) :] for k in names], [*heads, head]
        if len(set(names) & keys) > most:
            best, most = heads, len(set(names) & keys)
    for head in best:
        consume_prefix_in_state_dict_if_present(state, head)  # the module versions in _metadata too
    return "".join(best)


def _torch_reasons(exc: Exception) -> str:
    """Why ``load_state_dict`` refused, in one line: PyTorch's reasons (missing keys, unexpected keys, size
    mismatches ...) joined, with each list of keys and the list of size mismatches cut after three."""
    lines = [line.strip().rstrip(".").rstrip() for line in str(exc).splitlines() if line.strip()]
    if not (lines and lines[0].startswith("Error(s) in loading state_dict")):
        return f"{type(exc).__name__}: {(lines or [''])[0][:300]}"
    body = lines[1:]
    sizes = [i for i, line in enumerate(body) if line.startswith("size mismatch for ")]
    reasons = []
    for i, line in enumerate(body):
        if i in sizes[3:]:
            continue
        line = re.sub(r'"[^"]*"(?:, "[^"]*")+', lambda m: few(re.findall(r'"[^"]*"', m.group(0))), line)[:300]
        if len(sizes) > 3 and i == sizes[2]:
            line += f" (+{len(sizes) - 3} more size mismatches)"
        reasons.append(line)
    return "; ".join(reasons)


def load_weights(
    model: nn.Module,
    state: dict,
    source: str,
    remedy: str = "pass the checkpoint trained for this --model and --dataset",
) -> None:
    """Load ``state`` into ``model`` with PyTorch's strict ``load_state_dict``: what it accepts loads, and
    what it refuses raises :class:`CheckpointError`, one line with PyTorch's reasons, ending with ``remedy``.

    First the keys are fitted to the model the ways PyTorch leaves to the caller: a name a wrapper put
    before every key is removed (see :func:`_strip_wrapper`), and a tensor that the model registers under
    several names (a module under two names, tied weights) but the file holds once, as safetensors must,
    fills the other names. A state dict saved without module versions (safetensors, a plain dict) is
    loaded as the model's current versions, except for the norm layers, which read it as PyTorch does: a
    missing ``num_batches_tracked`` starts at 0. On a refusal the model may hold part of ``state``.
    """
    own = model.state_dict()
    versions = getattr(state, "_metadata", None)
    state = OrderedDict(state)
    if versions is None:
        versions = OrderedDict(getattr(own, "_metadata", {}))
        for name, module in model.named_modules(remove_duplicate=False):
            if isinstance(module, nn.modules.batchnorm._NormBase):
                versions.pop(name, None)
    # a copy: removing a wrapper's name renames its entries (the ignore: torch keeps a state dict's module versions
    # in its _metadata attribute, which typeshed's OrderedDict lacks)
    state._metadata = OrderedDict(versions)  # type: ignore[attr-defined]
    removed = _strip_wrapper(state, set(own))
    tied: dict[tuple, list[str]] = {}
    for k, v in own.items():
        if isinstance(v, torch.Tensor) and not nn.parameter.is_lazy(v) and v.numel():
            tied.setdefault((v.data_ptr(), v.dtype, tuple(v.shape)), []).append(k)
    for names in tied.values():
        present = [k for k in names if k in state]
        for k in names:
            if present and k not in state:
                state[k] = state[present[0]]
    try:
        model.load_state_dict(state)
    except Exception as exc:  # RuntimeError for keys and shapes; a module's own loader may raise anything
        read = f" (its keys read without {removed!r})" if removed else ""
        reasons = _torch_reasons(exc)
        raise CheckpointError(f"checkpoint {source}{read} does not fit the model: {reasons}; {remedy}") from None


def load_model(name: str, in_channels: int, num_classes: int, checkpoint: Path) -> tuple[nn.Module, str]:
    """Build ``name`` and load its trained weights; return the model and the weights' digest."""
    model = create_model(name, in_channels, num_classes)
    load_weights(model, read_state_dict(checkpoint), str(checkpoint))
    return model.eval(), file_digest(Path(checkpoint))
