from __future__ import annotations

import re

import pytest
import torch
from safetensors.torch import load_file, save_file
from safetensors.torch import load_model as st_load_model
from safetensors.torch import save_model as st_save_model
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

from fnnp_opt.errors import CheckpointError, ModelError
from fnnp_opt.models import (
    check_input,
    create_model,
    default_checkpoint,
    find_classifier,
    list_models,
    load_model,
    read_state_dict,
)


def test_registry_lists_and_rejects_unknown():
    assert "resnet20" in [m.name for m in list_models()]
    with pytest.raises(ModelError, match="unknown model 'nope'.*resnet20"):
        create_model("nope", 1, 10)


@pytest.mark.parametrize("name", [m.name for m in list_models()] + ["resnet18", "mobilenet_v2"])
def test_every_model_adapts_to_the_input(name):
    model = create_model(name, 1, 7).eval()
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 7)
    assert find_classifier(model, torch.zeros(1, 1, 28, 28), 7) in ("fc", "classifier.1")


def test_the_registry_holds_the_papers_architectures():
    names = {m.name for m in list_models()}
    assert {"resnet20", "resnet32", "resnet56", "resnet110", "mobilenet_v1", "mobilenet_v1_cifar"} <= names
    params = sum(p.numel() for p in create_model("resnet56", 3, 10).parameters())
    assert 0.85e6 < params < 0.87e6
    v1 = create_model("mobilenet_v1", 3, 1000)
    assert sum(p.numel() for p in v1.parameters()) == pytest.approx(4.23e6, rel=0.01)
    assert v1(torch.zeros(1, 3, 224, 224)).shape == (1, 1000)


def test_a_classifier_of_the_wrong_size_is_named():
    model = create_model("resnet20", 1, 10)
    with pytest.raises(ModelError, match="last layer 'fc' has 10 outputs, but the dataset has 7 classes"):
        find_classifier(model, torch.zeros(1, 1, 28, 28), 7)


def test_too_small_inputs_are_refused_with_the_remedy():
    model = create_model("vgg11", 3, 10)
    with pytest.raises(ModelError, match="does not run on 3x28x28 inputs.*--image-size"):
        check_input(model, "vgg11", (1, 3, 28, 28))


@pytest.mark.parametrize("name, floor", [("resnet20", 0.925), ("mobilenet_v1_cifar", 0.93)])
def test_shipped_checkpoints_and_their_cards(name, floor):
    import json

    path = default_checkpoint(name, "fashion-mnist")
    assert path is not None, f"the package must ship {name}-fashion-mnist.safetensors"
    card = json.loads(path.with_suffix(".json").read_text())
    assert card["model"] == name and card["dataset"] == "fashion-mnist"
    assert card["test_accuracy"] >= floor
    assert card["command"].startswith("fnnp-opt ") and " train " in card["command"]
    if name != "resnet20":  # the default model's command names no --model
        assert f"--model {name}" in card["command"]
    assert card["held_out_search_images"] == 5000  # trained without the search split
    model, _ = load_model(name, 1, 10, path)  # the weights fit the registered architecture
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_state_dict_inside_training_checkpoint_is_accepted(tmp_path):
    model = create_model("resnet20", 1, 10)
    torch.save({"epoch": 3, "state_dict": model.state_dict()}, tmp_path / "ckpt.pt")
    loaded, digest = load_model("resnet20", 1, 10, tmp_path / "ckpt.pt")
    assert len(digest) == 64
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)


@pytest.mark.parametrize(
    "layout",
    [
        lambda sd: {f"module.{k}": v for k, v in sd.items()},  # DataParallel / DDP
        lambda sd: {f"_orig_mod.{k}": v for k, v in sd.items()},  # torch.compile
        lambda sd: {"net": sd, "acc": 93.1, "epoch": 199},  # CIFAR training repos
        lambda sd: {"epoch": 9, "ema": sd, "optimizer": {"lr": 0.1}},  # the only dict of tensors
        lambda sd: {"model": {f"module.{k}": v for k, v in sd.items()}, "epoch": 1},
    ],
    ids=["dataparallel", "compiled", "net-acc-epoch", "only-tensor-dict", "model-dataparallel"],
)
def test_common_checkpoint_layouts_load_the_same_weights(tmp_path, layout):
    model = create_model("resnet20", 1, 10)
    torch.save(layout(model.state_dict()), tmp_path / "ckpt.pth")
    loaded, _ = load_model("resnet20", 1, 10, tmp_path / "ckpt.pth")
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)


def test_checkpoint_refusals_name_what_was_found(tmp_path):
    torch.save({"acc": 93.1, "epoch": 199, "optimizer": {"lr": 0.1}}, tmp_path / "noweights.pt")
    with pytest.raises(CheckpointError, match=r"found a dict with keys acc, epoch, optimizer"):
        read_state_dict(tmp_path / "noweights.pt")
    sd = create_model("resnet20", 1, 10).state_dict()
    sd["fc.weight"][0, 0] = float("nan")
    torch.save(sd, tmp_path / "nan.pt")
    with pytest.raises(CheckpointError, match=r"NaN or inf weights in fc.weight"):
        read_state_dict(tmp_path / "nan.pt")
    with pytest.raises(CheckpointError, match="is a folder, not a file"):
        read_state_dict(tmp_path)


def test_missing_corrupt_and_mismatched_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        read_state_dict(tmp_path / "absent.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="could not be read"):
        read_state_dict(tmp_path / "bad.safetensors")
    save_file(create_model("resnet20", 3, 10).state_dict(), str(tmp_path / "rgb.safetensors"))
    with pytest.raises(CheckpointError, match=r"size mismatch for conv1.weight: .* torch.Size\(\[16, 3, 3, 3\]\) from"):
        load_model("resnet20", 1, 10, tmp_path / "rgb.safetensors")
    save_file(create_model("resnet56", 1, 10).state_dict(), str(tmp_path / "r56.safetensors"))
    with pytest.raises(CheckpointError, match=r"Unexpected key\(s\) in state_dict: \"layer1.3.*\(\+213 more\)"):
        load_model("resnet20", 1, 10, tmp_path / "r56.safetensors")


def test_pickled_objects_are_refused(tmp_path):
    torch.save({"model": create_model("resnet20", 1, 10)}, tmp_path / "module.pt")  # a pickled module
    with pytest.raises(CheckpointError, match=r"pickles the Python object \S+ResNet\S*, which fnnp-opt does not load"):
        read_state_dict(tmp_path / "module.pt")


def test_a_lightning_style_prefix_and_an_empty_file_are_handled(tmp_path):
    model = create_model("resnet20", 1, 10)
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, tmp_path / "l.ckpt")
    loaded, _ = load_model("resnet20", 1, 10, tmp_path / "l.ckpt")  # LightningModule holding self.model
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="neither a safetensors file nor a torch.save file"):
        read_state_dict(tmp_path / "empty.pt")
    (tmp_path / "notes.md").write_text("# my model\n")  # a text file passed by mistake
    with pytest.raises(CheckpointError, match=r"it starts with b'# my mod'"):
        read_state_dict(tmp_path / "notes.md")
    save_file(model.state_dict(), str(tmp_path / "weights.bin"))  # safetensors under another suffix
    assert read_state_dict(tmp_path / "weights.bin").keys() == model.state_dict().keys()
    torch.save(model.state_dict(), tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    assert read_state_dict(tmp_path / "legacy.pt").keys() == model.state_dict().keys()


def test_a_user_module_that_fails_to_import_is_one_error(tmp_path, monkeypatch):
    from fnnp_opt.errors import ModelError
    from fnnp_opt.models import get_model_info

    (tmp_path / "broken_mod.py").write_text("def build(:\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModelError, match=r"module 'broken_mod' fails while it is imported \(SyntaxError: .*; fix it"):
        get_model_info("broken_mod:build")
    (tmp_path / "needs_dep.py").write_text("import not_installed_anywhere\n")
    with pytest.raises(ModelError, match="needs_dep' fails while it is imported .*not_installed_anywhere"):
        get_model_info("needs_dep:build")
    with pytest.raises(ModelError, match="'no_such_mod' cannot be imported .*add that folder to PYTHONPATH"):
        get_model_info("no_such_mod:build")
    (tmp_path / "raising.py").write_text("def build(num_classes=10):\n    raise ValueError('boom')\n")
    with pytest.raises(ModelError, match=r"raising:build'\: build\(num_classes=10\) raised ValueError: boom; fix"):
        get_model_info("raising:build").builder(in_channels=1, num_classes=10)


# --------------------------------------------------------------------------- checkpoints as PyTorch loads them


def _saved(path):
    """What the file holds, read the safe way."""
    return load_file(str(path)) if path.suffix == ".safetensors" else torch.load(path, weights_only=True)


def _unwrapped(*prefixes):
    """PyTorch's own way to load a wrapper's keys: consume_prefix_in_state_dict_if_present, then load_state_dict."""

    def load(model, path):
        state = _saved(path)
        for prefix in prefixes:
            consume_prefix_in_state_dict_if_present(state, prefix)
        model.load_state_dict(state)

    return load


def _saving(change, safetensors=False):
    """Write ``change(trained state dict)`` with torch.save, or safetensors' save_file."""

    def write(model, path):
        obj = change(model.state_dict())
        save_file(obj, str(path)) if safetensors else torch.save(obj, path)

    return write


def _ref(pick=lambda obj: obj):
    """PyTorch's own load: ``model.load_state_dict(pick(what the file holds))``."""
    return lambda model, path: model.load_state_dict(pick(_saved(path)))


def _tensors(change):
    return lambda sd: {k: change(k, v) for k, v in sd.items()}


def _without(*suffixes):
    return lambda sd: {k: v for k, v in sd.items() if not k.endswith(suffixes)}


def _versioned_without_counts(sd):
    kept = type(sd)((k, v) for k, v in sd.items() if not k.endswith("num_batches_tracked"))
    kept._metadata = sd._metadata  # torch.save keeps the module versions: BatchNorm's 2 needs the counts
    return kept


U = "usermodels:"
# (id, model, file name, how the user wrote it from the trained model, how PyTorch's own code loads it)
CHECKPOINT_KINDS = [
    ("plain", "resnet20", "w.pt", _saving(lambda sd: sd), _ref()),
    (
        "state_dict",
        "resnet20",
        "w.pt",
        _saving(lambda sd: {"state_dict": sd, "epoch": 3}),
        _ref(lambda o: o["state_dict"]),
    ),
    (
        "model",
        "resnet20",
        "w.pt",
        _saving(lambda sd: {"model": sd, "optimizer": {"state": {}, "param_groups": []}}),
        _ref(lambda o: o["model"]),
    ),
    (
        "model_state_dict",
        "resnet20",
        "w.pt",
        _saving(lambda sd: {"model_state_dict": sd, "loss": 0.3}),
        _ref(lambda o: o["model_state_dict"]),
    ),
    (
        "ema",
        "resnet20",
        "w.pt",
        _saving(lambda sd: {"ema": sd, "best_acc1": torch.tensor(76.1)}),
        _ref(lambda o: o["ema"]),
    ),
    (
        "dataparallel",
        "resnet20",
        "w.pt",
        _saving(lambda sd: {f"module.{k}": v for k, v in sd.items()}),
        _unwrapped("module."),
    ),
    (
        "compiled-ddp",
        "resnet20",
        "w.pt",
        _saving(lambda sd: {f"_orig_mod.module.{k}": v for k, v in sd.items()}),
        _unwrapped("_orig_mod.", "module."),
    ),
    (
        "lightning",
        "resnet20",
        "w.ckpt",
        _saving(lambda sd: {"state_dict": {f"model.{k}": v for k, v in sd.items()}}),
        lambda m, p: m.load_state_dict({k[6:]: v for k, v in _saved(p)["state_dict"].items()}),
    ),
    ("holder-keys-module", U + "module_holder", "w.pt", _saving(lambda sd: sd), _ref()),
    (
        "safetensors-fp16",
        "resnet20",
        "w.safetensors",
        _saving(_tensors(lambda k, v: v.half() if v.is_floating_point() else v), safetensors=True),
        _ref(),
    ),
    (
        "bf16",
        U + "bn1d_head",
        "w.pt",
        _saving(_tensors(lambda k, v: v.bfloat16() if v.is_floating_point() else v)),
        _ref(),
    ),
    (
        "safetensors-shared",
        U + "shared_conv",
        "w.safetensors",
        lambda m, p: st_save_model(m, str(p)),
        lambda m, p: st_load_model(m, str(p)),
    ),
    ("tied-torch-save", U + "shared_conv", "w.pt", _saving(lambda sd: sd), _ref()),
    ("safetensors-no-bn-counts", "resnet20", "w.safetensors", _saving(_without("num_batches_tracked"), True), _ref()),
    ("dict-no-bn-counts", "resnet20", "w.pt", _saving(lambda sd: dict(_without("num_batches_tracked")(sd))), _ref()),
    (
        "bn-counts-shape-1",
        "resnet20",
        "w.safetensors",
        _saving(_tensors(lambda k, v: v.reshape(1) if k.endswith("num_batches_tracked") else v), True),
        _ref(),
    ),
    ("non-persistent-buffer", U + "non_persistent", "w.pt", _saving(lambda sd: sd), _ref()),
    ("extra-state", U + "extra_state", "w.pt", _saving(lambda sd: sd), _ref()),
    ("lazy", U + "lazy_head", "w.pt", _saving(lambda sd: sd), _ref()),
    # refused by PyTorch
    ("versioned-no-bn-counts", "resnet20", "w.pt", _saving(_versioned_without_counts), _ref()),
    ("unexpected", "resnet20", "w.pt", _saving(lambda sd: {**sd, "fc.scale": torch.ones(1)}), _ref()),
    ("missing", "resnet20", "w.safetensors", _saving(_without("fc.bias"), True), _ref()),
    (
        "dataparallel-missing",
        "resnet20",
        "w.pt",
        _saving(lambda sd: {f"module.{k}": v for k, v in sd.items() if k != "fc.bias"}),
        _unwrapped("module."),
    ),
    ("shape", "resnet20", "w.pt", _saving(lambda sd: {**sd, "fc.bias": torch.zeros(100)}), _ref()),
    ("non-tensor-extra", "resnet20", "w.pt", _saving(lambda sd: {**sd, "epoch": 3}), _ref()),
    ("non-tensor-param", "resnet20", "w.pt", _saving(lambda sd: {**sd, "fc.bias": [0.0] * 10}), _ref()),
    (
        "non-persistent-saved",
        U + "non_persistent",
        "w.pt",
        _saving(lambda sd: {**sd, "mean": torch.tensor(0.5)}),
        _ref(),
    ),
    ("whole-module", "resnet20", "w.pt", lambda m, p: torch.save(m, p), _ref()),
]


def _trained(spec):
    """The model after a training step's forward: distinct weights, BatchNorm statistics and counts."""
    torch.manual_seed(1)
    model = create_model(spec, 1, 10)
    with torch.no_grad():
        model(torch.randn(4, 1, 28, 28))  # a lazy layer takes its shape, BatchNorm counts a batch
        for v in model.state_dict().values():
            if isinstance(v, torch.Tensor) and v.is_floating_point():
                v.normal_()
    if hasattr(model, "temperature"):
        model.temperature = 2.5
    return model


def _reasons(exc):
    """PyTorch's reasons for refusing, each cut after its third quoted key."""
    out = []
    for line in str(exc).splitlines()[1:]:
        line = line.strip().rstrip(".").rstrip()
        keys = re.findall(r'"[^"]*"', line)
        out.append(line[: line.index(keys[2]) + len(keys[2])] if len(keys) > 3 else line)
    return out


@pytest.mark.parametrize(
    "spec, name, write, load", [k[1:] for k in CHECKPOINT_KINDS], ids=[k[0] for k in CHECKPOINT_KINDS]
)
def test_checkpoints_load_as_pytorch_loads_them(tmp_path, spec, name, write, load):
    """What load_state_dict accepts loads with the same result; what it refuses is refused with its reasons."""
    path = tmp_path / name
    write(_trained(spec), path)
    torch.manual_seed(2)
    reference = create_model(spec, 1, 10)
    try:
        load(reference, path)
        refused = None
    except Exception as exc:  # PyTorch's refusal, whatever its type
        refused = exc
    if refused is None:
        model, _ = load_model(spec, 1, 10, path)
        ours, theirs = model.state_dict(), reference.state_dict()
        assert list(ours) == list(theirs)
        for k, v in theirs.items():
            if isinstance(v, torch.Tensor):
                assert ours[k].dtype == v.dtype and torch.equal(ours[k], v), k
            else:
                assert ours[k] == v, k
        return
    with pytest.raises(CheckpointError) as err:
        load_model(spec, 1, 10, path)
    line = str(err.value)
    assert "\n" not in line
    if isinstance(refused, RuntimeError):  # load_state_dict's reasons, each in the line
        assert _reasons(refused) and all(reason in line for reason in _reasons(refused)), (_reasons(refused), line)
    else:  # weights_only refused the pickled module
        assert "CifarResNet, which fnnp-opt does not load" in line and "save model.state_dict()" in line
