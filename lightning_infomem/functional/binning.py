"""Equal-width binning of neuron activations.

Every estimator in the package sees activations through `bin_indices`, so the binning rule
lives here and nowhere else: a value ``v`` falls in bin ``floor((v - low) / (high - low) * num_bins)``,
values outside ``[low, high]`` go to the edge bins (the maximum lands in the last bin, as in
``numpy.histogram``), and non-finite values get the index ``num_bins``, which every counting
function ignores.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

ValueRange = Union[None, Tuple[float, float], Tuple[Tensor, Tensor], Sequence[float]]

__all__ = [
    "ValueRange",
    "assign_bins",
    "bin_indices",
    "calibrate_value_range",
    "check_activations",
    "check_num_bins",
    "compute_dtype",
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


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Floating dtype used for binning arithmetic: float64 stays float64, lower precisions use float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _finite_min_max(x: Tensor, dim: Optional[int]) -> Tuple[Tensor, Tensor]:
    finite = torch.isfinite(x)
    big = torch.finfo(x.dtype).max
    if dim is None:
        low = torch.where(finite, x, big).amin()
        high = torch.where(finite, x, -big).amax()
    else:
        low = torch.where(finite, x, big).amin(dim=dim)
        high = torch.where(finite, x, -big).amax(dim=dim)
    empty = low > high  # no finite value at all
    low = torch.where(empty, torch.zeros_like(low), low)
    high = torch.where(empty, torch.zeros_like(high), high)
    return low, high


def calibrate_value_range(
    activations: Tensor, per_neuron: bool = False, quantile: float = 0.0
) -> Tuple[Tensor, Tensor]:
    """Binning range read off a sample of activations, ignoring non-finite values.

    Args:
        activations: ``[S, N]`` tensor.
        per_neuron: one range per neuron (``[N]`` tensors) instead of one global range (0-d tensors).
        quantile: ``0`` uses the minimum and maximum; ``q > 0`` uses the ``q`` and ``1 - q`` quantiles,
            so that a few outliers do not stretch every bin.

    Returns:
        ``(low, high)`` tensors in the compute dtype of the input, on its device.

    Example:
        >>> import torch
        >>> low, high = calibrate_value_range(torch.tensor([[0.0, 1.0], [2.0, 5.0]]))
        >>> float(low), float(high)
        (0.0, 5.0)
    """
    check_activations(activations)
    if not 0.0 <= quantile < 0.5:
        raise ValueError(f"quantile must be in [0, 0.5), received {quantile}")
    x = activations.detach().to(compute_dtype(activations.dtype))
    dim = 0 if per_neuron else None
    if quantile == 0.0:
        return _finite_min_max(x, dim)
    x = torch.where(torch.isfinite(x), x, torch.nan)
    if not per_neuron:
        x = x.reshape(-1)
    limit = 2**24 if per_neuron is False else 2**24 // max(1, x.shape[1])
    if x.shape[0] > limit:  # torch.quantile has an input-size limit; a strided subsample is plenty
        step = -(-x.shape[0] // limit)
        x = x[::step]
    q = torch.tensor([quantile, 1.0 - quantile], dtype=x.dtype, device=x.device)
    bounds = torch.nanquantile(x, q, dim=0 if per_neuron else None)
    low, high = bounds[0], bounds[1]
    nan = torch.isnan(low) | torch.isnan(high)
    return torch.where(nan, torch.zeros_like(low), low), torch.where(nan, torch.zeros_like(high), high)


def resolve_value_range(activations: Tensor, value_range: ValueRange) -> Tuple[Tensor, Tensor]:
    """Turn a ``value_range`` argument into ``(low, high)`` tensors broadcastable against ``[S, N]``.

    ``None`` means one global range over all finite values of ``activations`` (the paper's binning);
    a pair of floats is a fixed range; a pair of ``[N]`` tensors gives one range per neuron.
    """
    dtype = compute_dtype(activations.dtype)
    if value_range is None:
        return calibrate_value_range(activations)
    if not isinstance(value_range, (tuple, list)) or len(value_range) != 2:
        raise ValueError(
            "value_range must be None, a (low, high) pair of floats, or a pair of [N] tensors; "
            f"received {value_range!r}"
        )
    low, high = (torch.as_tensor(v, dtype=dtype, device=activations.device) for v in value_range)
    num_neurons = activations.shape[1]
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
    check_num_bins(num_bins)
    low, high = resolve_value_range(activations, value_range)
    return assign_bins(activations, low, high, num_bins)


def assign_bins(activations: Tensor, low: Tensor, high: Tensor, num_bins: int) -> Tensor:
    """`bin_indices` with an already resolved range and no input checks (no host synchronisation)."""
    x = activations.detach().to(compute_dtype(activations.dtype))
    width = high - low
    safe_width = torch.where(width > 0, width, torch.ones_like(width))
    scale = torch.where(width > 0, num_bins / safe_width, torch.zeros_like(width))
    idx = torch.floor((x - low) * scale).clamp_(0, num_bins - 1)
    idx = torch.where(torch.isfinite(x), idx, float(num_bins))
    return idx.to(torch.int64)


def check_num_bins(num_bins: int) -> None:
    if not isinstance(num_bins, int) or isinstance(num_bins, bool) or num_bins < 1:
        raise ValueError(f"num_bins must be a positive integer, received {num_bins!r}")
