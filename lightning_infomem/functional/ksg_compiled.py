"""The KSG estimator's CPU kernel, compiled with Numba when it is installed (``pip install numba``).

One pass per pair, in parallel over pairs, with the per-neuron sorted orders shared by all pairs:

* **k-th neighbour distance**: the pair's samples in the order of the first neuron's values; from each
  sample, a scan outwards in that order on both sides keeps the ``k`` smallest max-norm distances
  ``max(|x_t - x_s|, |y_t - y_s|)`` and stops on a side when ``|x_t - x_s|`` alone reaches the ``k``-th
  smallest (every sample further out is at least as far). Exact: no approximate search.
* **counts** ``n_x``, ``n_y``: binary searches in each neuron's sorted values on the floating-point
  distance ``|v_t - v_s| <= nextafter(eps, 0)`` itself (monotone along a sorted array), so the counts
  are those of a distance-based implementation (scikit-learn's ``KDTree``) bit for bit.

This module imports Numba; `lightning_infomem.functional.ksg` imports it only when the compiled
backend is used. Expected work per pair is ``O(S sqrt(k S))`` distance evaluations (``O(S^2)`` in the worst case of long
runs of equal values in the first neuron). `ksg_mutual_information` uses this kernel on CPU when
Numba is importable and its torch implementation otherwise (and on GPUs).
"""

from __future__ import annotations

import math

import numba
import numpy as np

# Numba's own work queue rather than an OpenMP runtime next to torch's (with OpenMP, the thread count
# set before the first parallel launch was not honoured); a layer chosen by the user is kept
if numba.config.THREADING_LAYER == "default":
    numba.config.THREADING_LAYER = "workqueue"

__all__ = ["ksg_pair_terms"]


@numba.njit(cache=True, nogil=True, inline="always")
def _last_within_above(values: np.ndarray, start: int, end: int, center: float, radius: float) -> int:
    """Largest index ``start <= j < end`` of the ascending ``values`` with ``values[j] - center <= radius``.

    Branch-free binary search (a fixed number of halvings; the comparison only selects the next base),
    which avoids a mispredicted branch at every step.
    """
    base, size = start, end - start  # values[start] - center <= radius holds (distance 0)
    while size > 1:
        half = size // 2
        base = base + half if values[base + half] - center <= radius else base
        size -= half
    return base


@numba.njit(cache=True, nogil=True, inline="always")
def _first_within_below(values: np.ndarray, begin: int, stop: int, center: float, radius: float) -> int:
    """Smallest ``begin <= j <= stop`` of ascending ``values`` with ``center - values[j] <= radius`` (branch-free)."""
    base, size = begin, stop - begin + 1  # values[stop] qualifies: the answer is in [begin, stop]
    while size > 1:
        half = size // 2
        base = base if center - values[base + half - 1] <= radius else base + half
        size -= half
    return base


@numba.njit(cache=True, nogil=True, inline="always")
def _insert(best: np.ndarray, k: int, d: float) -> float:
    """Insert ``d`` (smaller than ``best[k - 1]``) into the ascending ``best``; the new ``k``-th smallest."""
    m = k - 1
    while m > 0 and best[m - 1] > d:
        best[m] = best[m - 1]
        m -= 1
    best[m] = d
    return best[k - 1]


@numba.njit(cache=True, nogil=True, inline="always")
def _scan_strip(
    strip_y: np.ndarray, strip_x: np.ndarray, first: int, last: int, start: int, x0: float, y0: float,
    skip: int, best: np.ndarray, k: int, kth: float,
) -> float:  # fmt: skip
    """Candidates of strip ``[first, last)`` (sorted by y) from position ``start`` outwards, while ``|dy| < kth``."""
    j = start - 1
    while j >= first:
        dy = y0 - strip_y[j]
        if dy >= kth:
            break
        if j != skip:
            dx = abs(strip_x[j] - x0)
            d = dx if dx > dy else dy
            if d < kth:
                kth = _insert(best, k, d)
        j -= 1
    j = start
    while j < last:
        dy = strip_y[j] - y0
        if dy >= kth:
            break
        if j != skip:
            dx = abs(strip_x[j] - x0)
            d = dx if dx > dy else dy
            if d < kth:
                kth = _insert(best, k, d)
        j += 1
    return kth


@numba.njit(cache=True, nogil=True, inline="always")
def _position_in(strip_y: np.ndarray, first: int, last: int, y0: float) -> int:
    """First position of ``[first, last)`` whose y is ``>= y0`` (``last`` if none)."""
    lo, hi = first, last
    while lo < hi:
        mid = (lo + hi) // 2
        if strip_y[mid] < y0:
            lo = mid + 1
        else:
            hi = mid
    return lo


@numba.njit(cache=True, nogil=True)
def _pair(
    sorted_values: np.ndarray,
    order: np.ndarray,
    rank: np.ndarray,
    a: int,
    b: int,
    k: int,
    width: int,
    psi: np.ndarray,
    strip_y: np.ndarray,
    strip_x: np.ndarray,
    slot: np.ndarray,
    best: np.ndarray,
) -> float:
    """``mean_s(psi(n_x + 1) + psi(n_y + 1))`` of the pair ``(a, b)`` (see the module docs)."""
    num_samples = sorted_values.shape[1]
    xs = sorted_values[a]
    ysorted = sorted_values[b]
    num_strips = (num_samples + width - 1) // width
    # strips of ``width`` consecutive samples in x order, each sorted by y: strip_y / strip_x hold the
    # values in that layout, slot[i] the layout position of the i-th sample in x order
    ys = np.empty(width, dtype=np.float64)
    for t in range(num_strips):
        first, last = t * width, min((t + 1) * width, num_samples)
        for i in range(first, last):
            ys[i - first] = ysorted[rank[b, order[a, i]]]
        by_y = np.argsort(ys[: last - first], kind="mergesort")
        for q in range(last - first):
            strip_y[first + q] = ys[by_y[q]]
            strip_x[first + q] = xs[first + by_y[q]]
            slot[first + by_y[q]] = first + q
    total = 0.0
    for i in range(num_samples):
        x0 = xs[i]
        home = slot[i]
        y0 = strip_y[home]
        t = i // width
        for m in range(k):
            best[m] = math.inf
        kth = _scan_strip(
            strip_y, strip_x, t * width, min((t + 1) * width, num_samples), home, x0, y0, home, best, k, math.inf
        )
        # strips to the left and right while their x gap (a bound for them and all beyond) is below kth
        left, right = t - 1, t + 1
        while True:
            gap_left = x0 - xs[(left + 1) * width - 1] if left >= 0 else math.inf
            gap_right = xs[right * width] - x0 if right < num_strips else math.inf
            if gap_left >= kth and gap_right >= kth:
                break
            if gap_left < kth:
                first, last = left * width, (left + 1) * width
                start = _position_in(strip_y, first, last, y0)
                kth = _scan_strip(strip_y, strip_x, first, last, start, x0, y0, -1, best, k, kth)
                left -= 1
            if gap_right < kth:
                first, last = right * width, min((right + 1) * width, num_samples)
                start = _position_in(strip_y, first, last, y0)
                kth = _scan_strip(strip_y, strip_x, first, last, start, x0, y0, -1, best, k, kth)
                right += 1
        # strictly closer than eps: within nextafter(eps, 0) (for eps = 0, the exact duplicates)
        radius = np.nextafter(kth, 0.0)
        n_x = _last_within_above(xs, i, num_samples, x0, radius) - _first_within_below(xs, 0, i, x0, radius)
        p = rank[b, order[a, i]]
        n_y = _last_within_above(ysorted, p, num_samples, y0, radius) - _first_within_below(ysorted, 0, p, y0, radius)
        total += psi[n_x] + psi[n_y]  # psi[n] = digamma(n + 1); n excludes the sample itself
    return total / num_samples


@numba.njit(cache=True, parallel=True, nogil=True)
def ksg_pair_terms(
    sorted_values: np.ndarray, order: np.ndarray, rank: np.ndarray, rows: np.ndarray, cols: np.ndarray,
    k: int, width: int, psi: np.ndarray, num_chunks: int, out: np.ndarray,
) -> None:  # fmt: skip
    """``out[q] = mean_s(psi(n_x(s) + 1) + psi(n_y(s) + 1))`` for each pair ``(rows[q], cols[q])``.

    ``sorted_values [N, S]`` holds each neuron's values ascending, ``order`` / ``rank`` the permutation to
    that order and its inverse, ``psi[n] = digamma(n + 1)``; the pairs are cut into ``num_chunks``
    contiguous chunks run in parallel on ``numba.get_num_threads()`` threads.
    """
    num_samples = sorted_values.shape[1]
    num_pairs = rows.shape[0]
    num_chunks = max(1, min(num_pairs, num_chunks))
    for c in numba.prange(num_chunks):  # contiguous chunks of pairs, one scratch space each
        strip_y = np.empty(num_samples, dtype=np.float64)
        strip_x = np.empty(num_samples, dtype=np.float64)
        slot = np.empty(num_samples, dtype=np.int64)
        best = np.empty(k, dtype=np.float64)
        for q in range(c * num_pairs // num_chunks, (c + 1) * num_pairs // num_chunks):
            out[q] = _pair(sorted_values, order, rank, rows[q], cols[q], k, width, psi, strip_y, strip_x, slot, best)
