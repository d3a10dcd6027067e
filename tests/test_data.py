"""MNIST loading: split sizes, dtypes, a deterministic split, and clear errors for missing or broken files."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from core.data import IDX_FILES, MEAN, STD, load_mnist, normalize, raw_folder
from core.errors import DataError
from tests.helpers import CLOSED_LOCAL_MIRROR


def test_split_sizes(mnist):
    assert len(mnist.train_images) == 55_000
    assert len(mnist.val_images) == 5_000
    assert len(mnist.test_images) == 10_000
    assert len(mnist.train_labels) == 55_000
    assert len(mnist.val_labels) == 5_000
    assert len(mnist.test_labels) == 10_000


def test_images_are_uint8(mnist):
    assert mnist.train_images.dtype == torch.uint8
    assert mnist.val_images.dtype == torch.uint8
    assert mnist.test_images.dtype == torch.uint8
    assert mnist.train_images.shape[1:] == (28, 28)
    assert mnist.train_labels.dtype == torch.int64


def test_labels_cover_ten_classes(mnist):
    for labels in (mnist.train_labels, mnist.val_labels, mnist.test_labels):
        assert set(labels.unique().tolist()) == set(range(10))


def test_split_is_deterministic(data_dir, mnist):
    again = load_mnist(data_dir, download=False)

    assert torch.equal(again.val_images, mnist.val_images)
    assert torch.equal(again.train_labels, mnist.train_labels)


def test_split_seed_changes_split(data_dir, mnist):
    other = load_mnist(data_dir, download=False, split_seed=1)

    assert not torch.equal(other.val_labels, mnist.val_labels)


def test_split_partitions_training_set(mnist):
    from core.data import load_raw

    _, all_train_labels, _, _ = load_raw(os.environ["MNIST_DATA_DIR"], download=False)
    counts = torch.bincount(mnist.train_labels, minlength=10) + torch.bincount(mnist.val_labels, minlength=10)

    assert torch.equal(counts, torch.bincount(all_train_labels, minlength=10))


def test_train_subset_is_prefix(data_dir, mnist):
    subset = load_mnist(data_dir, download=False, train_subset=300)

    assert len(subset.train_images) == 300
    assert torch.equal(subset.train_images, mnist.train_images[:300])
    assert len(subset.val_images) == 5_000


def test_train_subset_out_of_range(data_dir):
    with pytest.raises(DataError, match="train_subset must be between 1 and 55000"):
        load_mnist(data_dir, download=False, train_subset=60_000)


def test_normalize_matches_training_stats(mnist):
    x = normalize(mnist.train_images[:2000])

    assert x.shape == (2000, 1, 28, 28)
    assert x.dtype == torch.float32
    assert abs(x.mean().item()) < 0.05
    assert abs(x.std().item() - 1.0) < 0.05
    assert normalize(torch.zeros(1, 28, 28, dtype=torch.uint8))[0, 0, 0, 0].item() == pytest.approx(-MEAN / STD)


def broken_copy(data_dir: Path, tmp_path: Path, name: str) -> Path:
    """Make tmp_path/MNIST/raw with links to the real files and a writable copy of ``name``; return the copy."""
    folder = raw_folder(tmp_path)
    folder.mkdir(parents=True)
    for other in IDX_FILES:
        if other != name:
            (folder / other).symlink_to(raw_folder(data_dir) / other)
    copy = folder / name
    shutil.copyfile(raw_folder(data_dir) / name, copy)
    return copy


def test_missing_files_named(tmp_path):
    with pytest.raises(DataError) as caught:
        load_mnist(tmp_path, download=False)

    message = str(caught.value)
    assert str(tmp_path) in message
    for name in IDX_FILES:
        assert name in message


def test_failed_download_names_files(tmp_path, monkeypatch):
    monkeypatch.setenv("MNIST_MIRRORS", CLOSED_LOCAL_MIRROR)

    with pytest.raises(DataError) as caught:
        load_mnist(tmp_path / "empty", download=True)

    message = str(caught.value)
    assert "download failed" in message
    assert str(tmp_path / "empty") in message
    for name in IDX_FILES:
        assert name in message


def test_one_missing_file_named(data_dir, tmp_path):
    copy = broken_copy(data_dir, tmp_path, "t10k-labels-idx1-ubyte")
    copy.unlink()

    with pytest.raises(DataError) as caught:
        load_mnist(tmp_path, download=True)  # a partial set is never re-downloaded

    assert "t10k-labels-idx1-ubyte is missing" in str(caught.value)


@pytest.mark.parametrize("name", ["t10k-labels-idx1-ubyte", "train-labels-idx1-ubyte"])
def test_truncated_file_rejected(data_dir, tmp_path, name):
    copy = broken_copy(data_dir, tmp_path, name)
    with copy.open("r+b") as f:
        f.truncate(copy.stat().st_size - 100)

    with pytest.raises(DataError) as caught:
        load_mnist(tmp_path, download=True)

    message = str(caught.value)
    assert "truncated" in message
    assert name in message


def test_extra_bytes_rejected(data_dir, tmp_path):
    copy = broken_copy(data_dir, tmp_path, "t10k-labels-idx1-ubyte")
    with copy.open("ab") as f:
        f.write(b"\0" * 16)

    with pytest.raises(DataError, match="truncated or corrupt"):
        load_mnist(tmp_path, download=False)


def test_wrong_magic_rejected(data_dir, tmp_path):
    copy = broken_copy(data_dir, tmp_path, "t10k-labels-idx1-ubyte")
    with copy.open("r+b") as f:
        f.write((2051).to_bytes(4, "big"))  # the image magic in a label file

    with pytest.raises(DataError) as caught:
        load_mnist(tmp_path, download=True)

    message = str(caught.value)
    assert "magic number 2051" in message
    assert "expected 2049" in message


def test_text_file_rejected(data_dir, tmp_path):
    copy = broken_copy(data_dir, tmp_path, "t10k-labels-idx1-ubyte")
    copy.write_bytes(b"<html>Not Found</html>")

    with pytest.raises(DataError, match="not an MNIST IDX file"):
        load_mnist(tmp_path, download=False)


def test_good_copy_loads(data_dir, tmp_path):
    broken_copy(data_dir, tmp_path, "t10k-labels-idx1-ubyte")

    data = load_mnist(tmp_path, download=False, test_subset=50)

    assert len(data.test_labels) == 50
