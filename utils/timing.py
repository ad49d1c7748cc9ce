"""Wall-clock timing for benchmarks: warm-up, device synchronisation, medians, and
interleaved rounds so that several variants share the same machine noise."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch


def synchronize(device: torch.device) -> None:
    """Wait for queued CUDA work (CPU work is synchronous)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(
    functions: Mapping[str, Callable[[], Any]],
    *,
    device: torch.device,
    warmup: int = 3,
    repeats: int = 20,
) -> dict[str, list[float]]:
    """Seconds per call of each function, ``repeats`` times each.

    Every function runs ``warmup`` times first (allocations, kernel selection, lazy
    initialisation). The timed calls go round-robin, one call of each function per
    round, so a slow phase of a noisy machine hits all of them alike; each round starts
    one function later than the previous, because a call runs slower right after
    another that evicted its weights from the caches.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    for function in functions.values():
        for _ in range(warmup):
            function()
    synchronize(device)
    times: dict[str, list[float]] = {name: [] for name in functions}
    names = list(functions)
    for round_index in range(repeats):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            function = functions[name]
            start = time.perf_counter()
            function()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return times


def median_ms(seconds: list[float]) -> float:
    return 1000.0 * statistics.median(seconds)
