"""Per-group accuracy, worst-group accuracy and per-group memorization gap as torchmetrics ``Metric`` objects.

A *group* is a combination of label and spurious attribute (for example "waterbird on land"), given
as an integer id per sample in ``[0, num_groups)``. Minority groups are the rare combinations. The
state is integer counts (correct and total per group), summed across processes, so any split of the
samples into batches and processes gives the same result.

Memorization of a group (You et al., "The Silent Majority", 2025) is its train accuracy minus its
test accuracy: `GroupMemorizationGap` keeps both sets of counts.
"""

from __future__ import annotations

import warnings
from typing import Any, Optional

import torch
from torch import Tensor
from torchmetrics import Metric

from lightning_infomem.functional.groups import check_num_groups, group_accuracy_counts

__all__ = ["GroupAccuracy", "GroupMemorizationGap", "WorstGroupAccuracy"]


def _accuracy(correct: Tensor, total: Tensor) -> Tensor:
    """Per-group accuracy; NaN for groups without samples."""
    acc = correct.double() / total.double().clamp(min=1)
    return torch.where(total > 0, acc, torch.full_like(acc, float("nan")))


class GroupAccuracy(Metric):
    """Accuracy of each group; ``compute()`` returns ``[num_groups]`` (NaN for a group never seen).

    Args:
        num_groups: number of groups; ids passed to ``update`` must be in ``[0, num_groups)``.
        kwargs: passed to ``torchmetrics.Metric`` (``process_group``, ``sync_on_compute``, ...).

    Example:
        >>> import torch
        >>> metric = GroupAccuracy(num_groups=2)
        >>> metric.update(torch.tensor([0, 1, 1, 0]), torch.tensor([0, 1, 0, 0]), torch.tensor([0, 0, 1, 1]))
        >>> metric.compute()
        tensor([1.0000, 0.5000], dtype=torch.float64)
    """

    is_differentiable = False
    higher_is_better: Optional[bool] = True
    full_state_update = False

    correct: Tensor
    total: Tensor

    def __init__(self, num_groups: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        num_groups = check_num_groups(num_groups)
        self.num_groups = num_groups
        self.add_state("correct", torch.zeros(num_groups, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", torch.zeros(num_groups, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor, groups: Tensor) -> None:
        """Count a batch: ``preds`` ``[S]`` classes or ``[S, C]`` scores, ``target`` and ``groups`` ``[S]``."""
        correct, total = group_accuracy_counts(preds, target, groups.to(preds.device), self.num_groups)
        self.correct += correct.to(self.correct.device)
        self.total += total.to(self.total.device)

    def compute(self) -> Tensor:
        """Per-group accuracy ``[num_groups]``, NaN where a group has no samples."""
        return _accuracy(self.correct, self.total)


class WorstGroupAccuracy(GroupAccuracy):
    """The lowest accuracy over the groups that have samples (a scalar, never NaN).

    Before any sample has been counted it returns 0 with a warning, so that a monitor on it sees
    a number (a NaN would break ``ModelCheckpoint`` and ``EarlyStopping`` comparisons).

    Example:
        >>> import torch
        >>> metric = WorstGroupAccuracy(num_groups=3)
        >>> metric.update(torch.tensor([0, 1, 1, 0]), torch.tensor([0, 1, 0, 0]), torch.tensor([0, 0, 1, 1]))
        >>> metric.compute()
        tensor(0.5000, dtype=torch.float64)
    """

    def compute(self) -> Tensor:
        """The minimum of the per-group accuracies, ignoring groups without samples."""
        acc = _accuracy(self.correct, self.total)
        seen = acc[self.total > 0]
        if seen.numel() == 0:
            warnings.warn("WorstGroupAccuracy: no group has samples yet; returning 0", RuntimeWarning, stacklevel=2)
            return torch.zeros((), dtype=torch.float64, device=acc.device)
        return seen.min()


class GroupMemorizationGap(Metric):
    """Per-group memorization: train accuracy minus test accuracy, ``[num_groups]``.

    Call ``update(preds, target, groups, train=True)`` on training samples (evaluated in eval mode)
    and ``train=False`` on held-out samples. ``compute()`` returns the gap; `train_accuracy` and
    `test_accuracy` give the two halves. A group without samples on either side gives NaN.

    Args:
        num_groups: number of groups.
        kwargs: passed to ``torchmetrics.Metric``.

    Example:
        >>> import torch
        >>> metric = GroupMemorizationGap(num_groups=2)
        >>> groups = torch.tensor([0, 0, 1, 1])
        >>> metric.update(torch.tensor([0, 1, 1, 0]), torch.tensor([0, 1, 1, 0]), groups, train=True)
        >>> metric.update(torch.tensor([0, 1, 0, 0]), torch.tensor([0, 1, 1, 1]), groups, train=False)
        >>> metric.compute()
        tensor([0., 1.], dtype=torch.float64)
    """

    is_differentiable = False
    higher_is_better: Optional[bool] = False
    full_state_update = False

    train_correct: Tensor
    train_total: Tensor
    test_correct: Tensor
    test_total: Tensor

    def __init__(self, num_groups: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        num_groups = check_num_groups(num_groups)
        self.num_groups = num_groups
        for name in ("train_correct", "train_total", "test_correct", "test_total"):
            self.add_state(name, torch.zeros(num_groups, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor, groups: Tensor, train: bool) -> None:
        """Count a batch of training (``train=True``) or held-out (``train=False``) samples."""
        if not isinstance(train, bool):
            raise ValueError(f"train must be True (training samples) or False (held-out samples), received {train!r}")
        correct, total = group_accuracy_counts(preds, target, groups.to(preds.device), self.num_groups)
        if train:
            self.train_correct += correct.to(self.train_correct.device)
            self.train_total += total.to(self.train_total.device)
        else:
            self.test_correct += correct.to(self.test_correct.device)
            self.test_total += total.to(self.test_total.device)

    @property
    def train_accuracy(self) -> Tensor:
        """Per-group accuracy on the training samples counted so far (this process only)."""
        return _accuracy(self.train_correct, self.train_total)

    @property
    def test_accuracy(self) -> Tensor:
        """Per-group accuracy on the held-out samples counted so far (this process only)."""
        return _accuracy(self.test_correct, self.test_total)

    def compute(self) -> Tensor:
        """Train minus test accuracy per group, NaN where either side has no samples."""
        return _accuracy(self.train_correct, self.train_total) - _accuracy(self.test_correct, self.test_total)
