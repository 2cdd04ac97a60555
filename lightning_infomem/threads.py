"""Torch's intra-op thread count, limited for a block of the package's own work and then restored.

Many mid-sized tensor operations (binning, ``bincount``, small reductions) are what the package's hot
paths run. With several OpenMP threads, each such operation waits for its slowest thread; when other
processes hold the machine's cores, that wait is a scheduler time slice, and a loop of such operations
runs many times slower than on one thread (on a 2-core machine with one other busy process,
``torch.bincount`` took 25 to 32 ns per element with 2 threads against 3 to 9 ns with one).
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator, Optional

import torch

__all__ = ["compiled_kernel_threads", "limited_threads", "numba_threads"]

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

    A compiled kernel is one large parallel loop whose idle threads sleep rather than spin, split into
    equal tasks; unlike a run of mid-sized torch operations it does not collapse when other processes
    hold some cores (it then runs about as fast as on one thread), so it keeps the count the process
    chose. ``torch.set_num_threads(1)`` makes the kernels single-threaded too.

    Example:
        >>> import torch
        >>> before = torch.get_num_threads()
        >>> with limited_threads(1):
        ...     compiled_kernel_threads() == before
        True
    """
    outside = _OUTSIDE.get()
    return max(1, torch.get_num_threads() if outside is None else outside)


@contextmanager
def numba_threads() -> Iterator[None]:
    """Run the block's Numba-parallel loops on `compiled_kernel_threads` threads (at most Numba's).

    So that ``torch.set_num_threads`` governs the package's compiled kernels too. Numba must be importable.
    """
    import numba

    previous = numba.get_num_threads()
    numba.set_num_threads(max(1, min(compiled_kernel_threads(), numba.config.NUMBA_NUM_THREADS)))
    try:
        yield
    finally:
        numba.set_num_threads(previous)
