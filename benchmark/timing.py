"""The one timing helper of the benchmark scripts (timings are measured here, never asserted in tests)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class Timing:
    times_ms: list[float]
    peak_gib: float | None      # peak allocated CUDA memory during the timed calls; None on CPU

    @property
    def median_ms(self) -> float:
        return sorted(self.times_ms)[len(self.times_ms) // 2]


def measure(call: Callable[[], object], device: torch.device | str, warmup: int = 3, reps: int = 20) -> Timing:
    """Time ``reps`` calls after ``warmup`` untimed ones: CUDA events on a GPU (after a synchronize, so queued work
    from earlier does not leak in), perf_counter on a CPU. Peak memory is reset after the warm-up."""
    device = torch.device(device)
    for _ in range(warmup):
        call()
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(reps):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            call()
            end.record()
            torch.cuda.synchronize(device)   # elapsed_time needs both events completed
            times.append(start.elapsed_time(end))
        else:
            began = time.perf_counter()
            call()
            times.append((time.perf_counter() - began) * 1000)
    return Timing(times, torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None)
