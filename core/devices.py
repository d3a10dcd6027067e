"""Device selection: the devices this machine can train on, and the speed settings each one gets.

Each setting below carries the measurement or constraint that chose it.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

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


def memory_format_for(device: torch.device) -> torch.memory_format:
    """channels_last (NHWC) on CPU and CUDA, where oneDNN and cuDNN convolutions prefer it.

    Measured on a 2-core CPU, one training step of the 68k CNN took 53 ms in NHWC
    against 88 ms in NCHW, and max pooling alone went from 5.8 ms to 0.6 ms. None
    of the 11 architectures got slower. MPS keeps the default layout, which all its kernels support.
    """
    if device.type in ("cpu", "cuda"):
        return torch.channels_last
    return torch.contiguous_format


def optimizer_options(device: torch.device) -> dict[str, bool]:
    """Fused optimizer kernels on CPU and CUDA: one kernel for all parameters instead of one per tensor.

    For the 68k dense net on CPU the AdamW step fell from about 1.5 ms to 0.5 ms,
    most of its training step. MPS uses PyTorch's default implementation.
    """
    if device.type in ("cpu", "cuda"):
        return {"fused": True}
    return {}


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy a CPU tensor to ``device``; to CUDA through pinned memory, so the copy does not block the host."""
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


THREADS_ENV = "MNIST_LAB_THREADS"
# The app's own process only classifies single drawings; training runs in worker processes.
# A batch-1 pass is dozens of small operations, and with two threads each one waits for the
# second thread. With a training process busy beside it, the Draw page's pass over all shipped
# models took 3.7 s instead of about 25 ms.
INFERENCE_THREADS = 1


def configure_threads(threads: int | None = None) -> int:
    """Set PyTorch's intra-op CPU threads: the argument, else $MNIST_LAB_THREADS, else PyTorch's default.

    PyTorch's default is one thread per physical core, which suits training one
    model at a time. Return the thread count in effect.
    """
    if threads is None:
        text = os.environ.get(THREADS_ENV, "").strip()
        if text:
            try:
                threads = int(text)
            except ValueError:
                raise ConfigError(f"${THREADS_ENV} must be a whole number of threads, got {text!r}") from None
    if threads is not None:
        if threads < 1:
            raise ConfigError(f"threads must be at least 1, got {threads}; use the number of CPU cores (here {os.cpu_count()})")
        torch.set_num_threads(threads)
    return torch.get_num_threads()


@contextlib.contextmanager
def cpu_threads(count: int) -> Iterator[None]:
    """Use ``count`` intra-op CPU threads inside the block, then restore the previous count."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return device.type
