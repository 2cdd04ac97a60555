"""Joint histograms of neuron pairs and their plug-in mutual information, for all pairs at once.

Counting is batched over pairs, with three exact kernels. ``"bincount"``: every pair's joint bin code
``a * (B + 1) + b`` is offset into its own block and one ``bincount`` counts a whole block of pairs.
``"matmul"``: the joint histograms of a block of neurons against all later ones are one matrix product
of one-hot codes (0/1 products: int8 with int32 sums where ``torch._int_mm`` is fast, as on CPUs with
VNNI or AMX and on GPUs; float32 with sample chunks under 2**24 otherwise). ``"compiled"`` (CPU, needs
Numba): a counting loop compiled by Numba (`lightning_infomem.functional.counting_compiled`). ``"auto"``
uses ``"matmul"`` on GPUs; on the CPU ``"compiled"`` when Numba is installed, otherwise whichever of
``"bincount"`` and ``"matmul"`` is faster for the problem's size class (samples and neurons to the
next power of two, bins, threads), measured once per process on the first problem of that class (both
results are compared too). None loops over pairs in Python.
"""

from __future__ import annotations

import functools
import math
from typing import Iterator, Literal, Optional

import numpy as np
import torch
from torch import Tensor

from lightning_infomem.functional.binning import ValueRange, bin_indices, check_activations, check_num_bins
from lightning_infomem.functional.compiled import CompiledKernel
from lightning_infomem.functional.entropy import (
    _entropy_from_terms,
    _rescale,
    count_codes,
    entropy_from_counts,
    histogram_counts,
    plugin_terms,
)

__all__ = [
    "CountingMethod",
    "add_joint_histogram_counts",
    "iter_joint_histogram_counts",
    "joint_histogram_counts",
    "mean_off_diagonal",
    "mutual_information_from_joint_counts",
    "normalized_self_information",
    "pair_indices",
    "pairs_to_matrix",
    "compiled_counting_available",
    "pairwise_mutual_information",
    "pairwise_mutual_information_from_bins",
    "resolve_counting_method",
]

CountingMethod = Literal["auto", "bincount", "matmul", "compiled"]

_CODES_PER_BLOCK = 2**18  # bincount path: codes per call; the block's histograms stay in L2 (2**20: 20 % slower)
_GRAM_ELEMENTS_PER_BLOCK = 2**24  # matmul path: entries of one block of the one-hot Gram matrix
_ONE_HOT_BYTES = 2**28  # matmul path: bytes of one-hot operand per sample chunk
_COMPILED_CELLS_PER_BLOCK = 2**22  # compiled path: histogram cells per block (32 MiB of int64)
_EXACT_FP32_SAMPLES = 2**24  # fp32 accumulation of 0/1 products is exact below this


def pair_indices(num_neurons: int, device: Optional[torch.device] = None) -> tuple[Tensor, Tensor]:
    """Row and column indices of the ``N (N - 1) / 2`` pairs ``i < j``, in row-major order.

    Example:
        >>> pair_indices(3)
        (tensor([0, 0, 1]), tensor([1, 2, 2]))
    """
    rows, cols = torch.triu_indices(num_neurons, num_neurons, offset=1, device=device)
    return rows, cols


@functools.lru_cache(maxsize=64)
def cached_pair_indices(num_neurons: int, device: Optional[torch.device] = None) -> tuple[Tensor, Tensor]:
    """`pair_indices`, made once per size and device and shared: callers must not modify them."""
    return pair_indices(num_neurons, device)


def resolve_counting_method(method: CountingMethod, device: torch.device) -> str:
    """Check ``method``: ``"auto"`` becomes ``"matmul"`` off the CPU and stays ``"auto"`` on it."""
    if method not in ("auto", "bincount", "matmul", "compiled"):
        raise ValueError(f"method must be 'auto', 'bincount', 'matmul' or 'compiled', received {method!r}")
    if method == "auto" and device.type != "cpu":
        return "matmul"
    if method == "compiled" and device.type != "cpu":
        raise ValueError(f"method='compiled' counts on CPU only, received bins on {device}; use 'matmul'")
    if method == "compiled":
        _KERNEL.require("method='compiled' (or use 'bincount')")
    return method


_COMPILED_MODULE = "lightning_infomem.functional.counting_compiled"
_KERNEL = CompiledKernel(_COMPILED_MODULE, "joint_counts_block")
_PAIR_TERMS_KERNEL = CompiledKernel(_COMPILED_MODULE, "joint_plugin_terms")
_COUNT_TERMS_KERNEL = CompiledKernel(_COMPILED_MODULE, "joint_count_terms")


def compiled_counting_available() -> bool:
    """Whether the compiled CPU counting kernel can run: Numba importable (imported on the first call)."""
    return _KERNEL.available()


def _block_tasks(i0: int, i1: int) -> int:
    """Tasks of the compiled kernels over the block of rows ``i0 <= i < i1``: two rows each (equal numbers of pairs)."""
    return (i1 - i0 + 1) // 2


def _compiled_bins(bins: Tensor, num_bins: int) -> np.ndarray:
    """``bins`` ``[S, N]`` as the compiled kernels read them: ``[N, S]`` rows of the smallest index dtype."""
    dtype = torch.uint8 if num_bins < 255 else torch.int16 if num_bins < 32767 else torch.int32
    return bins.T.to(dtype).contiguous().numpy()


def _blocks_compiled(bins: Tensor, num_bins: int) -> Iterator[tuple[int, Tensor]]:
    """Joint histograms by the compiled counting loop (on several threads, see `CompiledKernel.run_tasks`)."""
    num_neurons = bins.shape[1]
    transposed = _compiled_bins(bins, num_bins)
    for i0, i1 in _row_blocks(num_neurons, num_bins * num_bins, _COMPILED_CELLS_PER_BLOCK):
        num_pairs = (i1 - i0) * (2 * num_neurons - i0 - i1 - 1) // 2
        out = np.empty((num_pairs, num_bins, num_bins), dtype=np.int64)
        _KERNEL.run_tasks(_block_tasks(i0, i1), transposed, i0, i1, num_bins, out, False)
        yield _first_pair(i0, num_neurons), torch.from_numpy(out)


def add_joint_histogram_counts(
    bins: Tensor, num_bins: int, joint_counts: Tensor, method: CountingMethod = "auto"
) -> None:
    """``joint_counts += joint_histogram_counts(bins, num_bins, method)``, in place, without the temporary.

    ``joint_counts`` is ``[P, num_bins, num_bins]`` int64 in the order of `pair_indices`. The compiled
    kernel adds into it directly (on CPU, where it is the choice of ``"auto"`` when Numba is installed);
    the other kernels add block by block.

    Example:
        >>> import torch
        >>> bins = torch.tensor([[0, 1, 2], [1, 1, 0], [1, 0, 0]])
        >>> joint = torch.zeros(3, 3, 3, dtype=torch.int64)
        >>> add_joint_histogram_counts(bins, 3, joint)
        >>> add_joint_histogram_counts(bins, 3, joint)  # counts accumulate
        >>> torch.equal(joint, 2 * joint_histogram_counts(bins, 3))
        True
    """
    method = resolve_counting_method(method, bins.device)
    compiled = method == "compiled" or (method == "auto" and compiled_counting_available())
    if compiled and joint_counts.is_contiguous() and joint_counts.dtype == torch.int64:
        num_neurons = bins.shape[1]
        i1 = max(0, num_neurons - 1)
        transposed = _compiled_bins(bins, num_bins)
        _KERNEL.run_tasks(_block_tasks(0, i1), transposed, 0, i1, num_bins, joint_counts.numpy(), True)
        return
    for first, counts in iter_joint_histogram_counts(bins.long(), num_bins, method):
        joint_counts[first : first + counts.shape[0]] += counts


def _row_blocks(num_neurons: int, pair_cost: int, budget: int) -> Iterator[tuple[int, int]]:
    """Consecutive row ranges ``[i0, i1)`` whose pairs ``(i, j > i)`` cost at most ``budget`` (one row at least)."""
    i0 = 0
    while i0 < num_neurons - 1:
        i1, cost = i0, 0
        while i1 < num_neurons - 1 and (i1 == i0 or cost + (num_neurons - 1 - i1) * pair_cost <= budget):
            cost += (num_neurons - 1 - i1) * pair_cost
            i1 += 1
        yield i0, i1
        i0 = i1


def _first_pair(row: int, num_neurons: int) -> int:
    return row * (num_neurons - 1) - row * (row - 1) // 2


def _blocks_bincount(bins: Tensor, num_bins: int) -> Iterator[tuple[int, Tensor]]:
    """Joint histograms by one ``bincount`` per block of pairs, on codes built in one pass per row.

    The code of pair ``p`` of a block (row ``i``, column ``j > i``) at a sample is
    ``p (B + 1)**2 + a (B + 1) + b``; with ``p = base_i + j - i - 1`` it splits into a per-column part
    ``b + j (B + 1)**2`` (computed once) and a per-row part, so each row of codes is one addition.
    """
    num_samples, num_neurons = bins.shape
    width = num_bins + 1
    per_pair = width * width
    # a block's cost is its codes (S per pair) or its histograms ((B + 1)**2 per pair), whichever is larger
    blocks = list(_row_blocks(num_neurons, max(num_samples, per_pair), _CODES_PER_BLOCK))
    largest_block = max(((i1 - i0) * (2 * num_neurons - i0 - i1 - 1) // 2 for i0, i1 in blocks), default=0)
    # codes stay below (pairs of the block + columns) * per_pair: int32 when that fits
    small = (largest_block + num_neurons) * per_pair < 2**31
    code_dtype = torch.int32 if small else torch.int64
    transposed = bins.T.to(code_dtype).contiguous()  # [N, S], rows contiguous (an op on bins.T keeps its strides)
    columns = transposed + torch.arange(num_neurons, device=bins.device, dtype=code_dtype).unsqueeze(1) * per_pair
    rows_part = transposed * width
    for i0, i1 in blocks:
        num_pairs = (i1 - i0) * (2 * num_neurons - i0 - i1 - 1) // 2
        codes = torch.empty(num_pairs, num_samples, dtype=code_dtype, device=bins.device)
        base = 0
        for i in range(i0, i1):
            count = num_neurons - 1 - i
            # pair base + (j - i - 1) for columns j = i + 1 ..: column part j * per_pair, minus (i + 1 - base)
            shift = (base - i - 1) * per_pair
            torch.add(columns[i + 1 :], rows_part[i] + shift, out=codes[base : base + count])
            base += count
        counts = count_codes(codes, num_pairs * per_pair)
        yield _first_pair(i0, num_neurons), counts.view(num_pairs, width, width)[:, :num_bins, :num_bins]


_INT8_MATMUL: dict[str, bool] = {}


def _int8_matmul_available(device: torch.device) -> bool:
    """Whether ``torch._int_mm`` (int8 x int8 -> int32, exact) runs on this device type, and on CPU fast.

    Checked once per device type. On CPUs without VNNI / AMX, ``torch._int_mm`` falls back to a
    reference kernel 50 to 100 times slower than a float32 product; it then counts as unavailable
    (the float32 product is used).
    """
    if device.type not in _INT8_MATMUL:
        try:
            probe = torch.ones(128, 256, dtype=torch.int8, device=device)
            result = torch._int_mm(probe, probe.T.contiguous())
            works = bool((result == 256).all())
        except (AttributeError, RuntimeError, NotImplementedError):
            works = False
        if works and device.type == "cpu":
            import time

            as_float = probe.float()
            timings = []
            for product in (lambda: torch._int_mm(probe, probe.T.contiguous()), lambda: as_float @ as_float.T):
                product()
                start = time.perf_counter()
                for _ in range(3):
                    product()
                timings.append(time.perf_counter() - start)
            works = timings[0] <= timings[1]
        _INT8_MATMUL[device.type] = works
    return _INT8_MATMUL[device.type]


def _blocks_matmul(bins: Tensor, num_bins: int) -> Iterator[tuple[int, Tensor]]:
    """Joint histograms as blocks of the Gram matrix of one-hot bin codes (exact: 0/1 products, integer sums).

    The one-hot matrix has ``num_bins`` columns per neuron; a non-finite value (index ``num_bins``) sets
    no column, so it drops out of every pair, as the counting rule says. With ``torch._int_mm`` the
    products are int8 with int32 sums (CPUs with VNNI / AMX, and GPUs); otherwise float32, exact while
    a chunk has fewer than 2**24 samples.
    """
    num_samples, num_neurons = bins.shape
    device = bins.device
    use_int8 = _int8_matmul_available(device) and num_samples < 2**31
    dtype = torch.int8 if use_int8 else torch.float32
    columns = num_neurons * num_bins
    per_sample = max(1, columns * (1 if use_int8 else 4))
    chunk = max(1, min(_EXACT_FP32_SAMPLES, _ONE_HOT_BYTES // per_sample))
    offsets = torch.arange(num_neurons, device=device, dtype=torch.int64) * num_bins
    transposed = []
    for s0 in range(0, num_samples, chunk):
        part = bins[s0 : s0 + chunk]
        codes = torch.where(part < num_bins, part + offsets, columns)  # non-finite: a trash column
        one_hot = torch.zeros(part.shape[0], columns + 1, dtype=dtype, device=device)
        one_hot.scatter_(1, codes, 1)
        transposed.append(one_hot[:, :columns].T.contiguous())  # [N * B, s]
    for i0, i1 in _row_blocks(num_neurons, num_bins * num_bins, _GRAM_ELEMENTS_PER_BLOCK):
        gram: Optional[Tensor] = None
        for xt in transposed:
            left, right = xt[i0 * num_bins : i1 * num_bins], xt[i0 * num_bins :].T
            part = torch._int_mm(left, right) if use_int8 else (left @ right).round_().to(torch.int32)
            gram = part if gram is None else gram.add_(part)
        if gram is None:  # no sample
            gram = torch.zeros((i1 - i0) * num_bins, (num_neurons - i0) * num_bins, dtype=torch.int32, device=device)
        gram = gram.view(i1 - i0, num_bins, num_neurons - i0, num_bins)
        rows, cols = torch.triu_indices(i1 - i0, num_neurons - i0, offset=1, device=device)
        yield _first_pair(i0, num_neurons), gram[rows, :, cols, :].to(torch.int64)


# "auto" on CPU: the faster of the two exact kernels, measured once per problem size on the problem itself
_MEASURED: dict[tuple[int, int, int, int], str] = {}


def _size_class(num_samples: int, num_neurons: int, num_bins: int) -> tuple[int, int, int, int]:
    return (num_samples.bit_length(), num_neurons.bit_length(), num_bins, torch.get_num_threads())


def _measured_method(bins: Tensor, num_bins: int) -> tuple[str, Optional[list[tuple[int, Tensor]]]]:
    """The faster CPU kernel for this size class; the first time, both run here and the result is returned too."""
    key = _size_class(bins.shape[0], bins.shape[1], num_bins)
    if key in _MEASURED:
        return _MEASURED[key], None
    if not _int8_matmul_available(bins.device):
        _MEASURED[key] = "bincount"
        return "bincount", None
    import time

    start = time.perf_counter()
    by_bincount = list(_blocks_bincount(bins, num_bins))
    middle = time.perf_counter()
    by_matmul = list(_blocks_matmul(bins, num_bins))
    end = time.perf_counter()

    def joined(blocks: list[tuple[int, Tensor]]) -> Tensor:
        return torch.cat([counts for _, counts in blocks]) if blocks else torch.zeros(0, dtype=torch.int64)

    same = torch.equal(joined(by_bincount), joined(by_matmul))  # the two kernels cut the pairs into other blocks
    if not same:  # never expected: the matmul kernel is exact; keep to the counting kernel then
        import warnings

        warnings.warn(
            "the one-hot matmul counting kernel disagreed with bincount on this CPU; using bincount",
            RuntimeWarning,
            stacklevel=3,
        )
        _INT8_MATMUL["cpu"] = False
    _MEASURED[key] = "matmul" if same and end - middle < middle - start else "bincount"
    return _MEASURED[key], by_bincount


def iter_joint_histogram_counts(
    bins: Tensor, num_bins: int, method: CountingMethod = "auto"
) -> Iterator[tuple[int, Tensor]]:
    """Joint histograms of all pairs ``i < j``, block by block, with bounded temporary memory.

    Yields ``(first_pair, counts)`` where ``counts`` is ``[p, num_bins, num_bins]`` int64 for the
    pairs ``first_pair .. first_pair + p - 1`` in the row-major order of `pair_indices`.
    """
    num_bins = check_num_bins(num_bins)
    if bins.ndim != 2:
        raise ValueError(f"bins must have shape [S, N], received shape {list(bins.shape)}")
    method = resolve_counting_method(method, bins.device)
    if method == "auto" and compiled_counting_available():
        method = "compiled"
    if method == "compiled":
        yield from _blocks_compiled(bins, num_bins)
        return
    if method == "auto":
        method, done = _measured_method(bins, num_bins)
        if done is not None:
            yield from done
            return
    if method == "bincount":
        yield from _blocks_bincount(bins, num_bins)
    else:
        yield from _blocks_matmul(bins, num_bins)


def joint_histogram_counts(bins: Tensor, num_bins: int, method: CountingMethod = "auto") -> Tensor:
    """Joint histogram of every neuron pair from bin indices: ``[S, N]`` -> ``[P, num_bins, num_bins]`` int64.

    ``P = N (N - 1) / 2`` pairs ``i < j`` in the order of `pair_indices`; rows index the bin of
    neuron ``i``, columns the bin of neuron ``j``.

    Args:
        bins: bin indices from `bin_indices`; index ``num_bins`` marks a non-finite value,
            and a sample is left out of a pair's histogram when either of its two values is.
        num_bins: number of bins per neuron.
        method: ``"bincount"`` (offset joint codes counted by ``bincount``), ``"matmul"`` (the Gram
            matrix of one-hot codes, int8 or float32), ``"compiled"`` (CPU, a Numba counting loop) or
            ``"auto"`` (``"matmul"`` on GPUs; on the CPU ``"compiled"`` when Numba is installed, else the
            faster of the first two for the problem's size, measured once; see the module docs). All give
            identical counts.

    Example:
        >>> import torch
        >>> joint_histogram_counts(torch.tensor([[0, 1], [1, 1], [1, 0]]), num_bins=2)
        tensor([[[0, 1],
                 [1, 1]]])
    """
    blocks = [counts for _, counts in iter_joint_histogram_counts(bins, num_bins, method)]
    if not blocks:
        return torch.zeros(0, num_bins, num_bins, dtype=torch.int64, device=bins.device)
    return torch.cat(blocks)


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


_NLOGN_TABLE_MAX = 2**24  # compiled paths: counts up to this read n log n from a table (128 MiB at most)

# terms columns of the compiled kernels: total, n log n of the joint, of the rows, of the columns, and the
# occupied cells of the joint, of the rows, of the columns
_TERMS = 7


def _split_terms(terms: Tensor, shape: tuple[int, ...]) -> tuple[Tensor, ...]:
    """The compiled kernels' ``[P, 7]`` terms as arguments of `_mutual_information_from_terms`, shaped ``shape``."""
    total, joint, rows, columns, occupied, occupied_rows, occupied_columns = (c.reshape(shape) for c in terms.unbind(1))
    return total, joint, rows, columns, occupied, occupied_rows, occupied_columns


def _nlogn_table(largest: int) -> np.ndarray:
    values = torch.arange(largest + 1, dtype=torch.float64)
    return torch.special.xlogy(values, values).numpy()


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
    if not 0 <= largest <= _NLOGN_TABLE_MAX:
        return None
    terms = np.empty((flat.shape[0], _TERMS), dtype=np.float64)
    _COUNT_TERMS_KERNEL.run_tasks(flat.shape[0], flat.numpy(), _nlogn_table(largest), terms)
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
    method: CountingMethod = "auto",
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
        method: counting kernel, see `joint_histogram_counts`.

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
    check_activations(activations)
    bins = bin_indices(activations, num_bins, value_range)
    pair_values = pairwise_mutual_information_from_bins(bins, num_bins, base, miller_madow, normalized, method)
    diagonal = entropy_from_counts(histogram_counts(bins, num_bins), base, miller_madow, normalized)
    if normalized:
        diagonal = normalized_self_information(diagonal)
    return pairs_to_matrix(pair_values, diagonal)


def pairwise_mutual_information_from_bins(
    bins: Tensor,
    num_bins: int,
    base: Optional[float] = None,
    miller_madow: bool = False,
    normalized: bool = False,
    method: CountingMethod = "auto",
) -> Tensor:
    """Plug-in MI of every pair ``i < j`` from bin indices: ``[S, N]`` -> ``[N (N - 1) / 2]`` float64.

    Pairs in the order of `pair_indices`; ``bins`` as for `joint_histogram_counts` (any integer
    dtype), other arguments as in `pairwise_mutual_information`. On CPU with Numba (``method``
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
    num_bins = check_num_bins(num_bins)
    if bins.ndim != 2:
        raise ValueError(f"bins must have shape [S, N], received shape {list(bins.shape)}")
    resolved = resolve_counting_method(method, bins.device)
    compiled = resolved == "compiled" or (
        resolved == "auto" and bins.device.type == "cpu" and compiled_counting_available()
    )
    if compiled and bins.shape[0] <= _NLOGN_TABLE_MAX:
        return _pairwise_compiled(bins, num_bins, base, miller_madow, normalized)
    values = [
        mutual_information_from_joint_counts(counts, base, miller_madow, normalized)
        for _, counts in iter_joint_histogram_counts(bins.long(), num_bins, method)
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
    table = _nlogn_table(num_samples)
    i1 = num_neurons - 1
    _PAIR_TERMS_KERNEL.run_tasks(_block_tasks(0, i1), _compiled_bins(bins, num_bins), 0, i1, num_bins, table, terms)
    return _mutual_information_from_terms(
        *_split_terms(torch.from_numpy(terms), (num_pairs,)), num_bins, base, miller_madow, normalized
    )


def normalized_self_information(entropy: Tensor) -> Tensor:
    """Diagonal of a normalized MI matrix: 1 for a neuron with entropy, 0 for a constant one, NaN if undefined."""
    return torch.where(torch.isnan(entropy), entropy, (entropy > 0).to(entropy.dtype))
