"""Every model's outputs on the official test set, stored once so comparisons need no re-evaluation.

A run writes ``test_outputs.safetensors`` into its folder when it completes. A
shipped checkpoint ``checkpoints/NAME.safetensors`` has its outputs in
``checkpoints/test_outputs/NAME.safetensors``. Each file contains the class
probabilities (10000, 10) as float16, the predicted classes and the true labels
as uint8. The predictions are the argmax of the float32 scores, so they give
exactly the test accuracy the run reported; the float16 probabilities (about
three significant digits) are for ensembles and confidence plots.

Models without such a file (runs completed before outputs were stored) are
evaluated once, and the result is cached: in the run's folder for a run, and
under ``cache/test_outputs`` in the run store for a checkpoint file.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from core.errors import CheckpointError

log = logging.getLogger(__name__)

OUTPUTS_NAME = "test_outputs.safetensors"  # in a run's folder
SHIPPED_OUTPUTS_DIR = "test_outputs"  # beside the shipped .safetensors files
CACHE_DIR = "cache/test_outputs"  # under the run store root, for checkpoint files without outputs
TEST_SET_SIZE = 10000


@dataclass
class TestOutputs:
    """A model's outputs on the test set: probabilities (N, 10), predictions (N,) and labels (N,)."""

    probabilities: np.ndarray  # float32, rows sum to about 1
    predictions: np.ndarray  # int64
    labels: np.ndarray  # int64

    @property
    def correct(self) -> np.ndarray:
        """Boolean (N,): which test images the model classifies correctly."""
        return self.predictions == self.labels

    @property
    def accuracy(self) -> float:
        return float(self.correct.mean())

    @classmethod
    def from_probabilities(cls, probabilities: np.ndarray, labels: np.ndarray) -> TestOutputs:
        """Outputs of an ensemble or another model known only by its probabilities."""
        probabilities = np.asarray(probabilities, dtype=np.float32)
        return cls(probabilities, probabilities.argmax(axis=1).astype(np.int64), np.asarray(labels, dtype=np.int64))


def save_test_outputs(path: str | os.PathLike, probabilities: torch.Tensor, predictions: torch.Tensor, labels: torch.Tensor) -> Path:
    """Write one outputs file atomically; shapes are checked so a wrong file is never written."""
    path = Path(path)
    count = len(labels)
    if tuple(probabilities.shape) != (count, 10) or tuple(predictions.shape) != (count,):
        raise ValueError(
            f"test outputs need probabilities ({count}, 10) and predictions ({count},), "
            f"got {tuple(probabilities.shape)} and {tuple(predictions.shape)}"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {
        "probabilities": probabilities.detach().to("cpu", torch.float16).contiguous(),
        "predictions": predictions.detach().to("cpu", torch.uint8).contiguous(),
        "labels": labels.detach().to("cpu", torch.uint8).contiguous(),
    }
    temporary = path.with_suffix(".safetensors.tmp")
    save_file(tensors, str(temporary), metadata={"test_images": str(count)})
    os.replace(temporary, path)
    return path


def load_test_outputs(path: str | os.PathLike) -> TestOutputs:
    """Read a file written by ``save_test_outputs``; raise CheckpointError when it is missing or broken."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"test outputs {path} not found")
    try:
        tensors = load_file(str(path), device="cpu")
        outputs = TestOutputs(
            probabilities=tensors["probabilities"].float().numpy(),
            predictions=tensors["predictions"].long().numpy(),
            labels=tensors["labels"].long().numpy(),
        )
    except (SafetensorError, OSError, ValueError, KeyError) as error:
        raise CheckpointError(f"test outputs {path} are not readable ({error}); delete the file so they are computed again") from error
    if outputs.probabilities.shape != (len(outputs.labels), 10) or outputs.predictions.shape != outputs.labels.shape:
        raise CheckpointError(f"test outputs {path} have inconsistent shapes; delete the file so they are computed again")
    return outputs


def shipped_outputs_path(checkpoint: str | os.PathLike) -> Path:
    """Return where a shipped checkpoint's outputs live: test_outputs/NAME.safetensors beside it."""
    checkpoint = Path(checkpoint)
    return checkpoint.parent / SHIPPED_OUTPUTS_DIR / checkpoint.name


def cached_outputs_path(store_root: str | os.PathLike, checkpoint: str | os.PathLike) -> Path:
    """Return the cache file for a checkpoint without stored outputs, keyed by its path and modification time."""
    checkpoint = Path(checkpoint).resolve()
    key = f"{checkpoint}:{checkpoint.stat().st_mtime_ns}".encode()
    return Path(store_root) / CACHE_DIR / f"{hashlib.sha256(key).hexdigest()[:24]}.safetensors"


def evaluate_checkpoint(checkpoint: str | os.PathLike, data_dir: str | os.PathLike | None, destination: Path) -> TestOutputs:
    """Evaluate a checkpoint on the official test set, save its outputs to ``destination`` and return them."""
    from core.checkpoints import load_checkpoint
    from core.data import load_raw
    from core.training import evaluate

    log.info("computing test outputs of %s (no stored outputs); saving them to %s", checkpoint, destination)
    loaded = load_checkpoint(checkpoint)
    _, _, images, labels = load_raw(data_dir, download=False)
    result = evaluate(loaded.model, images, labels)
    save_test_outputs(destination, result.probabilities, result.predictions, labels)
    return load_test_outputs(destination)
