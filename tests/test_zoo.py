"""Every torchvision classification builder that Torch-Pruning can trace: derive, prune, run, count, export."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest
import torch
import torchvision

import fnnp_opt
from fnnp_opt.errors import ModelError
from fnnp_opt.export import save_pruned
from fnnp_opt.flops import count
from fnnp_opt.models import UNSUPPORTED, check_input, create_model, find_classifier, torchvision_builders
from fnnp_opt.prune import Pruner, Shaping
from fnnp_opt.space import SearchSpace

# Builders whose graph Torch-Pruning cannot build (listed in UNSUPPORTED); the pruner refuses them naming the place.
UNTRACEABLE = {"shufflenet_v2_x0_5", "shufflenet_v2_x1_0", "shufflenet_v2_x1_5", "shufflenet_v2_x2_0"}
# The smallest square input each builder runs on, where it is above 32 px.
MIN_SIZE = {"alexnet": 64, "inception_v3": 96}
# Builders that take over 10 s here (big weights, long graphs): the largest of families whose smaller members run
# in the integration tier (convnext_tiny, densenet121, efficientnet_b0, regnet_x_400mf, resnext50, vgg11, ...) and
# go through the same code. They are the zoo tier (`pytest -m zoo`, `make test-all`): about 6 minutes (the six
# largest ResNet, EfficientNet and RegNet members joined the list at 12-28 s each, 1.9 min together in one quiet run).
HEAVY = {
    "convnext_base",
    "convnext_large",
    "densenet161",
    "densenet169",
    "densenet201",
    "efficientnet_b5",
    "efficientnet_b6",
    "efficientnet_b7",
    "efficientnet_v2_l",
    "efficientnet_v2_m",
    "regnet_x_16gf",
    "regnet_x_32gf",
    "regnet_y_128gf",
    "regnet_y_16gf",
    "regnet_y_32gf",
    "resnet101",
    "resnet152",
    "resnext101_32x8d",
    "resnext101_64x4d",
    "wide_resnet101_2",
    "vgg19",
    "vgg19_bn",
}
PRUNABLE = [n for n in torchvision_builders() if n not in UNSUPPORTED]


def _case(name: str):
    return pytest.param(name, marks=pytest.mark.zoo) if name in HEAVY else name


@pytest.mark.parametrize("name", [_case(n) for n in PRUNABLE])
def test_torchvision_builder_prunes_runs_shrinks_and_reloads(name, tmp_path):
    torch.manual_seed(0)
    size = MIN_SIZE.get(name, 32)
    shape = (1, 3, size, size)
    model = create_model(name, 3, 10).eval()
    check_input(model, name, shape)
    example = torch.zeros(shape)
    pruner = Pruner(model, example, find_classifier(model, example, 10))
    space = SearchSpace.from_groups(pruner.groups, 0.5)
    assert len(space) >= 1 and len({d.param for d in space.dims}) == len(space)
    assert all(find_classifier(model, example, 10) not in d.producers for d in space.dims)

    rng = np.random.default_rng(0)
    pruned = pruner.prune({d.root: float(rng.uniform(0.1, 0.5)) for d in space.dims})
    x = torch.randn(2, *shape[1:])
    with torch.no_grad():
        out = pruned(x)
        pruned.train()(x)  # the train-mode forward works too (BN batch statistics, no auxiliary heads)
    pruned.eval()
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    assert count(pruned, shape)[0] < count(model, shape)[0]

    export = tmp_path / "export"
    try:
        save_pruned(pruned, export, {"model": name, "in_channels": 3, "num_classes": 10})
        loaded = fnnp_opt.load_pruned(export)
        with torch.no_grad():
            assert torch.equal(loaded(x), pruned(x))
    finally:  # up to gigabytes of weights per builder: pytest would keep them all
        shutil.rmtree(export, ignore_errors=True)


@pytest.mark.unit
@pytest.mark.parametrize("name", sorted(UNTRACEABLE))
def test_untraceable_builders_fail_naming_the_module(name):
    with pytest.raises(ModelError, match=r"cannot be pruned here: Torch-Pruning cannot trace its channel shuffle"):
        create_model(name, 3, 10)  # refused by name, before any work
    model = torchvision.models.get_model(name, weights=None, num_classes=10)  # a user's copy of it: the same words
    example = torch.zeros(1, 3, 32, 32)
    with pytest.raises(ModelError, match=r"could not trace the model at .*after module 'stage\d\.\d\.branch"):
        Pruner(model, example, find_classifier(model, example, 10))


def test_a_vision_transformer_is_refused_where_its_pruned_forward_breaks():
    """The reason the ViTs are listed as unsupported, shown on the smallest of them."""
    from torchvision.models import vit_b_32

    model = vit_b_32(num_classes=10).eval()
    example = torch.zeros(1, 3, 224, 224)
    refused = pytest.raises(ModelError, match="pruned model's forward pass fails in the forward")
    with pytest.warns(UserWarning), refused as err:
        Pruner(model, example, find_classifier(model, example, 10))
    # the residual stream, whose width forward() reshapes to; its --exclude leaves the MLPs to prune
    flags = re.findall(r"--exclude '([^']+)'", str(err.value))
    assert flags == ["encoder.layers.encoder_layer_11.mlp.3"], str(err.value)
    with pytest.warns(UserWarning):
        pruner = Pruner(model, example, find_classifier(model, example, 10), Shaping(exclude=tuple(flags)))
    assert len(pruner.groups) == 12  # one MLP per encoder layer
    with torch.no_grad():
        assert pruner.prune({g.root: 0.5 for g in pruner.groups})(example).shape == (1, 10)
    with pytest.raises(ModelError, match="vit_b_32.*cannot be pruned here"):
        create_model("vit_b_32", 3, 10)


@pytest.mark.unit
def test_every_torchvision_builder_is_tested_or_listed():
    assert set(torchvision_builders()) == set(PRUNABLE) | set(UNSUPPORTED) and UNTRACEABLE <= set(UNSUPPORTED)
    assert len(PRUNABLE) >= 60
