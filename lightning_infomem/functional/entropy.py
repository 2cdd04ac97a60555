"""Per-neuron histograms and their plug-in entropy."""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from lightning_infomem.checks import check_bool, check_log_base
from lightning_infomem.functional.binning import (
    ValueRange,
    bin_indices,
    check_activations,
    check_bin_indices,
    check_num_bins,
)

__all__ = ["count_codes", "entropy_from_counts", "histogram_counts", "neuron_entropy", "plugin_terms"]


def count_codes(codes: Tensor, size: int) -> Tensor:
    """Occurrences of each integer code in ``[0, size)``: ``[size]`` int64.

    ``torch.bincount`` is the fastest on CPU; on other devices a ``scatter_add_`` into a preallocated
    tensor avoids the host synchronisation that ``bincount`` needs to size its output.
    """
    codes = codes.reshape(-1)
    if codes.device.type == "cpu":
        return torch.bincount(codes, minlength=size)
    out = torch.zeros(size, dtype=torch.int64, device=codes.device)
    return out.scatter_add_(0, codes.long(), torch.ones_like(codes, dtype=torch.int64))


def histogram_counts(bins: Tensor, num_bins: int) -> Tensor:
    """Histogram of each neuron from bin indices: ``[S, N]`` -> ``[N, num_bins]`` int64.

    Indices equal to ``num_bins`` (non-finite values, see `bin_indices`) are not counted.

    Example:
        >>> import torch
        >>> histogram_counts(torch.tensor([[0, 1], [0, 2], [1, 3]]), num_bins=3)
        tensor([[2, 1, 0],
                [0, 1, 1]])
    """
    num_bins = check_num_bins(num_bins)
    return histogram_counts_in_range(check_bin_indices(bins, num_bins), num_bins)


def histogram_counts_in_range(bins: Tensor, num_bins: int) -> Tensor:
    """`histogram_counts` of ``[S, N]`` indices known to be in ``[0, num_bins]`` (the package's own binning):
    no check. The codes are int64 whatever the index dtype (uint8 indices would overflow)."""
    num_neurons = bins.shape[1]
    offsets = torch.arange(num_neurons, device=bins.device, dtype=torch.int64) * (num_bins + 1)
    counts = count_codes(bins.long() + offsets, num_neurons * (num_bins + 1))
    return counts.view(num_neurons, num_bins + 1)[:, :num_bins]


def _float_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


NLOGN_TABLE_MAX = 2**20  # integer counts up to this read n log n from a lookup table (8 MiB at most)


def nlogn_table(largest: int, dtype: torch.dtype = torch.float64, device: Optional[torch.device] = None) -> Tensor:
    """``n log n`` for ``n = 0 .. largest`` (``0 log 0 = 0``): the lookup table of every plug-in estimate.

    Example:
        >>> nlogn_table(2).tolist()
        [0.0, 0.0, 1.3862943611198906]
    """
    values = torch.arange(largest + 1, dtype=dtype, device=device)
    return torch.special.xlogy(values, values)


_GATHER_CHUNK = 2**16  # table lookups per chunk, into one reused buffer (a fresh 16 MiB output costs page faults)


def _gathered_sums(table: Tensor, index: Tensor) -> Tensor:
    """``table[index].sum(-1)`` for a ``[R, C]`` integer ``index``, chunk by chunk of rows: ``[R]``."""
    index = index if index.dtype in (torch.int32, torch.int64) else index.long()
    rows, columns = index.shape
    if rows * columns <= _GATHER_CHUNK or index.device.type != "cpu":
        return table.index_select(0, index.reshape(-1)).view(rows, columns).sum(dim=-1)
    step = max(1, _GATHER_CHUNK // max(columns, 1))
    out = torch.empty(rows, dtype=table.dtype, device=table.device)
    buffer = torch.empty(step * columns, dtype=table.dtype, device=table.device)
    for r0 in range(0, rows, step):
        part = index[r0 : r0 + step].reshape(-1)
        gathered = torch.index_select(table, 0, part, out=buffer[: part.numel()])
        torch.sum(gathered.view(-1, columns), dim=-1, out=out[r0 : r0 + step])
    return out


def plugin_terms(
    counts: Tensor,
    dim: tuple[int, ...] = (-1,),
    occupied: bool = True,
    total: Optional[Tensor] = None,
    largest: Optional[int] = None,
) -> tuple[Tensor, Tensor, Optional[Tensor]]:
    """``(total, sum of n log n, number of non-empty cells or None)`` of counts over ``dim``, as floats.

    Integer counts read ``n log n`` from a lookup table (a gather), several times faster than
    evaluating the logarithm on every cell of a large joint histogram. ``dim`` must be the trailing
    dimensions. ``total`` (the sums over ``dim``) and ``largest`` (a bound on every count) may be given
    when the caller knows them, saving a pass over ``counts`` each.
    """
    dtype = _float_dtype(counts.device)
    trailing = len(dim)
    if counts.ndim and sorted(d % counts.ndim for d in dim) != list(range(counts.ndim - trailing, counts.ndim)):
        raise ValueError(f"dim must be the trailing dimensions of counts, received {dim} for {counts.ndim} dimensions")
    if counts.dtype.is_floating_point or counts.numel() == 0:
        n = counts.to(dtype)
        nlogn = torch.special.xlogy(n, n).sum(dim=dim)
    else:
        largest = int(counts.max()) if largest is None else int(largest)
        if 0 <= largest <= NLOGN_TABLE_MAX:
            table = nlogn_table(largest, dtype, counts.device)
            nlogn = _gathered_sums(table, counts.reshape(-1, math.prod(counts.shape[counts.ndim - trailing :])))
            nlogn = nlogn.view(counts.shape[: counts.ndim - trailing])
        else:
            n = counts.to(dtype)
            nlogn = torch.special.xlogy(n, n).sum(dim=dim)
    total = counts.sum(dim=dim).to(dtype) if total is None else total.to(dtype)
    num_occupied = (counts > 0).sum(dim=dim).to(dtype) if occupied else None
    return total, nlogn, num_occupied


def _entropy_from_terms(total: Tensor, nlogn: Tensor, occupied: Optional[Tensor] = None) -> Tensor:
    """Plug-in entropy from its terms; NaN for an empty histogram (no sample: undefined)."""
    safe = total.clamp_min(1)
    entropy = (torch.log(safe) - nlogn / safe).clamp_min(0)
    if occupied is not None:  # one occupied bin is exactly 0; log S - (S log S) / S can leave ~1e-16
        entropy = torch.where(occupied > 1, entropy, torch.zeros_like(entropy))
    return torch.where(total > 0, entropy, math.nan)


def entropy_from_counts(
    counts: Tensor,
    base: Optional[float] = None,
    miller_madow: bool = False,
    normalized: bool = False,
) -> Tensor:
    """Plug-in entropy of histograms along the last dimension: ``[..., B]`` counts -> ``[...]``.

    ``H = log S - sum(n log n) / S`` with ``S`` the histogram's total. An empty histogram (no sample
    counted: a neuron with no finite value) has no entropy: NaN, never a value that looks like one.

    Args:
        counts: non-negative counts, any integer or float dtype.
        base: logarithm base (``None``: nats, ``2``: bits). Ignored when ``normalized``.
        miller_madow: add the Miller-Madow bias correction ``(m - 1) / (2 S)``, ``m`` the number of
            non-empty bins (plug-in entropy is biased low when bins are many and samples few).
        normalized: divide by ``log B`` so that a uniform histogram scores 1 (0 when ``B == 1``).

    Example:
        >>> import torch
        >>> entropy_from_counts(torch.tensor([[5, 5], [10, 0]]), base=2).round(decimals=6)
        tensor([1., 0.], dtype=torch.float64)
    """
    miller_madow, normalized = check_bool(miller_madow, "miller_madow"), check_bool(normalized, "normalized")
    total, nlogn, occupied = plugin_terms(counts, occupied=True)
    entropy = _entropy_from_terms(total, nlogn, occupied)
    if miller_madow:
        entropy = entropy + torch.where(total > 0, (occupied - 1).clamp_min(0) / (2 * total.clamp_min(1)), 0.0)
    return _rescale(entropy, counts.shape[-1], base, normalized)


def _rescale(value: Tensor, num_bins: int, base: Optional[float], normalized: bool) -> Tensor:
    base = check_log_base(base)
    if normalized:  # one bin: 0 (NaN stays NaN)
        return value / math.log(num_bins) if num_bins > 1 else value * 0.0
    if base is not None:
        return value / math.log(base)
    return value


def neuron_entropy(
    activations: Tensor,
    num_bins: int = 100,
    value_range: ValueRange = None,
    base: Optional[float] = None,
    miller_madow: bool = False,
    normalized: bool = False,
) -> Tensor:
    """Plug-in entropy of each neuron's activation histogram: ``[S, N]`` -> ``[N]`` (nats by default).

    Args:
        activations: ``[S, N]`` floating tensor, S samples of N neurons.
        num_bins: equal-width bins (the paper uses 100).
        value_range: ``None`` for one global range over the whole input (the paper's binning), a
            ``(low, high)`` pair of floats for a fixed range, or a pair of ``[N]`` tensors for one
            range per neuron. See `bin_indices` for the binning rule.
        base: logarithm base; ``None`` gives nats, ``2`` bits.
        miller_madow: add the Miller-Madow bias correction.
        normalized: divide by ``log(num_bins)``, giving values in ``[0, 1]``.

    Non-finite values are left out of their neuron's histogram. A constant neuron has entropy 0; a
    neuron with no finite value (or an input with no sample) has none: NaN.

    Example:
        >>> import torch
        >>> x = torch.tensor([[0.0, 1.0], [1.0, 1.0], [2.0, 1.0], [3.0, 1.0]])
        >>> neuron_entropy(x, num_bins=4, value_range=(0.0, 3.0), base=2)
        tensor([2., 0.], dtype=torch.float64)
    """
    miller_madow, normalized = check_bool(miller_madow, "miller_madow"), check_bool(normalized, "normalized")
    check_activations(activations)
    counts = histogram_counts_in_range(bin_indices(activations, num_bins, value_range), num_bins)
    return entropy_from_counts(counts, base=base, miller_madow=miller_madow, normalized=normalized)
