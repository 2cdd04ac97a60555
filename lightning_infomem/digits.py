"""Experiments on scikit-learn's bundled digits (1,797 real 8 x 8 images): splits and label noise.

Shared by the examples, the main demo and the benchmarks, so that they build their data the same
way. Needs scikit-learn (the ``demo`` and ``test`` extras). Nothing is downloaded.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["NUM_CLASSES", "digits_split", "flip_labels", "found_fraction", "load_digits"]

NUM_CLASSES = 10


def load_digits(seed: int = 0) -> tuple[Tensor, Tensor]:
    """All 1,797 digits as ``[S, 64]`` floats in ``[0, 1]`` and their labels, shuffled by ``seed``."""
    from sklearn.datasets import load_digits as sklearn_digits

    data = sklearn_digits()
    order = np.random.default_rng(seed).permutation(len(data.target))
    x = torch.tensor(data.data[order] / 16.0, dtype=torch.float32)
    y = torch.tensor(data.target[order], dtype=torch.int64)
    return x, y


def digits_split(seed: int = 0, train_fraction: float = 0.8) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(x_train, y_train, x_test, y_test)``: the shuffled digits cut at ``train_fraction`` (1,437 / 360)."""
    x, y = load_digits(seed)
    cut = int(train_fraction * len(y))
    return x[:cut], y[:cut], x[cut:], y[cut:]


def flip_labels(labels: Tensor, fraction: float, seed: int, num_classes: int = NUM_CLASSES) -> tuple[Tensor, Tensor]:
    """``(noisy labels, flipped mask)``: ``round(fraction * S)`` samples get another class, uniformly.

    Example:
        >>> noisy, flipped = flip_labels(torch.zeros(100, dtype=torch.int64), 0.1, seed=0)
        >>> int(flipped.sum()), bool((noisy[flipped] != 0).all()), bool((noisy[~flipped] == 0).all())
        (10, True, True)
    """
    generator = torch.Generator().manual_seed(seed)
    flipped = torch.zeros(labels.numel(), dtype=torch.bool)
    flipped[torch.randperm(labels.numel(), generator=generator)[: round(fraction * labels.numel())]] = True
    shift = torch.randint(1, num_classes, (labels.numel(),), generator=generator)
    return torch.where(flipped, (labels + shift) % num_classes, labels), flipped


def found_fraction(scores: Tensor, positives: Tensor) -> float:
    """The fraction of positives among the ``k`` highest scores, ``k`` the number of positives.

    Ties at the cut are shared out in proportion (the expected value under random tie-breaking), so a
    score with many ties (such as a count of events) is not favoured by the order of the samples.

    Example:
        >>> found_fraction(torch.tensor([3.0, 2.0, 1.0, 0.0]), torch.tensor([True, False, True, False]))
        0.5
        >>> found_fraction(torch.tensor([1.0, 1.0, 0.0, 0.0]), torch.tensor([True, False, False, False]))
        0.5
    """
    scores = torch.nan_to_num(scores.double(), nan=-float("inf"))
    positives = positives.bool()
    k = int(positives.sum())
    if k == 0:
        return float("nan")
    cut = torch.topk(scores, k).values[-1]
    above, at = scores > cut, scores == cut
    found = float((positives & above).sum()) + (k - int(above.sum())) * float((positives & at).sum()) / int(at.sum())
    return found / k
