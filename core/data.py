"""MNIST as device tensors: official 60k/10k files, a seeded 55k/5k train/validation split.

Images stay uint8 on the training device and are normalised per batch, so the
training loop only indexes tensors and never touches PIL or per-sample Python.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import torch

from core.errors import DataError

log = logging.getLogger(__name__)

DATA_DIR_ENV = "MNIST_DATA_DIR"
MIRRORS_ENV = "MNIST_MIRRORS"  # comma-separated base URLs that replace torchvision's mirrors
DEFAULT_DATA_DIR = "data"

MEAN, STD = 0.1307, 0.3081  # mean and standard deviation of the 60k training pixels in [0, 1]
VAL_SIZE = 5000
SPLIT_SEED = 0
DOWNLOAD_TIMEOUT_S = 30

# File name -> (IDX magic number, item count, bytes per item). Magic 2051 is a
# 3-d uint8 array (images), 2049 a 1-d uint8 array (labels).
IDX_FILES = {
    "train-images-idx3-ubyte": (2051, 60000, 28 * 28),
    "train-labels-idx1-ubyte": (2049, 60000, 1),
    "t10k-images-idx3-ubyte": (2051, 10000, 28 * 28),
    "t10k-labels-idx1-ubyte": (2049, 10000, 1),
}


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """Return the data directory: the argument, else $MNIST_DATA_DIR, else ./data."""
    return Path(data_dir or os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR).expanduser()


def raw_folder(root: Path) -> Path:
    return root / "MNIST" / "raw"


def _missing_files_message(root: Path, reason: str) -> str:
    names = "\n".join(f"  {raw_folder(root) / name}" for name in IDX_FILES)
    return (
        f"MNIST is not available in {root}: {reason}\n"
        f"Place the four IDX files there by hand (unpacked, or as .gz next to them):\n{names}\n"
        f"or point --data-dir / ${DATA_DIR_ENV} at a directory that has MNIST/raw/ with them."
    )


def check_idx_files(root: Path) -> None:
    """Raise DataError unless all four IDX files exist with the right magic number, shape and size."""
    check_data_root(root)
    folder = raw_folder(root)
    for name, (magic, count, item_bytes) in IDX_FILES.items():
        path = folder / name
        if not path.exists():
            raise DataError(_missing_files_message(root, f"{name} is missing"))
        if not path.is_file():
            raise DataError(f"{path} is not a regular file (it is a folder or a device); replace it with the MNIST file {name}")

        ndim = 3 if magic == 2051 else 1
        kind = "images" if magic == 2051 else "labels"
        header_bytes = 4 + 4 * ndim
        expected = header_bytes + count * item_bytes
        try:
            size = path.stat().st_size
            with path.open("rb") as f:
                header = f.read(header_bytes)
        except OSError as error:
            raise DataError(f"cannot read {path}: {error.strerror or error}; check that the file is readable by this user") from error
        if len(header) < 8 or int.from_bytes(header[:4], "big") != magic:
            found = int.from_bytes(header[:4], "big") if len(header) >= 4 else None
            raise DataError(
                f"{path} is not an MNIST IDX file: magic number {found}, expected {magic}. "
                "Replace it with the original file."
            )
        dims = [int.from_bytes(header[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
        if dims[0] != count:
            # Each file must contain exactly its split's count, so images and labels always pair up.
            raise DataError(
                f"{path} contains {dims[0]:,} {kind} according to its header, expected {count:,}; "
                "its images and labels would not pair up. Replace it with the original file."
            )
        if ndim == 3 and dims[1:] != [28, 28]:
            raise DataError(f"{path} contains {dims[1]}x{dims[2]} images, expected 28x28. Replace it with the original file.")
        if size != expected:
            raise DataError(
                f"{path} is truncated or corrupt: {size} bytes with header dims {dims}, "
                f"expected {expected} bytes for {count} {kind}. Replace it with the original file."
            )


def check_data_root(root: Path) -> None:
    """Raise DataError when the data directory exists but is not a folder."""
    if root.exists() and not root.is_dir():
        raise DataError(
            f"the data directory {root} is a file, not a folder; point --data-dir or ${DATA_DIR_ENV} "
            "at the folder that contains MNIST/raw/"
        )


def download_mnist(root: Path) -> None:
    """Download the IDX files with torchvision, or raise DataError naming what to place by hand."""
    from torchvision.datasets import MNIST

    mirrors = os.environ.get(MIRRORS_ENV)
    previous_timeout = socket.getdefaulttimeout()
    previous_mirrors = MNIST.mirrors
    try:
        if mirrors:
            MNIST.mirrors = [m.strip().rstrip("/") + "/" for m in mirrors.split(",") if m.strip()]
        socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
        log.info("downloading MNIST into %s", raw_folder(root))
        MNIST(str(root), train=True, download=True)
    except Exception as error:  # torchvision raises RuntimeError, URLError or OSError here
        # torchvision's message lists each mirror with its error on separate lines; keep them all.
        detail = " ".join(line.strip() for line in str(error).splitlines() if line.strip()) or type(error).__name__
        _remove_empty_dirs(raw_folder(root), stop=root)
        raise DataError(_missing_files_message(root, f"download failed ({detail})")) from error
    finally:
        socket.setdefaulttimeout(previous_timeout)
        MNIST.mirrors = previous_mirrors


def _remove_empty_dirs(folder: Path, *, stop: Path) -> None:
    """Remove ``folder`` and its parents up to ``stop`` while they are empty (left by a failed download)."""
    while folder != stop.parent and folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
        folder = folder.parent


_RAW_CACHE: dict[tuple, tuple[torch.Tensor, ...]] = {}


def load_raw(data_dir: str | os.PathLike | None = None, *, download: bool = True) -> tuple[torch.Tensor, ...]:
    """Return (train_images, train_labels, test_images, test_labels) as CPU uint8/int64 tensors.

    The result is cached per process, keyed by the files' paths and modification times.
    """
    from torchvision.datasets import MNIST

    root = resolve_data_dir(data_dir)
    check_data_root(root)  # a file here must be fixed by the user, never downloaded over
    try:
        check_idx_files(root)
    except DataError:
        if not download or any((raw_folder(root) / n).exists() for n in IDX_FILES):
            raise  # a present but broken file must be fixed, not silently replaced
        download_mnist(root)
        check_idx_files(root)

    key = tuple((str(raw_folder(root) / n), (raw_folder(root) / n).stat().st_mtime_ns) for n in IDX_FILES)
    if key not in _RAW_CACHE:
        train = MNIST(str(root), train=True, download=False)
        test = MNIST(str(root), train=False, download=False)
        for name, labels in (("train-labels-idx1-ubyte", train.targets), ("t10k-labels-idx1-ubyte", test.targets)):
            if labels.max() > 9:  # uint8 in the file, so never below 0
                raise DataError(
                    f"{raw_folder(root) / name} has label values outside 0-9 (found {int(labels.max())}). "
                    "Replace it with the original file."
                )
        _RAW_CACHE.clear()
        _RAW_CACHE[key] = (train.data, train.targets, test.data, test.targets)
    return _RAW_CACHE[key]


@dataclass
class MNISTData:
    """The three splits as uint8 images (N, 28, 28) and int64 labels on one device."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    val_images: torch.Tensor
    val_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor

    @property
    def device(self) -> torch.device:
        return self.train_images.device


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """Turn uint8 images (B, 28, 28) into float32 (B, 1, 28, 28) in [0, 1]."""
    return images.unsqueeze(1).to(torch.float32).div_(255.0)


def standardize(x: torch.Tensor) -> torch.Tensor:
    """Shift float images in [0, 1] to the training set's zero mean and unit deviation, in place."""
    return x.sub_(MEAN).div_(STD)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """Turn uint8 images (B, 28, 28) into float32 (B, 1, 28, 28) normalised like training."""
    return standardize(to_unit(images))


def split_indices(count: int = 60000, split_seed: int = SPLIT_SEED) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (validation, training) indices into the official training set: 5,000 and the rest, shuffled."""
    order = torch.randperm(count, generator=torch.Generator().manual_seed(split_seed))
    return order[:VAL_SIZE], order[VAL_SIZE:]


def clear_cache() -> None:
    """Forget the images ``load_raw`` keeps, so the next load reads the IDX files again (a cold start)."""
    _RAW_CACHE.clear()


def load_mnist(
    data_dir: str | os.PathLike | None = None,
    *,
    device: str | torch.device = "cpu",
    download: bool = True,
    train_subset: int | None = None,
    test_subset: int | None = None,
    split_seed: int = SPLIT_SEED,
) -> MNISTData:
    """Load MNIST and split the official training set into 55,000 train and 5,000 validation images.

    ``train_subset`` keeps the first N images of the shuffled training split, for quick runs.
    ``test_subset`` keeps the first N official test images. It exists for tests only, because
    the test accuracy reported to users always uses all 10,000.
    """
    train_images, train_labels, test_images, test_labels = load_raw(data_dir, download=download)

    val_index, train_index = split_indices(len(train_images), split_seed)
    if train_subset is not None:
        if not 1 <= train_subset <= len(train_index):
            raise DataError(f"train_subset must be between 1 and {len(train_index)}, got {train_subset}")
        train_index = train_index[:train_subset]
    if test_subset is not None:
        test_images, test_labels = test_images[:test_subset], test_labels[:test_subset]

    return MNISTData(
        train_images=train_images[train_index].to(device),
        train_labels=train_labels[train_index].to(device),
        val_images=train_images[val_index].to(device),
        val_labels=train_labels[val_index].to(device),
        test_images=test_images.to(device),
        test_labels=test_labels.to(device),
    )
