"""Wall-clock timing: warm-up, device synchronisation, medians, interleaved rounds so
that several variants share the same machine noise, and a per-stage breakdown of a
command (``--profile``). Importing it does not load torch."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import torch

T = TypeVar("T")


def synchronize(device: torch.device | None) -> None:
    """Wait for queued CUDA work (CPU work, and work on no device, is synchronous)."""
    if device is not None and device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)


def seconds_since_process_start() -> float | None:
    """Wall-clock seconds since this process started (interpreter start-up and imports
    included), from ``/proc``; None where that is not available."""
    try:
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        # Field 22 of /proc/self/stat, counted after the command name in parentheses.
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        return uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


class StageTimer:
    """Wall-clock seconds of the named stages of a command, in the order they ran; a
    stage entered twice adds up."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def table(self) -> str:
        """One line per stage and the total, e.g. ``results files   0.412 s``."""
        width = max([len(name) for name in self.seconds] + [5])
        lines = [f"{name:<{width}}  {value:7.3f} s" for name, value in self.seconds.items()]
        lines.append(f"{'total':<{width}}  {sum(self.seconds.values()):7.3f} s")
        return "\n".join(lines)


def run_interleaved(
    functions: Mapping[str, Callable[[], T]], *, warmup: int = 3, repeats: int = 20
) -> dict[str, list[T]]:
    """What each function returns, ``repeats`` times each.

    Every function runs ``warmup`` times first (allocations, kernel selection, lazy
    initialisation). The counted calls go round-robin, one call of each function per
    round, so a slow phase of a noisy machine hits all of them alike; each round starts
    one function later than the previous, because a call runs slower right after
    another that evicted its weights from the caches.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    for function in functions.values():
        for _ in range(warmup):
            function()
    results: dict[str, list[T]] = {name: [] for name in functions}
    names = list(functions)
    for round_index in range(repeats):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            results[name].append(functions[name]())
    return results


def time_interleaved(
    functions: Mapping[str, Callable[[], Any]],
    *,
    device: torch.device | None = None,
    warmup: int = 3,
    repeats: int = 20,
) -> dict[str, list[float]]:
    """Seconds per call of each function (synchronised with ``device``'s queue when it
    is a GPU), ``repeats`` times each, measured by :func:`run_interleaved`."""

    def timed(function: Callable[[], Any]) -> Callable[[], float]:
        def call() -> float:
            synchronize(device)
            start = time.perf_counter()
            function()
            synchronize(device)
            return time.perf_counter() - start

        return call

    timed_functions = {name: timed(function) for name, function in functions.items()}
    return run_interleaved(timed_functions, warmup=warmup, repeats=repeats)


def median_ms(seconds: list[float]) -> float:
    return 1000.0 * statistics.median(seconds)
