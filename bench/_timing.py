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


def significant(seconds: float) -> float:
    """`seconds` to 4 significant figures, for a results file (a fixed number of decimals would round a fast step to 0)."""
    return float(f"{seconds:.4g}")


class TimingNoiseError(RuntimeError):
    """The timed steps took no measurable time: the machine's noise is larger than they are."""


def seconds_per_step(run_seconds, untimed: int, timed: int, tries: int = 3) -> float:
    """Seconds per step from fresh runs: (time of untimed + timed steps - time of untimed steps) / timed.

    `run_seconds(n)` runs n steps from scratch and returns how long they took. Subtracting the short
    run cancels the one-off costs of the first steps (workers, allocator, caches). When the machine's
    noise is larger than the timed steps the difference can come out <= 0; the pair is then run
    again, and after `tries` such pairs this raises TimingNoiseError instead of returning a made-up time.
    """
    differences = []
    for _ in range(tries):
        difference = run_seconds(untimed + timed) - run_seconds(untimed)
        if difference > 0:
            return difference / timed
        differences.append(round(difference, 4))
    raise TimingNoiseError(
        f"{timed} timed steps took no measurable time beyond {untimed} untimed ones in {tries} tries "
        f"(differences {differences} s): the machine's noise is larger than the steps. "
        "Fix: time more steps, and run nothing else on the machine meanwhile.")
