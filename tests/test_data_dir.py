"""A broken MNIST data directory: a file in its place, unreadable files and inconsistent IDX headers.

Every case builds its own data directory under tmp_path, with links to the real
files in $MNIST_DATA_DIR and one broken copy. None of them may trigger a download.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from core.data import IDX_FILES, load_mnist, raw_folder
from core.errors import DataError
from tests.helpers import run_cli


def data_dir_with(data_dir: Path, root: Path, name: str) -> Path:
    """Make root/MNIST/raw with links to the real files except ``name``, which is a writable copy; return it."""
    folder = raw_folder(root)
    folder.mkdir(parents=True)
    for other in IDX_FILES:
        if other != name:
            (folder / other).symlink_to(raw_folder(data_dir) / other)
    copy = folder / name
    shutil.copyfile(raw_folder(data_dir) / name, copy)
    return copy


def rewrite_count(path: Path, count: int, *, resize: bool) -> None:
    """Set the item count in an IDX header; with ``resize``, also cut or pad the data to match it."""
    data = bytearray(path.read_bytes())
    item_bytes = 28 * 28 if data[3] == 3 else 1  # the fourth magic byte is the number of dimensions
    header_bytes = 4 + 4 * data[3]
    data[4:8] = count.to_bytes(4, "big")
    if resize:
        data = data[: header_bytes + count * item_bytes].ljust(header_bytes + count * item_bytes, b"\0")
    path.write_bytes(bytes(data))


def test_data_dir_is_file(tmp_path):
    blocker = tmp_path / "data"
    blocker.write_text("not a folder")

    with pytest.raises(DataError) as caught:
        load_mnist(blocker, download=True)

    message = str(caught.value)
    assert f"the data directory {blocker} is a file, not a folder" in message
    assert "point --data-dir or $MNIST_DATA_DIR at the folder that contains MNIST/raw/" in message
    assert blocker.read_text() == "not a folder"


def test_idx_path_is_folder(data_dir, tmp_path):
    copy = data_dir_with(data_dir, tmp_path, "t10k-images-idx3-ubyte")
    copy.unlink()
    copy.mkdir()

    with pytest.raises(DataError) as caught:
        load_mnist(tmp_path, download=True)

    assert f"{copy} is not a regular file" in str(caught.value)
    assert copy.is_dir()


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions, so chmod 000 blocks nothing")
def test_unreadable_file_named(data_dir, tmp_path):
    copy = data_dir_with(data_dir, tmp_path, "train-labels-idx1-ubyte")
    copy.chmod(0)
    try:
        with pytest.raises(DataError) as caught:
            load_mnist(tmp_path, download=True)
    finally:
        copy.chmod(0o644)

    message = str(caught.value)
    assert f"cannot read {copy}: Permission denied" in message
    assert "readable by this user" in message


def test_open_failure_named(data_dir, tmp_path, monkeypatch):
    # The same branch as an unreadable file, for runs as root: opening the copy raises PermissionError.
    copy = data_dir_with(data_dir, tmp_path, "train-labels-idx1-ubyte")
    original_open = Path.open

    def open_or_deny(self, *args, **kwargs):
        if self == copy:
            raise PermissionError(13, "Permission denied", str(self))
        return original_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", open_or_deny)

    with pytest.raises(DataError, match=f"cannot read {copy}: Permission denied"):
        load_mnist(tmp_path, download=True)


@pytest.mark.parametrize("name, count, kind", [("train-labels-idx1-ubyte", 59_999, "labels"), ("t10k-images-idx3-ubyte", 9_000, "images")])
def test_count_mismatch_rejected(data_dir, tmp_path, name, count, kind):
    # The header and the file size agree, so only the count shows that images and labels differ.
    copy = data_dir_with(data_dir, tmp_path, name)
    rewrite_count(copy, count, resize=True)

    with pytest.raises(DataError) as caught:
        load_mnist(tmp_path, download=True)

    message = str(caught.value)
    expected = IDX_FILES[name][1]
    assert f"{copy} contains {count:,} {kind} according to its header, expected {expected:,}" in message
    assert "would not pair up" in message


def test_image_shape_rejected(data_dir, tmp_path):
    copy = data_dir_with(data_dir, tmp_path, "t10k-images-idx3-ubyte")
    data = bytearray(copy.read_bytes())
    data[8:16] = (14).to_bytes(4, "big") + (56).to_bytes(4, "big")  # same byte count, different shape
    copy.write_bytes(bytes(data))

    with pytest.raises(DataError, match="contains 14x56 images, expected 28x28"):
        load_mnist(tmp_path, download=False)


def test_label_out_of_range_rejected(data_dir, tmp_path):
    copy = data_dir_with(data_dir, tmp_path, "t10k-labels-idx1-ubyte")
    data = bytearray(copy.read_bytes())
    data[8 + 123] = 12  # one label that is not a digit
    copy.write_bytes(bytes(data))

    with pytest.raises(DataError) as caught:
        load_mnist(tmp_path, download=False)

    assert f"{copy} has label values outside 0-9 (found 12)" in str(caught.value)


def test_empty_file_rejected(data_dir, tmp_path):
    copy = data_dir_with(data_dir, tmp_path, "train-images-idx3-ubyte")
    copy.write_bytes(b"")

    with pytest.raises(DataError, match="magic number None, expected 2051"):
        load_mnist(tmp_path, download=True)


def test_header_only_file_rejected(data_dir, tmp_path):
    copy = data_dir_with(data_dir, tmp_path, "train-images-idx3-ubyte")
    copy.write_bytes(copy.read_bytes()[:16])

    with pytest.raises(DataError) as caught:
        load_mnist(tmp_path, download=True)

    message = str(caught.value)
    assert "truncated or corrupt: 16 bytes" in message
    assert "expected 47040016 bytes for 60000 images" in message


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_cli_data_dir_is_file(tmp_path, command):
    blocker = tmp_path / "data"
    blocker.write_text("not a folder")
    args = ["train", "--arch", "dense", "--epochs", "1"] if command == "train" else ["evaluate", "dense"]

    result = run_cli(*args, "--data-dir", str(blocker), "--store", str(tmp_path / "store"))

    assert result.returncode == 2
    assert f"the data directory {blocker} is a file, not a folder" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "store" / "checkpoints").exists()


def test_good_copy_still_loads(data_dir, tmp_path):
    data_dir_with(data_dir, tmp_path, "t10k-labels-idx1-ubyte")

    data = load_mnist(tmp_path, download=False, test_subset=20)

    assert len(data.test_labels) == 20
