from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from fnnp_opt.data import Augment, _end_with_parent, load_splits, read_idx, write_idx
from fnnp_opt.errors import DataError, UsageError


def test_idx_roundtrip(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    for name in ("a.idx", "a.idx.gz"):
        write_idx(tmp_path / name, arr)
        assert np.array_equal(read_idx(tmp_path / name), arr)


def test_real_files_have_the_published_shapes(fmnist_arrays):
    assert fmnist_arrays["train_x"].shape == (60000, 28, 28)
    assert fmnist_arrays["test_x"].shape == (10000, 28, 28)
    assert set(np.unique(fmnist_arrays["train_y"])) == set(range(10))


def test_splits_are_disjoint_and_test_is_separate(small_fmnist):
    s = load_splits("fashion-mnist", small_fmnist, search_size=500, abn_batches=10, abn_batch_size=32)
    search, train, calib = set(s.search_idx.tolist()), set(s.train_idx.tolist()), set(s.calib_idx.tolist())
    assert len(search) == 500 and len(train) == 2500
    assert not search & train and search | train == set(range(3000))
    assert calib <= train and not calib & search
    assert sum(len(y) for _, y in s.calibration) == 320
    assert len(s.test) == 1000  # the t10k file, never mixed with the training file
    # the calibration images are the train-part images at those indices
    x_calib = torch.cat([x for x, _ in s.calibration])
    pos = {int(i): k for k, i in enumerate(s.train_idx)}
    assert torch.equal(x_calib[0], s.train.x[pos[int(s.calib_idx[0])]])


def test_split_is_fixed_by_seed(small_fmnist):
    a = load_splits("fashion-mnist", small_fmnist, search_size=300, abn_batches=2, abn_batch_size=16)
    b = load_splits("fashion-mnist", small_fmnist, search_size=300, abn_batches=2, abn_batch_size=16)
    c = load_splits("fashion-mnist", small_fmnist, search_size=300, abn_batches=2, abn_batch_size=16, split_seed=1)
    assert torch.equal(a.search_idx, b.search_idx) and a.fingerprint == b.fingerprint
    assert not torch.equal(a.search_idx, c.search_idx) and a.fingerprint != c.fingerprint


def test_missing_dataset_names_the_package_and_flag(tmp_path):
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist.*--data-dir"):
        load_splits("fashion-mnist", tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="train-images-idx3-ubyte"):
        load_splits("fashion-mnist", tmp_path / "empty")


def test_truncated_file_is_reported(tmp_path):
    with gzip.open(tmp_path / "x.gz", "wb") as f:
        f.write(bytes([0, 0, 8, 3, 0, 0, 0, 10, 0, 0, 0, 28, 0, 0, 0, 28]) + b"\0" * 100)
    with pytest.raises(DataError, match="truncated"):
        read_idx(tmp_path / "x.gz")


def test_bad_split_sizes_are_usage_errors(small_fmnist):
    with pytest.raises(UsageError, match="--search-size"):
        load_splits("fashion-mnist", small_fmnist, search_size=3000)
    with pytest.raises(UsageError, match="--abn-batches"):
        load_splits("fashion-mnist", small_fmnist, search_size=500, abn_batches=100, abn_batch_size=64)


def test_augment_keeps_shape_and_content_scale():
    x = torch.randn(16, 1, 28, 28)
    g = torch.Generator().manual_seed(0)
    y = Augment(2, True)(x, g)
    assert y.shape == x.shape
    # with zero padding 0 a crop is a pure shift: every output pixel exists in the input image
    y0 = Augment(0, False)(x, g)
    assert torch.equal(y0, x)


def _decoder_of_a_killed_parent(ready) -> None:  # a search worker: starts one decoding process, then waits
    import multiprocessing
    import time

    from fnnp_opt.data import _end_with_parent

    def decoder() -> None:
        _end_with_parent(0)
        ready.put(os.getpid())
        time.sleep(120)

    multiprocessing.get_context("fork").Process(target=decoder).start()
    time.sleep(120)


@pytest.mark.system
def test_a_decoding_process_ends_with_the_process_it_decodes_for_even_when_that_is_killed(tiny_imagenet):
    """A search worker killed by SIGKILL leaves no image decoder behind (before, one could hold the run's output
    open for minutes); and every image-folder loader starts its decoders that way, by fork."""
    import multiprocessing
    import signal
    import time

    ctx = multiprocessing.get_context("fork")
    ready = ctx.SimpleQueue()
    parent = ctx.Process(target=_decoder_of_a_killed_parent, args=(ready,))
    parent.start()
    child = ready.get()
    os.kill(parent.pid, signal.SIGKILL)
    parent.join()
    def alive() -> bool:  # a zombie has ended, only not yet reaped by whichever process inherited it
        try:
            return Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except FileNotFoundError:
            return False

    end = time.monotonic() + 5
    while time.monotonic() < end and alive():
        time.sleep(0.05)
    gone = not alive()
    if not gone:
        os.kill(child, signal.SIGKILL)
    assert gone, "the decoder outlived its parent"

    s = load_splits("imagenet", tiny_imagenet, search_per_class=2, abn_batches=1, abn_batch_size=1, workers=1)
    loader = s.train._loader(4, train=True)
    assert loader.worker_init_fn is _end_with_parent and loader.multiprocessing_context.get_start_method() == "fork"
