"""Subsampled memorization and influence estimates (Feldman & Zhang, NeurIPS 2020), from masks.

``t`` models are trained on independent random subsets of the ``n`` training examples. ``in_train``
``[t, n]`` says which examples model ``k`` saw; ``correct`` ``[t, n]`` and ``test_correct`` ``[t, m]``
say which training and test examples it classified correctly. Then, with masked means over models::

    mem(i)     = mean_k(correct[k, i] | in_train[k, i]) - mean_k(correct[k, i] | not in_train[k, i])
    infl(i, j) = mean_k(test_correct[k, j] | in_train[k, i]) - mean_k(test_correct[k, j] | not in_train[k, i])

Standard error of a difference of two independent masked means of 0/1 values::

    stderr = sqrt(p_in (1 - p_in) / n_in + p_out (1 - p_out) / n_out)

An example that no model saw (``n_in == 0``) or every model saw (``n_out == 0``) has no estimate: its
value and standard error are 0 (never NaN) and its ``defined`` flag is ``False``.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch
from torch import Tensor

from lightning_infomem.checks import check_float, check_int

__all__ = [
    "InfluenceEstimate",
    "InfluenceTooLargeError",
    "MemorizationEstimate",
    "TopKInfluence",
    "influence_estimates",
    "influence_from_masks",
    "influence_per_class",
    "influence_topk",
    "memorization_estimates",
    "memorization_from_masks",
    "rms_error_bound",
]

DEFAULT_MAX_RESULT_BYTES = 2**30  # 1 GiB for dense influence matrices


class InfluenceTooLargeError(ValueError):
    """A dense influence matrix would exceed the memory budget."""


class MemorizationEstimate(NamedTuple):
    """Per training example: ``value`` [n], ``stderr`` [n] (float64) and ``defined`` [n] (bool)."""

    value: Tensor
    stderr: Tensor
    defined: Tensor


class InfluenceEstimate(NamedTuple):
    """``value`` and ``stderr`` [m, n] (float32; test rows, train columns) and ``defined`` [n] (bool)."""

    value: Tensor
    stderr: Tensor
    defined: Tensor


class TopKInfluence(NamedTuple):
    """Per test example the ``k`` most influential training examples: ``values``, ``stderr``, ``indices`` [m, k].

    Slots without a candidate (fewer than ``k`` eligible training examples) hold index -1 and value 0.
    """

    values: Tensor
    stderr: Tensor
    indices: Tensor


def _check_masks(in_train: Tensor, correct: Tensor, name: str) -> tuple[Tensor, Tensor]:
    for label, tensor in (("in_train", in_train), (name, correct)):
        if not isinstance(tensor, Tensor) or tensor.ndim != 2:
            shape = list(tensor.shape) if isinstance(tensor, Tensor) else type(tensor).__name__
            raise ValueError(f"{label} must be a 2-D tensor [models, examples], received {shape}")
        if tensor.dtype != torch.bool and tensor.is_floating_point():
            raise ValueError(f"{label} must be boolean (or 0/1 integers), received dtype {tensor.dtype}")
        if tensor.dtype != torch.bool and ((tensor != 0) & (tensor != 1)).any():
            raise ValueError(f"{label} must hold only 0 and 1; convert it with `.bool()`")
    if in_train.shape[0] != correct.shape[0]:
        raise ValueError(
            f"in_train and {name} must have one row per model, received {in_train.shape[0]} and {correct.shape[0]} rows"
        )
    if in_train.shape[0] == 0:
        raise ValueError("need at least one model (row); train models first")
    return in_train.bool(), correct.bool()


def _difference(hits_in: Tensor, n_in: Tensor, hits_out: Tensor, n_out: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    defined = (n_in > 0) & (n_out > 0)
    p_in = hits_in / n_in.clamp_min(1)
    p_out = hits_out / n_out.clamp_min(1)
    value = torch.where(defined, p_in - p_out, torch.zeros_like(p_in))
    var = p_in * (1 - p_in) / n_in.clamp_min(1) + p_out * (1 - p_out) / n_out.clamp_min(1)
    stderr = torch.where(defined, var.clamp_min(0).sqrt(), torch.zeros_like(var))
    return value, stderr, defined


def memorization_estimates(in_train: Tensor, correct: Tensor) -> MemorizationEstimate:
    """Memorization of every training example with its standard error and a ``defined`` flag.

    Args:
        in_train: ``[t, n]`` bool, ``in_train[k, i]``: model ``k`` was trained on example ``i``.
        correct: ``[t, n]`` bool, model ``k`` classifies training example ``i`` correctly.

    Returns:
        `MemorizationEstimate` of float64 ``value`` and ``stderr`` and bool ``defined``, all ``[n]``;
        undefined examples (seen by no model or by all) have value and stderr 0.

    Example:
        >>> in_train = torch.tensor([[1, 1, 1], [1, 0, 1], [0, 1, 1], [0, 0, 1]]).bool()
        >>> correct = torch.tensor([[1, 1, 1], [1, 0, 1], [0, 1, 1], [1, 0, 1]]).bool()
        >>> est = memorization_estimates(in_train, correct)
        >>> est.value.tolist(), est.defined.tolist()
        ([0.5, 1.0, 0.0], [True, True, False])
        >>> est.stderr.round(decimals=4)
        tensor([0.3536, 0.0000, 0.0000], dtype=torch.float64)
    """
    in_train, correct = _check_masks(in_train, correct, "correct")
    if in_train.shape != correct.shape:
        raise ValueError(
            f"in_train and correct must have the same shape [models, train examples], received "
            f"{list(in_train.shape)} and {list(correct.shape)}"
        )
    mask = in_train.double()
    hits = correct.double()
    n_in = mask.sum(0)
    n_out = in_train.shape[0] - n_in
    hits_in = (hits * mask).sum(0)
    hits_out = hits.sum(0) - hits_in
    return MemorizationEstimate(*_difference(hits_in, n_in, hits_out, n_out))


def memorization_from_masks(in_train: Tensor, correct: Tensor) -> Tensor:
    """``[n]`` float64 memorization scores ``P[correct | in] - P[correct | out]``; 0 where undefined.

    See `memorization_estimates` for standard errors and the ``defined`` flags.

    Example:
        >>> in_train = torch.tensor([[1, 0], [0, 1], [1, 0], [0, 1]]).bool()
        >>> correct = torch.tensor([[1, 1], [0, 1], [1, 0], [0, 1]]).bool()
        >>> memorization_from_masks(in_train, correct)
        tensor([1.0000, 0.5000], dtype=torch.float64)
    """
    return memorization_estimates(in_train, correct).value


def _dense_bytes(num_test: int, num_train: int, matrices: int) -> int:
    return num_test * num_train * 4 * matrices


def _check_budget(num_test: int, num_train: int, matrices: int, max_result_bytes: Optional[int]) -> None:
    needed = _dense_bytes(num_test, num_train, matrices)
    if max_result_bytes is not None and needed > max_result_bytes:
        raise InfluenceTooLargeError(
            f"the dense influence result [{num_test} test x {num_train} train] x {matrices} float32 "
            f"matrices needs {needed / 2**20:.1f} MiB, {needed / max(max_result_bytes, 1):.1f}x the budget "
            f"max_result_bytes={max_result_bytes / 2**20:.1f} MiB. Use influence_topk (k per test example, optionally "
            f"same class only), influence_per_class (same-class blocks), fewer test examples, or raise max_result_bytes"
        )


def _chunk_rows(num_train: int, t: int, chunk_bytes: int = 2**26) -> int:
    # temporaries per test row: a few [n] float32 vectors
    return max(1, chunk_bytes // max(1, 16 * num_train + 4 * t))


def _influence_block(mask: Tensor, n_in: Tensor, n_out: Tensor, test_hits: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``mask`` [t, n] float32, ``test_hits`` [t, c] float32 -> value, stderr [c, n], defined [n]."""
    hits_in = test_hits.T @ mask  # [c, n]
    hits_out = test_hits.sum(0)[:, None] - hits_in
    return _difference(hits_in, n_in[None, :], hits_out, n_out[None, :])


def influence_estimates(
    in_train: Tensor, test_correct: Tensor, *, max_result_bytes: Optional[int] = DEFAULT_MAX_RESULT_BYTES
) -> InfluenceEstimate:
    """Influence of every training example on every test example, with standard errors.

    Args:
        in_train: ``[t, n]`` bool subset masks.
        test_correct: ``[t, m]`` bool, model ``k`` classifies test example ``j`` correctly.
        max_result_bytes: refuse (`InfluenceTooLargeError`) if the two ``[m, n]`` float32 results exceed it;
            ``None`` for no limit.

    Returns:
        `InfluenceEstimate`: ``value``, ``stderr`` ``[m, n]`` float32, ``defined`` ``[n]`` bool.

    Example:
        >>> in_train = torch.tensor([[1, 0], [0, 1], [1, 0], [0, 1]]).bool()
        >>> test_correct = torch.tensor([[1], [0], [1], [1]]).bool()
        >>> est = influence_estimates(in_train, test_correct)
        >>> est.value
        tensor([[ 0.5000, -0.5000]])
    """
    in_train, test_correct = _check_masks(in_train, test_correct, "test_correct")
    t, n = in_train.shape
    m = test_correct.shape[1]
    _check_budget(m, n, 2, max_result_bytes)
    mask = in_train.float()
    n_in = mask.sum(0)
    n_out = t - n_in
    value = torch.empty(m, n)
    stderr = torch.empty(m, n)
    defined = (n_in > 0) & (n_out > 0)
    hits = test_correct.float()
    step = _chunk_rows(n, t)
    for start in range(0, m, step):
        v, s, _ = _influence_block(mask, n_in, n_out, hits[:, start : start + step])
        value[start : start + step] = v
        stderr[start : start + step] = s
    return InfluenceEstimate(value, stderr, defined)


def influence_from_masks(
    in_train: Tensor, test_correct: Tensor, *, max_result_bytes: Optional[int] = DEFAULT_MAX_RESULT_BYTES
) -> Tensor:
    """``[m, n]`` float32 influence of training example ``i`` (column) on test example ``j`` (row).

    ``P[test j correct | i in] - P[test j correct | i out]``; 0 in the columns of undefined training
    examples. Refuses (`InfluenceTooLargeError`) if the ``[m, n]`` float32 result exceeds ``max_result_bytes``;
    then use `influence_topk` or `influence_per_class`. See `influence_estimates` for standard errors.

    Example:
        >>> in_train = torch.tensor([[1, 0], [0, 1], [1, 0], [0, 1]]).bool()
        >>> test_correct = torch.tensor([[1, 0], [0, 0], [1, 1], [1, 1]]).bool()
        >>> influence_from_masks(in_train, test_correct)
        tensor([[ 0.5000, -0.5000],
                [ 0.0000,  0.0000]])
    """
    in_train, test_correct = _check_masks(in_train, test_correct, "test_correct")
    _check_budget(test_correct.shape[1], in_train.shape[1], 1, max_result_bytes)
    return influence_estimates(in_train, test_correct, max_result_bytes=None).value


def _check_labels(labels: Optional[Tensor], size: int, name: str) -> Optional[Tensor]:
    if labels is None:
        return None
    if not isinstance(labels, Tensor) or labels.shape != (size,) or labels.is_floating_point():
        shape = list(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
        raise ValueError(f"{name} must be an integer tensor [{size}], received {shape}")
    return labels


def influence_topk(
    in_train: Tensor,
    test_correct: Tensor,
    k: int,
    *,
    train_labels: Optional[Tensor] = None,
    test_labels: Optional[Tensor] = None,
) -> TopKInfluence:
    """The ``k`` most influential training examples of every test example, without the dense matrix.

    Works through blocks of test examples, so memory is ``O(m k)`` plus one block. With
    ``train_labels`` and ``test_labels`` only training examples of the test example's class compete
    (the paper's high-influence pairs are same-class). Undefined training examples never compete.

    Example:
        >>> in_train = torch.tensor([[1, 0, 1], [0, 1, 1], [1, 0, 0], [0, 1, 0]]).bool()
        >>> test_correct = torch.tensor([[1], [0], [1], [0]]).bool()
        >>> top = influence_topk(in_train, test_correct, 2)
        >>> top.indices.tolist(), top.values.tolist()
        ([[0, 2]], [[1.0, 0.0]])
    """
    in_train, test_correct = _check_masks(in_train, test_correct, "test_correct")
    t, n = in_train.shape
    m = test_correct.shape[1]
    k = check_int(k, "k", minimum=1)
    if (train_labels is None) != (test_labels is None):
        raise ValueError("pass both train_labels and test_labels (same-class top-k) or neither")
    train_labels = _check_labels(train_labels, n, "train_labels")
    test_labels = _check_labels(test_labels, m, "test_labels")
    kk = min(k, n)
    mask = in_train.float()
    n_in = mask.sum(0)
    n_out = t - n_in
    hits = test_correct.float()
    values = torch.zeros(m, k)
    stderr = torch.zeros(m, k)
    indices = torch.full((m, k), -1, dtype=torch.int64)
    step = _chunk_rows(n, t)
    for start in range(0, m, step):
        value, err, defined = _influence_block(mask, n_in, n_out, hits[:, start : start + step])
        eligible = defined.expand_as(value)
        if train_labels is not None and test_labels is not None:
            eligible = eligible & (test_labels[start : start + step, None] == train_labels[None, :])
        ranked = torch.where(eligible, value, torch.full_like(value, float("-inf")))
        top_values, top_indices = torch.topk(ranked, kk, dim=1)
        valid = torch.isfinite(top_values)
        rows = slice(start, start + value.shape[0])
        values[rows, :kk] = torch.where(valid, top_values, torch.zeros_like(top_values))
        stderr[rows, :kk] = torch.where(valid, err.gather(1, top_indices), torch.zeros_like(top_values))
        indices[rows, :kk] = torch.where(valid, top_indices, torch.full_like(top_indices, -1))
    return TopKInfluence(values, stderr, indices)


def influence_per_class(
    in_train: Tensor,
    test_correct: Tensor,
    train_labels: Tensor,
    test_labels: Tensor,
    *,
    max_result_bytes: Optional[int] = DEFAULT_MAX_RESULT_BYTES,
) -> dict[int, tuple[Tensor, Tensor, InfluenceEstimate]]:
    """Influence restricted to same-class pairs: one dense block per class.

    Returns ``{class: (test_indices [m_c], train_indices [n_c], InfluenceEstimate [m_c, n_c])}``.
    Memory is ``sum_c m_c n_c`` instead of ``m n`` (about ``1 / classes`` of it); refused if over ``max_result_bytes``.

    Example:
        >>> in_train = torch.tensor([[1, 0, 1], [0, 1, 0], [1, 0, 0], [0, 1, 1]]).bool()
        >>> test_correct = torch.tensor([[1], [0], [1], [1]]).bool()
        >>> blocks = influence_per_class(in_train, test_correct, torch.tensor([0, 1, 0]), torch.tensor([0]))
        >>> test_idx, train_idx, est = blocks[0]
        >>> train_idx.tolist(), est.value.tolist()
        ([0, 2], [[0.5, 0.5]])
    """
    in_train, test_correct = _check_masks(in_train, test_correct, "test_correct")
    train_labels = _check_labels(train_labels, in_train.shape[1], "train_labels")
    test_labels = _check_labels(test_labels, test_correct.shape[1], "test_labels")
    assert train_labels is not None and test_labels is not None
    classes = sorted(set(test_labels.tolist()))
    sizes = [(int((test_labels == c).sum()), int((train_labels == c).sum())) for c in classes]
    needed = sum(2 * 4 * a * b for a, b in sizes)
    if max_result_bytes is not None and needed > max_result_bytes:
        raise InfluenceTooLargeError(
            f"the per-class influence blocks need {needed / 2**20:.1f} MiB, "
            f"{needed / max(max_result_bytes, 1):.1f}x the budget max_result_bytes={max_result_bytes / 2**20:.1f} MiB; "
            "use influence_topk, fewer test examples, or raise max_result_bytes"
        )
    out = {}
    for c in classes:
        test_idx = torch.nonzero(test_labels == c)[:, 0]
        train_idx = torch.nonzero(train_labels == c)[:, 0]
        est = influence_estimates(in_train[:, train_idx], test_correct[:, test_idx], max_result_bytes=None)
        out[int(c)] = (test_idx, train_idx, est)
    return out


def rms_error_bound(num_models: int, fraction: float = 0.7) -> float:
    """The paper's bound on the RMS error of one memorization or influence value: ``sqrt(1/(p t) + 1/((1-p) t))``.

    ``p`` is the subset ``fraction`` and ``t`` the number of models, so ``p t`` and ``(1 - p) t`` are the
    expected numbers of models with and without the example. Each masked mean of 0/1 values has
    variance at most ``1 / (4 n)``, so for fixed counts the RMS error is at most half this bound; the
    bound is the one quoted by Feldman & Zhang (2020) for the random counts of a random subset design.

    Example:
        >>> round(rms_error_bound(2000, 0.7), 4)
        0.0488
    """
    num_models = check_int(num_models, "num_models", minimum=1)
    fraction = check_float(
        fraction, "fraction", minimum=0.0, maximum=1.0, exclusive_minimum=True, exclusive_maximum=True
    )
    return math.sqrt(1 / (fraction * num_models) + 1 / ((1 - fraction) * num_models))
