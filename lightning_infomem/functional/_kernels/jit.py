"""Numba's ``njit`` for the package's kernels: cached on disk where a cache can be written safely, compiled anyway
where not.

With ``cache=True`` Numba refuses to compile a function, at import, when it finds no writable cache
directory (a read-only install without ``NUMBA_CACHE_DIR``): "cannot cache function ...: no locator
available". The kernels are then compiled without a cache, in every process (about 15 s on first
use), and one warning says how to cache them.

Numba unpickles its cache index when it loads a cached kernel, so a cache directory that another user can
write (a shared ``NUMBA_CACHE_DIR`` such as ``/tmp/numba``) lets that user run code in this process. Such a
directory (writable by group or others, or owned by another user; or, where it does not exist yet, an
ancestor where another user could create it first) is never used: the kernels are compiled without a cache,
and one warning says why and what to set.
"""

from __future__ import annotations

import os
import stat
import warnings
from functools import cache
from typing import Any, Callable, Optional

import numba

__all__ = ["njit"]

_uncached: list[str] = []  # kernels compiled without the on-disk cache in this process


def cache_directory_problem(directory: Optional[str] = None) -> Optional[str]:
    """Why Numba's cache directory (``directory``, by default ``NUMBA_CACHE_DIR`` or the kernels' ``__pycache__``)
    is not safe to load code from, or ``None`` when only this user (or root) can write it.

    Example:
        >>> import tempfile
        >>> cache_directory_problem(tempfile.mkdtemp()) is None  # a fresh directory of one's own
        True
        >>> cache_directory_problem("/tmp")  # doctest: +ELLIPSIS
        '/tmp is writable by other users (mode 0o...)'
    """
    if directory is None:
        directory = os.environ.get("NUMBA_CACHE_DIR") or os.path.join(os.path.dirname(__file__), "__pycache__")
    path = os.path.abspath(directory)
    while not os.path.exists(path):  # numba creates it: whoever can write the nearest ancestor could create it first
        parent = os.path.dirname(path)
        if parent == path:
            return None
        path = parent
    info = os.stat(path)
    uid = os.getuid() if hasattr(os, "getuid") else None
    if uid is not None and info.st_uid not in (uid, 0):
        return f"{path} is owned by another user (uid {info.st_uid})"
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"{path} is writable by other users (mode {oct(stat.S_IMODE(info.st_mode))})"
    return None


@cache
def _unsafe_cache() -> Optional[str]:
    problem = cache_directory_problem()
    if problem is not None:
        warnings.warn(
            f"lightning_infomem: Numba's cache directory is not safe to load compiled code from ({problem}: another "
            "user could plant a cache index, which Numba unpickles); the kernels are compiled without a cache, in "
            "every process (about 15 s on first use). Set NUMBA_CACHE_DIR to a directory only you can write to "
            "cache them.",
            RuntimeWarning,
            stacklevel=3,
        )
    return problem


def njit(**options: Any) -> Callable[[Callable[..., Any]], Any]:
    """``numba.njit(cache=True, **options)``, or without the cache where Numba cannot write one, or where the cache
    directory is one that other users can write (`cache_directory_problem`)."""

    def decorate(function: Callable[..., Any]) -> Any:
        if _unsafe_cache() is not None:
            _uncached.append(function.__name__)
            return numba.njit(cache=False, **options)(function)
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
