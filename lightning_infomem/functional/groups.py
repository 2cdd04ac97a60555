"""Per-group accuracy counts: the functional core of the group metrics (`GroupAccuracy` and its kin)."""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_infomem.checks import check_int

__all__ = ["group_accuracy_counts"]


def check_num_groups(num_groups: int) -> int:
    return check_int(num_groups, "num_groups", minimum=1)


def group_accuracy_counts(preds: Tensor, target: Tensor, groups: Tensor, num_groups: int) -> tuple[Tensor, Tensor]:
    """``(correct, total)`` per group, each ``[num_groups]`` int64.

    Args:
        preds: ``[S]`` predicted classes, or ``[S, C]`` logits / probabilities (argmax is taken).
        target: ``[S]`` true classes.
        groups: ``[S]`` group ids in ``[0, num_groups)``.
        num_groups: number of groups.

    Example:
        >>> import torch
        >>> correct, total = group_accuracy_counts(
        ...     torch.tensor([0, 1, 1, 0]), torch.tensor([0, 1, 0, 0]), torch.tensor([0, 0, 1, 1]), 2
        ... )
        >>> correct.tolist(), total.tolist()
        ([2, 1], [2, 2])
    """
    num_groups = check_num_groups(num_groups)
    if preds.ndim == 2:
        preds = preds.argmax(dim=1)
    if preds.ndim != 1 or target.ndim != 1 or groups.ndim != 1:
        raise ValueError(
            "preds must be [S] classes or [S, C] scores, target and groups [S]; received shapes "
            f"{tuple(preds.shape)}, {tuple(target.shape)}, {tuple(groups.shape)}"
        )
    if not preds.shape[0] == target.shape[0] == groups.shape[0]:
        raise ValueError(
            f"preds, target and groups must have the same number of samples, received "
            f"{preds.shape[0]}, {target.shape[0]}, {groups.shape[0]}"
        )
    if groups.is_floating_point():
        raise ValueError("groups must be integer group ids; convert them with groups.long()")
    groups = groups.long()
    if groups.numel() and (int(groups.min()) < 0 or int(groups.max()) >= num_groups):
        raise ValueError(
            f"group ids must be in [0, {num_groups}), received ids from {int(groups.min())} to "
            f"{int(groups.max())}; raise num_groups or remap the ids"
        )
    hit = (preds.long() == target.long()).long()
    correct = torch.zeros(num_groups, dtype=torch.long, device=groups.device).index_add(0, groups, hit)
    total = torch.bincount(groups, minlength=num_groups)
    return correct, total.long()
