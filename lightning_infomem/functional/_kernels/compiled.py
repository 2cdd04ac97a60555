"""The package's Numba kernels, each imported on first use, so that Numba stays an optional dependency.

`CompiledKernel` names a kernel by module and attribute; ``available()`` imports it once (Numba
imported then). Every kernel is compiled for one thread and releases the GIL; a kernel over tasks
(its last two arguments ``start``, ``stop``: a range of tasks) runs on several threads with
`CompiledKernel.run_tasks`: chunks of tasks, taken one after another by the calling thread and the
package's worker threads, on torch's intra-op thread count (`compiled_kernel_threads`). Callers fall
back to their torch implementations when a kernel is not available.

Why not Numba's ``parallel=True``: the same counting loop compiled as a ``numba.prange`` body runs
1.34x to 1.36x slower on one thread and 1.23x to 1.38x on two (``benchmarks/counting_kernel.py``
compiles and times both).
"""

from __future__ import annotations

import importlib
import os
import sys
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Optional

from lightning_infomem.functional._kernels.threads import compiled_kernel_threads, release_idle_openmp_threads

__all__ = ["CompiledKernel"]

_CHUNKS_PER_THREAD = 4  # tasks are cut into this many chunks per thread, taken as threads come free

_pool: Optional[ThreadPoolExecutor] = None
_pool_workers = 0
_pool_lock = threading.Lock()


def _workers(count: int) -> ThreadPoolExecutor:
    """The package's pool of at least ``count`` worker threads (they sleep while idle)."""
    global _pool, _pool_workers
    with _pool_lock:
        if _pool is None or _pool_workers < count:
            if _pool is not None:
                _pool.shutdown(wait=False)
            _pool = ThreadPoolExecutor(max_workers=count, thread_name_prefix="lightning_infomem")
            _pool_workers = count
        return _pool


def _forget_workers() -> None:
    """In a forked child the parent's worker threads do not exist: start a new pool when one is needed."""
    global _pool, _pool_workers, _pool_lock
    _pool, _pool_workers, _pool_lock = None, 0, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_workers)


_warned_causes: set[str] = set()  # one warning per cause and process


def _jit_disabled() -> bool:
    numba = sys.modules.get("numba")
    return bool(getattr(getattr(numba, "config", None), "DISABLE_JIT", False))


class CompiledKernel:
    """A compiled kernel ``module.attribute``, imported on first use.

    Example:
        >>> kernel = CompiledKernel("lightning_infomem.functional._kernels.counting", "joint_counts_block")
        >>> isinstance(kernel.available(), bool)
        True
        >>> CompiledKernel("math", "fsum")([0.1] * 10)  # any importable function: called once
        1.0
    """

    def __init__(self, module: str, attribute: str, error: Optional[str] = None) -> None:
        self.module, self.attribute = module, attribute
        self.error = error  # why it cannot run, once known (or given, e.g. in tests)
        self._function: Optional[Any] = None

    def available(self) -> bool:
        """Whether the kernel can run: its module (and Numba) imports and compiles. Tried once.

        Without Numba the callers use their torch implementations, silently (an optional dependency).
        Where Numba is installed but the kernel cannot be loaded (any error while importing or compiling
        it), or ``NUMBA_DISABLE_JIT`` is set (the kernels would run as Python code, whose integer
        arithmetic is not the compiled one: its uint8 sums overflow), the torch implementations are used
        with one warning naming the cause; a user's run never fails for it.
        """
        if self._function is None and self.error is None:
            try:
                function = getattr(importlib.import_module(self.module), self.attribute)
            except ImportError as error:  # Numba not installed, or not matching this NumPy
                self.error = str(error)
                return False
            except Exception as error:  # noqa: BLE001 - a Numba that cannot compile or cache must not end the run
                self._fall_back(f"{type(error).__name__}: {error}")
                return False
            if _jit_disabled():
                self._fall_back("NUMBA_DISABLE_JIT is set, so the kernels would run as plain Python")
                return False
            self._function = function
        return self._function is not None

    def _fall_back(self, cause: str) -> None:
        self.error = cause
        if cause not in _warned_causes:
            _warned_causes.add(cause)
            warnings.warn(
                f"lightning_infomem: the compiled kernel {self.attribute} cannot be used ({cause}); the torch "
                "implementation computes the same values, slower",
                RuntimeWarning,
                stacklevel=4,
            )

    def require(self, what: str) -> None:
        """Raise a ``ValueError`` naming ``what`` needs Numba and how to install it, when it is not available."""
        if not self.available():
            raise ValueError(f"{what} needs Numba ({self.error}): pip install numba")

    def __call__(self, *args: Any) -> Any:
        """Run the kernel once, on the calling thread."""
        self.require(f"{self.module}.{self.attribute}")
        return self._function(*args)

    def run_tasks(self, num_tasks: int, *args: Any, chunks_per_thread: Optional[int] = None) -> None:
        """Run ``kernel(*args, start, stop)`` over the tasks ``0 <= task < num_tasks`` on `compiled_kernel_threads`.

        The tasks are cut into about ``chunks_per_thread`` contiguous chunks per thread; the calling
        thread and the workers take the next chunk as they come free, so a thread slowed by another
        process (or by costlier tasks) takes fewer. Before several threads start, torch's idle OpenMP
        threads are released (`release_idle_openmp_threads`) so that they do not share the cores.
        The kernel must write each task's results to its own place. The first error raised by a
        chunk is raised here, after every started chunk has finished.
        """
        self.require(f"{self.module}.{self.attribute}")
        function = self._function
        threads = min(compiled_kernel_threads(), max(1, num_tasks))
        if threads <= 1:
            function(*args, 0, num_tasks)
            return
        release_idle_openmp_threads()
        per_thread = _CHUNKS_PER_THREAD if chunks_per_thread is None else max(1, chunks_per_thread)
        num_chunks = min(num_tasks, threads * per_thread)
        bounds = [c * num_tasks // num_chunks for c in range(num_chunks + 1)]
        next_chunk = iter(range(num_chunks))
        lock = threading.Lock()

        def work() -> None:
            while True:
                with lock:
                    chunk = next(next_chunk, None)
                if chunk is None:
                    return
                function(*args, bounds[chunk], bounds[chunk + 1])

        pool = _workers(threads - 1)
        futures = [pool.submit(work) for _ in range(threads - 1)]
        try:
            work()
        finally:
            errors = [future.exception() for future in futures]  # waits for each
        for error in errors:
            if error is not None:
                raise error
