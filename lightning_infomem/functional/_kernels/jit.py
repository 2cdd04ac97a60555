"""Numba's ``njit`` for the package's kernels: cached on disk where a cache can be written, compiled anyway where not.

With ``cache=True`` Numba refuses to compile a function, at import, when it finds no writable cache
directory (a read-only install without ``NUMBA_CACHE_DIR``): "cannot cache function ...: no locator
available". The kernels are then compiled without a cache, in every process (about 15 s on first
use), and one warning says how to cache them.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable

import numba

__all__ = ["njit"]

_uncached: list[str] = []  # kernels compiled without the on-disk cache in this process


def njit(**options: Any) -> Callable[[Callable[..., Any]], Any]:
    """``numba.njit(cache=True, **options)``, or without the cache where Numba cannot write one."""

    def decorate(function: Callable[..., Any]) -> Any:
        try:
            return numba.njit(cache=True, **options)(function)
        except RuntimeError as error:
            if "cannot cache" not in str(error):
                raise
            if not _uncached:
                warnings.warn(
                    f"lightning_infomem: Numba cannot cache the compiled kernels ({error}); they are compiled "
                    "without a cache, in every process (about 15 s on first use). Set NUMBA_CACHE_DIR to a "
                    "writable directory to cache them.",
                    RuntimeWarning,
                    stacklevel=2,
                )
            _uncached.append(function.__name__)
            return numba.njit(cache=False, **options)(function)

    return decorate
