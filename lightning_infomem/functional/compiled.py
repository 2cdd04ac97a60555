"""The package's Numba kernels, each imported on first use, so that Numba stays an optional dependency.

`CompiledKernel` names a kernel by module and attribute; ``available()`` imports it once (Numba
imported then), and calling it runs the kernel (a parallel one on torch's intra-op thread count). Callers
fall back to their torch implementations when it is not available.
"""

from __future__ import annotations

import importlib
from typing import Any, Optional

from lightning_infomem.threads import numba_threads, release_idle_openmp_threads

__all__ = ["CompiledKernel"]


class CompiledKernel:
    """A compiled kernel ``module.attribute``, imported on first use.

    Example:
        >>> kernel = CompiledKernel("lightning_infomem.functional.counting_compiled", "joint_counts_block")
        >>> isinstance(kernel.available(), bool)
        True
    """

    def __init__(self, module: str, attribute: str, error: Optional[str] = None, *, parallel: bool = True) -> None:
        self.module, self.attribute = module, attribute
        self.parallel = parallel  # a Numba-parallel kernel (False: one thread, called as it is)
        self.error = error  # why it cannot run, once known (or given, e.g. in tests)
        self._function: Optional[Any] = None

    def available(self) -> bool:
        """Whether the kernel can run: its module (and Numba) imports. Tried once."""
        if self._function is None and self.error is None:
            try:
                self._function = getattr(importlib.import_module(self.module), self.attribute)
            except ImportError as error:  # Numba not installed, or not matching this NumPy
                self.error = str(error)
        return self._function is not None

    def require(self, what: str) -> None:
        """Raise a ``ValueError`` naming ``what`` needs Numba and how to install it, when it is not available."""
        if not self.available():
            raise ValueError(f"{what} needs Numba ({self.error}): pip install numba")

    def __call__(self, *args: Any) -> Any:
        """Run the kernel: a parallel one on torch's intra-op thread count (see `numba_threads`), after
        releasing torch's idle OpenMP threads so that they do not share its cores (see
        `release_idle_openmp_threads`)."""
        self.require(f"{self.module}.{self.attribute}")
        if not self.parallel:
            return self._function(*args)
        with numba_threads() as threads:
            if threads > 1:
                release_idle_openmp_threads()
            return self._function(*args)
