"""The device a script runs on and the autocast precisions: one choice for every script."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch

from utils.errors import UserError

DEVICE_CHOICES = ("auto", "cpu", "cuda")

# What ``train.amp`` and ``--amp`` name; None runs in float32.
AUTOCAST_DTYPES: dict[str, torch.dtype | None] = {
    "none": None,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}


class DeviceError(UserError, RuntimeError):
    """A device that was asked for and is not there."""


def choose_device(preference: str, *, local_rank: int = 0, origin: str = "device") -> torch.device:
    """``auto``: CUDA device ``local_rank`` when CUDA is available, else the CPU;
    ``cuda``: that device, or an error naming ``origin`` (the flag or key that asked)
    when there is none; ``cpu``: the CPU."""
    if preference not in DEVICE_CHOICES:
        raise DeviceError(f"{origin}={preference}: expected one of {', '.join(DEVICE_CHOICES)}")
    if preference == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"{origin}=cuda but no CUDA device is available")
    if preference != "cpu" and torch.cuda.is_available():
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype ``amp`` names on ``device``; None (float32) for ``none``.

    Raises:
        DeviceError: ``amp`` asks for autocast on a device other than CUDA.
    """
    dtype = AUTOCAST_DTYPES[amp]
    if dtype is not None and device.type != "cuda":
        raise DeviceError(f"amp={amp} needs CUDA; the device is {device}")
    return dtype


def autocast_context(device: torch.device, dtype: torch.dtype | None) -> AbstractContextManager:
    """``torch.autocast`` to ``dtype`` on ``device``; nothing when ``dtype`` is None."""
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
