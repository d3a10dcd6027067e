"""Weights as safetensors files with their config in the header metadata and in a JSON file beside them.

Loading never unpickles anything: safetensors contains raw tensors only, and the
model is rebuilt from its JSON config before the weights are copied in.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from core.devices import memory_format_for
from core.errors import CheckpointError, ConfigError
from core.models import build_model, count_parameters, normalize_model_config

METADATA_KEY = "mnist_lab"


@dataclass
class LoadedModel:
    model: nn.Module  # in eval mode, on CPU
    model_config: dict[str, Any]
    info: dict[str, Any]  # test_accuracy, train_config, ... as saved
    path: Path

    @property
    def arch(self) -> str:
        return self.model_config["arch"]

    @property
    def params(self) -> int:
        return count_parameters(self.model)


def save_checkpoint(path: str | os.PathLike, model: nn.Module, model_config: dict[str, Any], info: dict[str, Any]) -> Path:
    """Write ``path`` (.safetensors) and ``path`` with a .json suffix; return the weights path."""
    path = Path(path)
    if path.suffix != ".safetensors":
        path = path.with_suffix(".safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)

    record = {"model_config": model_config, **info}
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    _write_atomic(path, tensors, {METADATA_KEY: json.dumps(record)})
    path.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    return path


def read_checkpoint_record(path: str | os.PathLike) -> dict[str, Any]:
    """Return the config and info stored in a checkpoint's header, without loading weights."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(_unreadable_message(path, error)) from error
    if METADATA_KEY not in metadata:
        raise CheckpointError(f"{path} has no MNIST Lab config in its header; it was not saved by this tool")
    try:
        record = json.loads(metadata[METADATA_KEY])
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path} has a corrupt config in its header: {error}") from error
    if not isinstance(record, dict) or not isinstance(record.get("model_config"), dict):
        raise CheckpointError(f"{path} has no model_config object in its header; it was not saved by this tool")
    if not isinstance(record["model_config"].get("arch"), str):
        raise CheckpointError(f"{path} has a model_config without an architecture name (arch); it was not saved by this tool")
    return record


def _unreadable_message(path: Path, error: Exception) -> str:
    """Return the message for a file that safetensors cannot read, naming pickle files (torch.save) as such."""
    try:
        with path.open("rb") as f:
            head = f.read(4)
    except OSError:
        head = b""
    # torch.save writes a zip archive (PK\x03\x04) since PyTorch 1.6, and before that a bare pickle (\x80, protocol).
    if head.startswith(b"PK\x03\x04") or (len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5):
        return (
            f"{path} is a pickle file (as torch.save writes), not a safetensors file; it was not loaded, "
            "because unpickling can run any code. Use a .safetensors file saved by this tool (python -m core export)"
        )
    return f"{path} is not a readable safetensors file ({error}); it may be truncated or corrupt"


def load_checkpoint(path: str | os.PathLike, *, device: str | torch.device = "cpu") -> LoadedModel:
    """Rebuild the model from the checkpoint's config and load its weights strictly."""
    path = Path(path)
    record = read_checkpoint_record(path)
    try:
        model_config = normalize_model_config(record["model_config"])
        model = build_model(model_config)
    except (KeyError, ConfigError) as error:
        raise CheckpointError(f"{path} contains a config that cannot be built: {error}") from error

    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(_unreadable_message(path, error)) from error
    check_state_matches(model, tensors, path)
    model.load_state_dict(tensors, strict=True)
    device = torch.device(device)
    model.to(device, memory_format=memory_format_for(device)).eval()  # GhostNet's batch-1 pass: 4.4 ms NCHW, 3.9 ms NHWC
    info = {k: v for k, v in record.items() if k != "model_config"}
    return LoadedModel(model=model, model_config=model_config, info=info, path=path)


def check_state_matches(model: nn.Module, tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Raise CheckpointError listing every missing, unexpected or differently shaped tensor."""
    expected = model.state_dict()
    problems = []
    for name in sorted(set(expected) - set(tensors)):
        problems.append(f"missing {name}")
    for name in sorted(set(tensors) - set(expected)):
        problems.append(f"unexpected {name}")
    for name in sorted(set(expected) & set(tensors)):
        if tuple(expected[name].shape) != tuple(tensors[name].shape):
            problems.append(f"{name}: file has {tuple(tensors[name].shape)}, config needs {tuple(expected[name].shape)}")
    if problems:
        shown = "; ".join(problems[:8]) + (f"; and {len(problems) - 8} more" if len(problems) > 8 else "")
        raise CheckpointError(f"weights in {path} do not match its config: {shown}")


# -- resumable training state ---------------------------------------------------

STATE_KEY = "mnist_lab_training_state"


def save_training_state(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write a nested dict of tensors and plain values (model, optimizer, scheduler, RNG) to one safetensors file.

    Tensors go into the file body under their key path; everything else, with
    the tree's shape, goes into the header as JSON. The write is atomic.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    tree = _split_tensors(state, "", tensors)
    _write_atomic(path, tensors, {STATE_KEY: json.dumps(tree)})
    return path


def _write_atomic(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Write a safetensors file through a temporary name, so a crash mid-write never leaves a half-written file at ``path``."""
    temporary = path.with_suffix(".safetensors.tmp")
    save_file(tensors, str(temporary), metadata=metadata)
    os.replace(temporary, path)


def load_training_state(path: str | os.PathLike) -> dict[str, Any]:
    """Read a file written by ``save_training_state``; raise CheckpointError when it is missing or corrupt."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"training state {path} not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        tensors = load_file(str(path), device="cpu")
        tree = json.loads(metadata[STATE_KEY])
    except (SafetensorError, OSError, ValueError, KeyError) as error:
        raise CheckpointError(f"training state {path} is not readable ({error}); it may be truncated or from another tool") from error
    return _join_tensors(tree, tensors)


def _split_tensors(value: Any, key: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Return a JSON-able copy of ``value`` with each tensor moved into ``tensors`` and replaced by a reference."""
    if isinstance(value, torch.Tensor):
        tensors[key] = value.detach().to("cpu").contiguous()
        return {"__tensor__": key}
    if isinstance(value, dict):
        # Optimizer state is keyed by integer parameter ids, which JSON objects cannot keep.
        return {"__items__": [[k, _split_tensors(v, f"{key}/{k}", tensors)] for k, v in value.items()]}
    if isinstance(value, (list, tuple)):
        return [_split_tensors(v, f"{key}/{i}", tensors) for i, v in enumerate(value)]
    return value


def _join_tensors(tree: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(tree, dict) and "__tensor__" in tree:
        return tensors[tree["__tensor__"]]
    if isinstance(tree, dict) and "__items__" in tree:
        return {k: _join_tensors(v, tensors) for k, v in tree["__items__"]}
    if isinstance(tree, list):
        return [_join_tensors(v, tensors) for v in tree]
    return tree
