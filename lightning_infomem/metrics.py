"""Streaming entropy and mutual information of neuron activations as torchmetrics ``Metric`` objects.

State is integer histogram counts, summed across processes, so any split of the samples into
batches and processes gives exactly the counts of one functional call over all of them (with the
same binning range). Memory is constant in the number of samples.

Binning range policy (``value_range=None``): the first ``calibration_samples`` samples after each
``reset()`` are held back; their finite minimum and maximum (or the ``range_quantile`` and
``1 - range_quantile`` quantiles) fix the range, globally or per neuron; then the held-back samples
and every later one are counted. Later values outside the range go to the edge bins and are counted
in ``num_clipped`` (see `clipped_fraction`). Under DDP the calibration samples of all processes
are gathered, so every process uses the identical range; each process holds back
``ceil(calibration_samples / world_size)`` samples. If fewer samples arrive before ``compute()``, the
range is fixed from all of them then. The range in use is `value_range`.
"""

from __future__ import annotations

import warnings
from typing import Any, Optional, Union

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities.distributed import gather_all_tensors

from lightning_infomem.functional.binning import (
    ValueRange,
    assign_bins,
    calibrate_value_range,
    check_activations,
    check_num_bins,
    compute_dtype,
)
from lightning_infomem.functional.entropy import entropy_from_counts, histogram_counts
from lightning_infomem.functional.mutual_information import (
    CountingMethod,
    iter_joint_histogram_counts,
    mutual_information_from_joint_counts,
    pairs_to_matrix,
    resolve_counting_method,
)

__all__ = ["NeuronEntropy", "NeuronMutualInformation", "StateTooLargeError"]

DEFAULT_MAX_STATE_BYTES = 2**30


class StateTooLargeError(ValueError):
    """A metric's histogram state would exceed its memory budget (``max_state_bytes``)."""


def gather_calibration_samples(
    held_back: list[Tensor], quota: int, num_neurons: int, device: torch.device, process_group: Any = None
) -> tuple[Tensor, Tensor]:
    """The samples a binning range is calibrated on, and all held-back local samples.

    Returns ``(calibration, local)``: ``local`` is every held-back sample of this process; the range
    uses only its first ``quota`` samples (so it does not depend on the batch size), gathered from
    every process under DDP so that all processes fix the identical range.
    """
    if held_back:
        local = torch.cat([t.to(compute_dtype(t.dtype)) for t in held_back])
    else:
        local = torch.zeros(0, num_neurons, device=device)
    calibration = local[:quota]
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        if torch.distributed.get_world_size(process_group) > 1:
            calibration = torch.cat(gather_all_tensors(calibration.contiguous(), group=process_group))
    return calibration, local


def _format_bytes(num_bytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(num_bytes) < 1024 or unit == "TiB":
            return f"{num_bytes:.1f} {unit}" if unit != "B" else f"{int(num_bytes)} B"
        num_bytes /= 1024
    raise AssertionError("unreachable")


class _ActivationHistogramMetric(Metric):
    """Shared machinery: input checks, range calibration, per-neuron counts, DDP-safe reduction."""

    is_differentiable = False
    higher_is_better: Optional[bool] = None
    full_state_update = False

    range_low: Optional[Tensor]
    range_high: Optional[Tensor]

    def __init__(
        self,
        num_neurons: int,
        num_bins: int = 100,
        value_range: ValueRange = None,
        *,
        per_neuron_range: bool = False,
        range_quantile: float = 0.0,
        calibration_samples: int = 1024,
        base: Optional[float] = None,
        miller_madow: bool = False,
        normalized: bool = False,
        max_state_bytes: int = DEFAULT_MAX_STATE_BYTES,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not isinstance(num_neurons, int) or isinstance(num_neurons, bool) or num_neurons < 1:
            raise ValueError(f"num_neurons must be a positive integer, received {num_neurons!r}")
        check_num_bins(num_bins)
        if not 0.0 <= range_quantile < 0.5:
            raise ValueError(f"range_quantile must be in [0, 0.5), received {range_quantile}")
        if not isinstance(calibration_samples, int) or calibration_samples < 1:
            raise ValueError(f"calibration_samples must be a positive integer, received {calibration_samples!r}")
        if base is not None and (base <= 0 or base == 1):
            raise ValueError(f"base must be positive and not 1, received {base}")
        self.num_neurons = num_neurons
        self.num_bins = num_bins
        self.per_neuron_range = per_neuron_range
        self.range_quantile = range_quantile
        self.calibration_samples = calibration_samples
        self.base = base
        self.miller_madow = miller_madow
        self.normalized = normalized
        self.max_state_bytes = max_state_bytes
        self._check_state_size()

        self._fixed_range = value_range is not None
        low, high = self._fixed_value_range(value_range) if value_range is not None else (None, None)
        self.register_buffer("range_low", low, persistent=False)
        self.register_buffer("range_high", high, persistent=False)
        self._calibration_buffer: list[Tensor] = []
        self._num_buffered = 0

        self.add_state("num_samples", torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("num_nonfinite", torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("num_clipped", torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("counts", torch.zeros(num_neurons, num_bins, dtype=torch.int64), dist_reduce_fx="sum")

    # ----------------------------------------------------------------------------------- sizing
    @classmethod
    def state_bytes(cls, num_neurons: int, num_bins: int) -> int:
        """Bytes of histogram state for ``num_neurons`` neurons and ``num_bins`` bins."""
        return 8 * num_neurons * num_bins

    def _size_knobs(self) -> str:
        return "lower num_bins or num_neurons"

    def _check_state_size(self) -> None:
        need = self.state_bytes(self.num_neurons, self.num_bins)
        if need > self.max_state_bytes:
            raise StateTooLargeError(
                f"{type(self).__name__} would need {_format_bytes(need)} of histogram state for "
                f"num_neurons={self.num_neurons}, num_bins={self.num_bins}: "
                f"{_format_bytes(need - self.max_state_bytes)} over the budget max_state_bytes="
                f"{self.max_state_bytes} ({_format_bytes(self.max_state_bytes)}). To fit, {self._size_knobs()}, "
                "or raise max_state_bytes."
            )

    def _fixed_value_range(self, value_range: Any) -> tuple[Tensor, Tensor]:
        if not isinstance(value_range, (tuple, list)) or len(value_range) != 2:
            raise ValueError(
                f"value_range must be None, a (low, high) pair of floats, or a pair of [{self.num_neurons}] "
                f"tensors; received {value_range!r}"
            )
        low, high = (torch.as_tensor(v, dtype=torch.float64).clone() for v in value_range)
        for name, bound in (("low", low), ("high", high)):
            if bound.ndim > 1 or (bound.ndim == 1 and bound.shape[0] != self.num_neurons):
                raise ValueError(
                    f"value_range {name} must be a float or a tensor of shape [{self.num_neurons}], "
                    f"received shape {list(bound.shape)}"
                )
        if not bool((torch.isfinite(low) & torch.isfinite(high) & (low <= high)).all()):
            raise ValueError(f"value_range must be finite with low <= high everywhere, received {value_range!r}")
        return low, high

    # ------------------------------------------------------------------------------- properties
    @property
    def value_range(self) -> Optional[tuple[Tensor, Tensor]]:
        """``(low, high)`` binning range in use (0-d or ``[N]`` tensors), or ``None`` before calibration."""
        if self.range_low is None or self.range_high is None:
            return None
        return self.range_low, self.range_high

    @property
    def clipped_fraction(self) -> float:
        """Fraction of counted finite values that fell outside the range and went to an edge bin."""
        counted = int(self.num_samples) * self.num_neurons - int(self.num_nonfinite)
        return int(self.num_clipped) / counted if counted > 0 else 0.0

    # ---------------------------------------------------------------------------------- updates
    def update(self, activations: Tensor) -> None:
        """Count a batch of activations, ``[S, num_neurons]``, of any floating dtype and device."""
        activations = check_activations(activations, self.num_neurons).detach()
        if self.range_low is None:
            self._calibration_buffer.append(activations)
            self._num_buffered += activations.shape[0]
            if self._num_buffered >= self._calibration_quota():
                self._calibrate()
            return
        self._count(activations)

    def forward(self, activations: Tensor) -> None:  # type: ignore[override]
        """Same as `update`: a histogram of one batch is not a meaningful value on its own."""
        self.update(activations)

    def _calibration_quota(self) -> int:
        return -(-self.calibration_samples // self._world_size())

    def _world_size(self) -> int:
        if self._distributed():
            return torch.distributed.get_world_size(self.process_group)
        return 1

    def _distributed(self) -> bool:
        available = self.distributed_available_fn
        return bool(available()) if available is not None else False

    def _calibrate(self) -> None:
        """Fix the range from the first held-back samples (all processes' under DDP), then count them all."""
        samples, local = gather_calibration_samples(
            self._calibration_buffer,
            self._calibration_quota(),
            self.num_neurons,
            self.counts.device,
            self.process_group,
        )
        low, high = calibrate_value_range(samples, per_neuron=self.per_neuron_range, quantile=self.range_quantile)
        self.range_low, self.range_high = low.to(torch.float64), high.to(torch.float64)
        self._calibration_buffer = []
        self._num_buffered = 0
        if local.shape[0] > 0:
            self._count(local)

    def set_value_range(self, low: Union[float, Tensor], high: Union[float, Tensor]) -> None:
        """Fix the binning range until the next ``reset()`` and count any held-back samples.

        For callers that calibrate themselves (for example one range shared by several metrics).
        Must be called before counting starts, identically on every process under DDP.

        Example:
            >>> import torch
            >>> metric = NeuronEntropy(num_neurons=2, num_bins=4)
            >>> metric.set_value_range(0.0, 1.0)
            >>> metric.value_range
            (tensor(0., dtype=torch.float64), tensor(1., dtype=torch.float64))
        """
        if self.range_low is not None and int(self.num_samples) > 0:
            raise RuntimeError(f"{type(self).__name__} has already counted samples; call reset() before a new range")
        low_t, high_t = self._fixed_value_range((low, high))
        device = self.counts.device
        self.range_low, self.range_high = low_t.to(device), high_t.to(device)
        pending, self._calibration_buffer, self._num_buffered = self._calibration_buffer, [], 0
        for activations in pending:
            self._count(activations)

    def _settle(self) -> None:
        """Bring the state up to date: fix a pending range, count pooled samples (before sync/compute/merge)."""
        self._finish_calibration()
        self._flush_pending()

    def _flush_pending(self) -> None:
        """Hook for metrics that pool small batches before counting them."""

    def _finish_calibration(self) -> None:
        if self.range_low is None and (self._calibration_buffer or self._distributed()):
            self._calibrate()

    def _count(self, activations: Tensor) -> None:
        low = self.range_low.to(device=activations.device, dtype=compute_dtype(activations.dtype))
        high = self.range_high.to(device=activations.device, dtype=compute_dtype(activations.dtype))
        bins = assign_bins(activations, low, high, self.num_bins)
        values = activations.to(low.dtype)
        finite = torch.isfinite(values)
        self.num_samples += activations.shape[0]
        self.num_nonfinite += (~finite).sum()
        self.num_clipped += (((values < low) | (values > high)) & finite).sum()
        self.counts += histogram_counts(bins, self.num_bins)
        self._count_pairs(bins)

    def _count_pairs(self, bins: Tensor) -> None:
        """Hook for metrics that keep joint histograms."""

    def _clear_pending(self) -> None:
        """Hook for metrics that pool small batches before counting them."""

    # ------------------------------------------------------------------------ lifecycle overrides
    def sync(self, *args: Any, **kwargs: Any) -> None:
        """Fix a pending calibration range (a collective step under DDP), then sum the counts."""
        self._settle()
        super().sync(*args, **kwargs)

    def reset(self) -> None:
        """Clear the counts; a calibrated range is cleared too, a fixed ``value_range`` is kept."""
        super().reset()
        self._calibration_buffer = []
        self._num_buffered = 0
        self._clear_pending()
        if not self._fixed_range:
            self.range_low, self.range_high = None, None

    def merge_state(self, incoming_state: Union[dict[str, Any], Metric]) -> None:
        """Add another metric's counts; both must bin with the same range."""
        if isinstance(incoming_state, _ActivationHistogramMetric):
            self._settle()
            incoming_state._settle()
            ours, theirs = self.value_range, incoming_state.value_range
            if ours is None or theirs is None:
                if ours is not theirs:
                    raise ValueError("cannot merge a metric that has counted samples with one that has not")
            elif not all(torch.equal(a.cpu(), b.cpu()) for a, b in zip(ours, theirs, strict=True)):
                raise ValueError(
                    "cannot merge histograms binned with different ranges "
                    f"({[t.tolist() for t in ours]} vs {[t.tolist() for t in theirs]}); "
                    "pass the same fixed value_range to both metrics"
                )
        super().merge_state(incoming_state)

    def _warn_about_dropped_values(self) -> None:
        dropped = int(self.num_nonfinite)
        if dropped:
            total = int(self.num_samples) * self.num_neurons
            warnings.warn(
                f"{type(self).__name__}: left out {dropped} non-finite activation values (NaN or Inf) of {total}; "
                "the histograms count the finite values only",
                RuntimeWarning,
                stacklevel=3,
            )


class NeuronEntropy(_ActivationHistogramMetric):
    """Streaming plug-in entropy of each neuron's activation histogram.

    Args:
        num_neurons: number of neurons N (columns of every ``update`` input).
        num_bins: equal-width bins (the paper uses 100).
        value_range: ``None`` to calibrate (see the module docs), ``(low, high)`` floats, or a pair of
            ``[N]`` tensors for per-neuron ranges.
        per_neuron_range: calibrate one range per neuron instead of one global range.
        range_quantile: calibrate with the ``q`` / ``1 - q`` quantiles instead of min / max.
        calibration_samples: samples held back to calibrate the range.
        base: logarithm base (``None``: nats).
        miller_madow: Miller-Madow bias correction.
        normalized: divide by ``log(num_bins)``.
        max_state_bytes: refuse configurations whose histogram state would exceed this.

    ``compute()`` returns a float64 ``[N]`` tensor.

    Example:
        >>> import torch
        >>> metric = NeuronEntropy(num_neurons=3, num_bins=10)
        >>> for batch in torch.randn(4, 256, 3).unbind(0):
        ...     metric.update(batch)
        >>> metric.compute().shape
        torch.Size([3])
    """

    higher_is_better = None

    def compute(self) -> Tensor:
        """Entropy of each neuron, ``[N]``."""
        self._settle()
        self._warn_about_dropped_values()
        return entropy_from_counts(self.counts, self.base, self.miller_madow, self.normalized)


class NeuronMutualInformation(_ActivationHistogramMetric):
    """Streaming plug-in mutual information of every pair of neurons, ``[N, N]``.

    Keeps the joint histogram of each of the ``N (N - 1) / 2`` pairs (``8 * B**2`` bytes a pair).
    Counting costs about the same for any batch size, so batches are pooled as compact bin indices
    until ``pool_samples = 4 * (B + 1)**2`` samples have arrived (``N`` bytes a sample); the pooled
    samples are always counted before ``compute()``, synchronisation and ``merge_state``;
    the diagonal of the result is each neuron's entropy. Arguments as in `NeuronEntropy`,
    plus ``method`` (the counting kernel, see
    `joint_histogram_counts`). ``normalized`` gives
    ``I / sqrt(H(X) H(Y))``.

    Example:
        >>> import torch
        >>> metric = NeuronMutualInformation(num_neurons=2, num_bins=8)
        >>> x = torch.randn(512, 1)
        >>> metric.update(torch.cat([x, x], dim=1))
        >>> mi = metric.compute()
        >>> bool(torch.allclose(mi[0, 1], mi[0, 0]))
        True
    """

    def __init__(
        self,
        num_neurons: int,
        num_bins: int = 16,
        value_range: ValueRange = None,
        *,
        method: CountingMethod = "auto",
        **kwargs: Any,
    ) -> None:
        super().__init__(num_neurons, num_bins, value_range, **kwargs)
        resolve_counting_method(method, torch.device("cpu"))  # validates the name
        self.method = method
        self.pool_samples = 4 * (num_bins + 1) ** 2
        self._clear_pending()
        num_pairs = num_neurons * (num_neurons - 1) // 2
        self.add_state(
            "joint_counts", torch.zeros(num_pairs, num_bins, num_bins, dtype=torch.int64), dist_reduce_fx="sum"
        )

    @classmethod
    def state_bytes(cls, num_neurons: int, num_bins: int) -> int:
        """Bytes of histogram state: per-neuron counts plus one joint histogram per pair."""
        return 8 * num_neurons * num_bins + 8 * (num_neurons * (num_neurons - 1) // 2) * num_bins**2

    def _size_knobs(self) -> str:
        fit_bins = 1
        while self.state_bytes(self.num_neurons, fit_bins + 1) <= self.max_state_bytes:
            fit_bins += 1
        fit_neurons = 1
        while self.state_bytes(fit_neurons + 1, self.num_bins) <= self.max_state_bytes:
            fit_neurons += 1
        return (
            f"lower num_bins (state grows with num_bins**2; {fit_bins} would fit) or monitor fewer neurons "
            f"(grows with num_neurons**2; {fit_neurons} would fit)"
        )

    def _count_pairs(self, bins: Tensor) -> None:
        # Counting touches every pair's (B + 1)**2 histogram cells whatever the batch size, so small
        # batches are pooled (as compact bin indices) and counted together.
        self._pending_bins.append(bins.to(torch.uint8 if self.num_bins < 255 else torch.int16))
        self._num_pending += bins.shape[0]
        if self._num_pending >= self.pool_samples:
            self._flush_pending()

    def _flush_pending(self) -> None:
        if not self._pending_bins:
            return
        bins = torch.cat(self._pending_bins).long()
        self._clear_pending()
        for first, counts in iter_joint_histogram_counts(bins, self.num_bins, self.method):
            self.joint_counts[first : first + counts.shape[0]] += counts

    def _clear_pending(self) -> None:
        self._pending_bins: list[Tensor] = []
        self._num_pending = 0

    def compute(self) -> Tensor:
        """Symmetric ``[N, N]`` mutual information; the diagonal is each neuron's entropy."""
        self._settle()
        self._warn_about_dropped_values()
        step = max(1, 2**22 // self.num_bins**2)  # bounded float64 temporaries
        pair_values = torch.cat(
            [
                mutual_information_from_joint_counts(chunk, self.base, self.miller_madow, self.normalized)
                for chunk in self.joint_counts.split(step)
            ]
            or [torch.zeros(0, dtype=torch.float64, device=self.joint_counts.device)]
        )
        diagonal = entropy_from_counts(self.counts, self.base, self.miller_madow, self.normalized)
        if self.normalized:
            diagonal = (diagonal > 0).to(diagonal.dtype)
        return pairs_to_matrix(pair_values, diagonal)
