"""Plain PyTorch training loop on device-resident MNIST tensors.

Defaults sit together in TrainConfig. The loop syncs with the host only at
thinned logging points and at epoch ends, so the step itself stays on device.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import nn

from core.analysis import model_cost
from core.augment import AugmentSettings, augment_batch
from core.data import VAL_SIZE, MNISTData, load_mnist, normalize, standardize, to_unit
from core.devices import autocast_for, memory_format_for, optimizer_options, resolve_device, to_device
from core.errors import ConfigError, LabError
from core.models import build_model, check_model_size, count_parameters, normalize_model_config
from core.models.config import NUM_CLASSES, config_from_dict, config_to_dict
from core.models.outputs import loss_and_scores, probabilities

log = logging.getLogger(__name__)

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULERS = ("onecycle", "cosine", "constant")
TRAIN_SIZE = 60000 - VAL_SIZE  # images in the training split
MAX_LOSS_POINTS = 2000  # per-step loss is averaged over groups of steps to stay under this
# Small eval batches run fastest on CPU (cache-resident activations); GPUs want large ones.
EVAL_BATCH_SIZE = {"cpu": 128}
FLUSH_INTERVAL_S = 2.0  # pending loss points go to the callbacks (and live charts) once this much time passed
DEFAULT_EVAL_BATCH_SIZE = 1024
MAX_SEED = 2**32 - 1  # the range numpy's seeding accepts; torch.manual_seed fails above 2**64 - 1


@dataclass
class TrainConfig:
    optimizer: str = "adamw"
    lr: float = 3e-3  # peak learning rate for OneCycle, start rate for cosine
    momentum: float = 0.9  # SGD only
    weight_decay: float = 1e-4
    scheduler: str = "onecycle"
    label_smoothing: float = 0.0
    epochs: int = 5
    batch_size: int = 128
    seed: int = 0
    early_stopping_patience: int = 0  # epochs without a new best val_accuracy; 0 turns it off
    device: str = "auto"
    train_subset: int | None = None  # first N images of the 55,000 training split
    augment: bool = False  # random affine transform of every training image, per batch on the device
    rotate_deg: float = 10.0
    translate: float = 0.1  # fraction of the image size per axis
    scale: float = 0.1
    shear_deg: float = 5.0
    elastic: bool = False  # elastic distortion on top of the affine transform (needs augment)
    elastic_alpha: float = 2.0  # largest displacement, in pixels
    elastic_sigma: float = 4.0  # smoothing of the displacement field, in pixels
    # torch.compile the model for training, meant for CUDA (not measured here). On a 2-core CPU it took
    # 25 s to compile the CNN, and its steps were slower than eager ones (92 ms against 59 ms).
    compile: bool = False

    def augment_settings(self) -> AugmentSettings | None:
        return self._augment_fields() if self.augment else None

    def _augment_fields(self) -> AugmentSettings:
        return AugmentSettings(
            rotate_deg=self.rotate_deg, translate=self.translate, scale=self.scale, shear_deg=self.shear_deg,
            elastic=self.elastic, elastic_alpha=self.elastic_alpha, elastic_sigma=self.elastic_sigma,
        )

    def validate(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer {self.optimizer!r}; choose one of: {', '.join(OPTIMIZERS)}")
        if self.scheduler not in SCHEDULERS:
            raise ConfigError(f"unknown scheduler {self.scheduler!r}; choose one of: {', '.join(SCHEDULERS)}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be positive, got {self.lr}; try 0.003 for Adam or 0.05 for SGD")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be 0 or more, got {self.weight_decay}")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum}")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.epochs < 1:
            raise ConfigError(f"epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 2:
            raise ConfigError(f"batch_size must be at least 2 (BatchNorm needs two images), got {self.batch_size}")
        if not 0 <= self.seed <= MAX_SEED:
            raise ConfigError(f"seed must be a whole number from 0 to {MAX_SEED}, got {self.seed}")
        if self.early_stopping_patience < 0:
            raise ConfigError(f"early_stopping_patience must be 0 (off) or more, got {self.early_stopping_patience}")
        if self.train_subset is not None and not 1 <= self.train_subset <= TRAIN_SIZE:
            raise ConfigError(f"train_subset must be between 1 and {TRAIN_SIZE:,}, got {self.train_subset}")
        if self.elastic and not self.augment:
            raise ConfigError("elastic distortion is applied with the affine augmentation; turn augment on too")
        self._augment_fields().validate()
        train_size = self.train_subset or TRAIN_SIZE
        if self.batch_size > train_size:
            raise ConfigError(
                f"batch_size {self.batch_size} is larger than the {train_size} training images; "
                f"use a batch size of at most {train_size}"
            )


def parse_train_config(data: dict[str, Any]) -> TrainConfig:
    config = config_from_dict(TrainConfig, {**config_to_dict(TrainConfig()), **data}, where="train")
    config.validate()
    return config


class TrainingStopped(LabError):
    """Raised inside the loop when the run must end early; ``status`` is the run's final status."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status


class Callbacks:
    """Hooks the loop calls; the worker and CLI override them to store progress."""

    def on_start(self, info: dict[str, Any]) -> None: ...

    def on_steps(self, points: list[dict[str, Any]]) -> None: ...

    def on_epoch(self, metrics: dict[str, Any]) -> None: ...

    def on_checkpoint(self, state: dict[str, Any]) -> None:
        """Receive the training state after each completed epoch; ``train(resume=state)`` continues from it."""

    def should_stop(self) -> bool:
        return False


@dataclass
class EvalResult:
    loss: float
    accuracy: float
    predictions: torch.Tensor  # (N,) int64 on CPU
    probabilities: torch.Tensor  # (N, 10) float32 on CPU
    labels: torch.Tensor  # (N,) int64 on CPU
    confusion: list[list[int]]  # [true][predicted]


@torch.no_grad()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, batch_size: int | None = None) -> EvalResult:
    """Evaluate ``model`` on uint8 images (N, 28, 28); the model is left in eval mode."""
    model.eval()
    device = next(model.parameters()).device
    batch_size = batch_size or EVAL_BATCH_SIZE.get(device.type, DEFAULT_EVAL_BATCH_SIZE)
    total_loss = torch.zeros((), device=device)
    predictions, class_probabilities = [], []
    memory_format = memory_format_for(device)
    for start in range(0, len(images), batch_size):
        x = normalize(images[start : start + batch_size].to(device)).contiguous(memory_format=memory_format)
        y = labels[start : start + batch_size].to(device)
        with autocast_for(device):
            loss, logits = loss_and_scores(model, x, y, reduction="sum")
        total_loss += loss.float()
        predictions.append(logits.argmax(dim=1))
        class_probabilities.append(probabilities(model, logits))

    predicted = torch.cat(predictions).cpu()
    truth = labels.cpu()
    confusion = torch.bincount(truth * NUM_CLASSES + predicted, minlength=NUM_CLASSES**2).view(NUM_CLASSES, NUM_CLASSES)
    return EvalResult(
        loss=total_loss.item() / len(images),
        accuracy=(predicted == truth).sum().item() / len(truth),  # exact: 9923 / 10000 is 0.9923
        predictions=predicted,
        probabilities=torch.cat(class_probabilities).float().cpu(),
        labels=truth,
        confusion=confusion.tolist(),
    )


def _make_optimizer(model: nn.Module, config: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    params = model.parameters()
    options = optimizer_options(device)
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay, nesterov=True, **options
        )
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay, **options)
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, **options)


def _match_state_layout(optimizer: torch.optim.Optimizer) -> None:
    """Give loaded optimizer state the memory layout of its parameter.

    A saved state is contiguous, while the parameters may be channels_last, and the
    fused optimizer kernels read both tensors as flat memory: with different layouts
    they would update the wrong elements.
    """
    for param, state in optimizer.state.items():
        for key, value in state.items():
            if torch.is_tensor(value) and value.shape == param.shape:
                state[key] = torch.empty_like(param).copy_(value)


def _make_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, total_steps: int):
    if config.scheduler == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=total_steps)
    if config.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)


@dataclass
class TrainResult:
    model: nn.Module
    model_config: dict[str, Any]
    train_config: dict[str, Any]
    params: int
    flops: int  # multiply-adds per image, from core.analysis
    receptive_field: tuple[int, int]  # of the last stage, (height, width) in pixels
    device: str
    epochs_completed: int
    best_epoch: int
    best_val_accuracy: float
    test: EvalResult
    wall_time_s: float


def _restore_state(state: dict[str, Any], model, optimizer, scheduler, generator, device, steps_per_epoch: int) -> None:
    """Load a saved training state into freshly built objects; reject one from another config."""
    if state["step"] != state["epoch"] * steps_per_epoch:
        raise ConfigError(
            f"the saved training state has {state['step']} steps after {state['epoch']} epochs, but this config makes "
            f"{steps_per_epoch} steps per epoch; resume with the config the run was started with"
        )
    try:
        model.load_state_dict({k: v.to(device) for k, v in state["model"].items()})
        optimizer.load_state_dict(state["optimizer"])
        _match_state_layout(optimizer)
    except (RuntimeError, ValueError, KeyError) as error:
        raise ConfigError(f"the saved training state does not fit this model or optimizer: {error}") from error
    scheduler.load_state_dict(state["scheduler"])
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])  # dropout masks continue the same stream
    # NOTE: CUDA and MPS keep their own random streams, which are not saved, so a resumed GPU run
    # differs from an uninterrupted one in its dropout masks (not in its batch order).


def compile_model(model: nn.Module) -> nn.Module:
    """Return ``torch.compile(model)``, or raise ConfigError naming what is missing on this machine.

    Compilation happens at the first call; ``_compile_errors`` turns the errors raised
    there (no C++ compiler on CPU, an unsupported backend) into a ConfigError. A model
    with its own loss (CapsNet) trains through that method, which stays uncompiled.
    """
    try:
        return torch.compile(model)
    except RuntimeError as error:  # e.g. torch.compile is not supported on this Python
        raise ConfigError(f"torch.compile is not available here ({error}); turn compile off") from error


@contextlib.contextmanager
def _compile_errors(active: bool, device: torch.device) -> Iterator[None]:
    """Report a failure of the first compiled step as a config problem with the fix."""
    if not active:
        yield
        return
    try:
        yield
    except Exception as error:  # dynamo and inductor raise many types; all mean the same to the user
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ConfigError(
            f"torch.compile failed on {device.type} ({type(error).__name__}: {first_line}); "
            "turn compile off, or on CPU install a C++ compiler such as gcc"
        ) from error


def prepare_run(model_config: dict[str, Any], train_config: dict[str, Any]) -> tuple[dict[str, Any], TrainConfig]:
    """Validate both configs and the device before any training; return the complete model config."""
    complete, config = normalize_model_config(model_config), parse_train_config(train_config)
    check_model_size(complete)
    resolve_device(config.device)
    return complete, config


def train(
    model_config: dict[str, Any],
    train_config: dict[str, Any],
    *,
    data_dir: str | None = None,
    data: MNISTData | None = None,
    callbacks: Callbacks | None = None,
    log_prefix: str = "",
    resume: dict[str, Any] | None = None,
) -> TrainResult:
    """Train one model and evaluate it on the official test set.

    With ``resume`` (a state passed to ``callbacks.on_checkpoint``), training
    continues after that state's epoch with the same weights, optimizer,
    schedule and random streams, so the result matches an uninterrupted run.
    Raises TrainingStopped with status "diverged" when the loss becomes NaN or
    infinite and "cancelled" when ``callbacks.should_stop()`` turns true.
    """
    callbacks = callbacks or Callbacks()
    model_config, config = prepare_run(model_config, train_config)
    device = resolve_device(config.device)
    cost = model_cost(model_config)
    started = time.perf_counter()

    torch.manual_seed(config.seed)
    memory_format = memory_format_for(device)
    model = build_model(model_config).to(device, memory_format=memory_format)
    params = count_parameters(model)
    if data is None or data.device != device:
        data = load_mnist(data_dir, device=device, train_subset=config.train_subset)
    elif config.train_subset is not None:
        data = copy.copy(data)
        data.train_images = data.train_images[: config.train_subset]
        data.train_labels = data.train_labels[: config.train_subset]

    n_train = len(data.train_images)
    steps_per_epoch = n_train // config.batch_size  # the last partial batch is dropped; shuffling varies it
    total_steps = steps_per_epoch * config.epochs
    # Every epoch end adds one point off the log_every grid, so those are reserved out of the budget.
    log_every = max(1, math.ceil(total_steps / max(1, MAX_LOSS_POINTS - config.epochs)))
    optimizer = _make_optimizer(model, config, device)
    scheduler = _make_scheduler(optimizer, config, total_steps)
    generator = torch.Generator().manual_seed(config.seed)
    augment = config.augment_settings()
    forward_model = compile_model(model) if config.compile else model

    best_val, best_epoch, best_state, stale_epochs = -1.0, 0, None, 0
    step = 0
    epochs_completed = 0
    training_done = False
    if resume is not None:
        _restore_state(resume, model, optimizer, scheduler, generator, device, steps_per_epoch)
        step, epochs_completed = resume["step"], resume["epoch"]
        best_val, best_epoch, stale_epochs = resume["best_val"], resume["best_epoch"], resume["stale_epochs"]
        best_state = {k: v.to(device) for k, v in resume["best_model"].items()} if resume["best_model"] else None
        training_done = resume["training_done"]
        started -= resume["elapsed_s"]  # wall time counts the time trained before the interruption

    callbacks.on_start(
        {"params": params, "flops": cost.flops, "receptive_field": cost.receptive_field, "device": str(device),
         "total_steps": total_steps, "steps_per_epoch": steps_per_epoch,
         "train_size": n_train, "resumed_after_epoch": epochs_completed if resume is not None else None}
    )
    if resume is not None:
        log.info("%sresuming after epoch %d of %d (step %d)", log_prefix, epochs_completed, config.epochs, step)
    else:
        log.info("%sstart: %d parameters on %s, %d epochs of %d steps", log_prefix, params, device, config.epochs, steps_per_epoch)

    last_flush = time.perf_counter()
    first_step = step
    first_epoch = config.epochs + 1 if training_done else epochs_completed + 1  # done: only the test evaluation is left
    for epoch in range(first_epoch, config.epochs + 1):
        model.train()
        epoch_start = time.perf_counter()
        order = to_device(torch.randperm(n_train, generator=generator), device)
        epoch_loss = torch.zeros((), device=device)
        epoch_correct = torch.zeros((), device=device, dtype=torch.long)
        window_loss = torch.zeros((), device=device)
        window_steps = 0
        points: list[dict[str, Any]] = []

        for batch in range(steps_per_epoch):
            index = order[batch * config.batch_size : (batch + 1) * config.batch_size]
            x = to_unit(data.train_images[index])
            if augment is not None:
                x = augment_batch(x, augment)
            x = standardize(x).contiguous(memory_format=memory_format)
            y = data.train_labels[index]
            with autocast_for(device), _compile_errors(config.compile and step == first_step, device):
                loss, logits = loss_and_scores(forward_model, x, y, label_smoothing=config.label_smoothing)
            loss = loss.float()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1

            detached = loss.detach()
            epoch_loss += detached
            window_loss += detached
            window_steps += 1
            epoch_correct += (logits.argmax(dim=1) == y).sum()

            if step % log_every == 0 or batch == steps_per_epoch - 1:
                mean_loss = (window_loss / window_steps).item()  # the only host sync inside an epoch
                if not math.isfinite(mean_loss):
                    raise TrainingStopped(
                        "diverged",
                        f"training loss became {mean_loss} at step {step} (epoch {epoch}); "
                        f"lower the learning rate (now {config.lr}) or add weight decay",
                    )
                points.append(
                    {"step": step, "epoch": epoch - 1 + (batch + 1) / steps_per_epoch, "train_loss": mean_loss,
                     "lr": scheduler.get_last_lr()[0], "wall_time_s": time.perf_counter() - started}
                )
                window_loss.zero_()
                window_steps = 0
                now = time.perf_counter()
                if len(points) >= 20 or now - last_flush >= FLUSH_INTERVAL_S or batch == steps_per_epoch - 1:
                    callbacks.on_steps(points)
                    points = []
                    last_flush = now
                if callbacks.should_stop():
                    raise TrainingStopped("cancelled", f"cancelled at step {step} (epoch {epoch})")

        epoch_time = time.perf_counter() - epoch_start
        val = evaluate(model, data.val_images, data.val_labels)
        metrics = {
            "epoch": epoch,
            "train_loss": epoch_loss.item() / steps_per_epoch,
            "train_accuracy": epoch_correct.item() / (steps_per_epoch * config.batch_size),
            "val_loss": val.loss,
            "val_accuracy": val.accuracy,
            "lr": scheduler.get_last_lr()[0],
            "images_per_s": steps_per_epoch * config.batch_size / epoch_time,
            "epoch_time_s": epoch_time,
            "wall_time_s": time.perf_counter() - started,
        }
        epochs_completed = epoch
        if not math.isfinite(metrics["train_loss"]) or not math.isfinite(val.loss):
            raise TrainingStopped("diverged", f"loss became non-finite in epoch {epoch}; lower the learning rate (now {config.lr})")
        callbacks.on_epoch(metrics)
        log.info(
            "%sepoch %d/%d: train_loss %.4f val_loss %.4f val_accuracy %.4f (%.1f s, %.0f images/s)",
            log_prefix, epoch, config.epochs, metrics["train_loss"], val.loss, val.accuracy, epoch_time, metrics["images_per_s"],
        )

        if val.accuracy > best_val:
            best_val, best_epoch, stale_epochs = val.accuracy, epoch, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            stale_epochs += 1
        stop_early = bool(config.early_stopping_patience) and stale_epochs >= config.early_stopping_patience
        callbacks.on_checkpoint(
            {
                "epoch": epoch, "step": step, "elapsed_s": time.perf_counter() - started, "training_done": stop_early,
                "best_val": best_val, "best_epoch": best_epoch, "stale_epochs": stale_epochs,
                "model": model.state_dict(), "best_model": best_state,
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "generator": generator.get_state(), "torch_rng": torch.get_rng_state(),
            }
        )
        if stop_early:
            log.info("%searly stopping after epoch %d: best val_accuracy %.4f at epoch %d", log_prefix, epoch, best_val, best_epoch)
            break
        if callbacks.should_stop():
            raise TrainingStopped("cancelled", f"cancelled after epoch {epoch}")

    if best_state is not None:
        model.load_state_dict(best_state)  # report the test result of the best validation epoch
    test = evaluate(model, data.test_images, data.test_labels)
    wall_time = time.perf_counter() - started
    log.info("%sfinished: test_accuracy %.4f test_loss %.4f in %.1f s", log_prefix, test.accuracy, test.loss, wall_time)
    return TrainResult(
        model=model,
        model_config=model_config,
        train_config=config_to_dict(config),
        params=params,
        flops=cost.flops,
        receptive_field=cost.receptive_field,
        device=str(device),
        epochs_completed=epochs_completed,
        best_epoch=best_epoch,
        best_val_accuracy=best_val,
        test=test,
        wall_time_s=wall_time,
    )
