"""Find trained models (shipped and stored runs) and classify prepared digits with them."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from core.checkpoints import LoadedModel, load_checkpoint, read_checkpoint_record
from core.errors import CheckpointError
from core.models.outputs import probabilities
from core.store import RunStore, is_run_id

SHIPPED_DIR = Path(__file__).resolve().parent.parent / "checkpoints"


@dataclass(frozen=True)
class ModelEntry:
    key: str  # "shipped:cnn" or "run:12"
    label: str  # what the app shows
    path: Path
    arch: str
    test_accuracy: float | None
    params: int | None
    info: dict = field(default_factory=dict, compare=False)  # the checkpoint's saved record (shipped models)


def shipped_models(directory: str | os.PathLike = SHIPPED_DIR) -> list[ModelEntry]:
    entries = []
    for path in sorted(Path(directory).glob("*.safetensors")):
        record = read_checkpoint_record(path)
        entries.append(
            ModelEntry(
                key=f"shipped:{path.stem}",
                label=f"{path.stem} (shipped)",
                path=path,
                arch=record["model_config"]["arch"],
                test_accuracy=record.get("test_accuracy"),
                params=record.get("params"),
                info=record,
            )
        )
    return entries


def run_models(store: RunStore, *, runs: list[dict] | None = None) -> list[ModelEntry]:
    """Return the completed runs with weights on disk; ``runs`` reuses a list the caller already read."""
    entries = []
    for run in store.list_runs(statuses=("completed",)) if runs is None else runs:
        if run["status"] == "completed" and run["checkpoint"] and Path(run["checkpoint"]).is_file():
            entries.append(
                ModelEntry(
                    key=f"run:{run['id']}",
                    label=f"#{run['id']} {run['name']}",
                    path=Path(run["checkpoint"]),
                    arch=run["arch"],
                    test_accuracy=run["test_accuracy"],
                    params=run["params"],
                )
            )
    return entries


def resolve_model_path(model: str, store: RunStore | None = None) -> Path:
    """Map a run id, a shipped model name ('cnn') or a .safetensors path to a checkpoint path."""
    if is_run_id(model):
        if store is None:
            raise CheckpointError(f"model {model!r} looks like a run id, but no run store was given")
        run = store.get_run(int(model))
        if not run["checkpoint"]:
            raise CheckpointError(f"run {model} has no weights (status {run['status']}); only completed runs can be used")
        return Path(run["checkpoint"])
    path = Path(model)
    if path.suffix == ".safetensors" or path.exists():
        return path
    shipped = SHIPPED_DIR / f"{model}.safetensors"
    if shipped.is_file():
        return shipped
    raise CheckpointError(
        f"model {model!r} is not a run id, a shipped model name or a .safetensors file; "
        f"shipped models: {', '.join(e.path.stem for e in shipped_models()) or 'none'}"
    )


_MODEL_CACHE: dict[tuple[str, int], LoadedModel] = {}


def load_cached(path: str | os.PathLike) -> LoadedModel:
    """Load a checkpoint once per process (keyed by path and modification time), in eval mode."""
    path = Path(path)
    try:
        key = (str(path.resolve()), path.stat().st_mtime_ns)
    except OSError as error:
        raise CheckpointError(f"checkpoint {path} not found") from error
    if key not in _MODEL_CACHE:
        _MODEL_CACHE[key] = load_checkpoint(path)
    return _MODEL_CACHE[key]


@torch.inference_mode()
def predict_probabilities(model: LoadedModel, tensor: torch.Tensor) -> torch.Tensor:
    """Return class probabilities (B, 10) for normalised inputs (B, 1, 28, 28).

    Under inference mode PyTorch records no autograd state at all, so it is cheaper than
    ``no_grad``. The result cannot be used in training, and no caller does that.
    """
    return probabilities(model.model, model.model(tensor.to(torch.float32)))
