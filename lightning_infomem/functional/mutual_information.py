"""Plug-in mutual information of neuron pairs, for all pairs at once, from their joint histograms.

The joint histograms come from `lightning_infomem.functional.joint_counts` (three exact counting
kernels and the choice between them); on the CPU with Numba, each pair's histogram is reduced to
its plug-in terms while it is in cache (`pairwise_mutual_information_from_bins`), so that no
histogram of all pairs is written.
"""

from __future__ import annotations

import math
from typing import Literal, Optional

import numpy as np
import torch
from torch import Tensor

from lightning_infomem.checks import check_bool
from lightning_infomem.functional._kernels.compiled import CompiledKernel
from lightning_infomem.functional.binning import (
    ValueRange,
    bin_indices,
    check_activations,
    check_bin_indices,
    check_num_bins,
)
from lightning_infomem.functional.entropy import (
    NLOGN_TABLE_MAX,
    _entropy_from_terms,
    _rescale,
    entropy_from_counts,
    histogram_counts_in_range,
    nlogn_table,
    plugin_terms,
)
from lightning_infomem.functional.joint_counts import (
    COUNTING_KERNELS_MODULE,
    CountingBackend,
    cached_pair_indices,
    compiled_bin_layout,
    compiled_counting_available,
    compiled_row_tasks,
    iter_joint_histogram_counts_in_range,
    resolve_counting_backend,
)

__all__ = [
    "mean_off_diagonal",
    "mutual_information_from_joint_counts",
    "normalized_self_information",
    "pairs_to_matrix",
    "pairwise_mutual_information",
    "pairwise_mutual_information_from_bins",
]


_PAIR_TERMS_KERNEL = CompiledKernel(COUNTING_KERNELS_MODULE, "joint_plugin_terms")
_COUNT_TERMS_KERNEL = CompiledKernel(COUNTING_KERNELS_MODULE, "joint_count_terms")


# "auto" on CPU: the faster of the two exact kernels, measured once per problem size on the problem itself


def mutual_information_from_joint_counts(
    joint_counts: Tensor,
    base: Optional[float] = None,
    miller_madow: bool = False,
    normalized: bool = False,
    marginals: Optional[tuple[Tensor, Tensor]] = None,
) -> Tensor:
    """Plug-in mutual information of joint histograms: ``[..., B, B]`` counts -> ``[...]``.

    ``I = H(X) + H(Y) - H(X, Y)`` with every term computed from the joint histogram itself, so the
    marginals are those of the samples the pair shares. An empty histogram (no sample where both
    values are finite) gives NaN: the MI is undefined.

    Args:
        joint_counts: non-negative counts, rows index the first neuron's bin, columns the second's.
        base: logarithm base (``None``: nats). Ignored when ``normalized``.
        miller_madow: apply the Miller-Madow correction to each of the three entropies, which adds
            ``(m_x + m_y - m_xy - 1) / (2 S)``; the corrected value can be slightly negative.
        normalized: divide by ``sqrt(H(X) H(Y))`` (0 where either entropy is 0), giving values in ``[0, 1]``.
        marginals: ``(joint_counts.sum(-1), joint_counts.sum(-2))`` when the caller has them (for example
            each neuron's own histogram, when no value was left out): saves two passes over the counts.

    Example:
        >>> import torch
        >>> mutual_information_from_joint_counts(torch.tensor([[5, 0], [0, 5]]), base=2).round(decimals=6)
        tensor(1., dtype=torch.float64)
    """
    miller_madow, normalized = check_bool(miller_madow, "miller_madow"), check_bool(normalized, "normalized")
    if joint_counts.ndim < 2 or joint_counts.shape[-1] != joint_counts.shape[-2]:
        raise ValueError(f"joint_counts must have shape [..., B, B], received shape {list(joint_counts.shape)}")
    num_bins = joint_counts.shape[-1]
    terms = _compiled_count_terms(joint_counts, marginals)
    if terms is not None:
        return _mutual_information_from_terms(*terms, num_bins, base, miller_madow, normalized)
    rows, columns = marginals if marginals is not None else (joint_counts.sum(-1), joint_counts.sum(-2))
    total_x, nlogn_x, occupied_x = plugin_terms(rows, occupied=True)
    _, nlogn_y, occupied_y = plugin_terms(columns, occupied=True)
    largest = int(total_x.max()) if total_x.numel() and not joint_counts.dtype.is_floating_point else None
    total, nlogn_joint, occupied_joint = plugin_terms(
        joint_counts, dim=(-2, -1), occupied=miller_madow, total=total_x, largest=largest
    )
    return _mutual_information_from_terms(
        total, nlogn_joint, nlogn_x, nlogn_y, occupied_joint, occupied_x, occupied_y,
        num_bins, base, miller_madow, normalized,
    )  # fmt: skip


def _mutual_information_from_terms(
    total: Tensor,
    nlogn_joint: Tensor,
    nlogn_x: Tensor,
    nlogn_y: Tensor,
    occupied_joint: Optional[Tensor],
    occupied_x: Tensor,
    occupied_y: Tensor,
    num_bins: int,
    base: Optional[float],
    miller_madow: bool,
    normalized: bool,
) -> Tensor:
    """Plug-in MI (see `mutual_information_from_joint_counts`) from each pair's float64 plug-in terms."""
    safe = total.clamp_min(1)
    mutual_info = (nlogn_joint - nlogn_x - nlogn_y) / safe + torch.log(safe)
    if miller_madow:
        assert occupied_joint is not None
        mutual_info = mutual_info + (occupied_x + occupied_y - occupied_joint - 1) / (2 * safe)
    else:
        mutual_info = mutual_info.clamp_min(0)  # the plug-in value is >= 0; remove rounding residue
    # a constant neuron (one occupied bin) shares exactly nothing; avoid ~1e-16 rounding residue
    mutual_info = torch.where((occupied_x > 1) & (occupied_y > 1), mutual_info, 0.0)
    if normalized:
        h_x = _entropy_from_terms(total, nlogn_x, occupied_x)
        h_y = _entropy_from_terms(total, nlogn_y, occupied_y)
        denom = torch.sqrt(h_x * h_y)
        mutual_info = torch.where(denom > 0, mutual_info / denom.clamp_min(1e-300), 0.0)
    else:
        mutual_info = _rescale(mutual_info, num_bins, base, normalized=False)
    return torch.where(total > 0, mutual_info, math.nan)  # no shared sample: undefined


# terms columns of the compiled kernels: total, n log n of the joint, of the rows, of the columns, and the
# occupied cells of the joint, of the rows, of the columns
_TERMS = 7


def _split_terms(terms: Tensor, shape: tuple[int, ...]) -> tuple[Tensor, ...]:
    """The compiled kernels' ``[P, 7]`` terms as arguments of `_mutual_information_from_terms`, shaped ``shape``."""
    total, joint, rows, columns, occupied, occupied_rows, occupied_columns = (c.reshape(shape) for c in terms.unbind(1))
    return total, joint, rows, columns, occupied, occupied_rows, occupied_columns


def _compiled_count_terms(
    joint_counts: Tensor, marginals: Optional[tuple[Tensor, Tensor]]
) -> Optional[tuple[Tensor, ...]]:
    """Plug-in terms of CPU integer joint histograms by the compiled kernel, one pass; ``None`` where it does not
    apply (other devices or dtypes, no Numba, counts beyond the lookup table or negative: the torch path decides)."""
    if (
        joint_counts.device.type != "cpu"
        or joint_counts.dtype not in (torch.int64, torch.int32)
        or joint_counts.numel() == 0
        or not (compiled_counting_available() and _COUNT_TERMS_KERNEL.available())
    ):
        return None
    shape = joint_counts.shape[:-2]
    num_bins = joint_counts.shape[-1]
    flat = joint_counts.detach().reshape(-1, num_bins, num_bins).contiguous()
    if marginals is not None:  # each marginal's total bounds every count of the pair
        largest = int(marginals[0].sum(-1).max())
    else:
        largest = int(flat.view(flat.shape[0], -1).sum(-1).max())
    if not 0 <= largest <= NLOGN_TABLE_MAX:
        return None
    terms = np.empty((flat.shape[0], _TERMS), dtype=np.float64)
    _COUNT_TERMS_KERNEL.run_tasks(flat.shape[0], flat.numpy(), nlogn_table(largest).numpy(), terms)
    result = torch.from_numpy(terms)
    if bool((result[:, 0] < 0).any()):  # a count outside [0, largest]: not valid counts for the table
        return None
    return _split_terms(result, shape)


def mean_off_diagonal(matrix: Tensor, nan_policy: Literal["propagate", "omit"] = "propagate") -> Tensor:
    """Mean of the off-diagonal entries of a square matrix (0 for a 1 x 1 matrix: no pairs).

    The diagonal of a pairwise MI matrix is self-information (entropy) and is left out of averages.
    ``nan_policy="omit"`` averages the defined (non-NaN) entries only, and is NaN when none is.

    Example:
        >>> import torch
        >>> float(mean_off_diagonal(torch.tensor([[9.0, 1.0], [3.0, 9.0]])))
        2.0
        >>> float(mean_off_diagonal(torch.tensor([[9.0, 1.0, float("nan")], [1.0, 9.0, 3.0], [float("nan"), 3.0, 9.0]]),
        ...                         nan_policy="omit"))
        2.0
    """
    if nan_policy not in ("propagate", "omit"):
        raise ValueError(f"nan_policy must be 'propagate' or 'omit', received {nan_policy!r}")
    n = matrix.shape[-1]
    if n < 2:
        return torch.zeros((), dtype=matrix.dtype, device=matrix.device)
    if nan_policy == "propagate":
        return (matrix.sum() - matrix.diagonal().sum()) / (n * n - n)
    off = ~torch.eye(n, dtype=torch.bool, device=matrix.device)
    values = matrix[off]
    defined = ~torch.isnan(values)
    return torch.where(defined, values, 0.0).sum() / defined.sum()  # 0 / 0 = NaN when none is defined


def pairs_to_matrix(pair_values: Tensor, diagonal: Tensor) -> Tensor:
    """Symmetric ``[N, N]`` matrix from values of the pairs ``i < j`` (row-major) and a diagonal."""
    num_neurons = diagonal.shape[0]
    matrix = torch.diag_embed(diagonal.to(pair_values.dtype))
    rows, cols = cached_pair_indices(num_neurons, diagonal.device)
    matrix[rows, cols] = pair_values
    matrix[cols, rows] = pair_values
    return matrix


def pairwise_mutual_information(
    activations: Tensor,
    num_bins: int = 16,
    value_range: ValueRange = None,
    base: Optional[float] = None,
    miller_madow: bool = False,
    normalized: bool = False,
    backend: CountingBackend = "auto",
) -> Tensor:
    """Plug-in mutual information of every pair of neurons: ``[S, N]`` -> symmetric ``[N, N]``.

    Each pair's joint histogram uses the same equal-width binning as `neuron_entropy`; the
    diagonal holds each neuron's entropy. The default of 16 bins keeps the plug-in bias, about
    ``(B - 1)**2 / (2 S)`` nats for independent neurons, small at a few thousand samples.

    Args:
        activations: ``[S, N]`` floating tensor.
        num_bins: equal-width bins per neuron.
        value_range: as in `neuron_entropy`.
        base: logarithm base; ``None`` gives nats.
        miller_madow: Miller-Madow bias correction of the entropies the MI is made of.
        normalized: ``I / sqrt(H(X) H(Y))`` in ``[0, 1]`` (diagonal 1, or 0 for a constant neuron).
        backend: counting kernel, see `joint_histogram_counts`.

    A sample is left out of a pair when either value is non-finite. Constant neurons give 0; a pair
    without a sample where both values are finite, or an input with no sample, gives NaN.
    Memory stays bounded: pairs are counted and reduced chunk by chunk.

    Example:
        >>> import torch
        >>> x = torch.tensor([[0.0, 0.0, 1.0], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 1.0, 0.0]])
        >>> pairwise_mutual_information(x, num_bins=2, base=2)
        tensor([[1., 1., 0.],
                [1., 1., 0.],
                [0., 0., 1.]], dtype=torch.float64)
    """
    miller_madow, normalized = check_bool(miller_madow, "miller_madow"), check_bool(normalized, "normalized")
    check_activations(activations)
    bins = bin_indices(activations, num_bins, value_range)
    pair_values = pairwise_mutual_information_in_range(bins, num_bins, base, miller_madow, normalized, backend)
    diagonal = entropy_from_counts(histogram_counts_in_range(bins, num_bins), base, miller_madow, normalized)
    if normalized:
        diagonal = normalized_self_information(diagonal)
    return pairs_to_matrix(pair_values, diagonal)


def pairwise_mutual_information_from_bins(
    bins: Tensor,
    num_bins: int,
    base: Optional[float] = None,
    miller_madow: bool = False,
    normalized: bool = False,
    backend: CountingBackend = "auto",
) -> Tensor:
    """Plug-in MI of every pair ``i < j`` from bin indices: ``[S, N]`` -> ``[N (N - 1) / 2]`` float64.

    Pairs in the order of `pair_indices`; ``bins`` as for `joint_histogram_counts` (any integer
    dtype), other arguments as in `pairwise_mutual_information`. On CPU with Numba (``backend``
    ``"auto"`` or ``"compiled"``) each pair's joint histogram is reduced to its MI while it is in the
    first-level cache, so no histogram is written; otherwise the histograms are counted block by
    block and reduced by `mutual_information_from_joint_counts`. Both give the same values (to
    rounding of the sums).

    Example:
        >>> import torch
        >>> bins = torch.tensor([[0, 0, 1], [1, 1, 1], [0, 0, 0], [1, 1, 0]])
        >>> pairwise_mutual_information_from_bins(bins, num_bins=2, base=2)
        tensor([1., 0., 0.], dtype=torch.float64)
    """
    miller_madow, normalized = check_bool(miller_madow, "miller_madow"), check_bool(normalized, "normalized")
    num_bins = check_num_bins(num_bins)
    check_bin_indices(bins, num_bins)
    return pairwise_mutual_information_in_range(bins, num_bins, base, miller_madow, normalized, backend)


def pairwise_mutual_information_in_range(
    bins: Tensor,
    num_bins: int,
    base: Optional[float] = None,
    miller_madow: bool = False,
    normalized: bool = False,
    backend: CountingBackend = "auto",
) -> Tensor:
    """`pairwise_mutual_information_from_bins` of indices known to be in range (the package's own binning)."""
    resolved = resolve_counting_backend(backend, bins.device)
    compiled = resolved == "compiled" or (
        resolved == "auto" and bins.device.type == "cpu" and compiled_counting_available()
    )
    if compiled and bins.shape[0] <= NLOGN_TABLE_MAX:
        return _pairwise_compiled(bins, num_bins, base, miller_madow, normalized)
    values = [
        mutual_information_from_joint_counts(counts, base, miller_madow, normalized)
        for _, counts in iter_joint_histogram_counts_in_range(bins.long(), num_bins, backend)
    ]
    return torch.cat(values) if values else torch.zeros(0, dtype=torch.float64, device=bins.device)


def _pairwise_compiled(
    bins: Tensor, num_bins: int, base: Optional[float], miller_madow: bool, normalized: bool
) -> Tensor:  # fmt: skip
    """MI of every pair by the compiled kernel that reduces each joint histogram while it is in cache: ``[P]``."""
    num_samples, num_neurons = bins.shape
    num_pairs = num_neurons * (num_neurons - 1) // 2
    if num_pairs == 0:
        return torch.zeros(0, dtype=torch.float64)
    terms = np.empty((num_pairs, _TERMS), dtype=np.float64)
    table = nlogn_table(num_samples).numpy()
    i1 = num_neurons - 1
    _PAIR_TERMS_KERNEL.run_tasks(
        compiled_row_tasks(0, i1), compiled_bin_layout(bins, num_bins), 0, i1, num_bins, table, terms
    )
    return _mutual_information_from_terms(
        *_split_terms(torch.from_numpy(terms), (num_pairs,)), num_bins, base, miller_madow, normalized
    )


def normalized_self_information(entropy: Tensor) -> Tensor:
    """Diagonal of a normalized MI matrix: 1 for a neuron with entropy, 0 for a constant one, NaN if undefined."""
    return torch.where(torch.isnan(entropy), entropy, (entropy > 0).to(entropy.dtype))
