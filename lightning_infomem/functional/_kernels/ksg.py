"""The KSG estimator's CPU kernel, compiled with Numba when it is installed (``pip install numba``).

One pass per pair (ranges of pairs on several threads), with the per-neuron sorted orders shared by all pairs:

* **k-th neighbour distance**: the samples are cut into strips of consecutive ranks of the first
  neuron, each strip sorted by the second neuron's values (built in one pass by dealing the samples
  out in the second neuron's order). From each sample, its own strip and then the strips to its left
  and right are scanned outwards in y from the sample's y, keeping the ``k`` smallest max-norm
  distances ``max(|x_t - x_s|, |y_t - y_s|)``; a strip's scan stops when ``|dy|`` reaches the ``k``-th
  smallest, and no further strip is visited once its x gap does. Exact: no approximate search.
* **counts** ``n_x``, ``n_y``: binary searches in each neuron's sorted values on the floating-point
  distance ``|v_t - v_s| <= nextafter(eps, 0)`` itself (monotone along a sorted array), so the counts
  are those of a distance-based implementation (scikit-learn's ``KDTree``) bit for bit. The four
  searches of a sample run in lockstep over the whole array with conditional moves (`_pick`).

This module imports Numba; `lightning_infomem.functional.ksg` imports it only when the compiled
backend is used. Expected work per pair is ``O(S sqrt(k S))`` distance evaluations (``O(S^2)`` in the worst case of long
runs of equal values in the first neuron). `ksg_mutual_information` uses this kernel on CPU when
Numba is importable and its torch implementation otherwise (and on GPUs).
"""

from __future__ import annotations

import math

import numpy as np
from numba import types
from numba.extending import intrinsic

from lightning_infomem.functional._kernels.jit import njit

__all__ = ["ksg_pair_terms"]


@intrinsic
def _pick(typingctx, condition, if_true, if_false):  # type: ignore[no-untyped-def]
    """``if_true if condition else if_false`` as a conditional move: an LLVM ``select`` marked unpredictable.

    Without the mark, LLVM's x86 back end turns the selects of a binary search into branches, which
    mispredict at every other step; as conditional moves, the four searches of a sample overlap (the
    kernel became 1.6x faster, see docs/benchmarks.md).
    """
    if not isinstance(condition, types.Boolean) or if_true != if_false:
        return None

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        chosen = builder.select(*args)
        chosen.set_metadata("unpredictable", builder.module.add_metadata([]))
        return chosen

    return if_true(condition, if_true, if_false), codegen


@njit(nogil=True, inline="always")
def _neighbour_counts(xs: np.ndarray, x0: float, ys: np.ndarray, y0: float, radius: float) -> tuple[int, int]:
    """``(n_x, n_y)``: how many other values of the ascending ``xs`` (``ys``) lie within ``radius`` of ``x0`` (``y0``).

    "Within" is the floating-point distance ``|v - c| <= radius`` itself (as a distance-based implementation
    computes it). Over the whole array, ``v - c <= radius`` holds on a prefix and ``c - v > radius`` on a
    shorter one; the four binary searches for their ends run in lockstep with a fixed number of halvings
    and conditional moves, so they overlap and nothing mispredicts.
    """
    above_x = below_x = above_y = below_y = 0
    size = xs.shape[0]
    while size > 1:
        half = size // 2
        above_x = _pick(xs[above_x + half] - x0 <= radius, above_x + half, above_x)
        below_x = _pick(x0 - xs[below_x + half] > radius, below_x + half, below_x)
        above_y = _pick(ys[above_y + half] - y0 <= radius, above_y + half, above_y)
        below_y = _pick(y0 - ys[below_y + half] > radius, below_y + half, below_y)
        size -= half
    # above_*: the last index within (the value itself is); below_*: the last index beyond, or 0 if none is
    first_x = below_x + (1 if x0 - xs[below_x] > radius else 0)
    first_y = below_y + (1 if y0 - ys[below_y] > radius else 0)
    return above_x - first_x, above_y - first_y


@njit(nogil=True, inline="always")
def _insert(best: np.ndarray, k: int, d: float) -> float:
    """Insert ``d`` (smaller than ``best[k - 1]``) into the ascending ``best``; the new ``k``-th smallest."""
    m = k - 1
    while m > 0 and best[m - 1] > d:
        best[m] = best[m - 1]
        m -= 1
    best[m] = d
    return best[k - 1]


@njit(nogil=True, inline="always")
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
        kth = _consider(strip_x[j], x0, dy, j == skip, best, k, kth)
        j -= 1
    j = start
    while j < last:
        dy = strip_y[j] - y0
        if dy >= kth:
            break
        kth = _consider(strip_x[j], x0, dy, j == skip, best, k, kth)
        j += 1
    return kth


@njit(nogil=True, inline="always")
def _consider(x: float, x0: float, dy: float, is_self: bool, best: np.ndarray, k: int, kth: float) -> float:
    """Keep the max-norm distance ``max(|x - x0|, dy)`` among the ``k`` smallest (not for the sample itself)."""
    if is_self:
        return kth
    dx = abs(x - x0)
    d = dx if dx > dy else dy
    return _insert(best, k, d) if d < kth else kth


@njit(nogil=True, inline="always")
def _position_in(strip_y: np.ndarray, first: int, last: int, y0: float) -> int:
    """First position of ``[first, last)`` whose y is ``>= y0`` (``last`` if none)."""
    base, size = first, last - first
    if size == 0:
        return first
    while size > 1:
        half = size // 2
        base = _pick(strip_y[base + half] < y0, base + half, base)
        size -= half
    return base + (1 if strip_y[base] < y0 else 0)


@njit(nogil=True)
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
    fill: np.ndarray,
    best: np.ndarray,
) -> float:
    """``mean_s(psi(n_x + 1) + psi(n_y + 1))`` of the pair ``(a, b)`` (see the module docs)."""
    num_samples = sorted_values.shape[1]
    xs = sorted_values[a]
    ysorted = sorted_values[b]
    num_strips = (num_samples + width - 1) // width
    # strips of ``width`` consecutive samples in x order, each sorted by y: strip_y / strip_x hold the values
    # in that layout, slot[i] the layout position of the i-th sample in x order. The samples are dealt out
    # in y order into their strips, which therefore come out sorted (no sort needed).
    fill[:num_strips] = 0
    by_y, x_rank = order[b], rank[a]
    for q in range(num_samples):
        i = x_rank[by_y[q]]
        t = i // width
        position = t * width + fill[t]
        fill[t] += 1
        strip_y[position] = ysorted[q]
        strip_x[position] = xs[i]
        slot[i] = position
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
        n_x, n_y = _neighbour_counts(xs, x0, ysorted, y0, radius)
        total += psi[n_x] + psi[n_y]  # psi[n] = digamma(n + 1); n excludes the sample itself
    return total / num_samples


@njit(nogil=True)
def ksg_pair_terms(
    sorted_values: np.ndarray, order: np.ndarray, rank: np.ndarray, rows: np.ndarray, cols: np.ndarray,
    k: int, width: int, psi: np.ndarray, out: np.ndarray, start: int, stop: int,
) -> None:  # fmt: skip
    """``out[q] = mean_s(psi(n_x(s) + 1) + psi(n_y(s) + 1))`` for the pairs ``(rows[q], cols[q])``, start <= q < stop.

    ``sorted_values [N, S]`` holds each neuron's values ascending, ``order`` / ``rank`` the permutation to
    that order and its inverse, ``psi[n] = digamma(n + 1)``. One thread; `CompiledKernel.run_tasks` runs
    ranges of pairs on several.
    """
    num_samples = sorted_values.shape[1]
    strip_y = np.empty(num_samples, dtype=np.float64)
    strip_x = np.empty(num_samples, dtype=np.float64)
    slot = np.empty(num_samples, dtype=np.int64)
    fill = np.empty(num_samples // width + 2, dtype=np.int64)
    best = np.empty(k, dtype=np.float64)
    for q in range(start, stop):
        out[q] = _pair(
            sorted_values, order, rank, rows[q], cols[q], k, width, psi,
            strip_y, strip_x, slot, fill, best,
        )  # fmt: skip
