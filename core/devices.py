"""Device selection: the devices this machine can train on, and the autocast each one uses."""

from __future__ import annotations

import contextlib

import torch

from core.errors import ConfigError

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


def available_devices() -> list[str]:
    """Return the devices usable here, best first after 'auto': e.g. ['auto', 'cuda', 'cpu']."""
    devices = ["auto"]
    if torch.cuda.is_available():
        devices.append("cuda")
    if torch.backends.mps.is_available():
        devices.append("mps")
    devices.append("cpu")
    return devices


def resolve_device(name: str) -> torch.device:
    """Map 'auto' to the best available device and reject a device this machine lacks."""
    if name not in DEVICE_CHOICES:
        raise ConfigError(f"unknown device {name!r}; choose one of: {', '.join(DEVICE_CHOICES)}")
    usable = available_devices()
    if name == "auto":
        return torch.device(usable[1])
    if name not in usable:
        raise ConfigError(f"device {name!r} is not available on this machine; available: {', '.join(usable)}")
    return torch.device(name)


def autocast_for(device: torch.device) -> contextlib.AbstractContextManager:
    """bfloat16 autocast on CUDA; float32 (no autocast) on CPU and MPS."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return device.type
