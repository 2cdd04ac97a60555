"""Joint histograms of all neuron pairs at once: the counting kernels and the choice between them.

Counting is batched over pairs, with three exact kernels. ``"bincount"``: every pair's joint bin code
``a * (B + 1) + b`` is offset into its own block and one ``bincount`` counts a whole block of pairs.
``"matmul"``: the joint histograms of a block of neurons against all later ones are one matrix product
of one-hot codes (0/1 products: int8 with int32 sums where ``torch._int_mm`` is fast, as on CPUs with
VNNI or AMX and on GPUs; float32 with sample chunks under 2**24 otherwise). ``"compiled"`` (CPU, needs
Numba): a counting loop compiled by Numba (`lightning_infomem.functional._kernels.counting`). ``"auto"``
uses ``"matmul"`` on GPUs; on the CPU ``"compiled"`` when Numba is installed, otherwise whichever of
``"bincount"`` and ``"matmul"`` is faster for the problem's size class (samples and neurons to the
next power of two, bins, threads), measured once per process on the first problem of that class (both
results are compared too). None loops over pairs in Python.
"""

from __future__ import annotations

import functools
from typing import Iterator, Literal, Optional

import numpy as np
import torch
from torch import Tensor

from lightning_infomem.functional._kernels.compiled import CompiledKernel
from lightning_infomem.functional.binning import bin_index_dtype, check_bin_indices, check_num_bins
from lightning_infomem.functional.entropy import count_codes

__all__ = [
    "CountingBackend",
    "add_joint_histogram_counts",
    "cached_pair_indices",
    "compiled_counting_available",
    "iter_joint_histogram_counts",
    "joint_histogram_counts",
    "pair_indices",
    "resolve_counting_backend",
]

CountingBackend = Literal["auto", "bincount", "matmul", "compiled"]


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


def resolve_counting_backend(backend: CountingBackend, device: torch.device) -> str:
    """Check ``backend``: ``"auto"`` becomes ``"matmul"`` off the CPU and stays ``"auto"`` on it."""
    if backend not in ("auto", "bincount", "matmul", "compiled"):
        raise ValueError(f"backend must be 'auto', 'bincount', 'matmul' or 'compiled', received {backend!r}")
    if backend == "auto" and device.type != "cpu":
        return "matmul"
    if backend == "compiled" and device.type != "cpu":
        raise ValueError(f"backend='compiled' counts on CPU only, received bins on {device}; use 'matmul'")
    if backend == "compiled":
        _KERNEL.require("backend='compiled' (or use 'bincount')")
    return backend


COUNTING_KERNELS_MODULE = "lightning_infomem.functional._kernels.counting"


_KERNEL = CompiledKernel(COUNTING_KERNELS_MODULE, "joint_counts_block")


def compiled_counting_available() -> bool:
    """Whether the compiled CPU counting kernel can run: Numba importable (imported on the first call)."""
    return _KERNEL.available()


def compiled_row_tasks(i0: int, i1: int) -> int:
    """Tasks of the compiled kernels over the block of rows ``i0 <= i < i1``: two rows each (equal numbers of pairs)."""
    return (i1 - i0 + 1) // 2


def compiled_bin_layout(bins: Tensor, num_bins: int) -> np.ndarray:
    """``bins`` ``[S, N]`` as the compiled kernels read them: ``[N, S]`` rows of the smallest index dtype."""
    return bins.T.to(bin_index_dtype(num_bins)).contiguous().numpy()


def _blocks_compiled(bins: Tensor, num_bins: int) -> Iterator[tuple[int, Tensor]]:
    """Joint histograms by the compiled counting loop (on several threads, see `CompiledKernel.run_tasks`)."""
    num_neurons = bins.shape[1]
    transposed = compiled_bin_layout(bins, num_bins)
    for i0, i1 in _row_blocks(num_neurons, num_bins * num_bins, _COMPILED_CELLS_PER_BLOCK):
        num_pairs = (i1 - i0) * (2 * num_neurons - i0 - i1 - 1) // 2
        out = np.empty((num_pairs, num_bins, num_bins), dtype=np.int64)
        _KERNEL.run_tasks(compiled_row_tasks(i0, i1), transposed, i0, i1, num_bins, out, False)
        yield _first_pair(i0, num_neurons), torch.from_numpy(out)


def add_joint_histogram_counts(
    bins: Tensor, num_bins: int, joint_counts: Tensor, backend: CountingBackend = "auto"
) -> None:
    """``joint_counts += joint_histogram_counts(bins, num_bins, backend)``, in place, without the temporary.

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
    num_bins = check_num_bins(num_bins)
    check_bin_indices(bins, num_bins)
    shape = (bins.shape[1] * (bins.shape[1] - 1) // 2, num_bins, num_bins)
    if not isinstance(joint_counts, Tensor) or tuple(joint_counts.shape) != shape or joint_counts.dtype != torch.int64:
        found = list(joint_counts.shape) if isinstance(joint_counts, Tensor) else type(joint_counts).__name__
        raise ValueError(f"joint_counts must be an int64 tensor of shape {list(shape)}, received {found}")
    add_joint_histogram_counts_in_range(bins, num_bins, joint_counts, backend)


def add_joint_histogram_counts_in_range(
    bins: Tensor, num_bins: int, joint_counts: Tensor, backend: CountingBackend = "auto"
) -> None:
    """`add_joint_histogram_counts` of indices known to be in range (the package's own binning): no check."""
    backend = resolve_counting_backend(backend, bins.device)
    compiled = backend == "compiled" or (backend == "auto" and compiled_counting_available())
    if compiled and joint_counts.is_contiguous() and joint_counts.dtype == torch.int64:
        num_neurons = bins.shape[1]
        i1 = max(0, num_neurons - 1)
        transposed = compiled_bin_layout(bins, num_bins)
        _KERNEL.run_tasks(compiled_row_tasks(0, i1), transposed, 0, i1, num_bins, joint_counts.numpy(), True)
        return
    for first, counts in iter_joint_histogram_counts_in_range(bins.long(), num_bins, backend):
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


_MEASURED: dict[tuple[int, int, int, int], str] = {}


def _size_class(num_samples: int, num_neurons: int, num_bins: int) -> tuple[int, int, int, int]:
    return (num_samples.bit_length(), num_neurons.bit_length(), num_bins, torch.get_num_threads())


def _measured_backend(bins: Tensor, num_bins: int) -> tuple[str, Optional[list[tuple[int, Tensor]]]]:
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
    bins: Tensor, num_bins: int, backend: CountingBackend = "auto"
) -> Iterator[tuple[int, Tensor]]:
    """Joint histograms of all pairs ``i < j``, block by block, with bounded temporary memory.

    Yields ``(first_pair, counts)`` where ``counts`` is ``[p, num_bins, num_bins]`` int64 for the
    pairs ``first_pair .. first_pair + p - 1`` in the row-major order of `pair_indices`.
    """
    num_bins = check_num_bins(num_bins)
    return iter_joint_histogram_counts_in_range(check_bin_indices(bins, num_bins), num_bins, backend)


def iter_joint_histogram_counts_in_range(
    bins: Tensor, num_bins: int, backend: CountingBackend = "auto"
) -> Iterator[tuple[int, Tensor]]:
    """`iter_joint_histogram_counts` of indices known to be in range (the package's own binning): no check."""
    backend = resolve_counting_backend(backend, bins.device)
    if backend == "auto" and compiled_counting_available():
        backend = "compiled"
    if backend == "compiled":
        yield from _blocks_compiled(bins, num_bins)
        return
    if backend == "auto":
        backend, done = _measured_backend(bins, num_bins)
        if done is not None:
            yield from done
            return
    if backend == "bincount":
        yield from _blocks_bincount(bins, num_bins)
    else:
        yield from _blocks_matmul(bins, num_bins)


def joint_histogram_counts(bins: Tensor, num_bins: int, backend: CountingBackend = "auto") -> Tensor:
    """Joint histogram of every neuron pair from bin indices: ``[S, N]`` -> ``[P, num_bins, num_bins]`` int64.

    ``P = N (N - 1) / 2`` pairs ``i < j`` in the order of `pair_indices`; rows index the bin of
    neuron ``i``, columns the bin of neuron ``j``.

    Args:
        bins: bin indices from `bin_indices`; index ``num_bins`` marks a non-finite value,
            and a sample is left out of a pair's histogram when either of its two values is.
        num_bins: number of bins per neuron.
        backend: ``"bincount"`` (offset joint codes counted by ``bincount``), ``"matmul"`` (the Gram
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
    num_bins = check_num_bins(num_bins)
    check_bin_indices(bins, num_bins)
    blocks = [counts for _, counts in iter_joint_histogram_counts_in_range(bins, num_bins, backend)]
    if not blocks:
        return torch.zeros(0, num_bins, num_bins, dtype=torch.int64, device=bins.device)
    return torch.cat(blocks)
