"""Checkpoint state keys of the package's callbacks, computed once per prefix.

Lightning reads a callback's ``state_key`` at every hook call (to name its profiler section), and
``Callback._generate_state_key`` formats a string each time: cached, it costs nothing per batch.
"""

from __future__ import annotations

from lightning.pytorch import Callback

__all__ = ["prefixed_state_key"]


def prefixed_state_key(callback: Callback, prefix: str) -> str:
    """``callback._generate_state_key(prefix=prefix)``, cached on the callback (recomputed if the prefix changes).

    Example:
        >>> from lightning.pytorch import Callback
        >>> prefixed_state_key(Callback(), "infomem")
        "Callback{'prefix': 'infomem'}"
    """
    cached = callback.__dict__.get("_state_key_cache")
    if cached is None or cached[0] != prefix:
        cached = (prefix, callback._generate_state_key(prefix=prefix))
        callback.__dict__["_state_key_cache"] = cached
    return cached[1]
