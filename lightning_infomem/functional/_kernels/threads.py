"""Torch's intra-op thread count, limited for a block of the package's own work and then restored.

Many mid-sized tensor operations (binning, ``bincount``, small reductions) are what the package's hot
paths run. With several OpenMP threads, each such operation waits for its slowest thread; when other
processes hold the machine's cores, that wait is a scheduler time slice, and a loop of such operations
runs many times slower than on one thread (on a 2-core machine with one other busy process,
``torch.bincount`` took 25 to 32 ns per element with 2 threads against 3 to 9 ns with one).
"""

from __future__ import annotations

import ctypes
import functools
import os
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Iterator, Optional

import torch

__all__ = ["compiled_kernel_threads", "limited_threads", "release_idle_openmp_threads"]

# torch's thread count outside the outermost `limited_threads` block (None: not inside one)
_OUTSIDE: ContextVar[Optional[int]] = ContextVar("lightning_infomem_threads_outside", default=None)


@contextmanager
def limited_threads(threads: Optional[int]) -> Iterator[None]:
    """Run the block with at most ``threads`` torch intra-op threads (``None``: leave torch's setting).

    Never raises the count; restores it afterwards, also on an exception.

    Example:
        >>> import torch
        >>> before = torch.get_num_threads()
        >>> with limited_threads(1):
        ...     torch.get_num_threads()
        1
        >>> torch.get_num_threads() == before
        True
    """
    previous = torch.get_num_threads()
    if threads is None or threads >= previous:
        yield
        return
    token = _OUTSIDE.set(previous if _OUTSIDE.get() is None else _OUTSIDE.get())
    torch.set_num_threads(max(1, threads))
    try:
        yield
    finally:
        torch.set_num_threads(previous)
        _OUTSIDE.reset(token)


def compiled_kernel_threads() -> int:
    """Threads for the package's compiled kernels: torch's intra-op count outside any `limited_threads` block.

    A compiled kernel runs chunks of its tasks, each thread taking the next chunk as it comes free, on
    worker threads that sleep rather than spin while idle; unlike a run of mid-sized torch operations
    it does not collapse when other processes hold some cores (it then runs about as fast as on one
    thread), so it keeps the count the process chose. ``torch.set_num_threads(1)`` makes the kernels
    single-threaded too.

    Example:
        >>> import torch
        >>> before = torch.get_num_threads()
        >>> with limited_threads(1):
        ...     compiled_kernel_threads() == before
        True
    """
    outside = _OUTSIDE.get()
    return max(1, torch.get_num_threads() if outside is None else outside)


_OMP_PAUSE_SOFT = 1  # omp_pause_soft of OpenMP 5.0's omp_pause_resource_t


@functools.lru_cache(maxsize=1)
def _gnu_openmp_pause_functions() -> tuple[Any, ...]:
    """``omp_pause_resource_all`` of every GNU OpenMP runtime (libgomp) loaded in this process (Linux only)."""
    try:
        with open("/proc/self/maps") as maps:
            paths = sorted({line.split()[-1] for line in maps if "/libgomp" in line})
    except OSError:  # no /proc (not Linux): nothing is released
        return ()
    functions = []
    for path in paths:
        if not os.path.basename(path).startswith("libgomp") or not os.path.exists(path):
            continue
        try:
            pause = ctypes.CDLL(path).omp_pause_resource_all  # already loaded: the same instance
        except (OSError, AttributeError):  # a libgomp older than OpenMP 5.0's pause (GCC 9)
            continue
        pause.argtypes = [ctypes.c_int]
        pause.restype = ctypes.c_int
        functions.append(pause)
    return tuple(functions)


def release_idle_openmp_threads() -> int:
    """Stop the idle OpenMP threads of torch's last parallel operation spinning; returns how many runtimes did.

    After a parallel region, GNU OpenMP's worker threads (torch's on Linux builds) spin for many
    milliseconds waiting for the next one, and a compiled kernel started meanwhile shares its cores
    with them: on the 2-core machine of ``benchmarks/counting_kernel.py``, the joint-counting kernel
    took 18 to 19 ms right after torch's work instead of 10 to 11. This releases the calling thread's
    idle workers (``omp_pause_resource_all(omp_pause_soft)``, OpenMP 5.0); torch's next parallel
    operation starts new ones. Other threads' parallel regions are not touched; other OpenMP
    runtimes (LLVM's, Intel's) are left alone. Called before a compiled kernel starts several threads.

    Example:
        >>> release_idle_openmp_threads() >= 0
        True
    """
    return sum(pause(_OMP_PAUSE_SOFT) == 0 for pause in _gnu_openmp_pause_functions())
