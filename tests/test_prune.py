from __future__ import annotations

import pytest
import torch

from fnnp_opt.flops import count
from fnnp_opt.models import create_model
from fnnp_opt.errors import ModelError, UsageError
from fnnp_opt.prune import Pruner, apply_shapes, layer_shapes

SHAPE = (1, 1, 28, 28)


@pytest.fixture()
def pruner(base_model):
    return Pruner(base_model, torch.zeros(SHAPE), "fc")


def test_resnet20_groups(pruner):
    # 9 internal convs (one per block) plus one residual group per stage
    assert len(pruner.groups) == 12
    coupled = [g for g in pruner.groups if len(g.producers) > 1]
    assert len(coupled) == 3
    assert all("fc" not in g.producers for g in pruner.groups)
    stage3 = [g for g in coupled if "layer3.0.shortcut.0" in g.producers][0]
    assert "fc" in stage3.consumers  # the classifier only loses inputs


def test_ratio_zero_leaves_outputs_unchanged(pruner, base_model):
    x = torch.randn(8, *SHAPE[1:])
    pruned = pruner.prune({g.root: 0.0 for g in pruner.groups})
    assert layer_shapes(pruned) == layer_shapes(base_model)
    assert torch.equal(pruned(x), base_model(x))


def test_pruning_shrinks_flops_and_keeps_output_shape(pruner, base_model):
    x = torch.randn(4, *SHAPE[1:])
    base_macs, base_params = count(base_model, SHAPE)
    previous = base_macs
    for r in (0.2, 0.4, 0.6, 0.8):
        pruned = pruner.prune({g.root: r for g in pruner.groups})
        assert pruned(x).shape == (4, 10)
        macs, params = count(pruned, SHAPE)
        assert macs < previous and params < base_params
        previous = macs


def test_channel_plan_follows_ratios(pruner):
    ratios = {g.root: 0.25 * (i % 4) for i, g in enumerate(pruner.groups)}
    shapes = layer_shapes(pruner.prune(ratios))
    for g in pruner.groups:
        kept = g.channels - pruner.removed_count(ratios[g.root], g.channels)
        for conv in g.producers:
            assert shapes[conv]["out"] == kept
    assert pruner.removed_count(0.99, 16) == 15  # always keeps a channel
    assert pruner.removed_count(0.0, 16) == 0


def test_removes_the_smallest_l1_filters(pruner, base_model):
    root = "layer2.1.conv1"
    w = base_model.get_submodule(root).weight.detach()
    l1 = w.abs().flatten(1).sum(1)
    pruned = pruner.prune({root: 0.5})
    kept_w = pruned.get_submodule(root).weight.detach()
    keep = torch.sort(torch.argsort(l1, descending=True)[:16]).values
    assert torch.equal(kept_w, w[keep])  # the 16 largest-L1 filters survive, in order
    # and the consumer lost the matching input channels
    w2 = base_model.get_submodule("layer2.1.conv2").weight.detach()
    assert torch.equal(pruned.get_submodule("layer2.1.conv2").weight.detach(), w2[:, keep])


def test_residual_group_scores_sum_over_coupled_convs(pruner, base_model):
    g = [g for g in pruner.groups if "layer2.0.shortcut.0" in g.producers][0]
    score = sum(base_model.get_submodule(n).weight.detach().abs().flatten(1).sum(1) for n in g.producers)
    pruned = pruner.prune({g.root: 0.25})
    keep = torch.sort(torch.argsort(score, descending=True)[:24]).values
    for n in g.producers:
        assert torch.equal(pruned.get_submodule(n).weight.detach(), base_model.get_submodule(n).weight.detach()[keep])


def test_base_model_is_never_modified(pruner, base_model):
    before = {k: v.clone() for k, v in base_model.state_dict().items()}
    pruner.prune({g.root: 0.5 for g in pruner.groups})
    after = base_model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_apply_shapes_rebuilds_the_architecture(pruner):
    pruned = pruner.prune({g.root: 0.3 for g in pruner.groups})
    fresh = apply_shapes(create_model("resnet20", 1, 10), layer_shapes(pruned))
    fresh.load_state_dict(pruned.state_dict())
    x = torch.randn(2, *SHAPE[1:])
    assert torch.equal(fresh.eval()(x), pruned(x))


def test_round_to_min_channels_and_exclude_shape_every_group(base_model):
    from fnnp_opt.prune import Shaping

    shaping = Shaping(round_to=8, min_channels=8, exclude=("layer1.*",))
    pruner = Pruner(base_model, torch.zeros(SHAPE), "fc", shaping)
    assert all(not any(p.startswith("layer1.") for p in g.producers) for g in pruner.groups)
    assert len(pruner.groups) < len(pruner.all_groups)
    for r in (0.1, 0.3, 0.55, 0.9):
        shapes = layer_shapes(pruner.prune({g.root: r for g in pruner.groups}))
        for g in pruner.groups:
            kept = shapes[g.producers[0]]["out"]
            assert kept % 8 == 0 and kept >= 8
        assert shapes["layer1.0.conv1"]["out"] == 16  # excluded: untouched
    assert Shaping(round_to=8).kept(0.5, 20) == 8 and Shaping(round_to=8).kept(0.0, 4) == 4
    with pytest.raises(UsageError, match="--round-to must be a whole number >= 1, got 0"):
        Shaping(round_to=0)
    for pat in ("layer4.*", "layer3.9"):  # ResNet-20 has neither
        with pytest.raises(UsageError, match=rf"--exclude '{pat}' matches no prunable layer; the layers are conv1, "):
            Pruner(base_model, torch.zeros(SHAPE), "fc", Shaping(exclude=(pat,)))
    by_module = Pruner(base_model, torch.zeros(SHAPE), "fc", Shaping(exclude=("layer3",)))  # covers its children
    by_glob = Pruner(base_model, torch.zeros(SHAPE), "fc", Shaping(exclude=("layer3.*",)))
    assert [g.root for g in by_module.groups] == [g.root for g in by_glob.groups]
    assert not any(g.root.startswith("layer3") for g in by_module.groups)
    with pytest.raises(ModelError, match="no prunable channel group outside --exclude"):
        Pruner(base_model, torch.zeros(SHAPE), "fc", Shaping(exclude=("*",)))


def test_depthwise_convs_follow_their_pointwise_conv():
    from fnnp_opt.space import SearchSpace

    model = create_model("mobilenet_v1_cifar", 3, 10)
    pruner = Pruner(model, torch.zeros(1, 3, 32, 32), "fc")
    space = SearchSpace.from_groups(pruner.groups, 0.5)
    assert len(space) == 14  # the stem and the 13 pointwise convs; each depthwise conv shares its input's group
    assert not any(d.coupled for d in space.dims)
    stem = space.dims[0]
    assert stem.root == "features.0.0" and set(stem.producers) == {"features.0.0", "features.1.0"}  # + depthwise
    pruned = pruner.prune({d.root: 0.5 for d in space.dims})
    dw = pruned.features[1][0]
    assert dw.groups == dw.in_channels == dw.out_channels == 16
    assert pruned(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_concatenated_groups_are_cut_together_without_shifting_each_other():
    """DenseNet: every layer's output feeds a concatenation that later layers read at offsets."""
    from torchvision.models import densenet121

    model = densenet121(num_classes=10).eval()
    pruner = Pruner(model, torch.zeros(1, 3, 32, 32), "classifier")
    pruned = pruner.prune({g.root: 0.3 for g in pruner.groups})
    x = torch.randn(2, 3, 32, 32)
    assert pruned(x).shape == (2, 10)
    assert count(pruned, (1, 3, 32, 32))[0] < count(model, (1, 3, 32, 32))[0]


def test_a_frozen_model_is_traced_whole_and_given_back_frozen(base_model):
    # Torch-Pruning traces through autograd: frozen layers (a deployed model's) must still be seen
    trainable = Pruner(base_model, torch.zeros(1, 1, 28, 28), "fc")
    for p in base_model.parameters():
        p.requires_grad_(False)
    frozen = Pruner(base_model, torch.zeros(1, 1, 28, 28), "fc")
    assert [g.root for g in frozen.groups] == [g.root for g in trainable.groups]
    assert not any(p.requires_grad for p in base_model.parameters())
