"""The device a script runs on and the autocast precisions: one choice for every script.
Importing it does not load torch (``test.py --eval-only`` never does)."""

from __future__ import annotations

import os
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, get_args

from utils.errors import UserError

if TYPE_CHECKING:
    import torch

# The choices, typed once: the config's keys and the scripts' flags take them from here.
DeviceChoice = Literal["auto", "cpu", "cuda"]
DEVICE_CHOICES: tuple[str, ...] = get_args(DeviceChoice)
# Where a script's network runs: PyTorch, or the end-to-end ONNX graph in ONNX Runtime.
Backend = Literal["torch", "onnxruntime"]
BACKENDS: tuple[str, ...] = get_args(Backend)
# What ``train.amp`` and ``--amp`` name: float32, the machine's fastest precision
# (:func:`resolve_precision`), or autocast to bfloat16 / float16.
AmpChoice = Literal["none", "auto", "bf16", "fp16"]
AMP_CHOICES: tuple[str, ...] = get_args(AmpChoice)


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


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the system has
    one, else all)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


# CPU flags (as /proc/cpuinfo names them) that mean native bfloat16 arithmetic: AVX-512
# BF16 dot products, or Intel AMX tiles. Without them bf16 is emulated and slower than
# float32.
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
CPUINFO = Path("/proc/cpuinfo")


def cpuinfo_value(keys: tuple[str, ...], cpuinfo: Path = CPUINFO) -> str | None:
    """The first value ``cpuinfo`` (Linux's /proc/cpuinfo) gives for one of ``keys``;
    None where it cannot be read or has none."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in keys:
            return value.strip()
    return None


def cpu_flags(cpuinfo: Path = CPUINFO) -> frozenset[str] | None:
    """The CPU's feature flags (ARM kernels call them Features); None where they cannot
    be read."""
    value = cpuinfo_value(("flags", "Features"), cpuinfo)
    return None if value is None else frozenset(value.split())


@dataclass(frozen=True)
class Precision:
    """The autocast dtype a run uses (None: float32) and why it was chosen."""

    dtype: torch.dtype | None
    reason: str

    @property
    def name(self) -> str:
        """``none``, ``bf16`` or ``fp16``, as the config and the flags name it."""
        names = {"torch.bfloat16": "bf16", "torch.float16": "fp16"}
        return "none" if self.dtype is None else names[str(self.dtype)]


def native_cpu_bf16(flags: frozenset[str] | None) -> tuple[bool, str]:
    """Whether ``flags`` (:func:`cpu_flags`) include native bf16, and the reason."""
    if flags is None:
        return False, "the CPU flags could not be read (no /proc/cpuinfo)"
    found = [flag for flag in NATIVE_BF16_FLAGS if flag in flags]
    if found:
        return True, f"the CPU has native bf16 ({', '.join(found)})"
    return False, f"the CPU has no native bf16 (none of {', '.join(NATIVE_BF16_FLAGS)})"


def resolve_precision(
    amp: str,
    device: torch.device,
    *,
    origin: str = "amp",
) -> Precision:
    """The autocast precision ``amp`` (one of :data:`AMP_CHOICES`) means on ``device``.

    ``auto``: bf16 on CUDA (fp16 with a gradient scaler on GPUs without bf16); on the CPU
    bf16 where the CPU has it natively (:data:`NATIVE_BF16_FLAGS`), else float32. ``bf16``
    runs anywhere (on a CPU without native bf16 it is emulated and slow); ``fp16`` needs
    CUDA. The CPU's bf16 support comes from :func:`cpu_flags`.

    Raises:
        DeviceError: an unknown choice, or fp16 on a device other than CUDA; the message
        names ``origin`` (the key or flag).
    """
    import torch

    if amp not in AMP_CHOICES:
        raise DeviceError(f"{origin}={amp}: expected one of {', '.join(AMP_CHOICES)}")
    if amp == "none":
        return Precision(None, f"{origin}=none")
    if device.type == "cuda":
        if amp == "auto":
            if torch.cuda.is_bf16_supported():
                return Precision(torch.bfloat16, f"{origin}=auto on CUDA")
            return Precision(torch.float16, f"{origin}=auto on a GPU without bf16")
        dtype = torch.bfloat16 if amp == "bf16" else torch.float16
        return Precision(dtype, f"{origin}={amp}")
    if amp == "fp16":
        raise DeviceError(
            f"{origin}=fp16 needs CUDA; the device is {device} (use bf16 or auto on the CPU)"
        )
    native, why = native_cpu_bf16(cpu_flags())
    if amp == "auto":
        return Precision(torch.bfloat16 if native else None, f"{origin}=auto: {why}")
    return Precision(
        torch.bfloat16, f"{origin}=bf16" + ("" if native else f" ({why}: emulated, slow)")
    )


def resolve_channels_last(
    setting: bool | str, device: torch.device, *, origin: str = "train.channels_last"
) -> tuple[bool, str]:
    """Whether ``setting`` (true, false or ``auto``; the key or flag ``origin``) means
    NHWC on ``device``, and why: ``auto`` is NHWC on CUDA and on CPUs with AVX-512 (from
    :func:`cpu_flags`), NCHW elsewhere."""
    if setting != "auto":
        return bool(setting), f"{origin}={str(bool(setting)).lower()}"
    if device.type == "cuda":
        return True, f"{origin}=auto on CUDA"
    flags = cpu_flags()
    if flags is not None and "avx512f" in flags:
        return True, f"{origin}=auto: the CPU has AVX-512"
    return False, f"{origin}=auto: the CPU has no AVX-512"


def autocast_context(device: torch.device, dtype: torch.dtype | None) -> AbstractContextManager:
    """``torch.autocast`` to ``dtype`` on ``device``; nothing when ``dtype`` is None."""
    if dtype is None:
        return nullcontext()
    import torch

    return torch.autocast(device_type=device.type, dtype=dtype)
