"""What this machine can do, measured in the same run as what is compared with it.

The reference limit is a large convolution (oneDNN on the CPU, cuDNN on CUDA) in float32
and NHWC: what a detector's layers can reach at best. A float32 matrix product is
measured beside it, because it is the classic yardstick, but it is no limit for
convolutional networks everywhere: on AMD CPUs MKL's matmul does not use AVX-512 while
oneDNN's convolutions do (a 2-core AVX-512 EPYC: 193-210 GFLOP/s against 455-505). On
CUDA both run as PyTorch runs float32 by default (cuDNN convolutions in TF32 where the
GPU has it).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from utils.device import cpu_flags, cpuinfo_value
from utils.timing import time_interleaved

# The CPU flags worth stating next to a timing: they decide which kernels run.
VECTOR_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512_vnni",
    "avx512_bf16",
    "avx_vnni",
    "amx_tile",
    "amx_bf16",
)

# The reference convolution: VGG16's conv4_3 at a 300 px input (512 -> 512 channels,
# 3 x 3, 38 x 38), a batch of 8 on the CPU and 64 on CUDA.
CONV_CHANNELS = 512
CONV_SIDE = 38


def vector_flags() -> str:
    """The CPU's :data:`VECTOR_FLAGS` (from /proc/cpuinfo), space-separated; empty where
    the flags cannot be read."""
    flags = cpu_flags() or frozenset()
    return " ".join(flag for flag in VECTOR_FLAGS if flag in flags)


def _median_seconds(call: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median seconds per call after two untimed ones."""
    times = time_interleaved({"call": call}, device=device, warmup=2, repeats=repeats)["call"]
    return statistics.median(times)


def matmul_gflops(device: torch.device, size: int = 2048, repeats: int = 5) -> float:
    """Achieved GFLOP/s of a ``size`` x ``size`` float32 matrix product (median of
    ``repeats`` after two untimed)."""
    generator = torch.Generator().manual_seed(0)
    left = torch.randn(size, size, generator=generator).to(device)
    right = torch.randn(size, size, generator=generator).to(device)
    seconds = _median_seconds(lambda: torch.mm(left, right), device, repeats)
    return 2 * size**3 / seconds / 1e9


def conv_gflops(device: torch.device, *, batch_size: int | None = None, repeats: int = 5) -> float:
    """Achieved GFLOP/s of the reference float32 NHWC convolution (:data:`CONV_CHANNELS`
    channels in and out, 3 x 3, :data:`CONV_SIDE` pixels square) in inference mode."""
    batch = batch_size or (64 if device.type == "cuda" else 8)
    generator = torch.Generator().manual_seed(0)
    shape = (batch, CONV_CHANNELS, CONV_SIDE, CONV_SIDE)
    images = torch.randn(shape, generator=generator).to(device)
    images = images.contiguous(memory_format=torch.channels_last)
    weight = torch.randn(CONV_CHANNELS, CONV_CHANNELS, 3, 3, generator=generator) * 0.01
    weight = weight.to(device).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        seconds = _median_seconds(lambda: F.conv2d(images, weight, padding=1), device, repeats)
    flops = 2 * batch * CONV_CHANNELS * CONV_CHANNELS * 9 * CONV_SIDE * CONV_SIDE
    return flops / seconds / 1e9


@dataclass(frozen=True)
class MachineLimits:
    """The measured yardsticks of one run (GFLOP/s) and the machine they were taken on."""

    conv_fp32_gflops: float
    matmul_fp32_gflops: float
    device: str
    threads: int
    flags: str

    @property
    def limit_gflops(self) -> float:
        """The reference limit: the large convolution's rate."""
        return self.conv_fp32_gflops

    def describe(self) -> str:
        flags = f", {self.flags}" if self.flags else ""
        return (
            f"limit: fp32 {CONV_CHANNELS}->{CONV_CHANNELS} 3x3 conv at {CONV_SIDE}x{CONV_SIDE} "
            f"(NHWC) {self.conv_fp32_gflops:.1f} GFLOP/s; fp32 matmul 2048x2048 "
            f"{self.matmul_fp32_gflops:.1f} GFLOP/s ({self.device}, {self.threads} threads"
            f"{flags})"
        )


def measure_limits(device: torch.device) -> MachineLimits:
    """Both yardsticks on ``device``, now."""
    import platform

    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = cpuinfo_value(("model name",)) or platform.processor()
    return MachineLimits(
        conv_fp32_gflops=conv_gflops(device),
        matmul_fp32_gflops=matmul_gflops(device),
        device=name or "cpu",
        threads=torch.get_num_threads(),
        flags=vector_flags(),
    )
