"""Timing helpers shared by the benchmarks in bench/ (run as `python bench/<name>.py`)."""
from __future__ import annotations

import statistics
import time

import torch


def device_sync(device: torch.device):
    """A function that waits for `device`'s queued work (torch.cuda.synchronize on CUDA, nothing on the CPU)."""
    return (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)


def median_seconds(fn, repeats: int, sync) -> float:
    """Median wall time of `repeats` calls of fn(); `sync()` (e.g. torch.cuda.synchronize) brackets each call."""
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def median_seconds_pair(fn_a, fn_b, repeats: int, sync) -> tuple[float, float]:
    """Median times of two functions run alternately, so that a busy machine slows both alike."""
    times_a, times_b = [], []
    for _ in range(repeats):
        times_a.append(median_seconds(fn_a, 1, sync))
        times_b.append(median_seconds(fn_b, 1, sync))
    return statistics.median(times_a), statistics.median(times_b)
