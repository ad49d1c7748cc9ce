"""The device a script runs on and the autocast precisions: one choice for every script.
Importing it does not load torch (``test.py --eval-only`` never does)."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING

from utils.errors import UserError

if TYPE_CHECKING:
    import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda")
# What ``train.amp`` and ``--amp`` name: float32, or autocast to bfloat16 / float16.
AMP_CHOICES = ("none", "bf16", "fp16")


class DeviceError(UserError, RuntimeError):
    """A device that was asked for and is not there."""


def choose_device(preference: str, *, local_rank: int = 0, origin: str = "device") -> torch.device:
    """``auto``: CUDA device ``local_rank`` when CUDA is available, else the CPU;
    ``cuda``: that device, or an error naming ``origin`` (the flag or key that asked)
    when there is none; ``cpu``: the CPU."""
    import torch

    if preference not in DEVICE_CHOICES:
        raise DeviceError(f"{origin}={preference}: expected one of {', '.join(DEVICE_CHOICES)}")
    if preference == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"{origin}=cuda but no CUDA device is available")
    if preference != "cpu" and torch.cuda.is_available():
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def amp_dtype(amp: str) -> torch.dtype | None:
    """The autocast dtype ``amp`` (one of :data:`AMP_CHOICES`) names; None for float32."""
    import torch

    return {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """:func:`amp_dtype` on ``device``.

    Raises:
        DeviceError: ``amp`` asks for autocast on a device other than CUDA.
    """
    dtype = amp_dtype(amp)
    if dtype is not None and device.type != "cuda":
        raise DeviceError(f"amp={amp} needs CUDA; the device is {device}")
    return dtype


def autocast_context(device: torch.device, dtype: torch.dtype | None) -> AbstractContextManager:
    """``torch.autocast`` to ``dtype`` on ``device``; nothing when ``dtype`` is None."""
    if dtype is None:
        return nullcontext()
    import torch

    return torch.autocast(device_type=device.type, dtype=dtype)
