"""The dataset formats, read from small files the tests write in the published layouts."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from fnnp_opt.data import load_splits
from fnnp_opt.datasets import read_cifar_batch, resolve_dataset
from fnnp_opt.errors import DataError, UsageError

from conftest import write_image_folder


def test_cifar10_python_batches_load_with_its_normalisation(tiny_cifar10):
    s = load_splits("cifar10", tiny_cifar10, search_size=50, abn_batches=2, abn_batch_size=8)
    assert (len(s.train), len(s.search), len(s.test)) == (150, 50, 40)
    assert s.train.x.shape[1:] == (3, 32, 32) and s.info.num_classes == 10
    images, labels = read_cifar_batch(tiny_cifar10 / "data_batch_1", "labels")
    assert images.shape == (40, 3, 32, 32) and labels.dtype == np.int64
    # the first training image, normalised by CIFAR-10's mean and std, is where the split put it
    first = (torch.from_numpy(images[0]).float() / 255 - torch.tensor(s.info.mean)[:, None, None]) / torch.tensor(
        s.info.std
    )[:, None, None]
    where = s.train_idx.tolist().index(0) if 0 in s.train_idx.tolist() else None
    source = s.train.x[where] if where is not None else s.search.x[s.search_idx.tolist().index(0)]
    assert torch.allclose(source, first, atol=1e-6)
    # the parent folder of cifar-10-batches-py works as --data-dir too
    assert load_splits("cifar10", tiny_cifar10.parent, search_size=50, abn_batches=1, abn_batch_size=1).fingerprint


def test_cifar100_uses_the_fine_labels(tiny_cifar100):
    s = load_splits("cifar100", tiny_cifar100, search_size=100, abn_batches=2, abn_batch_size=8)
    assert s.info.num_classes == 100 and len(s.test) == 100
    assert int(s.train.y.max()) < 100 and len(torch.unique(s.train.y)) > 50


def test_cifar_files_missing_or_hostile_are_refused(tiny_cifar10, tmp_path):
    with pytest.raises(DataError, match="missing .*cifar-10-python.tar.gz"):
        load_splits("cifar10", tmp_path, search_size=10)

    class Boom:
        def __reduce__(self):
            return (print, ("pickle code ran",))

    hostile = tmp_path / "data_batch_1"
    hostile.write_bytes(pickle.dumps({b"data": Boom(), b"labels": [1]}))
    with pytest.raises(DataError, match="refusing to load builtins.print"):
        read_cifar_batch(hostile, "labels")


def test_imagenet_folder_holds_out_10_per_class_and_decodes_jpegs(tiny_imagenet):
    s = load_splits(
        "imagenet", tiny_imagenet, search_per_class=2, abn_batches=2, abn_batch_size=3, image_size=32, workers=0
    )
    assert s.info.num_classes == 3 and (len(s.search), len(s.train), len(s.test)) == (6, 18, 9)
    labels = np.array([y for _, y in s.search.batches(4) for y in y.tolist()])
    assert np.bincount(labels).tolist() == [2, 2, 2]  # stratified: the same count from every class
    assert not set(s.search_idx.tolist()) & set(s.train_idx.tolist())
    assert set(s.calib_idx.tolist()) <= set(s.train_idx.tolist())
    first = [x for x, _ in s.calibration]
    again = [x for x, _ in s.calibration]
    assert len(first) == 2 and first[0].shape == (3, 3, 32, 32)
    assert all(torch.equal(a, b) for a, b in zip(first, again))  # calibration batches are fixed
    x, y = next(iter(s.train.shuffled(4, torch.Generator().manual_seed(0))))
    assert x.shape == (4, 3, 32, 32) and y.shape == (4,)
    # the paper's default for ImageNet: 10 images per class held out (here 8 per class exist: refused)
    with pytest.raises(UsageError, match="--search-per-class 10 leaves nothing to train on"):
        load_splits("imagenet", tiny_imagenet, abn_batches=1, abn_batch_size=1, workers=0)


def test_any_image_folder_finds_its_classes_and_reports_bad_trees(tmp_path):
    root = write_image_folder(tmp_path / "pets", ["cat", "dog"], {"train": 5, "test": 2}, size=24)
    info = resolve_dataset("folder", root)
    assert info.num_classes == 2 and info.image_size == 224
    s = load_splits("folder", root, search_per_class=1, abn_batches=1, abn_batch_size=2, image_size=24, workers=0)
    assert (len(s.search), len(s.train), len(s.test)) == (2, 8, 4)
    write_image_folder(tmp_path / "pets", ["cow"], {"test": 1}, size=24)
    with pytest.raises(DataError, match="cow has no counterpart"):
        load_splits("folder", root, search_per_class=1, abn_batches=1, abn_batch_size=1, workers=0)
    with pytest.raises(DataError, match="no train/ folder.*train/<class>"):
        resolve_dataset("folder", tmp_path)
    with pytest.raises(UsageError, match="--image-size applies to image folders"):
        resolve_dataset("cifar10", None, 64)
    (root / "test" / "cow").rename(tmp_path / "cow")
    (root / "train" / "bird").mkdir()  # an empty class folder would be a class no image teaches
    with pytest.raises(DataError, match=r"class folder .*bird holds no image .*; add its images or remove the folder"):
        load_splits("folder", root, search_per_class=1, abn_batches=1, abn_batch_size=1, workers=0)


def test_evaluation_images_are_decoded_once_then_served_from_memory(tiny_imagenet, monkeypatch):
    from fnnp_opt import data

    s = load_splits(
        "imagenet", tiny_imagenet, search_per_class=2, abn_batches=2, abn_batch_size=3, image_size=32, workers=0
    )
    decoded = []
    real = data._Images.__getitem__
    monkeypatch.setattr(data._Images, "__getitem__", lambda self, i: decoded.append(i) or real(self, i))
    batches = s.search.batches(4)
    first = [x for x, _ in batches]
    assert len(decoded) == 6 and len(batches) == 2
    second = [x for x, _ in batches]
    assert len(decoded) == 6  # the second pass decodes nothing
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    # normalised exactly as torchvision's ToTensor + Normalize would
    mean, std = torch.tensor(s.info.mean)[:, None, None], torch.tensor(s.info.std)[:, None, None]
    raw = real(batches.folder._loader(4, train=False).dataset, 0)[0]
    assert torch.allclose(first[0][0], (raw.float() / 255 - mean) / std, atol=1e-5)
    monkeypatch.setattr(data, "CACHE_BYTES", 0)  # too big to keep: every pass decodes again
    streamed = s.search.batches(4)
    list(streamed), list(streamed)
    assert len(decoded) == 6 + 12


def test_an_undecodable_image_is_skipped_with_a_warning_naming_it(tmp_path, caplog):
    root = write_image_folder(tmp_path / "pets", ["cat", "dog"], {"train": 6, "test": 2}, size=24)
    broken = root / "train" / "dog" / "dog_2.JPEG"
    broken.write_bytes(broken.read_bytes()[:40])  # a truncated JPEG
    (root / "train" / "cat" / "cat_1.JPEG").write_bytes(b"not an image at all")
    s = load_splits("folder", root, search_per_class=1, abn_batches=2, abn_batch_size=2, image_size=24, workers=0)
    with caplog.at_level("WARNING", logger="fnnp_opt.data"):
        seen = sum(len(y) for _, y in s.train.batches(3)) + sum(len(y) for _, y in s.search.batches(3))
        x, y = next(iter(s.train.shuffled(4, torch.Generator().manual_seed(0))))
    assert seen == 12 and x.shape == (4, 3, 24, 24)  # every batch full: the next image stood in
    assert "skipping image" in caplog.text and ("dog_2.JPEG" in caplog.text or "cat_1.JPEG" in caplog.text)
