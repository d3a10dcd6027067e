"""Execute one stored run: train, write progress to the store, save weights, set the final status.

The background worker's training process and the CLI's foreground ``train``
both go through ``execute_run``, so a run looks the same wherever it trained.
"""

from __future__ import annotations

import gc
import shutil
import logging
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import torch

from core.checkpoints import load_checkpoint, load_training_state, save_checkpoint, save_training_state
from core.errors import CheckpointError, LabError
from core.predictions import OUTPUTS_NAME, save_test_outputs, shipped_outputs_path
from core.store import RunStore
from core.training import Callbacks, TrainingStopped, train

log = logging.getLogger(__name__)

CANCEL_POLL_S = 1.0  # how often the store is asked whether the user pressed Cancel


class RunInterrupted(BaseException):
    """Raised in a training process by SIGTERM, so the run ends as "interrupted" with its message.

    A BaseException, like KeyboardInterrupt, so that no ``except Exception`` in
    the training code swallows it.
    """


def is_out_of_memory(error: BaseException) -> bool:
    """Tell whether ``error`` is an allocation failure: CUDA/MPS out of memory, or CPU malloc failing."""
    if isinstance(error, (MemoryError, torch.OutOfMemoryError)):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text.lower())


class StoreCallbacks(Callbacks):
    """Write thinned loss points and epoch metrics to the store; poll for cancel requests."""

    def __init__(self, store: RunStore, run_id: int, *, on_progress: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.store = store
        self.run_id = run_id
        self.total_steps = 1
        self.on_progress = on_progress
        self._last_cancel_check = 0.0

    def on_start(self, info: dict[str, Any]) -> None:
        self.total_steps = max(1, info["total_steps"])
        self.store.record_start(
            self.run_id, params=info["params"], device=info["device"], total_steps=info["total_steps"],
            flops=info.get("flops"), receptive_field=info.get("receptive_field"),
        )
        if self.on_progress:
            self.on_progress({"event": "start", **info})

    def on_steps(self, points: list[dict[str, Any]]) -> None:
        progress = points[-1]["step"] / self.total_steps
        self.store.add_step_points(self.run_id, points, progress=progress)
        if self.on_progress:
            self.on_progress({"event": "steps", "step": points[-1]["step"], "train_loss": points[-1]["train_loss"]})

    def on_epoch(self, metrics: dict[str, Any]) -> None:
        self.store.add_epoch(self.run_id, metrics)
        if self.on_progress:
            self.on_progress({"event": "epoch", **metrics})

    def on_checkpoint(self, state: dict[str, Any]) -> None:
        save_training_state(self.store.training_state_path(self.run_id), state)

    def should_stop(self) -> bool:
        now = time.monotonic()
        if now - self._last_cancel_check < CANCEL_POLL_S:
            return False
        self._last_cancel_check = now
        return self.store.cancel_requested(self.run_id)


def execute_run(
    store: RunStore,
    run_id: int,
    *,
    data_dir: str | None = None,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train stored run ``run_id`` (already marked running) and return its final row.

    A run with a saved training state (from an earlier, interrupted attempt)
    continues after its last completed epoch. Every outcome ends in a final
    status: completed, cancelled, diverged, out_of_memory, interrupted or failed.
    """
    run = store.get_run(run_id)
    prefix = f"run {run_id}: "
    callbacks = StoreCallbacks(store, run_id, on_progress=on_progress)
    out_of_memory = False
    try:
        resume = _load_resume_state(store, run_id)
        result = train(
            run["model_config"], run["train_config"], data_dir=data_dir, callbacks=callbacks, log_prefix=prefix, resume=resume
        )
        info = {
            "run_id": run_id,
            "name": run["name"],
            "train_config": result.train_config,
            "params": result.params,
            "flops": result.flops,
            "receptive_field": list(result.receptive_field),
            "device": result.device,
            "epochs_completed": result.epochs_completed,
            "best_epoch": result.best_epoch,
            "best_val_accuracy": result.best_val_accuracy,
            "test_accuracy": result.test.accuracy,
            "test_loss": result.test.loss,
            "confusion": result.test.confusion,
            "wall_time_s": result.wall_time_s,
        }
        path = save_checkpoint(store.run_dir(run_id) / "model.safetensors", result.model, result.model_config, info)
        test = result.test
        save_test_outputs(store.run_dir(run_id) / OUTPUTS_NAME, test.probabilities, test.predictions, test.labels)
        store.finish(
            run_id,
            "completed",
            test_accuracy=result.test.accuracy,
            test_loss=result.test.loss,
            confusion=result.test.confusion,
            best_epoch=result.best_epoch,
            best_val_accuracy=result.best_val_accuracy,
            wall_time_s=result.wall_time_s,
            checkpoint=str(path),
            progress=1.0,
            error=None,
        )
        store.training_state_path(run_id).unlink(missing_ok=True)  # a completed run has nothing to resume
    except (KeyboardInterrupt, RunInterrupted) as stop:
        how = "Ctrl-C" if isinstance(stop, KeyboardInterrupt) else str(stop)
        if store.cancel_requested(run_id):
            store.finish(run_id, "cancelled", error=f"cancelled; stopped by {how}")
        else:
            log.warning("%sinterrupted by %s", prefix, how)
            store.finish(run_id, "interrupted", error=f"stopped by {how}; {store.resume_note(run_id)}")
        if isinstance(stop, KeyboardInterrupt):
            raise
    except TrainingStopped as stop:
        log.warning("%s%s: %s", prefix, stop.status, stop)
        store.finish(run_id, stop.status, error=str(stop))
    except LabError as error:
        log.error("%sfailed: %s", prefix, error)
        store.finish(run_id, "failed", error=str(error))
    except Exception as error:  # any bug or runtime error must still end the run with a readable reason
        if is_out_of_memory(error):
            out_of_memory = True
            _end_out_of_memory(store, run_id, error)
        else:
            log.exception("%sfailed with an unexpected error", prefix)
            last_frame = traceback.extract_tb(error.__traceback__)[-1]
            store.finish(
                run_id,
                "failed",
                error=f"{type(error).__name__}: {error} (in {last_frame.name}, {last_frame.filename}:{last_frame.lineno})",
            )
    if out_of_memory:
        # Only now, with the exception and its frames gone, can the failed attempt's tensors be freed.
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return store.get_run(run_id)


def _load_resume_state(store: RunStore, run_id: int) -> dict[str, Any] | None:
    """Return the run's saved training state and drop metrics logged after it, or None for a fresh start."""
    path = store.training_state_path(run_id)
    if not path.is_file():
        store.truncate_metrics(run_id, epoch=0, step=0)  # an attempt that ended before its first epoch left only loose points
        return None
    try:
        state = load_training_state(path)
    except CheckpointError as error:
        raise CheckpointError(f"{error}. Delete the run and train it again") from error
    store.truncate_metrics(run_id, epoch=state["epoch"], step=state["step"])
    log.info("run %d: resuming from %s (epoch %d)", run_id, path, state["epoch"])
    return state


def _end_out_of_memory(store: RunStore, run_id: int, error: BaseException) -> None:
    """Record an allocation failure with the settings that set the memory use."""
    run = store.get_run(run_id)
    train_config = run["train_config"]
    log.error("run %d: out of memory on %s: %s", run_id, run["device"] or train_config.get("device"), error)
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    store.finish(
        run_id,
        "out_of_memory",
        error=(
            f"ran out of memory on {run['device'] or train_config.get('device')} ({first_line[:300]}); start a new run with "
            f"a smaller batch size (now {train_config.get('batch_size')}) or width, or resume once other programs free "
            f"memory. {store.resume_note(run_id)}"
        ),
    )


def export_run(store: RunStore, run_id: int, path: str, *, command: str | None = None) -> Path:
    """Copy a completed run's weights to ``path`` with its results and curves in the record.

    Shipped checkpoints are made this way, so the Compare page can show their
    curves, confusion matrix and test outputs without the store they were trained in.
    """
    run = store.get_run(run_id)
    if run["status"] != "completed" or not run["checkpoint"]:
        raise LabError(f"run {run_id} is {run['status']}; only completed runs can be exported")
    loaded = load_checkpoint(run["checkpoint"])
    keep = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "images_per_s", "epoch_time_s", "wall_time_s")
    history = {
        "epochs": [{"epoch": e["epoch"], **{k: e[k] for k in keep}} for e in store.epoch_metrics([run_id])],
        "steps": [{"step": s["step"], "epoch": s["epoch"], "train_loss": s["train_loss"]} for s in store.step_metrics([run_id])],
    }
    info = {**loaded.info, "confusion": run["confusion"], "history": history}
    if command:
        info["command"] = command
    exported = save_checkpoint(path, loaded.model, loaded.model_config, info)
    outputs = store.run_dir(run_id) / OUTPUTS_NAME
    if outputs.is_file():  # runs completed before outputs were stored have none; Compare evaluates those once
        target = shipped_outputs_path(exported)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(outputs, target)
    return exported
