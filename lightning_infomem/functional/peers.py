"""Label-free peers of H and I: what a user would otherwise compare models or checkpoints by, without labels.

Each takes what the package already sees: logits of unlabelled samples, predictions of two runs or of two
epochs. The effective rank (RankMe) of a representation is `lightning_infomem.functional.effective_rank`.

- `mean_max_softmax`: average confidence, the mean maximum softmax probability;
- `softmax_nuclear_norm`: the nuclear norm of the ``[S, C]`` softmax matrix normalised by
  ``sqrt(S * min(S, C))`` (Deng et al., ICML 2023): higher, higher accuracy expected;
- `prediction_disagreement`: the fraction of samples two runs classify differently, which estimates the
  test error (Jiang et al., ICLR 2022);
- `prediction_changes` and `label_wave_stop`: the training-set predictions that changed between two
  epochs, and the epoch Label Wave (Yuan et al., ICLR 2024) stops at: the first local minimum of their
  moving average.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Optional

import torch
from torch import Tensor

__all__ = [
    "label_wave_stop",
    "mean_max_softmax",
    "prediction_changes",
    "changed_predictions",
    "prediction_disagreement",
    "softmax_nuclear_norm",
    "softmax_nuclear_norm_from_gram",
]


def _check_logits(logits: Tensor) -> Tensor:
    if not isinstance(logits, Tensor) or logits.ndim != 2 or logits.shape[0] == 0 or logits.shape[1] < 2:
        shape = list(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(
            f"logits must be a [samples, classes] tensor with samples >= 1 and classes >= 2, received {shape}"
        )
    return logits.double()


def mean_max_softmax(logits: Tensor) -> float:
    """The mean over samples of the largest softmax probability (average confidence).

    Example:
        >>> import torch
        >>> round(mean_max_softmax(torch.tensor([[0.0, 0.0], [10.0, 0.0]])), 4)
        0.75
    """
    return float(torch.softmax(_check_logits(logits), dim=1).amax(dim=1).mean())


def softmax_nuclear_norm(logits: Tensor) -> float:
    """The nuclear norm of the softmax matrix ``P`` (``[S, C]``) over ``sqrt(S * min(S, C))``: 1 for confident
    predictions spread evenly over the classes, lower for unsure or collapsed ones (Deng et al., ICML 2023).

    Example:
        >>> import torch
        >>> round(softmax_nuclear_norm(torch.eye(4) * 50.0), 6)
        1.0
    """
    probabilities = torch.softmax(_check_logits(logits).double(), dim=1)
    return float(softmax_nuclear_norm_from_gram(probabilities.T @ probabilities, probabilities.shape[0]))


def softmax_nuclear_norm_from_gram(gram: Tensor, samples: int) -> Tensor:
    """`softmax_nuclear_norm` from the ``[C, C]`` Gram matrix ``P^T P`` of ``samples`` softmax rows (what a streaming
    metric sums batch by batch): the singular values of ``P`` are the square roots of the Gram matrix's eigenvalues.

    Example:
        >>> import torch
        >>> probabilities = torch.eye(4, dtype=torch.float64)
        >>> float(softmax_nuclear_norm_from_gram(probabilities.T @ probabilities, 4))
        1.0
    """
    eigenvalues = torch.linalg.eigvalsh(gram)
    # the rank is at most min(samples, classes): eigenvalues at the rounding level of the largest are zeros
    rounding = eigenvalues.abs().amax() * gram.shape[0] * torch.finfo(gram.dtype).eps
    eigenvalues = torch.where(eigenvalues > rounding, eigenvalues, 0.0)
    return eigenvalues.sqrt().sum() / math.sqrt(samples * min(samples, gram.shape[0]))


def prediction_disagreement(predictions_a: Tensor, predictions_b: Tensor) -> float:
    """The fraction of samples on which two runs predict different classes.

    Example:
        >>> import torch
        >>> prediction_disagreement(torch.tensor([0, 1, 2, 3]), torch.tensor([0, 1, 0, 0]))
        0.5
    """
    if predictions_a.shape != predictions_b.shape or predictions_a.ndim != 1 or predictions_a.numel() == 0:
        raise ValueError(
            "predictions must be two 1-d tensors of class indices of one length, received "
            f"{list(predictions_a.shape)} and {list(predictions_b.shape)}"
        )
    return float((predictions_a != predictions_b).double().mean())


def prediction_changes(previous: Tensor, current: Tensor) -> int:
    """How many samples' predicted class changed between two epochs (Label Wave's prediction changes).

    Example:
        >>> import torch
        >>> prediction_changes(torch.tensor([0, 1, 1]), torch.tensor([0, 0, 1]))
        1
    """
    if previous.shape != current.shape or previous.ndim != 1:
        raise ValueError(
            f"predictions of two epochs must be 1-d of one length, received {list(previous.shape)} and "
            f"{list(current.shape)}"
        )
    return int(changed_predictions(previous, current))


def changed_predictions(previous: Tensor, current: Tensor) -> Tensor:
    """`prediction_changes` as a 0-d tensor on the predictions' device (no host synchronisation); a negative previous
    prediction means none yet, and is not a change.

    Example:
        >>> import torch
        >>> int(changed_predictions(torch.tensor([-1, 1, 1]), torch.tensor([0, 0, 1])))
        1
    """
    return ((previous >= 0) & (previous != current)).sum()


def label_wave_stop(changes: Sequence[float], window: int = 3) -> Optional[int]:
    """The index Label Wave stops at: the first local minimum of the trailing moving average (``window`` values)
    of the prediction changes, or ``None`` if the average never rises again.

    ``changes[i]`` is the number of training predictions that changed between epochs ``i`` and ``i + 1`` (or
    any sequence of such counts); the returned index points into ``changes``.

    Example:
        >>> label_wave_stop([50, 30, 20, 15, 18, 25, 30], window=1)
        3
    """
    if window < 1:
        raise ValueError(f"window must be at least 1, received {window}")
    values = [float(v) for v in changes]
    smoothed = [
        sum(values[max(0, i - window + 1) : i + 1]) / (i - max(0, i - window + 1) + 1) for i in range(len(values))
    ]
    for i in range(1, len(smoothed) - 1):
        if smoothed[i] <= smoothed[i - 1] and smoothed[i] < smoothed[i + 1]:
            return i
    return None
