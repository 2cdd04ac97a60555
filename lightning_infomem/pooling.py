"""Pooling small batches into larger ones: the package's one rule for work whose cost is per call, not per row.

Counting joint histograms touches every cell whatever the batch size, a metric update runs the same
dozen tensor operations for 10 rows as for 1,000, and scoring a training batch is one kernel launch
per statistic: so batches are kept until ``rows`` rows have arrived and then handled as one. Whatever
is pooled is handled before a result is read (the owners flush at compute, checkpoint and epoch end).
Each owner chooses ``rows`` for its own cost (and says why): `ActivationMeasurement` 1,024 rows of
activations, `NeuronMutualInformation` ``max(4096, 4 (B + 1)**2)`` rows of bin indices,
`TrainingDynamics` 8,192 presentations.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

__all__ = ["RowPool"]


class RowPool:
    """Batches of one or more aligned tensors (same first dimension), kept until ``rows`` rows have arrived.

    Example:
        >>> import torch
        >>> pool = RowPool(rows=4)
        >>> pool.add(torch.zeros(3, 2))
        False
        >>> pool.add(torch.ones(2, 2))  # 5 rows: full
        True
        >>> (batch,) = pool.take()
        >>> batch.shape, len(pool)
        (torch.Size([5, 2]), 0)
    """

    def __init__(self, rows: int) -> None:
        self.rows = int(rows)
        self.parts: list[tuple[Tensor, ...]] = []
        self.count = 0

    def add(self, *tensors: Tensor) -> bool:
        """Keep a batch (its tensors share the first dimension); returns whether ``rows`` rows have arrived."""
        self.parts.append(tensors)
        self.count += int(tensors[0].shape[0])
        return self.count >= self.rows

    def take(self) -> Optional[tuple[Tensor, ...]]:
        """The pooled batches as one (each tensor concatenated along its first dimension), leaving the pool
        empty; ``None`` when it was empty."""
        if not self.parts:
            return None
        parts, self.parts, self.count = self.parts, [], 0
        if len(parts) == 1:
            return parts[0]
        return tuple(torch.cat(column) for column in zip(*parts, strict=True))

    def peek(self) -> Optional[tuple[Tensor, ...]]:
        """The pooled batches as one, leaving them pooled (``None`` when empty); a single batch is not copied."""
        if not self.parts:
            return None
        if len(self.parts) == 1:
            return self.parts[0]
        merged = tuple(torch.cat(column) for column in zip(*self.parts, strict=True))
        self.parts = [merged]  # concatenated once, not again on the next read
        return merged

    def clear(self) -> None:
        self.parts, self.count = [], 0

    def __len__(self) -> int:
        return self.count
