"""Histogram kernels compiled by Numba (CPU; ``pip install numba``): joint counting, plug-in terms, binning.

* `joint_counts_block`: every pair's ``(B + 1) x (B + 1)`` histogram (index ``B`` marks a non-finite
  value) stays in the first-level cache while the pair's samples are counted, so each pair-sample
  costs one increment; four pairs are counted at a time (independent increments).
* `joint_plugin_terms`: the same counting, each histogram reduced at once to the pair's plug-in
  terms (total, sums of ``n log n`` of the joint and of both marginals, occupied cells), for callers
  that need the MI and not the histograms: nothing of size pairs x cells is written.
* `joint_count_terms`: those terms from joint histograms already counted (a metric's state).
* `bin_and_count`: equal-width binning of float activations with per-neuron histograms, the
  metric's counters and (optionally) the bin indices, in one pass.

Rows ``i`` and ``i1 - 1 - (i - i0)`` of a block are counted by the same task, so every task has the
same number of pairs. The kernels are compiled for one thread and run a range of tasks
(``start``, ``stop``): `CompiledKernel.run_tasks` runs the ranges on several threads (the kernels
release the GIL). Compiled with ``parallel=True`` and ``numba.prange`` instead, the same counting
loop ran 1.34x to 1.36x slower on one thread and 1.23x to 1.38x on two (``benchmarks/counting_kernel.py``).
This module imports Numba; nothing imports it otherwise (see
`lightning_infomem.functional._kernels.compiled`).
"""

from __future__ import annotations

import numpy as np

from lightning_infomem.functional._kernels.jit import njit

__all__ = ["bin_and_count", "joint_count_terms", "joint_counts_block", "joint_plugin_terms"]


@njit(nogil=True, inline="always")
def _count_four(row: np.ndarray, bins: np.ndarray, j: int, width: int, hist: np.ndarray) -> int:
    """Histograms of the pairs ``(row, bins[j + g])``, ``g < 4`` (fewer at the end), into ``hist``; returns how many."""
    num_neurons, num_samples = bins.shape
    cells = width * width
    group = min(4, num_neurons - j)
    hist[:] = 0
    if group == 4:
        c0, c1, c2, c3 = bins[j], bins[j + 1], bins[j + 2], bins[j + 3]
        for s in range(num_samples):
            a = row[s] * width
            hist[a + c0[s]] += 1
            hist[cells + a + c1[s]] += 1
            hist[2 * cells + a + c2[s]] += 1
            hist[3 * cells + a + c3[s]] += 1
    else:
        for g in range(group):
            column = bins[j + g]
            for s in range(num_samples):
                hist[g * cells + row[s] * width + column[s]] += 1
    return group


@njit(nogil=True, inline="always")
def _first_pair(i: int, i0: int, num_neurons: int) -> int:
    """Index, within a block starting at row ``i0``, of the first pair ``(i, i + 1)``."""
    return (i - i0) * (num_neurons - 1) - ((i - 1) * i - (i0 - 1) * i0) // 2


@njit(nogil=True, inline="always")
def _task_row(task: int, side: int, i0: int, i1: int) -> int:
    """Row counted by ``task`` on its ``side`` (rows ``i0 + task`` and ``i1 - 1 - task``); -1 for the second
    side of the middle row of an odd block."""
    if side == 0:
        return i0 + task
    i = i1 - 1 - task
    return -1 if i == i0 + task else i


@njit(nogil=True)
def joint_counts_block(
    bins: np.ndarray, i0: int, i1: int, num_bins: int, out: np.ndarray, accumulate: bool, start: int, stop: int
) -> None:  # fmt: skip
    """Joint histograms of the pairs ``(i, j > i)`` for rows ``i0 <= i < i1``, row-major, into ``out``.

    ``bins`` is ``[N, S]`` (one row of bin indices per neuron, ``num_bins`` for a non-finite value);
    ``out`` is ``[pairs, num_bins, num_bins]`` int64, overwritten, or added to with ``accumulate``.
    Runs the tasks ``start <= task < stop`` of the block's ``(i1 - i0 + 1) // 2`` (two rows each).
    """
    num_neurons = bins.shape[0]
    width = num_bins + 1
    cells = width * width
    flat = out.reshape(out.shape[0], num_bins * num_bins)
    hist = np.empty(4 * cells, dtype=np.int32)
    for task in range(start, stop):
        for side in range(2):
            i = _task_row(task, side, i0, i1)
            if i < 0:
                break
            first, row, j = _first_pair(i, i0, num_neurons), bins[i], i + 1
            while j < num_neurons:
                group = _count_four(row, bins, j, width, hist)
                for g in range(group):
                    _copy_out(hist, g * cells, num_bins, width, flat[first + j + g - i - 1], accumulate)
                j += group


@njit(nogil=True)
def joint_plugin_terms(
    bins: np.ndarray, i0: int, i1: int, num_bins: int, table: np.ndarray, terms: np.ndarray, start: int, stop: int
) -> None:  # fmt: skip
    """`joint_counts_block`'s histograms, each reduced to its plug-in terms (see `_terms`) while in cache.

    ``table[n] = n log n`` for ``0 <= n <= S``; ``terms`` is ``[pairs, 7]`` float64, row-major pairs.
    Nothing of size pairs x cells is written. Runs the tasks ``start <= task < stop`` of the block's
    ``(i1 - i0 + 1) // 2``. (The loop is `joint_counts_block`'s: one kernel with a flag for either action
    measured 5 to 13 % slower.)
    """
    num_neurons = bins.shape[0]
    width = num_bins + 1
    cells = width * width
    hist = np.empty(4 * cells, dtype=np.int32)
    columns = np.empty(num_bins, dtype=np.int64)
    for task in range(start, stop):
        for side in range(2):
            i = _task_row(task, side, i0, i1)
            if i < 0:
                break
            first, row, j = _first_pair(i, i0, num_neurons), bins[i], i + 1
            while j < num_neurons:
                group = _count_four(row, bins, j, width, hist)
                for g in range(group):
                    _terms(hist, g * cells, num_bins, width, table, terms, first + j + g - i - 1, columns)
                j += group


@njit(nogil=True, inline="always")
def _copy_out(hist: np.ndarray, offset: int, num_bins: int, stride: int, target: np.ndarray, accumulate: bool) -> None:
    """The ``num_bins x num_bins`` histogram at ``hist[offset:]`` (row stride ``stride``) into the flat ``target``.

    One-dimensional slices and the branch outside the cell loops: about 3x faster than indexing
    ``out[p, a, b]`` (that copy-out was a third of the kernel's time).
    """
    source = hist[offset : offset + stride * stride]
    if accumulate:
        for a in range(num_bins):
            for b in range(num_bins):
                target[a * num_bins + b] += source[a * stride + b]
    else:
        for a in range(num_bins):
            for b in range(num_bins):
                target[a * num_bins + b] = source[a * stride + b]


@njit(nogil=True, inline="always")
def _terms(
    hist: np.ndarray, offset: int, num_bins: int, stride: int, table: np.ndarray, terms: np.ndarray, p: int,
    columns: np.ndarray,
) -> None:  # fmt: skip
    """Plug-in terms of the ``num_bins x num_bins`` histogram at ``hist[offset:]`` (row stride ``stride``) into
    ``terms[p]``: total, n log n of the joint, of the rows' sums and of the columns' sums, occupied cells of the
    joint, of the rows and of the columns (``table[n] = n log n``; every count and sum must be in the table).
    ``columns`` is scratch space of ``num_bins`` integers."""
    total = 0
    joint = 0.0
    occupied = 0
    occupied_rows = 0
    nlogn_rows = 0.0
    columns[:num_bins] = 0
    for a in range(num_bins):
        row_sum = 0
        base = offset + a * stride
        for b in range(num_bins):
            n = hist[base + b]
            row_sum += n
            columns[b] += n
            joint += table[n]
            occupied += n > 0
        total += row_sum
        nlogn_rows += table[row_sum]
        occupied_rows += row_sum > 0
    nlogn_columns = 0.0
    occupied_columns = 0
    for b in range(num_bins):
        nlogn_columns += table[columns[b]]
        occupied_columns += columns[b] > 0
    terms[p, 0] = total
    terms[p, 1] = joint
    terms[p, 2] = nlogn_rows
    terms[p, 3] = nlogn_columns
    terms[p, 4] = occupied
    terms[p, 5] = occupied_rows
    terms[p, 6] = occupied_columns


@njit(nogil=True)
def joint_count_terms(joint: np.ndarray, table: np.ndarray, terms: np.ndarray, start: int, stop: int) -> None:
    """Plug-in terms (see `_terms`) of ``[P, B, B]`` integer histograms into ``[P, 7]`` float64 ``terms``.

    One task per pair: runs the pairs ``start <= p < stop``. A histogram with a negative count, or a
    total beyond the table, gets the total -1 instead (and nothing is read out of the table's bounds).
    """
    num_pairs, num_bins = joint.shape[0], joint.shape[1]
    flat = joint.reshape(num_pairs, num_bins * num_bins)
    largest = table.shape[0] - 1
    columns = np.empty(num_bins, dtype=np.int64)
    for p in range(start, stop):
        cells = flat[p]
        smallest, total = 0, 0
        for c in range(num_bins * num_bins):
            smallest = min(smallest, cells[c])
            total += cells[c]
        if smallest < 0 or total > largest:
            terms[p, 0] = -1.0
        else:
            _terms(cells, 0, num_bins, num_bins, table, terms, p, columns)


@njit(nogil=True, error_model="numpy")
def bin_and_count(
    values: np.ndarray,
    low: np.ndarray,
    width: np.ndarray,
    factor: np.ndarray,
    defined: np.ndarray,
    range_low: np.ndarray,
    range_high: np.ndarray,
    num_bins: int,
    counts: np.ndarray,
    bins_out: np.ndarray,
    write_bins: bool,
) -> tuple[int, int]:  # fmt: skip
    """Bin ``[S, N]`` float ``values`` as `grid_bin_indices` does and add each neuron's histogram to ``counts``.

    ``low``, ``width``, ``factor`` and ``defined`` are the `BinGrid`'s, and ``range_low`` / ``range_high``
    the range, each as an ``[N]`` array (float64; ``defined`` bool). The position
    ``(v * factor - low) / width * num_bins`` is computed in float64 in the same order as the torch
    path, floored and clamped to ``[0, num_bins - 1]``; a non-finite value, or any value of a neuron
    whose range is undefined, gets ``num_bins`` and is not counted. ``counts`` is ``[N, num_bins]``
    int64 (added to); with ``write_bins``, the indices go to ``bins_out`` ``[S, N]`` (an integer dtype).
    Returns ``(non-finite values, finite values outside the range)``.

    One thread, and NumPy's error model: Python's checks every float division for a zero divisor (to
    raise), which kept the position loop from vectorising (2.15x slower, ``benchmarks/counting_kernel.py``);
    a zero width gives what torch gives. Each row is binned in three loops (positions with selects
    only, the conversion to integers, the histogram increments) so that the first two vectorise.
    The callback bins 1,024 to 2,048 rows at a time; a Numba-parallel version over row chunks was
    slower at those sizes in a scratch timing (its loop body did not vectorise).
    """
    num_samples, num_neurons = values.shape
    top = np.float64(num_bins - 1)
    skip = np.float64(num_bins)
    stride = num_bins + 1  # a column for the skip index: counting needs no branch
    hist = np.zeros(num_neurons * stride, dtype=np.int64)
    floor = np.empty(num_neurons, dtype=np.float64)  # the skip index for every value of an undefined neuron
    for n in range(num_neurons):
        floor[n] = 0.0 if defined[n] else skip
    position = np.empty(num_neurons, dtype=np.float64)
    index = np.empty(num_neurons, dtype=np.int32)
    nonfinite = 0
    clipped = 0
    for s in range(num_samples):
        row = values[s]
        for n in range(num_neurons):
            v = np.float64(row[n])
            p = (v * factor[n] - low[n]) / width[n] * num_bins
            p = p if p > 0.0 else 0.0  # below the range, or NaN
            p = p if p < top else top
            p = p if p > floor[n] else floor[n]
            finite = (v - v) == 0.0  # False for NaN and +-Inf
            nonfinite += np.int64(not finite)
            clipped += np.int64(((v < range_low[n]) | (v > range_high[n])) & finite)
            position[n] = p if finite else skip
        for n in range(num_neurons):
            index[n] = np.int32(position[n])  # floor: position >= 0
        for n in range(num_neurons):
            hist[n * stride + index[n]] += 1
        if write_bins:
            out = bins_out[s]
            for n in range(num_neurons):
                out[n] = index[n]
    for n in range(num_neurons):
        for b in range(num_bins):
            counts[n, b] += hist[n * stride + b]
    return nonfinite, clipped
