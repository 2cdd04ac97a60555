"""One warning per cause and run, from rank 0 only: the callbacks' way of saying that something is off.

Lightning's ``WarningCache`` repeats a warning whose text changes (an epoch number in it); the
callbacks' warnings are keyed by their cause instead, so that a layer that diverges at epoch 3 and
again at epoch 7 warns once. Under DDP only rank 0 warns (``rank_zero_warn``), as Lightning's own
callbacks do.
"""

from __future__ import annotations

from lightning.pytorch.utilities import rank_zero_warn

__all__ = ["WarnOnce"]


class WarnOnce:
    """Warn once per key, on rank 0.

    Example:
        >>> import warnings
        >>> warn = WarnOnce()
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     warn("nan:layer", "layer diverged at epoch 3")
        ...     warn("nan:layer", "layer diverged at epoch 7")
        >>> [str(w.message) for w in caught]
        ['layer diverged at epoch 3']
    """

    def __init__(self) -> None:
        self.keys: set[str] = set()

    def __call__(self, key: str, message: str, category: type[Warning] = UserWarning) -> None:
        if key in self.keys:
            return
        self.keys.add(key)
        rank_zero_warn(message, category=category, stacklevel=4)
