from __future__ import annotations

import json

import pytest
import torch

import fnnp_opt
from fnnp_opt.errors import CheckpointError
from fnnp_opt.export import save_pruned
from fnnp_opt.prune import Pruner


def _card():
    return {
        "model": "resnet20",
        "in_channels": 1,
        "num_classes": 10,
        "input_shape": [1, 1, 28, 28],
        "dataset": "fashion-mnist",
    }


def test_export_reloads_bit_identically(base_model, tmp_path):
    pruner = Pruner(base_model, torch.zeros(1, 1, 28, 28), "fc")
    pruned = pruner.prune({g.root: 0.1 * (i % 6) for i, g in enumerate(pruner.groups)})
    plan = save_pruned(pruned, tmp_path / "out", _card())
    doc = json.loads(plan.read_text())
    assert doc["format"] == "fnnp-opt/pruned-v1" and doc["layers"]["layer2.0.conv1"]["out"] < 32
    loaded = fnnp_opt.load_pruned(tmp_path / "out")
    x = torch.randn(4, 1, 28, 28)
    assert torch.equal(loaded(x), pruned(x))
    for k, v in pruned.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)
    assert fnnp_opt.load_pruned(plan) is not None  # the JSON path works too
    assert not list((tmp_path / "out").glob("*.tmp"))
    modes = {f.name: f.stat().st_mode & 0o777 for f in (tmp_path / "out").iterdir()}
    assert modes["pruned.safetensors"] == modes["pruned.json"], modes  # the umask decides, not the writer


def test_bad_exports_are_reported(base_model, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        fnnp_opt.load_pruned(tmp_path / "nothing")
    (tmp_path / "pruned.json").write_text("{broken")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        fnnp_opt.load_pruned(tmp_path)
    save_pruned(base_model, tmp_path / "e", _card())
    (tmp_path / "e" / "pruned.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="could not be read"):
        fnnp_opt.load_pruned(tmp_path / "e")
    (tmp_path / "e" / "pruned.safetensors").unlink()  # the remedy names no flag that `evaluate` lacks
    with pytest.raises(CheckpointError, match="pruned.safetensors does not exist beside .*the export is incomplete"):
        fnnp_opt.load_pruned(tmp_path / "e")


@pytest.mark.parametrize("text", ["[]", '{"format": "fnnp-opt/pruned-v1"}'])
def test_a_wrong_shaped_plan_is_one_clear_error(tmp_path, text):
    from fnnp_opt.errors import CheckpointError
    from fnnp_opt.export import read_plan

    (tmp_path / "pruned.json").write_text(text)
    with pytest.raises(CheckpointError, match="re-export the model"):
        read_plan(tmp_path)


@pytest.mark.parametrize(
    "edit, reported",
    [
        (lambda d: d.update(in_channels="1"), "in_channels"),
        (lambda d: d.update(num_classes=True), "num_classes"),
        (lambda d: d.update(layers=["conv1"]), "layers"),
        (lambda d: d["layers"]["conv1"].update(out="16"), "layers"),
        (lambda d: d.update(input_shape=[1, 28, 28]), "input_shape"),
        (lambda d: d.update(config="fast"), "config"),
        (lambda d: d.update(metrics={"pruned": "x"}), "metrics"),
        (lambda d: d.update(input_shape=[1, 1, 100000, 100000]), "input_shape"),
        (lambda d: d["layers"]["conv1"].update(out=10**12), "layers"),
        (lambda d: d.pop("input_shape"), "lacks input_shape"),
        (lambda d: d.pop("dataset"), "lacks dataset"),
    ],
)
def test_a_hand_edited_plan_is_refused_by_name_before_anything_is_built(base_model, tmp_path, edit, reported):
    from fnnp_opt.export import read_plan

    plan = save_pruned(base_model, tmp_path, _card())
    doc = json.loads(plan.read_text())
    edit(doc)
    plan.write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match=f"{reported}.*re-export the model"):
        read_plan(tmp_path, needs=("input_shape", "dataset"))


def test_a_binary_plan_is_one_clear_error(tmp_path):
    (tmp_path / "pruned.json").write_bytes(bytes(range(256)))
    with pytest.raises(CheckpointError, match="not valid JSON.*re-export the model"):
        fnnp_opt.load_pruned(tmp_path)
