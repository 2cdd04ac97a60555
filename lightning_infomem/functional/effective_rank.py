"""Effective rank of a representation (RankMe, Garrido, Balestriero, Najman & LeCun, ICML 2023).

For a matrix ``Z`` of ``S`` samples x ``N`` features with singular values ``s_1 .. s_min(S, N)``:
``p_k = s_k / sum(s) + 1e-7`` and ``RankMe(Z) = exp(-sum_k p_k log p_k)``. It lies between about 1
(one direction carries everything) and ``min(S, N)`` (a flat spectrum); higher means a richer
representation. The matrix is used as given (not centred), as in the paper.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["effective_rank"]

_EPSILON = 1e-7  # the paper's constant, added to every normalised singular value


def effective_rank(activations: Tensor) -> Tensor:
    """RankMe of an ``[S, N]`` activation matrix, a 0-d float64 tensor.

    NaN where nothing can be measured: a non-finite value, no sample or no feature, or a matrix of
    zeros (no direction at all). Computed in float64 (``torch.linalg.svdvals``) on the input's device.

    Example:
        >>> import torch
        >>> round(float(effective_rank(torch.eye(4))), 4)  # four equal directions
        4.0
        >>> round(float(effective_rank(torch.ones(8, 3))), 4)  # one direction
        1.0
    """
    if not isinstance(activations, Tensor) or activations.ndim != 2:
        shape = list(activations.shape) if isinstance(activations, Tensor) else type(activations).__name__
        raise ValueError(f"activations must be a [samples, features] tensor, received {shape}")
    if not activations.is_floating_point():
        raise ValueError(f"activations must be floating point, received {activations.dtype}")
    values = activations.detach().to(torch.float64)
    nan = torch.tensor(math.nan, dtype=torch.float64, device=values.device)
    if values.numel() == 0 or not bool(torch.isfinite(values).all()):
        return nan
    singular = torch.linalg.svdvals(values)
    total = singular.sum()
    if float(total) == 0.0:
        return nan
    p = singular / total + _EPSILON
    return torch.exp(-(p * torch.log(p)).sum())
