"""Invariance lab: how test accuracy falls as the digits are shifted along x, along y or rotated.

A convolution followed by pooling tolerates small shifts. How far that tolerance
reaches along each axis depends on the kernels and pooling: a CNN with (1, 7)
kernels has a wide receptive field along x and a narrow one along y. A dense
net has no built-in tolerance at all. The curves here measure that on the official test images.

Every transform keeps the 28x28 frame. Shifts move the ink by whole pixels and
fill the uncovered border with background (no wrap-around). A positive x shift
moves the ink right and a positive y shift moves it down. Rotations use
torchvision's bilinear ``rotate`` about the image centre, where a positive angle
turns the digit counter-clockwise, and fill the corners with background.

Results are cached as JSON under ``cache/invariance`` in the run store, keyed by
the member checkpoints (path and modification time) and the settings.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import nn
from torchvision.transforms.v2 import functional as TF

from core.compare import Subject
from core.data import MEAN, STD, load_raw
from core.devices import memory_format_for
from core.errors import CheckpointError, ConfigError
from core.inference import load_cached
from core.models.outputs import probabilities
from core.store import RunStore

log = logging.getLogger(__name__)

AXES = ("x_shift", "y_shift", "rotation")
AXIS_NAMES = {"x_shift": "x shift", "y_shift": "y shift", "rotation": "rotation"}
AXIS_UNITS = {"x_shift": "px", "y_shift": "px", "rotation": "°"}

TEST_SET_SIZE = 10000
DEFAULT_IMAGES = 2000
MAX_SHIFT_LIMIT_PX = 14  # half the frame: a larger shift leaves at most a sliver of any MNIST digit
MAX_ANGLE_LIMIT_DEG = 180
EVAL_BATCH_SIZE = 256  # on 2 CPU cores the shipped CNN ran 2,000 images in 0.27 s at 256 and 0.42 s at 1,000
KEEP_FRACTION = 0.95  # the summary reports how far accuracy stays at or above this share of the unshifted accuracy

CACHE_DIR = "cache/invariance"  # under the run store root
CACHE_VERSION = 1  # bump when the measurement changes, so older cached curves are not reused

ProgressCallback = Callable[[float, str], None]


@dataclass(frozen=True)
class InvarianceSettings:
    """Measurement settings: the first ``images`` test images, shifts up to ±max_shift_px, angles up to ±max_angle_deg."""

    images: int = DEFAULT_IMAGES
    max_shift_px: int = 6
    max_angle_deg: int = 45
    angle_step_deg: int = 5

    def validate(self) -> None:
        """Raise ConfigError naming the first invalid setting and its valid range."""
        for name, value in asdict(self).items():
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"invariance setting {name} must be a whole number, got {value!r}")
        if not 1 <= self.images <= TEST_SET_SIZE:
            raise ConfigError(
                f"test image count {self.images:,} is outside 1..{TEST_SET_SIZE:,}; "
                f"choose 1 to {TEST_SET_SIZE:,} images ({DEFAULT_IMAGES:,} is quick, {TEST_SET_SIZE:,} is the whole test set)"
            )
        if not 1 <= self.max_shift_px <= MAX_SHIFT_LIMIT_PX:
            raise ConfigError(
                f"largest shift {self.max_shift_px} px is outside 1..{MAX_SHIFT_LIMIT_PX} px; "
                f"choose 1 to {MAX_SHIFT_LIMIT_PX} px (a larger shift moves the digit out of the 28 px frame)"
            )
        if not 1 <= self.max_angle_deg <= MAX_ANGLE_LIMIT_DEG:
            raise ConfigError(f"largest angle {self.max_angle_deg}° is outside 1..{MAX_ANGLE_LIMIT_DEG}°; choose 1 to {MAX_ANGLE_LIMIT_DEG} degrees")
        if not 1 <= self.angle_step_deg <= self.max_angle_deg:
            raise ConfigError(
                f"angle step {self.angle_step_deg}° is outside 1..{self.max_angle_deg}° (the largest angle); "
                "choose a step no larger than the largest angle, e.g. 5"
            )

    def axis_values(self) -> dict[str, list[int]]:
        """Return the shifts (px) and angles (degrees) per axis, each symmetric around 0 and including 0."""
        shifts = list(range(-self.max_shift_px, self.max_shift_px + 1))
        positive = list(range(self.angle_step_deg, self.max_angle_deg + 1, self.angle_step_deg))
        angles = [-a for a in reversed(positive)] + [0] + positive
        return {"x_shift": shifts, "y_shift": shifts, "rotation": angles}


@dataclass
class Curve:
    """Accuracy at each value of one transform; ``low`` and ``high`` span a seed group's runs."""

    axis: str
    values: list[int]
    accuracy: list[float]  # the mean over rows (a group's seeds); one row otherwise
    low: list[float]
    high: list[float]

    def accuracy_at(self, value: int) -> float:
        return self.accuracy[self.values.index(value)]


@dataclass
class InvarianceResult:
    """One subject's three curves, measured on the first ``settings.images`` test images."""

    key: str
    label: str
    kind: str
    rows: int  # curves per point: a group's seed count, 1 for a model or an ensemble
    settings: InvarianceSettings
    curves: dict[str, Curve]

    @property
    def base_accuracy(self) -> float:
        """Accuracy on the untransformed images."""
        return self.curves["x_shift"].accuracy_at(0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key, "label": self.label, "kind": self.kind, "rows": self.rows,
            "settings": asdict(self.settings), "curves": {axis: asdict(curve) for axis, curve in self.curves.items()},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InvarianceResult:
        return cls(
            key=data["key"], label=data["label"], kind=data["kind"], rows=int(data["rows"]),
            settings=InvarianceSettings(**data["settings"]),
            curves={axis: Curve(**data["curves"][axis]) for axis in AXES},
        )


# -- transforms ---------------------------------------------------------------------------------------


def shift_images(images: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """Move the content of images (..., H, W) dx pixels right and dy pixels down, filling with zeros."""
    height, width = images.shape[-2:]
    shifted = torch.zeros_like(images)
    if abs(dx) >= width or abs(dy) >= height:
        return shifted

    # Rows [max(dy, 0), height + min(dy, 0)) of the output take rows [max(-dy, 0), height - max(dy, 0)) of the input.
    shifted[..., max(dy, 0) : height + min(dy, 0), max(dx, 0) : width + min(dx, 0)] = images[
        ..., max(-dy, 0) : height - max(dy, 0), max(-dx, 0) : width - max(dx, 0)
    ]
    return shifted


def rotate_images(images: torch.Tensor, angle_deg: float) -> torch.Tensor:
    """Rotate float images (..., H, W) counter-clockwise about their centre, bilinear, with zero fill."""
    if angle_deg == 0:
        return images.clone()
    return TF.rotate(images, float(angle_deg), interpolation=TF.InterpolationMode.BILINEAR, expand=False, fill=0.0)


def transform_images(images: torch.Tensor, *, dx: int = 0, dy: int = 0, angle_deg: float = 0) -> torch.Tensor:
    """Rotate, then shift float images in [0, 1] (..., H, W); the fill is 0, the background's ink level."""
    return shift_images(rotate_images(images, angle_deg), dx, dy)


def standardized(unit_images: torch.Tensor) -> torch.Tensor:
    """Normalise float images in [0, 1] like training, out of place (autograd may track the input)."""
    return (unit_images - MEAN) / STD


def _transform_of(axis: str, value: int) -> tuple[int, int, int]:
    """Return (dx, dy, angle) for one point of one axis."""
    if axis == "x_shift":
        return value, 0, 0
    if axis == "y_shift":
        return 0, value, 0
    return 0, 0, value


# -- measuring ----------------------------------------------------------------------------------------


@torch.inference_mode()
def batch_probabilities(model: nn.Module, inputs: torch.Tensor, *, batch_size: int = EVAL_BATCH_SIZE) -> torch.Tensor:
    """Return class probabilities (N, 10) float32 for normalised inputs (N, 1, 28, 28), in batches."""
    memory_format = memory_format_for(torch.device("cpu"))
    chunks = []
    for start in range(0, len(inputs), batch_size):
        x = inputs[start : start + batch_size].to(torch.float32).contiguous(memory_format=memory_format)
        chunks.append(probabilities(model, model(x)).float())
    return torch.cat(chunks)


def _row_accuracies(models: list[nn.Module], inputs: torch.Tensor, labels: torch.Tensor, *, ensemble: bool) -> list[float]:
    """Return one accuracy per model, or one for the ensemble's mean probabilities."""
    member_probabilities = [batch_probabilities(model, inputs) for model in models]
    if ensemble:
        member_probabilities = [torch.stack(member_probabilities).mean(dim=0)]
    return [(p.argmax(dim=1) == labels).float().mean().item() for p in member_probabilities]


def measure_models(
    models: list[nn.Module],
    images: torch.Tensor,
    labels: torch.Tensor,
    settings: InvarianceSettings,
    *,
    ensemble: bool = False,
    label: str = "",
    on_progress: ProgressCallback | None = None,
) -> tuple[dict[str, Curve], int]:
    """Return the three curves and the number of rows for uint8 images (N, 28, 28) and their labels.

    Without ``ensemble`` every model is one row (the seeds of a group). With it,
    the models' probabilities are averaged into one row before the argmax.
    """
    settings.validate()
    if not models:
        raise ConfigError(f"{label or 'the subject'} has no models to measure; pick a completed run or a shipped model")
    unit = images.unsqueeze(1).to(torch.float32) / 255.0  # (N, 1, 28, 28) in [0, 1]
    labels = labels.to(torch.int64)

    # The untransformed point appears on all three axes and is measured once.
    points = [(axis, value) for axis, values in settings.axis_values().items() for value in values]
    transforms = list(dict.fromkeys(_transform_of(axis, value) for axis, value in points))
    rows_by_transform: dict[tuple[int, int, int], list[float]] = {}
    for index, (dx, dy, angle) in enumerate(transforms):
        inputs = standardized(transform_images(unit, dx=dx, dy=dy, angle_deg=angle))
        rows_by_transform[(dx, dy, angle)] = _row_accuracies(models, inputs, labels, ensemble=ensemble)
        if on_progress is not None:
            on_progress((index + 1) / len(transforms), f"{label}: {_describe_transform(dx, dy, angle)}".lstrip(": "))

    curves = {}
    for axis, values in settings.axis_values().items():
        rows = [rows_by_transform[_transform_of(axis, value)] for value in values]
        curves[axis] = Curve(
            axis=axis, values=values, accuracy=[float(np.mean(r)) for r in rows],
            low=[float(min(r)) for r in rows], high=[float(max(r)) for r in rows],
        )
    return curves, 1 if ensemble else len(models)


def _describe_transform(dx: int, dy: int, angle: int) -> str:
    if angle:
        return f"rotation {angle:+d}°"
    if dy:
        return f"y shift {dy:+d} px"
    if dx:
        return f"x shift {dx:+d} px"
    return "no transform"


def cache_path(subject: Subject, store: RunStore, settings: InvarianceSettings) -> Path:
    """Return the cache file for ``subject`` under these settings; raise CheckpointError if a member's file is gone."""
    members = []
    for member in subject.members:
        path = Path(member.path).resolve()
        try:
            members.append([str(path), path.stat().st_mtime_ns])
        except OSError as error:
            raise CheckpointError(f"{member.label}: checkpoint {path} not found; it was moved or deleted") from error
    key = {"version": CACHE_VERSION, "ensemble": subject.kind == "ensemble", "members": members, "settings": asdict(settings)}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    return Path(store.root) / CACHE_DIR / f"{digest}.json"


def cached_result(subject: Subject, store: RunStore, settings: InvarianceSettings) -> InvarianceResult | None:
    """Return the stored curves of ``subject`` under these settings, or None when none are stored."""
    settings.validate()
    path = cache_path(subject, store, settings)
    if not path.is_file():
        return None
    try:
        result = InvarianceResult.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError) as error:
        log.warning("ignoring unreadable invariance cache %s for %s: %s", path, subject.key, error)
        return None
    # Names can change after the curves were stored; the subject's current ones win.
    result.key, result.label, result.kind = subject.key, subject.label, subject.kind
    return result


def _write_cache(path: Path, result: InvarianceResult) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".json.tmp")
        temporary.write_text(json.dumps(result.to_dict(), indent=1))
        os.replace(temporary, path)
    except OSError as error:
        # The curves are still returned; only the next request recomputes them.
        log.warning("could not cache invariance curves in %s: %s", path, error)


def first_test_images(settings: InvarianceSettings, data_dir: str | os.PathLike | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the first ``settings.images`` official test images (uint8) and labels."""
    _, _, images, labels = load_raw(data_dir, download=False)
    return images[: settings.images], labels[: settings.images]


def measure_subject(
    subject: Subject,
    store: RunStore,
    settings: InvarianceSettings,
    *,
    data_dir: str | os.PathLike | None = None,
    on_progress: ProgressCallback | None = None,
) -> InvarianceResult:
    """Return the subject's curves from the cache, or measure and cache them."""
    cached = cached_result(subject, store, settings)
    if cached is not None:
        log.info("%s: invariance curves for %d images read from the cache", subject.key, settings.images)
        if on_progress is not None:
            on_progress(1.0, f"{subject.label}: from the cache")
        return cached

    log.info("%s: measuring invariance on %d test images", subject.key, settings.images)
    images, labels = first_test_images(settings, data_dir)
    models = [load_cached(member.path).model for member in subject.members]
    curves, rows = measure_models(
        models, images, labels, settings, ensemble=subject.kind == "ensemble", label=subject.label, on_progress=on_progress,
    )
    result = InvarianceResult(key=subject.key, label=subject.label, kind=subject.kind, rows=rows, settings=settings, curves=curves)
    _write_cache(cache_path(subject, store, settings), result)
    return result


def measure_subjects(
    subjects: Iterable[Subject],
    store: RunStore,
    settings: InvarianceSettings,
    *,
    data_dir: str | os.PathLike | None = None,
    on_progress: ProgressCallback | None = None,
) -> list[InvarianceResult]:
    """Return every subject's curves, reporting progress over all of them as one fraction from 0 to 1."""
    subjects = list(subjects)
    results = []
    for index, subject in enumerate(subjects):

        def report(fraction: float, message: str, index: int = index) -> None:
            if on_progress is not None:
                on_progress((index + fraction) / len(subjects), message)

        results.append(measure_subject(subject, store, settings, data_dir=data_dir, on_progress=report))
    return results


# -- summary in words ---------------------------------------------------------------------------------


def tolerance(curve: Curve, floor: float) -> int:
    """Return the largest k such that accuracy stays at or above ``floor`` for every value in [-k, k]."""
    reach = 0
    for k in sorted(v for v in curve.values if v > 0):
        inside = [a for v, a in zip(curve.values, curve.accuracy) if -k <= v <= k]
        if min(inside) < floor:
            break
        reach = k
    return reach


def _reach_text(reach: int, largest: int, unit: str, smallest: int, *, only: bool = False) -> str:
    if reach == 0:
        return f"not even ±{smallest}{unit}"
    text = f"{'only ' if only else ''}up to ±{reach}{unit}"
    return f"{text} (the whole range tested)" if reach == largest else text


def describe_invariance(result: InvarianceResult, *, keep: float = KEEP_FRACTION) -> str:
    """Say in one sentence how far the subject's accuracy survives shifts along x, along y and rotation.

    The threshold is relative: ``keep`` of the accuracy on the untransformed images.
    """
    base = result.base_accuracy
    reach = {axis: tolerance(result.curves[axis], keep * base) for axis in AXES}
    x_reach, y_reach = reach["x_shift"], reach["y_shift"]
    largest_shift = result.settings.max_shift_px

    if x_reach == y_reach:
        both = "along both x and y" if x_reach else "along x or y"
        shifts = f"{_reach_text(x_reach, largest_shift, ' px', 1)} {both}"
    else:
        x_text = _reach_text(x_reach, largest_shift, " px", 1, only=x_reach < y_reach)
        y_text = _reach_text(y_reach, largest_shift, " px", 1, only=y_reach < x_reach)
        shifts = f"{x_text} along x but {y_text} along y"
    rotation = _reach_text(reach["rotation"], result.settings.max_angle_deg, "°", result.settings.angle_step_deg)

    worst = {axis: min(result.curves[axis].accuracy) for axis in AXES}
    return (
        f"{result.label} keeps at least {keep:.0%} of its {base:.1%} accuracy {shifts}, and {rotation} of rotation; "
        f"its lowest accuracy is {worst['x_shift']:.1%} along x, {worst['y_shift']:.1%} along y "
        f"and {worst['rotation']:.1%} under rotation."
    )


# -- single digits: the Draw page ---------------------------------------------------------------------


def subject_probabilities(subject: Subject, inputs: torch.Tensor) -> torch.Tensor:
    """Return the subject's class probabilities (B, 10) for normalised inputs (B, 1, 28, 28).

    A model's probabilities are its own. An ensemble's or a seed group's are the mean over its members.
    """
    member_probabilities = [batch_probabilities(load_cached(member.path).model, inputs) for member in subject.members]
    return torch.stack(member_probabilities).mean(dim=0)


def transformed_digit(image: np.ndarray, *, dx: int = 0, dy: int = 0, angle_deg: float = 0) -> tuple[np.ndarray, torch.Tensor]:
    """Return a 28x28 digit in [0, 1] after rotation and shift, as an image and as a normalised (1, 1, 28, 28) input."""
    unit = torch.as_tensor(np.asarray(image, dtype=np.float32))[None, None]
    moved = transform_images(unit, dx=dx, dy=dy, angle_deg=angle_deg)
    return moved[0, 0].numpy(), standardized(moved)


def prediction_sweeps(
    subject: Subject, image: np.ndarray, *, dx: int = 0, dy: int = 0, angle_deg: int = 0,
    settings: InvarianceSettings = InvarianceSettings(),
) -> dict[str, dict[str, list]]:
    """Return the subject's prediction (digit, confidence) across each axis's range for one digit.

    Each sweep varies one transform over its whole range and keeps the other two at
    the given values, so the current setting is one point of every sweep.
    """
    settings.validate()
    unit = torch.as_tensor(np.asarray(image, dtype=np.float32))[None, None]
    current = {"x_shift": dx, "y_shift": dy, "rotation": angle_deg}
    batches, spans = [], {}
    for axis, values in settings.axis_values().items():
        start = sum(len(b) for b in batches)
        for value in values:
            point = {**current, axis: value}
            batches.append(transform_images(unit, dx=point["x_shift"], dy=point["y_shift"], angle_deg=point["rotation"]))
        spans[axis] = (start, start + len(values))

    probabilities_all = subject_probabilities(subject, standardized(torch.cat(batches)))
    confidences, digits = probabilities_all.max(dim=1)
    sweeps = {}
    for axis, values in settings.axis_values().items():
        start, stop = spans[axis]
        sweeps[axis] = {"values": values, "digits": digits[start:stop].tolist(), "confidences": confidences[start:stop].tolist()}
    return sweeps
