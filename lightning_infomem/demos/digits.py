"""Experiments on scikit-learn's bundled digits (1,797 real 8 x 8 images): splits and label noise.

Shared by the examples, the main demo and the benchmarks, so that they build their data the same
way. Needs scikit-learn (the ``demo`` and ``test`` extras). Nothing is downloaded.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "NUM_CLASSES",
    "coloured_digits",
    "detection_auroc",
    "digits_split",
    "flip_labels",
    "found_fraction",
    "load_digits",
    "redraw_labels",
]

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


def detection_auroc(scores: Tensor, positives: Tensor, high_is_suspicious: bool = True) -> float:
    """AUROC of ``scores`` for finding ``positives`` (scikit-learn's ``roc_auc_score``).

    Infinite scores (an event that never happened, such as "never learned") rank beyond every finite
    one in their own direction.

    Example:
        >>> detection_auroc(torch.tensor([3.0, float("inf"), 1.0, 0.0]), torch.tensor([True, True, False, False]))
        1.0
    """
    from sklearn.metrics import roc_auc_score

    values = scores.double().clone()
    finite = values[torch.isfinite(values)]
    values[values == float("inf")] = float(finite.max()) + 1 if finite.numel() else 1.0
    values[values == float("-inf")] = float(finite.min()) - 1 if finite.numel() else -1.0
    return float(roc_auc_score(positives.numpy(), (values if high_is_suspicious else -values).numpy()))


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


def coloured_digits(
    images: Tensor, digits: Tensor, alpha: float, generator: torch.Generator, label_noise: float = 0.25
) -> tuple[Tensor, Tensor, Tensor]:
    """The paper's Colored MNIST construction on the digits: ``(coloured images [S, 2, 8, 8], labels, colours)``.

    As in the IRM code Bansal et al. build on: the binary label is ``digit >= 5``, flipped with
    probability ``label_noise`` (so the shape predicts it at best ``1 - label_noise`` of the time); the
    colour is the (noisy) label flipped with probability ``e = (1 - alpha) / 2``, so it agrees with the
    label with probability ``(1 + alpha) / 2``: not at all informative at ``alpha = 0``, as informative as
    the shape at ``alpha = 1 - 2 * label_noise``, always right at ``alpha = 1``. An out-of-distribution
    evaluation set uses ``alpha = 0`` (random colour). The digit is
    drawn in the red (colour 0) or the green (colour 1) channel.

    Example:
        >>> x = torch.rand(1000, 64)
        >>> digits = torch.randint(0, 10, (1000,))
        >>> images, labels, colours = coloured_digits(x, digits, 1.0, torch.Generator().manual_seed(0))
        >>> images.shape, bool((colours == labels).all())
        (torch.Size([1000, 2, 8, 8]), True)
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], received {alpha!r}")
    labels = (digits >= 5).long()
    labels = torch.where(torch.rand(labels.shape, generator=generator) < label_noise, 1 - labels, labels)
    colour_flip = torch.rand(labels.shape, generator=generator) < (1.0 - alpha) / 2.0
    colours = torch.where(colour_flip, 1 - labels, labels)
    coloured = torch.zeros(images.shape[0], 2, 64, dtype=images.dtype)
    coloured[torch.arange(images.shape[0]), colours] = images
    return coloured.view(-1, 2, 8, 8), labels, colours


def redraw_labels(labels: Tensor, beta: float, generator: torch.Generator, num_classes: int = NUM_CLASSES) -> Tensor:
    """A fraction ``beta`` of the labels redrawn uniformly over the classes (the paper's shuffled labels).

    A redrawn label may come out equal to the original (with probability ``1 / num_classes``).

    Example:
        >>> labels = torch.zeros(1000, dtype=torch.int64)
        >>> redrawn = redraw_labels(labels, 0.5, torch.Generator().manual_seed(0))
        >>> 0.40 < float((redrawn != 0).double().mean()) < 0.50
        True
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], received {beta!r}")
    redraw = torch.rand(labels.shape, generator=generator) < beta
    return torch.where(redraw, torch.randint(0, num_classes, labels.shape, generator=generator), labels)
