"""Equal-width binning of neuron activations.

Every estimator in the package sees activations through `bin_indices`, so the binning rule
lives here and nowhere else: a value ``v`` falls in bin ``floor((v - low) / (high - low) * num_bins)``,
values outside ``[low, high]`` go to the edge bins (the maximum lands in the last bin, as in
``numpy.histogram``), and non-finite values get the index ``num_bins``, which every counting
function ignores. The arithmetic is float64 whatever the input's dtype, so no finite range or value
overflows it. A range is read off finite values only; with none (no samples, or only NaN and
+-Inf) it is undefined (NaN), and so is every estimate made from it.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from lightning_infomem.checks import check_float, check_int
from lightning_infomem.functional._kernels.compiled import CompiledKernel

ValueRange = Union[None, Tuple[float, float], Tuple[Tensor, Tensor], Sequence[float]]

__all__ = [
    "BinGrid",
    "ValueRange",
    "assign_bins",
    "CompiledGrid",
    "bin_grid",
    "bin_positions",
    "compiled_bin_and_count",
    "compiled_grid",
    "bin_indices",
    "calibrate_value_range",
    "check_value_range",
    "check_activations",
    "check_bin_indices",
    "binning_dtype",
    "check_num_bins",
    "grid_bin_indices",
    "resolve_value_range",
]


def check_activations(activations: Tensor, num_neurons: Optional[int] = None, name: str = "activations") -> Tensor:
    """Check that ``activations`` is a floating-point ``[S, N]`` tensor and return it.

    Raises:
        ValueError: if the shape is not ``[S, N]`` or ``N`` differs from ``num_neurons``.
        TypeError: if the input is not a floating-point tensor.
    """
    if not isinstance(activations, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape [S, N], received {type(activations).__name__}")
    expected = f"[S, {num_neurons}]" if num_neurons is not None else "[S, N]"
    if activations.ndim != 2:
        raise ValueError(
            f"{name} must have shape {expected} (samples x neurons), received shape {list(activations.shape)}; "
            "flatten or pool the extra dimensions first, e.g. x.flatten(1) or x.mean(dim=(2, 3))"
        )
    if num_neurons is not None and activations.shape[1] != num_neurons:
        raise ValueError(
            f"{name} must have shape {expected} (num_neurons={num_neurons}), received shape {list(activations.shape)}"
        )
    if not activations.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, received dtype {activations.dtype}")
    return activations


def binning_dtype(device: torch.device) -> torch.dtype:
    """Floating dtype of all binning arithmetic: float64 (float32 on MPS, which has no float64).

    float64 holds every finite float32, bfloat16 and float16 value exactly and its range exceeds
    theirs by far, so neither a range's width nor a value's offset from it can overflow or
    underflow for those inputs.
    """
    return torch.float32 if device.type == "mps" else torch.float64


def _finite_min_max(x: Tensor, dim: Optional[int]) -> Tuple[Tensor, Tensor]:
    """Minimum and maximum of the finite values (NaN where there is none)."""
    if dim is None:
        x = x.reshape(-1)
    if x.shape[0] == 0:
        shape = () if dim is None else x.shape[1:]
        nan = torch.full(shape, float("nan"), dtype=x.dtype, device=x.device)
        return nan, nan.clone()
    if x.device.type == "cpu":  # (elsewhere this test would be a host synchronisation)
        # the usual case, every value finite, in one pass: a NaN or an infinity reaches the minimum or maximum
        low, high = torch.aminmax(x, dim=0)
        if bool(torch.isfinite(low).all()) and bool(torch.isfinite(high).all()):
            return low, high
    finite = torch.isfinite(x)
    low = torch.where(finite, x, math.inf).amin(dim=0)
    high = torch.where(finite, x, -math.inf).amax(dim=0)
    empty = low > high  # no finite value at all
    return low.masked_fill(empty, math.nan), high.masked_fill(empty, math.nan)


def calibrate_value_range(
    activations: Tensor, per_neuron: bool = False, quantile: float = 0.0
) -> Tuple[Tensor, Tensor]:
    """Binning range read off a sample of activations, from its finite values only.

    Args:
        activations: ``[S, N]`` tensor.
        per_neuron: one range per neuron (``[N]`` tensors) instead of one global range (0-d tensors).
        quantile: ``0`` uses the minimum and maximum; ``q > 0`` uses the ``q`` and ``1 - q`` quantiles,
            so that a few outliers do not stretch every bin.

    Returns:
        ``(low, high)`` float64 tensors (float32 on MPS) on the input's device. Where there is no
        finite value to read a range from (no samples, or only NaN and +-Inf), both are NaN: such a
        range is undefined, and callers wait for finite samples rather than bin on a made-up range.

    Example:
        >>> import torch
        >>> low, high = calibrate_value_range(torch.tensor([[0.0, 1.0], [2.0, 5.0]]))
        >>> float(low), float(high)
        (0.0, 5.0)
        >>> calibrate_value_range(torch.full((3, 2), float("nan")))
        (tensor(nan, dtype=torch.float64), tensor(nan, dtype=torch.float64))
    """
    check_activations(activations)
    check_float(quantile, "quantile", minimum=0.0, maximum=0.5, exclusive_maximum=True)
    dtype = binning_dtype(activations.device)
    dim = 0 if per_neuron else None
    if quantile == 0.0 or activations.numel() == 0:
        # the minimum and maximum are exact in the input's own dtype: no float64 copy needed
        low, high = _finite_min_max(activations.detach(), dim)
        return low.to(dtype), high.to(dtype)
    x = activations.detach().to(dtype)
    x = torch.where(torch.isfinite(x), x, torch.nan)
    if not per_neuron:
        x = x.reshape(-1)
    limit = 2**24 if per_neuron is False else 2**24 // max(1, x.shape[1])
    if x.shape[0] > limit:  # torch.quantile has an input-size limit; a strided subsample is plenty
        step = -(-x.shape[0] // limit)
        x = x[::step]
    q = torch.tensor([quantile, 1.0 - quantile], dtype=x.dtype, device=x.device)
    bounds = torch.nanquantile(x, q, dim=0 if per_neuron else None)
    return bounds[0], bounds[1]


def resolve_value_range(activations: Tensor, value_range: ValueRange) -> Tuple[Tensor, Tensor]:
    """Turn a ``value_range`` argument into ``(low, high)`` tensors broadcastable against ``[S, N]``.

    ``None`` means one global range over all finite values of ``activations`` (the paper's binning);
    a pair of floats is a fixed range; a pair of ``[N]`` tensors gives one range per neuron.
    """
    dtype = binning_dtype(activations.device)
    if value_range is None:
        return calibrate_value_range(activations)
    return check_value_range(value_range, activations.shape[1], dtype, activations.device)


def check_value_range(
    value_range: Any, num_neurons: int, dtype: torch.dtype = torch.float64, device: Optional[torch.device] = None
) -> Tuple[Tensor, Tensor]:
    """A fixed ``value_range`` (a ``(low, high)`` pair of floats or of ``[num_neurons]`` tensors) as tensors.

    Raises ``ValueError`` naming what is wrong: not a pair, a bound of another shape, a bound that is not
    finite, or ``low > high``.

    Example:
        >>> check_value_range((0.0, 1.0), 3)
        (tensor(0., dtype=torch.float64), tensor(1., dtype=torch.float64))
        >>> check_value_range((1.0, 0.0), 3)
        Traceback (most recent call last):
        ...
        ValueError: value_range must be finite with low <= high everywhere, received (1.0, 0.0)
    """
    if not isinstance(value_range, (tuple, list)) or len(value_range) != 2:
        raise ValueError(
            f"value_range must be None, a (low, high) pair of floats, or a pair of [{num_neurons}] tensors (one "
            f"range per neuron); received {value_range!r}"
        )
    low, high = (torch.as_tensor(v, dtype=dtype, device=device).clone() for v in value_range)
    for name, bound in (("low", low), ("high", high)):
        if bound.ndim > 1 or (bound.ndim == 1 and bound.shape[0] != num_neurons):
            raise ValueError(
                f"value_range {name} must be a float or a tensor of shape [{num_neurons}] (one per neuron), "
                f"received shape {list(bound.shape)}"
            )
    if not bool((torch.isfinite(low) & torch.isfinite(high) & (low <= high)).all()):
        raise ValueError(f"value_range must be finite with low <= high everywhere, received {value_range!r}")
    return low, high


def bin_indices(activations: Tensor, num_bins: int, value_range: ValueRange = None) -> Tensor:
    """Bin index of every activation, ``[S, N]`` int64 in ``[0, num_bins]``.

    A value ``v`` goes to ``floor((v - low) / (high - low) * num_bins)``, clamped to the edge bins;
    where ``high == low`` everything goes to bin 0. Non-finite values (NaN, +-Inf) get the index
    ``num_bins``, which the counting functions skip.

    Example:
        >>> import torch
        >>> x = torch.tensor([[0.0], [0.5], [1.0], [float("nan")]])
        >>> bin_indices(x, num_bins=4, value_range=(0.0, 1.0)).flatten()
        tensor([0, 2, 3, 4])
    """
    check_activations(activations)
    num_bins = check_num_bins(num_bins)
    low, high = resolve_value_range(activations, value_range)
    grid = bin_grid(low, high, num_bins)
    compiled = compiled_grid(grid, low, high, activations.shape[1]) if activations.device.type == "cpu" else None
    if compiled is not None:  # one compiled pass on one thread (the same indices, bit for bit)
        out = torch.empty(activations.shape, dtype=torch.int64)
        counts = torch.zeros(activations.shape[1], num_bins, dtype=torch.int64)  # (not needed here)
        compiled_bin_and_count(activations, compiled, counts, out)
        return out
    return grid_bin_indices(activations, grid)


class BinGrid(NamedTuple):
    """A binning range prepared once for many batches (see `bin_grid`): ``[N]`` or 0-d float64 tensors.

    Attributes:
        low: the range's lower bound, times ``factor``.
        width: ``(high - low)`` times ``factor``; ``+inf`` where the range has zero width, so that
            every value of such a neuron lands in bin 0.
        factor: ``0.5`` where the width overflows float64 (values are halved first), ``None`` if none does.
        defined: where the range is defined (not NaN); ``None`` if it is everywhere.
        num_bins: the number of bins.
    """

    low: Tensor
    width: Tensor
    factor: Optional[Tensor]
    defined: Optional[Tensor]
    num_bins: int


def bin_grid(low: Tensor, high: Tensor, num_bins: int, simplify: bool = True) -> BinGrid:
    """Prepare ``[low, high]`` for `grid_bin_indices`, once per range rather than once per batch.

    ``simplify=True`` drops the halving and the undefined-range check where no neuron needs them,
    at the cost of one host synchronisation; ``simplify=False`` never synchronises.
    """
    dtype = binning_dtype(low.device)
    low, high = low.to(dtype), high.to(device=low.device, dtype=dtype)
    # (x - low) / (high - low) is unchanged by scaling all three by 1/2 (exactly, barring subnormals);
    # halving only where the width overflows keeps every other range bit-for-bit as written
    overflow = torch.isinf(high - low)
    undefined = torch.isnan(low) | torch.isnan(high)
    need_factor, need_defined = (bool(overflow.any()), bool(undefined.any())) if simplify else (True, True)
    factor = torch.where(overflow, 0.5, 1.0).to(dtype) if need_factor else None
    scaled_low, scaled_high = (low * factor, high * factor) if factor is not None else (low, high)
    width = scaled_high - scaled_low
    width = torch.where(width > 0, width, math.inf)  # zero width: (v - low) / inf = 0, bin 0
    return BinGrid(scaled_low, width, factor, ~undefined if need_defined else None, num_bins)


def bin_positions(values: Tensor, grid: BinGrid) -> Tensor:
    """``(v - low) / (high - low) * num_bins`` of float64 ``values``, not yet floored or clamped."""
    if grid.factor is not None:
        values = values * grid.factor
    return values.sub(grid.low).div_(grid.width).mul_(grid.num_bins)


def grid_bin_indices(
    activations: Tensor, grid: BinGrid, finite: Optional[Tensor] = None, positions: Optional[Tensor] = None
) -> Tensor:
    """`bin_indices` on a prepared `BinGrid` (no checks, no host synchronisation): ``[S, N]`` int64.

    ``finite`` (``torch.isfinite(activations)``) and ``positions`` (`bin_positions`) may be passed
    when the caller has them already; ``positions`` is consumed (floored in place).
    """
    if finite is None:
        finite = torch.isfinite(activations)
    if positions is None:
        positions = bin_positions(activations.detach().to(binning_dtype(activations.device)), grid)
    index = positions.floor_().clamp_(0, grid.num_bins - 1)
    keep = finite if grid.defined is None else finite & grid.defined
    return torch.where(keep, index, float(grid.num_bins)).to(torch.int64)


def assign_bins(activations: Tensor, low: Tensor, high: Tensor, num_bins: int) -> Tensor:
    """`bin_indices` with an already resolved range and no input checks (no host synchronisation).

    Arithmetic is in `binning_dtype` (float64), so every finite input of any floating dtype gets
    ``floor((v - low) / (high - low) * num_bins)`` as float64 computes it, whatever the range: a width
    beyond float32's maximum, a range below its smallest normal number, or (for float64 inputs) a
    width that overflows float64 itself, which is computed on halved values instead. A NaN bound
    (an undefined range) sends every value of its neuron to the skip index ``num_bins``. For many
    batches on one range, prepare it once with `bin_grid` and use `grid_bin_indices`.
    """
    dtype = binning_dtype(activations.device)
    grid = bin_grid(low.to(activations.device), high.to(activations.device), num_bins, simplify=False)
    return grid_bin_indices(activations, grid, positions=bin_positions(activations.detach().to(dtype), grid))


def bin_index_dtype(num_bins: int) -> torch.dtype:
    """The smallest integer dtype that holds every bin index ``0 .. num_bins`` (``num_bins``: a skipped value).

    Example:
        >>> bin_index_dtype(255), bin_index_dtype(256)
        (torch.uint8, torch.int16)
    """
    return torch.uint8 if num_bins <= 255 else torch.int16 if num_bins <= 32767 else torch.int32


def check_bin_indices(bins: Any, num_bins: int, name: str = "bins") -> Tensor:
    """``bins`` if it is a ``[S, N]`` integer tensor of bin indices in ``[0, num_bins]``, else a ``ValueError``.

    Index ``num_bins`` marks a left-out (non-finite) value, as `bin_indices` writes it. The error names
    the first index out of range, so that no kernel ever reads or writes outside its histograms. One
    pass over ``bins`` (its minimum and maximum); the package's own binning skips it.

    Example:
        >>> import torch
        >>> check_bin_indices(torch.tensor([[0, 4], [7, 1]]), num_bins=4)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: bins[1, 0] = 7 is not a bin index for num_bins=4: indices must be in [0, 4] ...
    """
    if not isinstance(bins, Tensor) or bins.ndim != 2:
        shape = list(bins.shape) if isinstance(bins, Tensor) else type(bins).__name__
        raise ValueError(f"{name} must be a [S, N] integer tensor of bin indices, received {shape}")
    if bins.dtype.is_floating_point or bins.dtype.is_complex or bins.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer bin indices, received dtype {bins.dtype}; use bin_indices")
    if bins.numel() == 0:
        return bins
    low, high = torch.aminmax(bins)
    if int(low) < 0 or int(high) > num_bins:
        row, column = ((bins < 0) | (bins > num_bins)).nonzero()[0].tolist()
        raise ValueError(
            f"{name}[{row}, {column}] = {int(bins[row, column])} is not a bin index for num_bins={num_bins}: "
            f"indices must be in [0, {num_bins}] ({num_bins} marks a left-out value); make them with "
            "bin_indices(activations, num_bins)"
        )
    return bins


MAX_BINS = 2**24  # more bins per neuron than any sample count a plug-in estimate can use


def check_num_bins(num_bins: Any) -> int:
    """``num_bins`` as an ``int`` in ``[1, 2**24]``, or a ``ValueError``.

    A plug-in estimate needs many samples per bin, and every bin costs 8 bytes per neuron of counts (a
    joint histogram 8 bytes per pair and bin squared): ``num_bins=2**31`` would ask for 16 GiB per neuron
    before anything is counted.
    """
    return check_int(num_bins, "num_bins", minimum=1, maximum=MAX_BINS)


_BIN_AND_COUNT = CompiledKernel("lightning_infomem.functional._kernels.counting", "bin_and_count")


class CompiledGrid(NamedTuple):
    """A `BinGrid` and its range as ``[N]`` NumPy arrays, for `compiled_bin_and_count` (see `compiled_grid`)."""

    low: np.ndarray
    width: np.ndarray
    factor: np.ndarray
    defined: np.ndarray
    range_low: np.ndarray
    range_high: np.ndarray
    num_bins: int


def compiled_grid(grid: BinGrid, low: Tensor, high: Tensor, num_neurons: int) -> Optional[CompiledGrid]:
    """``grid`` (and its range ``low``, ``high``) prepared for the compiled binning kernel; ``None`` where that
    kernel cannot run (not on the CPU, or Numba not installed)."""
    if grid.low.device.type != "cpu" or not _BIN_AND_COUNT.available():
        return None

    def per_neuron(value: Optional[Tensor], fill: Any, dtype: torch.dtype) -> np.ndarray:
        value = torch.full((), fill, dtype=dtype) if value is None else value.to(dtype)
        return torch.broadcast_to(value.cpu(), (num_neurons,)).contiguous().numpy()

    return CompiledGrid(
        per_neuron(grid.low, 0.0, torch.float64),
        per_neuron(grid.width, 1.0, torch.float64),
        per_neuron(grid.factor, 1.0, torch.float64),
        per_neuron(grid.defined, True, torch.bool),
        per_neuron(low, 0.0, torch.float64),
        per_neuron(high, 0.0, torch.float64),
        grid.num_bins,
    )


def compiled_bin_and_count(
    activations: Tensor, grid: CompiledGrid, counts: Tensor, bins_out: Optional[Tensor] = None
) -> tuple[int, int]:
    """Bin CPU ``[S, N]`` activations as `grid_bin_indices` does and add each neuron's histogram to ``counts``.

    One compiled pass instead of a dozen tensor operations: ``counts`` (``[N, num_bins]`` int64,
    contiguous) is added to; ``bins_out`` (``[S, N]`` integer, contiguous), when given, receives the
    bin indices (``num_bins`` for a non-finite value). Returns ``(non-finite values, finite values
    outside the range)``. Bit-for-bit the indices of the torch path (float64 arithmetic in the same order).

    Example:
        >>> import torch
        >>> x = torch.tensor([[0.0, 5.0], [1.0, float("nan")], [0.5, 9.0]])
        >>> low, high = torch.tensor(0.0, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64)
        >>> grid = compiled_grid(bin_grid(low, high, 4), low, high, 2)
        >>> counts, bins = torch.zeros(2, 4, dtype=torch.int64), torch.empty(3, 2, dtype=torch.uint8)
        >>> (compiled_bin_and_count(x, grid, counts, bins) if grid is not None else (1, 2))
        (1, 2)
        >>> grid is None or torch.equal(bins.long(), grid_bin_indices(x, bin_grid(low, high, 4)))
        True
    """
    values = activations.detach()
    if values.dtype not in (torch.float32, torch.float64):
        values = values.to(torch.float32)  # float16 and bfloat16 hold no value float32 does not
    values = values.contiguous().numpy()
    write = bins_out is not None
    out = bins_out.numpy() if write else np.empty((0, 0), dtype=np.uint8)
    nonfinite, clipped = _BIN_AND_COUNT(
        values, grid.low, grid.width, grid.factor, grid.defined, grid.range_low, grid.range_high,
        grid.num_bins, counts.numpy(), out, write,
    )  # fmt: skip
    return int(nonfinite), int(clipped)
