"""How many CPU threads torch should use while training, on a machine that others may share.

Hand-written (not exported from a notebook): it is about the machine, not about FCOS.

Why. torch runs each operator on `torch.get_num_threads()` OpenMP threads, by default one per
core. On an idle machine that is the fastest choice. When another CPU-bound process shares the
cores, it is the slowest: every parallel operator waits at its end for the thread that the
operating system has just descheduled, and the waiting threads spin. Measured on a 2-core machine
(`bench/bench_threads.py`, course recipe, 160 px, batch 8): 2 threads train at about 43 images/s
alone and 6.5 with one competing process; 1 thread trains at about 29 alone and 29 with the
competitor. No fixed number is right for both cases, so the governor below measures how much
CPU the *other* processes use and keeps torch's threads to the cores they leave free.

How. Every `interval` seconds (one call per training step; a clock read in between) it reads
the busy time of this process's cores from /proc/stat, subtracts this process's own CPU time
(time.process_time: every thread of it), and divides by the wall time: the cores that other
processes kept busy (DataLoader workers count as others: they compete for the same cores). It
then gives torch the cores they leave free: it drops a thread as soon as the others take half a
core of it (ceil(free - 0.5)), and takes it back only once they leave it 0.6 of a core free
(ceil(free - 0.6)), so that a reading near the border does not flip it back and forth.

What it costs. A run's numbers depend on the thread count in their last bits (sums are split
differently between threads), so a run during which the load changed is not bit-for-bit
repeatable. Pass a fixed number (`--threads N`, TrainConfig.num_threads = N) for that. Where
/proc/stat does not exist (macOS, Windows) "auto" keeps torch's own setting.

Not chosen: OpenMP's wait policy. OMP_WAIT_POLICY=PASSIVE (waiting threads sleep at once instead
of spinning a while) can only be set before torch loads OpenMP, and measured here it does not pay
(bench/bench_threads.py, 2026-12-05): it slowed an idle machine by 11-18 %, and beside a busy
process it trained no faster than the one thread "auto" drops to (27.6 images/s both).
"""
from __future__ import annotations

import math
import os
import time

import torch

__all__ = ["ThreadGovernor", "available_cores", "busy_seconds_of_cores"]

DROP_AT, TAKE_BACK_AT = 0.5, 0.6  # cores: how much of a thread's core others take / leave before a change


def available_cores() -> list[int]:
    """The CPU numbers this process may run on (its affinity), or range(os.cpu_count())."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return list(range(os.cpu_count() or 1))


def busy_seconds_of_cores(cores: list[int], stat_path: str = "/proc/stat") -> float | None:
    """Seconds the given cores have spent busy since boot (all processes), or None without /proc/stat.

    Busy = user + nice + system + irq + softirq + steal (time a hypervisor gave to another machine
    is not ours either); idle and iowait are not busy.
    """
    try:
        with open(stat_path) as f:
            lines = f.readlines()
    except OSError:
        return None
    wanted = {f"cpu{c}" for c in cores}
    ticks = 0
    for line in lines:
        fields = line.split()
        if fields and fields[0] in wanted:
            user, nice, system, idle, iowait, irq, softirq, steal = (int(v) for v in fields[1:9])
            ticks += user + nice + system + irq + softirq + steal
    return ticks / os.sysconf("SC_CLK_TCK")


class ThreadGovernor:
    """Keeps torch's intra-op threads to the cores that other processes leave free.

    Args:
        num_threads: "auto" (adapt to the load, see the module's docstring), an int (fix it:
            torch.set_num_threads(n) once, then nothing), or None (leave torch's setting alone).
        interval: seconds between two readings of the load.
        max_threads: the most threads "auto" uses (default: torch's setting when created).

    Call `step()` once per training step, and `restore()` at the end: torch gets back the count
    it had before (a notebook that trains is not left on one thread). `threads` is the count in
    use now; `changes` lists (time, threads) for each change "auto" made.
    """

    def __init__(self, num_threads: int | str | None = "auto", interval: float = 1.0,
                 max_threads: int | None = None):
        if num_threads is not None and num_threads != "auto" and not (
                isinstance(num_threads, int) and not isinstance(num_threads, bool) and num_threads >= 1):
            raise ValueError(f"num_threads must be 'auto', None or an int >= 1, got {num_threads!r}")
        self._before = torch.get_num_threads()
        if isinstance(num_threads, int):
            torch.set_num_threads(num_threads)
        self.cores = available_cores()
        self.max_threads = max(1, min(max_threads or torch.get_num_threads(), len(self.cores)))
        self.interval = interval
        self.threads = torch.get_num_threads()
        self.changes: list[tuple[float, int]] = []
        self._last = self._read() if num_threads == "auto" and self.max_threads > 1 else None
        self.active = self._last is not None

    def _read(self) -> tuple[float, float, float] | None:
        busy = busy_seconds_of_cores(self.cores)
        return None if busy is None else (time.perf_counter(), busy, time.process_time())

    def others(self, before: tuple[float, float, float], after: tuple[float, float, float]) -> float:
        """Cores kept busy by other processes between two readings (wall, busy, own CPU seconds)."""
        wall = after[0] - before[0]
        return max(0.0, (after[1] - before[1]) - (after[2] - before[2])) / max(wall, 1e-9)

    def choose(self, others: float) -> int:
        """The thread count when other processes keep `others` cores busy, from the current count."""
        free = len(self.cores) - others
        fewer = max(1, min(self.max_threads, math.ceil(free - DROP_AT)))
        more = max(1, min(self.max_threads, math.ceil(free - TAKE_BACK_AT)))
        if fewer < self.threads:
            return fewer
        return more if more > self.threads else self.threads

    def step(self) -> int:
        """Read the load if `interval` seconds have passed, and adjust the threads; returns the count."""
        if not self.active or time.perf_counter() - self._last[0] < self.interval:
            return self.threads
        now = self._read()
        threads = self.choose(self.others(self._last, now))
        self._last = now
        if threads != self.threads:
            torch.set_num_threads(threads)
            self.threads = threads
            self.changes.append((now[0], threads))
        return self.threads

    def restore(self) -> None:
        """Give torch back the thread count it had when the governor was made."""
        if torch.get_num_threads() != self._before:
            torch.set_num_threads(self._before)
