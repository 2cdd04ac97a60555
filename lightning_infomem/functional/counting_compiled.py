"""Joint histograms of neuron pairs with a counting loop compiled by Numba (CPU; ``pip install numba``).

Every pair's ``(B + 1) x (B + 1)`` histogram (index ``B`` marks a non-finite value) stays in the
first-level cache while the pair's samples are counted, so each pair-sample costs one increment;
rows of pairs run in parallel. `iter_joint_histogram_counts` uses it on CPU when Numba is importable.
This module imports Numba; nothing imports it otherwise.
"""

from __future__ import annotations

import numba
import numpy as np

# Numba's own work queue rather than an OpenMP runtime next to torch's (with OpenMP, the thread count
# set before the first parallel launch was not honoured); a layer chosen by the user is kept
if numba.config.THREADING_LAYER == "default":
    numba.config.THREADING_LAYER = "workqueue"

__all__ = ["joint_counts_block"]


@numba.njit(cache=True, nogil=True, parallel=True)
def joint_counts_block(
    bins: np.ndarray, i0: int, i1: int, num_bins: int, out: np.ndarray, accumulate: bool
) -> None:  # fmt: skip
    """Joint histograms of the pairs ``(i, j > i)`` for rows ``i0 <= i < i1``, row-major, into ``out``.

    ``bins`` is ``[N, S]`` (one row of bin indices per neuron, ``num_bins`` for a non-finite value);
    ``out`` is ``[pairs, num_bins, num_bins]`` int64, overwritten, or added to with ``accumulate``.
    """
    num_neurons, num_samples = bins.shape
    width = num_bins + 1
    for i in numba.prange(i0, i1):
        # pairs of the rows before i in this block
        first = (i - i0) * (num_neurons - 1) - ((i - 1) * i - (i0 - 1) * i0) // 2
        cells = width * width
        hist = np.empty(4 * cells, dtype=np.int32)  # four pairs at a time: independent increments
        row = bins[i]
        j = i + 1
        while j < num_neurons:
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
            for g in range(group):
                p = first + j + g - i - 1
                for a in range(num_bins):
                    for b in range(num_bins):
                        if accumulate:
                            out[p, a, b] += hist[g * cells + a * width + b]
                        else:
                            out[p, a, b] = hist[g * cells + a * width + b]
            j += group
