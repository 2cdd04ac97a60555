"""Shared by the benchmarks: the machine description, device synchronisation, table printing."""

from __future__ import annotations

import os
import platform
import statistics
import time
from typing import Callable, Sequence

import torch

__all__ = ["cpu_name", "fmt_seconds", "make_synchronize", "median_time", "print_table", "usable_cores"]


def cpu_name() -> str:
    """The CPU model name (from /proc/cpuinfo on Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def usable_cores() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def make_synchronize(device: torch.device) -> Callable[[], None]:
    """A function that waits for the device's queued work (a no-op on CPU)."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    if device.type == "mps":
        return torch.mps.synchronize
    return lambda: None


def print_table(title: str, rows: Sequence[tuple[str, str]]) -> None:
    """Print ``(name, value)`` rows as a two-column table under a title."""
    width = max(len(name) for name, _ in rows)
    value_width = max(len(value) for _, value in rows)
    rule = "-" * (width + value_width + 3)
    print(f"\n{title}\n{rule}")
    for name, value in rows:
        print(f"{name:<{width}}   {value:>{value_width}}")
    print(rule)


def fmt_seconds(seconds: float) -> str:
    """Seconds in the most readable unit (s, ms or us)."""
    if seconds >= 1.0:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.1f} us"


def median_time(run: Callable[[], object], repeats: int, warm_up: bool = False) -> float:
    """Median wall-clock seconds of ``repeats`` calls of ``run`` (after one untimed call with ``warm_up``)."""
    if warm_up:
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
