"""Kraskov-Stoegbauer-Grassberger (KSG) k-nearest-neighbour mutual information of all neuron pairs.

The estimator of the paper's MI numbers (algorithm 1 of Kraskov et al. 2004, max-norm, ``k = 3``,
not clipped, not normalised), computed offline on a whole ``[S, N]`` activation matrix. For a pair
``(X, Y)`` and every sample ``s``:

* ``eps_s`` is the max-norm distance ``max(|x_t - x_s|, |y_t - y_s|)`` to the ``k``-th nearest
  other sample ``t`` in the joint space;
* ``n_x(s)``, ``n_y(s)`` count the other samples strictly closer than ``eps_s`` in each neuron;
* ``I = psi(k) + psi(S) - mean_s(psi(n_x(s) + 1) + psi(n_y(s) + 1))`` nats.

How it is batched over pairs (no Python loop over pairs; loops run over chunks and search rounds):

* **k-th neighbour distance, exact**: the pair's samples are cut into strips of ``0.7 sqrt(k S)``
  consecutive samples in ``x`` order (never splitting equal ``x`` values) and each strip is sorted
  by ``y`` (equal ``y`` by ``x``). The candidates of a sample are the ``m`` samples just below and
  just above its ``y`` in its own strip and in the ``h`` strips on either side (``h = 1``, ``m = 4``
  at first): 24 distances instead of ``S``. The ``k``-th smallest is exact when it does not
  exceed a lower bound on the distance of every sample left out (the ``x`` gap to the strips beyond,
  and in each strip the distance of the first sample beyond the window, which sorting makes a
  bound). Samples that fail are retried with ``h`` or ``m`` doubled, in the end against all
  samples, so the result never depends on the search parameters.
* **counts**: ``torch.searchsorted`` on each neuron's sorted values, plus a check that repeats the
  comparison on the floating-point distances themselves, so the counts are those of a
  distance-based implementation (scikit-learn's ``KDTree``) bit for bit.

All arithmetic is float64; memory is bounded by chunking (``max_chunk_elements``). Plain torch: the
same code runs on CPU and CUDA. On CPU, when Numba is installed, ``backend="auto"`` uses the compiled
kernel of `lightning_infomem.functional._kernels.ksg` instead (the same search and counting rules,
one pair per loop iteration, parallel over pairs): about 10x (one thread) to 19x-20x (two) the
authors' per-pair function, where this code is 2.6x to 3.3x (docs/benchmarks.md), with the same counts.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from lightning_infomem.checks import check_float, check_int, check_optional_int
from lightning_infomem.functional._kernels.compiled import CompiledKernel
from lightning_infomem.functional.binning import check_activations

__all__ = ["ksg_mutual_information"]

_STRIP_WIDTH = 0.7  # strips hold about _STRIP_WIDTH * sqrt(k S) samples
_FIRST_HALF_WINDOW = 4  # m of the first round: candidates on either side of the sample's y, per strip
_CPU_CHUNK_ELEMENTS = 2**19  # CPU: a few MiB per temporary; much larger blocks are slower (page faults)
_DEVICE_CHUNK_ELEMENTS = 2**24  # accelerators: large blocks amortise kernel launches


_KERNEL = CompiledKernel("lightning_infomem.functional._kernels.ksg", "ksg_pair_terms")
_COMPILED_STRIP_WIDTH = 1.2  # compiled kernel: strips of about this * sqrt(k S) samples (0.7 and 2.0: 5 % slower)


def compiled_kernel_available() -> bool:
    """Whether the compiled CPU backend can run: Numba importable (it is imported on the first call)."""
    return _KERNEL.available()


def _pair_terms_compiled(x_all: Tensor, rows: Tensor, cols: Tensor, k: int) -> Tensor:
    """``mean_s(psi(n_x + 1) + psi(n_y + 1))`` of each pair by the compiled kernel (see `CompiledKernel.run_tasks`)."""
    num_neurons, num_samples = x_all.shape
    values = x_all.numpy()
    order = np.argsort(values, axis=1, kind="stable")
    sorted_values = np.ascontiguousarray(np.take_along_axis(values, order, axis=1))
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.broadcast_to(np.arange(num_samples), order.shape), axis=1)
    psi = torch.special.digamma(torch.arange(1, num_samples + 1, dtype=torch.float64)).numpy()
    out = np.empty(rows.numel(), dtype=np.float64)
    width = max(k + 1, min(num_samples, round(_COMPILED_STRIP_WIDTH * math.sqrt(k * num_samples))))
    order = np.ascontiguousarray(order)
    pairs = (rows.numpy(), cols.numpy())
    _KERNEL.run_tasks(rows.numel(), sorted_values, order, rank, *pairs, int(k), width, psi, out, chunks_per_thread=8)
    return torch.from_numpy(out)


def _check_args(
    activations: Tensor, k: int, noise: float, max_chunk_elements: Optional[int]
) -> tuple[int, float, Optional[int]]:
    check_activations(activations)
    k = check_int(k, "k", minimum=1)
    if k >= activations.shape[0]:
        raise ValueError(
            f"k must be smaller than the number of samples S (every sample needs k other samples), "
            f"received k={k} for activations of shape {list(activations.shape)}"
        )
    noise = check_float(noise, "noise", minimum=0.0)
    max_chunk_elements = check_optional_int(max_chunk_elements, "max_chunk_elements", minimum=1)
    if activations.device.type == "mps":
        raise ValueError("ksg_mutual_information computes in float64, which MPS lacks; pass activations.cpu()")
    num_bad = int((~torch.isfinite(activations)).sum())
    if num_bad:
        raise ValueError(
            f"activations must be finite, received {num_bad} non-finite value(s) (NaN or +-Inf) in activations "
            f"of shape {list(activations.shape)}. Dropping samples pair by pair would give every pair its own S; "
            "filter the samples first, e.g. activations[torch.isfinite(activations).all(dim=1)]"
        )
    return k, noise, max_chunk_elements


def _prepare(activations: Tensor, standardize: bool, noise: float, generator: Optional[torch.Generator]) -> Tensor:
    """``[N, S]`` float64 copy of the activations, optionally scaled to unit variance and jittered."""
    x = activations.detach().to(torch.float64).T.contiguous()
    varying = x.amax(dim=1, keepdim=True) > x.amin(dim=1, keepdim=True)
    if standardize:
        std = x.std(dim=1, correction=0, keepdim=True)
        x = x / torch.where(std > 0, std, 1.0)
    if noise > 0:
        scale = noise * x.abs().mean(dim=1, keepdim=True).clamp_min(1.0)
        jitter = torch.randn(
            x.shape, generator=generator, dtype=x.dtype, device=x.device if generator is None else generator.device
        )
        x = x + torch.where(varying, scale, 0.0) * jitter.to(x.device)  # constant neurons stay constant
    return x


def _strip_layout(sorted_x: Tensor, width: int) -> tuple[Tensor, Tensor, Tensor]:
    """Cut each neuron's sorted order into strips of about ``width`` samples, never inside a run of equal values.

    Returns ``(strip_of_position [N, S], starts [N, T + 1], num_strips [N])``: strip ``t`` of neuron ``n``
    covers the sorted positions ``starts[n, t] .. starts[n, t + 1] - 1``; ``starts`` is padded with ``S``.
    """
    num_neurons, num_samples = sorted_x.shape
    device = sorted_x.device
    is_start = torch.zeros(num_neurons, num_samples + 1, dtype=torch.bool, device=device)
    is_start[:, 0] = True
    if width < num_samples:
        cuts = torch.arange(width, num_samples, width, device=device)
        current = sorted_x[:, cuts].contiguous()
        inside_run = sorted_x[:, cuts - 1] == current  # such a cut moves to the end of the run
        snapped = torch.where(inside_run, torch.searchsorted(sorted_x, current, right=True), cuts)
        is_start.scatter_(1, snapped, True)
    is_start = is_start[:, :num_samples]
    strip_of_position = is_start.cumsum(1) - 1
    num_strips = is_start.sum(1)
    starts = torch.full((num_neurons, int(num_strips.max()) + 1), num_samples, dtype=torch.int64, device=device)
    neuron, position = torch.nonzero(is_start, as_tuple=True)
    starts[neuron, strip_of_position[neuron, position]] = position
    return strip_of_position, starts, num_strips


def _kth_smallest(blocks: list[Tensor], kth: int) -> Tensor:
    """``kth``-smallest value (1-based) of each column across ``[L_i, F]`` blocks: ``[F]``."""
    length = sum(block.shape[0] for block in blocks)
    if kth * length > 512:
        values = torch.cat(blocks)
        return torch.topk(values, kth, dim=0, largest=False, sorted=True).values[kth - 1]
    # short columns: an insertion network of elementwise min / max is several times faster than topk
    smallest = [torch.full_like(blocks[0][0], math.inf) for _ in range(kth)]
    for block in blocks:
        for value in block:
            for i in range(kth - 1):
                smallest[i], value = torch.minimum(smallest[i], value), torch.maximum(smallest[i], value)
            torch.minimum(smallest[-1], value, out=smallest[-1])
    return smallest[-1]


class _Pairs:
    """Flattened ``[C, S]`` tensors of a chunk of pairs ``(a, b)``, positions in the pair's order.

    The pair's order: strips of ``x`` (neuron ``a``), within a strip by ``y`` (neuron ``b``), equal ``y``
    by ``x``. ``keys`` (strip * S + rank of ``(y, x)``, plus ``row * S**2``) increase along the whole chunk.
    """

    def __init__(self, **tensors: Tensor) -> None:
        self.__dict__.update(tensors)
        self.num_samples = tensors["x"].shape[1]
        self.last_strip = tensors["starts"].shape[1] - 1
        for name in ("x", "y", "y_rank", "strip", "keys", "gap_below", "gap_above", "sorted_x", "starts"):
            setattr(self, name, tensors[name].reshape(-1))


def _take(values: Tensor, index: Tensor) -> Tensor:
    """``values[index]`` for a 1-D ``values`` and an index of any shape (``index_select`` is the fastest gather)."""
    return values.index_select(0, index.reshape(-1)).view(index.shape)


def _strip_round(
    p: _Pairs, rows: Tensor, pos: Tensor, k: int, h: int, m: int, full_rows: Optional[tuple[int, int]] = None
) -> tuple[Tensor, Tensor, Tensor]:
    """k-th neighbour distance of the samples ``(rows, pos)`` among their strip-window candidates.

    ``full_rows=(r0, r1)`` says that the samples are all positions of the rows ``r0 .. r1 - 1``, in order,
    which allows a faster row-by-row ``searchsorted``. Returns ``(eps, x_exact, y_exact)``: ``x_exact``
    says no sample beyond the ``h`` strips on either side, ``y_exact`` no sample of those strips outside
    the candidate windows, can be closer.
    """
    num_samples, inf = p.num_samples, math.inf
    base = rows * num_samples
    flat = base + pos
    x0, y0 = _take(p.x, flat), _take(p.y, flat)
    strip, y_rank = _take(p.strip, flat), _take(p.y_rank, flat)
    gap_below, gap_above = _take(p.gap_below, flat), _take(p.gap_above, flat)
    neuron = _take(p.neuron_a, rows)
    starts_row = neuron * (p.last_strip + 1)
    num_strips = _take(p.num_strips, neuron)
    offsets = torch.arange(-m, m, device=rows.device).unsqueeze(1)
    blocks, y_bound = [], torch.full_like(x0, inf)
    for d in range(-h, h + 1):
        t = strip + d
        valid = (t >= 0) & (t < num_strips)
        t = t.clamp(0, p.last_strip)
        start = _take(p.starts, starts_row + t).masked_fill_(~valid, num_samples)  # empty when not a strip
        end = _take(p.starts, starts_row + (t + 1).clamp(max=p.last_strip))
        # where the sample's (y, x) would go in strip t (its own position in its own strip)
        if d == 0:
            q = pos
        elif full_rows is not None:  # search each row's keys: much more cache-friendly than the whole chunk
            local_keys = p.local_keys[full_rows[0] : full_rows[1]]
            q = torch.searchsorted(local_keys, (t * num_samples + y_rank).view(local_keys.shape)).view(-1)
        else:
            q = torch.searchsorted(p.keys, (base + t) * num_samples + y_rank) - base
        cand = q + offsets  # [2m, F]
        index = base + cand.clamp(0, num_samples - 1)
        dist = torch.maximum((_take(p.x, index) - x0).abs_(), (_take(p.y, index) - y0).abs_())
        blocks.append(dist.masked_fill_((cand < start) | (cand >= end), inf))
        # Every sample of strip t beyond the window is at least as far as this bound: beyond the first
        # one outside (edge), y only moves away from y0, or, while y equals y0, x only moves away from x0.
        for edge, gap in ((q - m - 1, gap_below), (q + m, gap_above)):
            index = base + edge.clamp(0, num_samples - 1)
            dy, dx = (_take(p.y, index) - y0).abs_(), (_take(p.x, index) - x0).abs_()
            bound = torch.where(dy > 0, dy, torch.minimum(dx, gap))
            y_bound = torch.minimum(y_bound, bound.masked_fill_((edge < start) | (edge >= end), inf))
    # the sample itself is a candidate at distance 0: the k-th neighbour is the (k+1)-th smallest
    eps = _kth_smallest(blocks, k + 1)
    low, high = strip - h, strip + h + 1  # first strip left out on either side
    x_low = _take(p.sorted_x, base + (_take(p.starts, starts_row + low.clamp(0, p.last_strip)) - 1).clamp(min=0))
    x_high = _take(
        p.sorted_x, base + _take(p.starts, starts_row + high.clamp(max=p.last_strip)).clamp(max=num_samples - 1)
    )
    x_bound = torch.minimum(
        torch.where(low > 0, (x0 - x_low).abs_(), inf), torch.where(high < num_strips, (x_high - x0).abs_(), inf)
    )
    return eps, eps <= x_bound, eps <= y_bound


def _brute_force(p: _Pairs, rows: Tensor, pos: Tensor, k: int, budget: int) -> Tensor:
    """k-th neighbour distance of the samples ``(rows, pos)`` against all samples of their pair."""
    num_samples = p.num_samples
    x, y = p.x.view(-1, num_samples), p.y.view(-1, num_samples)
    out = torch.empty(rows.numel(), dtype=x.dtype, device=x.device)
    step = max(1, budget // num_samples)
    for s in range(0, rows.numel(), step):
        r, q = rows[s : s + step], pos[s : s + step]
        dist = torch.maximum((x[r] - x[r, q].unsqueeze(1)).abs_(), (y[r] - y[r, q].unsqueeze(1)).abs_())
        out[s : s + step] = torch.topk(dist, k + 1, dim=1, largest=False, sorted=True).values[:, k]
    return out


def _knn_radius(p: _Pairs, num_pairs: int, k: int, budget: int) -> Tensor:
    """Exact max-norm distance of every sample of every pair to its k-th nearest other sample: ``[C, S]``."""
    num_samples = p.num_samples
    device = p.x.device
    eps = torch.empty(num_pairs * num_samples, dtype=p.x.dtype, device=device)
    entries = torch.arange(num_pairs * num_samples, device=device)
    queue = {(1, max(_FIRST_HALF_WINDOW, (k + 1) // 2)): [entries]}
    while queue:
        h, m = min(queue, key=lambda hm: (2 * hm[0] + 1) * hm[1])
        entries = torch.cat(queue.pop((h, m)))
        rows, pos = entries // num_samples, entries % num_samples
        if (2 * h + 1) * 2 * m >= num_samples:  # as many candidates as samples: compare with all
            eps[entries] = _brute_force(p, rows, pos, k, budget)
            continue
        step = max(1, budget // ((2 * h + 1) * 2 * m))
        first_round = entries.numel() == num_pairs * num_samples and step >= num_samples
        if first_round:  # whole rows per block (all samples, in order)
            step = max(1, step // num_samples) * num_samples
        for s in range(0, entries.numel(), step):
            full_rows = (s // num_samples, min(s + step, entries.numel()) // num_samples) if first_round else None
            values, x_exact, y_exact = _strip_round(p, rows[s : s + step], pos[s : s + step], k, h, m, full_rows)
            block = entries[s : s + step]
            eps[block] = values
            for grow_h, grow_m, failed in (
                (True, False, ~x_exact & y_exact),
                (False, True, x_exact & ~y_exact),
                (True, True, ~x_exact & ~y_exact),
            ):
                if bool(failed.any()):
                    queue.setdefault((2 * h if grow_h else h, 2 * m if grow_m else m), []).append(block[failed])
    return eps.view(num_pairs, num_samples)


def _count_within(sorted_values: Tensor, radius: Tensor, run_start: Tensor, run_end: Tensor) -> Tensor:
    """Number of entries of each sorted row at distance ``<= radius[i]`` of entry ``i`` itself (itself included).

    All ``[C, S]``: ``sorted_values`` ascending, ``radius`` per entry, ``run_start`` / ``run_end`` the
    first position and one past the last position of the run of values equal to each entry. The distance
    is the floating-point ``|v - c|``; ``searchsorted`` on ``c +- radius`` finds the boundaries up to
    rounding, which corrective steps (one run of equal values at a time) remove.
    """
    num_samples = sorted_values.shape[1]
    centers = sorted_values

    def at(index: Tensor) -> Tensor:
        return sorted_values.gather(1, index.clamp(0, num_samples - 1))

    def run_of(runs: Tensor, index: Tensor) -> Tensor:
        return runs.gather(1, index.clamp(0, num_samples - 1))

    hi = torch.searchsorted(sorted_values, centers + radius, right=True)  # first index beyond the radius
    while True:
        down = (hi > 0) & ((at(hi - 1) - centers) > radius)
        up = ~down & (hi < num_samples) & ((at(hi) - centers) <= radius)
        if not bool((down | up).any()):
            break
        hi = torch.where(down, run_of(run_start, hi - 1), torch.where(up, run_of(run_end, hi), hi))
    lo = torch.searchsorted(sorted_values, centers - radius, right=False)  # first index within the radius
    while True:
        down = (lo > 0) & ((centers - at(lo - 1)) <= radius)
        up = ~down & (lo < num_samples) & ((centers - at(lo)) > radius)
        if not bool((down | up).any()):
            break
        lo = torch.where(down, run_of(run_start, lo - 1), torch.where(up, run_of(run_end, lo), lo))
    return hi - lo


def ksg_mutual_information(
    activations: Tensor,
    k: int = 3,
    *,
    standardize: bool = False,
    noise: float = 0.0,
    generator: Optional[torch.Generator] = None,
    max_chunk_elements: Optional[int] = None,
    backend: str = "auto",
) -> Tensor:
    """KSG (algorithm 1, max-norm) mutual information of every pair of neurons: ``[S, N]`` -> ``[N, N]`` nats.

    The estimator of the paper's MI numbers and of the authors' code: for each sample, ``eps`` is the
    max-norm distance to its ``k``-th nearest neighbour in the joint space of the two neurons,
    ``n_x`` and ``n_y`` count the other samples strictly closer than ``eps`` in each neuron, and
    ``I = psi(k) + psi(S) - mean(psi(n_x + 1) + psi(n_y + 1))``. Not clipped (independent neurons
    give small values of either sign) and not normalised. Exact (no approximate neighbour search),
    in float64, batched over pairs; the result is symmetric.

    Args:
        activations: ``[S, N]`` floating tensor, all values finite.
        k: number of neighbours, ``1 <= k < S``. The paper uses 3.
        standardize: divide each neuron by its standard deviation first, as scikit-learn's
            ``mutual_info_regression`` does. The max-norm makes finite-sample estimates depend on the
            neurons' relative scales; the authors' code does not standardise (default).
        noise: add Gaussian jitter of standard deviation ``noise * max(1, mean|x|)`` to each
            non-constant neuron, after standardising; scikit-learn uses ``1e-10`` to break ties.
            Default ``0``: plain KSG on the data, like the authors' code.
        generator: random generator for the jitter.
        max_chunk_elements: bound on the elements of the largest temporary tensor (float64 / int64),
            or ``S`` if larger (one pair at a time at least); peak memory is a small multiple of it plus
            ten ``[N, S]`` 8-byte tensors. Default ``2**19`` on
            CPU (a few MiB per temporary: larger blocks are slower there), ``2**24`` on other devices.
            Used by the torch backend only.
        backend: ``"compiled"`` (CPU only: a per-pair scan compiled with Numba, parallel over pairs on
            torch's intra-op thread count; several times faster than ``"torch"``, needs ``pip install
            numba``), ``"torch"`` (batched tensor code, CPU or CUDA) or ``"auto"``: ``"compiled"`` on CPU
            when Numba is installed, ``"torch"`` otherwise. Both give the same counts, hence the same
            values up to the order of a float64 mean (1e-12).

    Returns:
        Symmetric ``[N, N]`` float64 tensor on the device of ``activations`` (CPU or CUDA; not MPS,
        which has no float64).

    Diagonal:
        ``I(X; X)`` by the same formula, as in the authors' code: ``psi(S) - psi(k)`` for a neuron
        without repeated values (about 6.7 nats at ``S = 2000, k = 3``). It is not an MI between two
        neurons: leave it out of means (`mean_off_diagonal`) and
        out of density fits.

    Ties (repeated values):
        Handled exactly as in scikit-learn's and the authors' code, which count the samples at
        distance ``<= nextafter(eps, 0)``: strictly closer than ``eps``, and when ``eps = 0`` (a
        sample with ``k`` or more exact duplicates in both neurons) the exact duplicates. Post-ReLU
        activations with many exact zeros produce many such samples and huge counts, so the estimate
        is finite but strongly negative (the failure described in METHODS.md). Pass a tiny ``noise``
        (``standardize=True, noise=1e-10`` is scikit-learn's recipe) to break ties, or use the
        histogram estimator `pairwise_mutual_information` for
        such layers.

    Constant neurons:
        Every entry of a constant neuron's row and column, diagonal included, is exactly 0: a
        constant shares no information. (Plain KSG gives about 0 for a constant and a varying
        neuron, but ``psi(k) - psi(S)`` for two constant ones.)

    Non-finite values:
        Raise a ``ValueError`` that reports their number: dropping samples pair by pair would give
        each pair its own ``S``. Filter samples first, e.g.
        ``activations[torch.isfinite(activations).all(dim=1)]``.

    Example:
        >>> import torch
        >>> from lightning_infomem.functional import mean_off_diagonal
        >>> g = torch.Generator().manual_seed(0)
        >>> x, e, z = torch.randn(3, 2000, 1, generator=g)
        >>> mi = ksg_mutual_information(torch.cat([x, x + e, z], dim=1), k=3)  # Gaussian pair, independent 3rd
        >>> mi.round(decimals=2)  # closed form of the pair: -log(1 - rho^2) / 2 = 0.35 (0.40 for this sample)
        tensor([[ 6.6800,  0.4200, -0.0100],
                [ 0.4200,  6.6800,  0.0000],
                [-0.0100,  0.0000,  6.6800]], dtype=torch.float64)
        >>> round(float(mean_off_diagonal(mi)), 3)  # the diagonal, psi(S) - psi(k), is left out
        0.136
    """
    k, noise, max_chunk_elements = _check_args(activations, k, noise, max_chunk_elements)
    num_samples, num_neurons = activations.shape
    device = activations.device
    if backend not in ("auto", "torch", "compiled"):
        raise ValueError(f"backend must be 'auto', 'torch' or 'compiled', received {backend!r}")
    if backend == "compiled" and device.type != "cpu":
        raise ValueError(f"backend='compiled' runs on CPU only, received activations on {device}; use 'torch'")
    if backend == "compiled":
        _KERNEL.require("backend='compiled' (or use backend='torch')")
    compiled = device.type == "cpu" and backend != "torch" and (backend == "compiled" or compiled_kernel_available())
    if max_chunk_elements is None:
        max_chunk_elements = _CPU_CHUNK_ELEMENTS if device.type == "cpu" else _DEVICE_CHUNK_ELEMENTS
    if num_neurons == 0:
        return torch.zeros(0, 0, dtype=torch.float64, device=device)
    x_all = _prepare(activations, standardize, noise, generator)  # [N, S] float64

    psi_table = torch.special.digamma(torch.arange(1, num_samples + 1, dtype=torch.float64, device=device))
    psi_k = float(torch.special.digamma(torch.tensor(float(k), dtype=torch.float64)))
    offset = psi_k + float(psi_table[-1])  # psi(k) + psi(S); psi_table[n] = psi(n + 1)

    rows, cols = torch.triu_indices(num_neurons, num_neurons, offset=0, device=device)  # pairs i <= j
    # a constant neuron (e.g. a dead ReLU) shares nothing: its pairs stay 0 and are not computed
    constant = x_all.amin(dim=1) == x_all.amax(dim=1)
    varying = ~(constant[rows] | constant[cols])
    rows, cols = rows[varying], cols[varying]
    if compiled:
        values = offset - _pair_terms_compiled(x_all, rows, cols, k) if rows.numel() else torch.zeros(0).double()
        return _symmetric(num_neurons, rows, cols, values)

    # per-neuron tensors [N, S], shared by all pairs
    sorted_x, order = torch.sort(x_all, dim=1, stable=True)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(num_samples, device=device).expand_as(order))
    del order
    below = torch.searchsorted(sorted_x, x_all, right=False)  # number of smaller values
    above = torch.searchsorted(sorted_x, x_all, right=True)  # number of smaller or equal values
    padded = torch.nn.functional.pad(sorted_x, (1, 1), value=math.inf)
    gap_below = (x_all - padded.gather(1, below)).abs_()  # distance to the next smaller value (inf: none)
    gap_above = (padded.gather(1, above + 1) - x_all).abs_()
    del padded
    has_ties = (above - below > 1).any(dim=1)
    del above
    run_start = torch.searchsorted(sorted_x, sorted_x, right=False)  # per sorted position: its run of equal values
    run_end = torch.searchsorted(sorted_x, sorted_x, right=True)
    width = max(k + 1, round(_STRIP_WIDTH * math.sqrt(k * num_samples)))
    strip_of_position, starts, num_strips = _strip_layout(sorted_x, width)
    strip_of_sample = strip_of_position.gather(1, rank)

    values = torch.zeros(rows.numel(), dtype=torch.float64, device=device)
    pairs_per_chunk = max(1, max_chunk_elements // num_samples)  # [C, S] tensors within the budget
    for first in range(0, rows.numel(), pairs_per_chunk):
        a, b = rows[first : first + pairs_per_chunk], cols[first : first + pairs_per_chunk]
        num_pairs = a.numel()
        # rank of (y, x) among the pair's samples: rank of y, ties in y broken by x
        y_rank = rank[b]
        tied = torch.nonzero(has_ties[b]).squeeze(1)
        if tied.numel():
            by_y_then_x = torch.argsort(below[b[tied]] * num_samples + rank[a[tied]], dim=1)
            y_rank[tied] = torch.empty_like(by_y_then_x).scatter_(
                1, by_y_then_x, torch.arange(num_samples, device=device).expand_as(by_y_then_x)
            )
        keys, perm = torch.sort(strip_of_sample[a] * num_samples + y_rank, dim=1)
        x_sorted, y_sorted = sorted_x[a], sorted_x[b]
        row_offset = torch.arange(num_pairs, device=device).unsqueeze(1) * num_samples * num_samples
        pairs = _Pairs(
            x=x_all[a].gather(1, perm),
            y=x_all[b].gather(1, perm),
            y_rank=y_rank.gather(1, perm),
            strip=strip_of_position[a],
            keys=keys + row_offset,
            local_keys=keys,
            gap_below=gap_below[b].gather(1, perm),
            gap_above=gap_above[b].gather(1, perm),
            sorted_x=x_sorted,
            neuron_a=a,
            starts=starts,
            num_strips=num_strips,
        )
        eps = _knn_radius(pairs, num_pairs, k, max_chunk_elements)
        # strictly closer than eps, i.e. within nextafter(eps, 0); for eps = 0 the exact duplicates
        radius = torch.nextafter(eps, torch.zeros_like(eps))
        # count in each neuron's sorted order, where the centers are sorted: searchsorted is faster
        radius_x = torch.empty_like(radius).scatter_(1, rank[a].gather(1, perm), radius)
        radius_y = torch.empty_like(radius).scatter_(1, rank[b].gather(1, perm), radius)
        n_x = _count_within(x_sorted, radius_x, run_start[a], run_end[a]) - 1
        n_y = _count_within(y_sorted, radius_y, run_start[b], run_end[b]) - 1
        values[first : first + num_pairs] = offset - (psi_table[n_x] + psi_table[n_y]).mean(dim=1)

    return _symmetric(num_neurons, rows, cols, values)


def _symmetric(num_neurons: int, rows: Tensor, cols: Tensor, values: Tensor) -> Tensor:
    """The symmetric ``[N, N]`` matrix holding ``values`` at ``(rows, cols)`` and ``(cols, rows)``, 0 elsewhere."""
    matrix = torch.zeros(num_neurons, num_neurons, dtype=torch.float64, device=rows.device)
    matrix[rows, cols] = values
    matrix[cols, rows] = values
    return matrix
