"""Streaming entropy and mutual information of neuron activations as torchmetrics ``Metric`` objects.

State is integer histogram counts, summed across processes, so any split of the samples into
batches and processes gives exactly the counts of one functional call over all of them (with the
same binning range). Memory is constant in the number of samples.

Binning range policy (``value_range=None``): the first ``calibration_samples`` samples after each
``reset()`` are held back; the minimum and maximum of their finite values (or the
``range_quantile`` and ``1 - range_quantile`` quantiles) fix the range, globally or per neuron; then
the held-back samples and every later one are counted. Later values outside the range go to the
edge bins and are counted in ``num_clipped`` (see `clipped_fraction`). Under DDP the calibration
samples of all processes are gathered, so every process uses the identical range; each process
holds back ``ceil(calibration_samples / world_size)`` samples. If fewer samples arrive before
``compute()``, the range is fixed from all of them then. The range in use is `value_range`.

Undefined values: a range is read off finite values only. While the calibration samples hold
none (a diverged model: only NaN and +-Inf), no range is fixed and the metric keeps waiting for
finite samples; a neuron (or pair) with no finite sample at ``compute()`` gets NaN, never a
number that looks like a measurement. Partly non-finite input is counted on its finite values,
and the non-finite ones are counted in ``num_nonfinite`` and reported with a warning.

Checkpoints: after ``metric.persistent(True)`` the state dict holds the counts, the range in use,
whether it was fixed by the user or calibrated, and any samples still held back for calibration,
so a restored metric continues exactly like an uninterrupted one.
"""

from __future__ import annotations

import functools
import math
import warnings
from typing import Any, Callable, Optional, Union

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities.exceptions import TorchMetricsUserError

from lightning_infomem.checks import check_bool, check_float, check_int, check_log_base, check_optional_int
from lightning_infomem.functional.binning import (
    BinGrid,
    CompiledGrid,
    ValueRange,
    bin_grid,
    bin_index_dtype,
    bin_positions,
    binning_dtype,
    check_activations,
    check_num_bins,
    check_value_range,
    compiled_bin_and_count,
    compiled_grid,
    grid_bin_indices,
)
from lightning_infomem.functional.entropy import entropy_from_counts, histogram_counts_in_range
from lightning_infomem.functional.joint_counts import (
    CountingBackend,
    add_joint_histogram_counts_in_range,
    cached_pair_indices,
    iter_joint_histogram_counts_in_range,
    resolve_counting_backend,
)
from lightning_infomem.functional.mutual_information import (
    mutual_information_from_joint_counts,
    normalized_self_information,
    pairs_to_matrix,
    pairwise_mutual_information_in_range,
)
from lightning_infomem.metrics.calibration import HeldBackSamples, calibrate_held_back
from lightning_infomem.metrics.settings import MeasurementSettings
from lightning_infomem.pooling import RowPool

__all__ = ["NeuronEntropy", "NeuronMutualInformation", "StateTooLargeError"]

_DEFAULTS = MeasurementSettings()  # the one set of defaults (metrics/settings.py)

# range_status values in a persistent state dict
_NO_RANGE, _CALIBRATED, _FIXED = 0, 1, 2


class StateTooLargeError(ValueError):
    """A metric's histogram state would exceed its memory budget (``max_state_bytes``)."""


def format_bytes(num_bytes: float) -> str:
    """A byte count in the largest binary unit that keeps it at or above 1 (``"1.5 GiB"``)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(num_bytes) < 1024 or unit == "TiB":
            return f"{num_bytes:.1f} {unit}" if unit != "B" else f"{int(num_bytes)} B"
        num_bytes /= 1024
    raise AssertionError("unreachable")


def _largest_fitting(cost: Callable[[int], int], budget: int, start: int) -> Optional[int]:
    """Largest ``n >= start`` with ``cost(n) <= budget`` (``cost`` increasing), or ``None`` if not even ``start``."""
    if cost(start) > budget:
        return None
    low, high = start, start
    while cost(high * 2) <= budget:
        high *= 2
    high *= 2  # cost(high) > budget >= cost(low)
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if cost(middle) <= budget else (low, middle)
    return low


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
        num_bins: int = _DEFAULTS.entropy_bins,
        value_range: ValueRange = None,
        *,
        per_neuron_range: bool = False,
        range_quantile: float = _DEFAULTS.range_quantile,
        calibration_samples: int = _DEFAULTS.calibration_samples,
        base: Optional[float] = None,
        miller_madow: bool = _DEFAULTS.miller_madow,
        normalized: bool = False,
        max_state_bytes: Optional[int] = _DEFAULTS.max_state_bytes,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.num_neurons = check_int(num_neurons, "num_neurons", minimum=1)
        self.num_bins = check_num_bins(num_bins)
        self.per_neuron_range = check_bool(per_neuron_range, "per_neuron_range")
        self.range_quantile = check_float(
            range_quantile, "range_quantile", minimum=0.0, maximum=0.5, exclusive_maximum=True
        )
        self.calibration_samples = check_int(calibration_samples, "calibration_samples", minimum=1)
        self.base = check_log_base(base)
        self.miller_madow = check_bool(miller_madow, "miller_madow")
        self.normalized = check_bool(normalized, "normalized")
        self.max_state_bytes = check_optional_int(max_state_bytes, "max_state_bytes", minimum=1)
        self._check_state_size()

        self._fixed_range = value_range is not None
        low, high = self._fixed_value_range(value_range) if value_range is not None else (None, None)
        self.register_buffer("range_low", low, persistent=False)
        self.register_buffer("range_high", high, persistent=False)
        self._grid = None
        self._held_back = HeldBackSamples()

        self.add_state("num_samples", torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("num_nonfinite", torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("num_clipped", torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("counts", torch.zeros(self.num_neurons, self.num_bins, dtype=torch.int64), dist_reduce_fx="sum")

    # ----------------------------------------------------------------------------------- sizing
    @classmethod
    def state_bytes(cls, num_neurons: int, num_bins: int) -> int:
        """Bytes of histogram state for ``num_neurons`` neurons and ``num_bins`` bins."""
        return 8 * num_neurons * num_bins

    @classmethod
    def _size_knobs(cls, num_neurons: int, num_bins: int, budget: int) -> str:
        return "lower num_bins or num_neurons"

    @classmethod
    def check_state_size(cls, num_neurons: int, num_bins: int, max_state_bytes: Optional[int]) -> None:
        """Raise `StateTooLargeError` if the state for these sizes exceeds ``max_state_bytes`` (``None``: no budget).

        Example:
            >>> NeuronMutualInformation.check_state_size(4096, 16, 2**30)
            Traceback (most recent call last):
            ...
            lightning_infomem.metrics.information.StateTooLargeError: NeuronMutualInformation would need 16.0 GiB ...
        """
        need = cls.state_bytes(num_neurons, num_bins)
        if max_state_bytes is not None and need > max_state_bytes:
            raise StateTooLargeError(
                f"{cls.__name__} would need {format_bytes(need)} of histogram state for "
                f"num_neurons={num_neurons}, num_bins={num_bins}: "
                f"{format_bytes(need - max_state_bytes)} over the budget max_state_bytes="
                f"{max_state_bytes} ({format_bytes(max_state_bytes)}). To fit, "
                f"{cls._size_knobs(num_neurons, num_bins, max_state_bytes)}, "
                "or raise max_state_bytes (None: no budget)."
            )

    def _check_state_size(self) -> None:
        self.check_state_size(self.num_neurons, self.num_bins, self.max_state_bytes)

    def _fixed_value_range(self, value_range: Any) -> tuple[Tensor, Tensor]:
        return check_value_range(value_range, self.num_neurons, torch.float64)

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

    @property
    def _result_shape(self) -> tuple[int, ...]:
        return (self.num_neurons,)

    # ---------------------------------------------------------------------------------- updates
    def update(self, activations: Tensor) -> None:
        """Count a batch of activations, ``[S, num_neurons]``, of any floating dtype and device.

        An empty batch (``S = 0``) changes nothing.
        """
        activations = check_activations(activations, self.num_neurons).detach()
        if activations.shape[0] == 0:
            return
        if self.range_low is None:
            self._held_back.add(activations)
            if self._held_back.rows >= self._calibration_quota():
                self._calibrate(final=False)
            return
        self._count(activations)

    def forward(self, activations: Tensor) -> Tensor:  # type: ignore[override]
        """Count the batch (as `update`) and return the value of this batch alone (the convention).

        The batch value is binned with the metric's range, so that values of successive batches are
        comparable. A range is needed for it: the first call before calibration has finished fixes the
        range on the samples held back so far (this batch, and earlier `update` batches since
        ``reset()``), rather than on ``calibration_samples``; under DDP it is a collective step, as
        the calibration always is. Without any finite value the batch value is NaN. The batch value
        is this process's (not synchronised); `NeuronMutualInformation` counts the batch's pairs
        twice (pooled into the state, and alone), so prefer `update` where the value is not used.

        Example:
            >>> import torch
            >>> metric = NeuronEntropy(num_neurons=2, num_bins=4)
            >>> metric(torch.tensor([[0.0, 1.0], [1.0, 1.0], [2.0, 1.0], [3.0, 1.0]])).tolist()
            [1.3862943611198906, 0.0]
            >>> metric.value_range  # fixed by the first call
            (tensor(0., dtype=torch.float64), tensor(3., dtype=torch.float64))
        """
        if self._is_synced:
            raise TorchMetricsUserError(
                "The Metric shouldn't be synced when performing ``forward``. HINT: Did you forget to call ``unsync`` ?."
            )
        self.update(activations)
        if self.range_low is None:
            self._calibrate(final=True)
        activations = activations.detach()
        if self.range_low is None:
            bins = torch.full(activations.shape, self.num_bins, dtype=torch.int64, device=activations.device)
        else:
            bins = self._bins(activations)
        self._forward_cache = self._batch_value(bins).reshape(self._result_shape)
        return self._forward_cache

    def _batch_value(self, bins: Tensor) -> Tensor:
        """The metric's value computed from one batch's bin indices alone."""
        raise NotImplementedError

    def _calibration_quota(self) -> int:
        return -(-self.calibration_samples // self._world_size())

    def _world_size(self) -> int:
        if self._distributed():
            return torch.distributed.get_world_size(self.process_group)
        return 1

    def _distributed(self) -> bool:
        available = self.distributed_available_fn
        return bool(available()) if available is not None else False

    def _calibrate(self, final: bool) -> None:
        """Fix the range from the first held-back samples (all processes' under DDP), then count them all.

        A collective step under DDP. If the calibration samples hold no finite value there is no range:
        those samples (all non-finite) are counted as such, and later samples are held back for the next
        try (``final=False``); at ``compute()`` (``final=True``) every held-back sample is in the
        calibration set, so all of them are counted as non-finite and the range stays undefined.
        """
        device = self.counts.device
        policy = "neuron" if self.per_neuron_range else "layer"
        (outcome,) = calibrate_held_back(
            {"": self._held_back},
            [policy],
            self._calibration_quota(),
            {"": self.num_neurons},
            {"": device},
            quantile=self.range_quantile,
            final=final,
            distributed=self._distributed(),
            process_group=self.process_group,
        ).values()
        if outcome.ranges is None:
            self.count_undefined(outcome.unusable)
            return
        self._set_range(*outcome.ranges[0])
        if outcome.samples.shape[0] > 0:
            self._count(outcome.samples)

    def count_undefined(self, num_rows: int) -> None:
        """Count ``num_rows`` samples without any finite value (nothing to bin, no range needed).

        For a caller that calibrates the range itself (`ActivationMeasurement`) and found none: the samples
        are counted as non-finite, so that `clipped_fraction` and the warnings see them.

        Example:
            >>> metric = NeuronEntropy(num_neurons=3)
            >>> metric.count_undefined(2)
            >>> int(metric.num_samples), int(metric.num_nonfinite)
            (2, 6)
        """
        self.num_samples += num_rows
        self.num_nonfinite += num_rows * self.num_neurons
        self._update_count += 1  # an update, as torchmetrics counts them: compute() then reads NaN without warning
        self._computed = None

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
        self._set_range(low_t.to(device), high_t.to(device))
        for activations in self._held_back.take():
            self._count(activations)

    def _settle(self) -> None:
        """Bring the state up to date: fix a pending range, count pooled samples (before sync/compute/merge)."""
        self._finish_calibration()
        self._flush_pending()

    def _flush_pending(self) -> None:
        """Hook for metrics that pool small batches before counting them."""

    def _finish_calibration(self) -> None:
        if self.range_low is None and (len(self._held_back) or self._distributed()):
            self._calibrate(final=True)

    def _set_range(self, low: Optional[Tensor], high: Optional[Tensor]) -> None:
        """Set (or clear) the range in use, as float64 tensors."""
        self.range_low = None if low is None else low.to(torch.float64)
        self.range_high = None if high is None else high.to(device=self.range_low.device, dtype=torch.float64)
        self._grid: Optional[BinGrid] = None

    def _bin_grid(self, device: torch.device) -> BinGrid:
        """The range prepared for binning on ``device`` (one host synchronisation per range and device)."""
        grid = getattr(self, "_grid", None)
        if grid is None or grid.low.device != device:
            assert self.range_low is not None and self.range_high is not None
            grid = bin_grid(self.range_low.to(device), self.range_high.to(device), self.num_bins)
            self._grid = grid
        return grid

    def _bins(self, activations: Tensor) -> Tensor:
        """Bin indices of a batch on the metric's range."""
        return grid_bin_indices(activations, self._bin_grid(activations.device))

    def _compiled_grid(self, grid: BinGrid) -> Optional[CompiledGrid]:
        """The range prepared for the compiled binning kernel (once per range), ``None`` where it cannot run."""
        cached = getattr(self, "_compiled", None)
        if cached is None or cached[0] is not grid:
            assert self.range_low is not None and self.range_high is not None
            cached = (grid, compiled_grid(grid, self.range_low, self.range_high, self.num_neurons))
            self._compiled = cached
        return cached[1]

    def _count(self, activations: Tensor) -> None:
        grid = self._bin_grid(activations.device)
        compiled = self._compiled_grid(grid) if activations.device.type == "cpu" else None
        if compiled is not None and self.counts.is_contiguous():
            # one compiled pass: bins, per-neuron counts, counters (and the MI metric's pooled indices)
            bins_out = self._pooled_bins_buffer(activations.shape[0])
            nonfinite, clipped = compiled_bin_and_count(activations, compiled, self.counts, bins_out)
            self.num_samples += activations.shape[0]
            self.num_nonfinite += nonfinite
            self.num_clipped += clipped
            if bins_out is not None:
                self._count_pairs(bins_out)
            return
        finite = torch.isfinite(activations)
        values = activations.to(binning_dtype(activations.device))
        low = self.range_low.to(device=values.device, dtype=values.dtype)
        high = self.range_high.to(device=values.device, dtype=values.dtype)
        bins = grid_bin_indices(activations, grid, finite=finite, positions=bin_positions(values, grid))
        self.num_samples += values.shape[0]
        self.num_nonfinite += finite.numel() - finite.sum()
        self.num_clipped += (((values < low) | (values > high)) & finite).sum()
        self.counts += histogram_counts_in_range(bins, self.num_bins)
        self._count_pairs(bins)

    def _count_pairs(self, bins: Tensor) -> None:
        """Hook for metrics that keep joint histograms."""

    def _pooled_bins_buffer(self, num_rows: int) -> Optional[Tensor]:
        """Where the compiled binning writes the bin indices for `_count_pairs` (``None``: not needed)."""
        return None

    def _clear_pending(self) -> None:
        """Hook for metrics that pool small batches before counting them."""

    # ------------------------------------------------------------------------ lifecycle overrides
    def _wrap_compute(self, compute: Callable) -> Callable:
        # torchmetrics squeezes one-element results to 0-d; a metric of one neuron still returns [1] / [1, 1]
        wrapped = super()._wrap_compute(compute)

        @functools.wraps(compute)
        def keep_shape(*args: Any, **kwargs: Any) -> Any:
            value = wrapped(*args, **kwargs)
            return value.reshape(self._result_shape) if isinstance(value, Tensor) else value

        return keep_shape

    def sync(self, *args: Any, **kwargs: Any) -> None:
        """Fix a pending calibration range (a collective step under DDP), then sum the counts.

        Pooled samples are counted when the states are read for the reduction (not at all when there is
        nothing to synchronise).
        """
        self._finish_calibration()
        super().sync(*args, **kwargs)

    def reset(self) -> None:
        """Clear the counts; a calibrated range is cleared too, a fixed ``value_range`` is kept.

        The count tensors are zeroed in place (torchmetrics would copy a zero default of the same size:
        tens of MiB for the joint histograms of many neurons), so a metric reused for every evaluation
        allocates nothing.
        """
        self._update_count = 0
        self._forward_cache = None
        self._computed = None
        self._clear_pending()
        for attr in self._defaults:
            self._reset_state(attr)
        self._cache = None
        self._is_synced = False
        self._held_back = HeldBackSamples()
        if not self._fixed_range:
            self._set_range(None, None)

    def _reset_state(self, attr: str) -> None:
        value = getattr(self, attr)
        if value.is_inference() and not torch.is_inference_mode_enabled():
            # made under inference mode (trainer.validate()), now reset outside it (trainer.fit()): such a tensor
            # cannot be updated in place any more, so it is replaced once by an ordinary one
            setattr(self, attr, torch.zeros_like(value))
        else:
            value.zero_()

    def merge_state(self, incoming_state: Union[dict[str, Any], Metric]) -> None:
        """Add another metric's counts; both must bin with the same range."""
        if not isinstance(incoming_state, _ActivationHistogramMetric):
            raise ValueError(
                f"{type(self).__name__}.merge_state needs the other metric itself, so that its binning range can be "
                f"checked against this one's; a state dict ({type(incoming_state).__name__}) carries no range. "
                "Pass the metric (or load its persistent state_dict into a metric first)"
            )
        if type(incoming_state) is not type(self) or (incoming_state.num_neurons, incoming_state.num_bins) != (
            self.num_neurons,
            self.num_bins,
        ):
            raise ValueError(
                f"cannot merge a {type(incoming_state).__name__}(num_neurons={incoming_state.num_neurons}, num_bins="
                f"{incoming_state.num_bins}) into a {type(self).__name__}(num_neurons={self.num_neurons}, num_bins="
                f"{self.num_bins}): their histograms count different things; merge metrics built with the same "
                "class, num_neurons and num_bins"
            )
        self._settle()
        if isinstance(incoming_state, _ActivationHistogramMetric):
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

    # ------------------------------------------------------------------------------ persistence
    def _is_persistent(self) -> bool:
        return any(self._persistent.values())

    def state_dict(  # type: ignore[override]
        self, destination: Optional[dict[str, Any]] = None, prefix: str = "", keep_vars: bool = False
    ) -> dict[str, Any]:
        """The torchmetrics state dict; when persistent, also the range and the held-back samples.

        Samples pooled for counting are counted first (exact: counts only add up), so the saved
        counts include them.
        """
        persistent = self._is_persistent()
        if persistent:
            self._flush_pending()
        destination = super().state_dict(destination=destination, prefix=prefix, keep_vars=keep_vars)
        if persistent:
            if self.range_low is None or self.range_high is None:
                status, low, high = _NO_RANGE, torch.tensor(math.nan), torch.tensor(math.nan)
            else:
                status = _FIXED if self._fixed_range else _CALIBRATED
                low, high = self.range_low, self.range_high
            held = [t.detach().to(torch.float64) for t in self._held_back.batches]
            destination[prefix + "range_status"] = torch.tensor(status, dtype=torch.int64)
            destination[prefix + "range_low"] = low.detach().to(torch.float64).cpu().clone()
            destination[prefix + "range_high"] = high.detach().to(torch.float64).cpu().clone()
            destination[prefix + "held_back"] = (
                torch.cat(held).cpu() if held else torch.zeros(0, self.num_neurons, dtype=torch.float64)
            )
            destination[prefix + "held_back_rows"] = torch.tensor(self._held_back.rows, dtype=torch.int64)
        return destination

    def _load_from_state_dict(
        self,
        state_dict: dict,
        prefix: str,
        local_metadata: dict,
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        self._check_loaded_state(state_dict, prefix)
        names = ("range_status", "range_low", "range_high", "held_back", "held_back_rows")
        if prefix + "range_status" in state_dict:
            status, low, high, held, rows = (state_dict.pop(prefix + name) for name in names)
            device = self.counts.device
            status = int(status)
            if status == _NO_RANGE:
                self._set_range(None, None)
            else:
                self._set_range(low.to(device), high.to(device))
            self._fixed_range = status == _FIXED
            self._held_back = HeldBackSamples()
            if held.shape[0]:
                self._held_back.batches = [held.to(device)]
            self._held_back.rows = int(rows)
            self._clear_pending()
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def _check_loaded_state(self, state_dict: dict, prefix: str) -> None:
        """Refuse a state dict of other sizes, or counts without the range they were binned with."""
        for name in self._defaults:
            value = state_dict.get(prefix + name)
            expected = tuple(self._defaults[name].shape)
            if isinstance(value, Tensor) and tuple(value.shape) != expected:
                raise ValueError(
                    f"{type(self).__name__}: the state dict's {name} has shape {list(value.shape)}, this metric's "
                    f"{list(expected)} (num_neurons={self.num_neurons}, num_bins={self.num_bins}); load it into a "
                    "metric built with the same num_neurons and num_bins"
                )
        for name in self._defaults:
            value = state_dict.get(prefix + name)
            if isinstance(value, Tensor) and not value.is_floating_point() and value.numel() and int(value.min()) < 0:
                raise ValueError(
                    f"{type(self).__name__}: the state dict's {name} holds negative counts ({int(value.min())}); it is "
                    "damaged or not this metric's state"
                )
        status = state_dict.get(prefix + "range_status")
        if isinstance(status, Tensor):
            if status.numel() != 1 or int(status) not in (_NO_RANGE, _CALIBRATED, _FIXED):
                raise ValueError(
                    f"{type(self).__name__}: the state dict's range_status is {status.tolist()}, none of the values a "
                    f"saved state has ({_NO_RANGE}: no range, {_CALIBRATED}: calibrated, {_FIXED}: fixed); it is "
                    "damaged or not this metric's state"
                )
            low, high = state_dict.get(prefix + "range_low"), state_dict.get(prefix + "range_high")
            if int(status) != _NO_RANGE and not (
                isinstance(low, Tensor)
                and isinstance(high, Tensor)
                and bool(torch.isfinite(low).all())
                and bool(torch.isfinite(high).all())
                and bool((low <= high).all())
            ):
                raise ValueError(
                    f"{type(self).__name__}: the state dict's binning range is not finite and ordered (low "
                    f"{low.tolist() if isinstance(low, Tensor) else low}, high "
                    f"{high.tolist() if isinstance(high, Tensor) else high}); every count would be binned into "
                    "nothing; it is damaged or not this metric's state"
                )
        counted = state_dict.get(prefix + "num_samples")
        if prefix + "range_status" not in state_dict and isinstance(counted, Tensor) and int(counted) > 0:
            raise ValueError(
                f"{type(self).__name__}: the state dict holds counts of {int(counted)} samples but not the binning "
                "range they were counted with, so new samples would be binned with another range; save the state "
                "with metric.persistent(True) before metric.state_dict() (it then holds the range)"
            )

    def _apply(self, fn: Callable, *args: Any, **kwargs: Any) -> Any:
        """Move the states and the range (``to()``, ``cuda()``, ...); the range stays float64 whatever the dtype."""
        low, high = self.range_low, self.range_high
        module = super()._apply(fn, *args, **kwargs)
        if low is not None and high is not None and self.range_low is not None:
            device = self.range_low.device
            self._set_range(low.to(device=device, dtype=torch.float64), high.to(device=device, dtype=torch.float64))
        return module

    def _warn_about_dropped_values(self) -> None:
        dropped = int(self.num_nonfinite)
        if dropped:
            total = int(self.num_samples) * self.num_neurons
            detail = (
                "no value was finite, so every value is undefined (NaN)"
                if dropped == total
                else "the histograms count the finite values only"
            )
            warnings.warn(
                f"{type(self).__name__}: left out {dropped} non-finite activation values (NaN or Inf) of {total}; "
                f"{detail}",
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
        max_state_bytes: refuse configurations whose histogram state would exceed this (``None``: no budget).

    ``compute()`` returns a float64 ``[N]`` tensor (shape ``[1]`` for one neuron, too), NaN for a
    neuron with no finite value; ``metric(batch)`` counts the batch and returns its own value
    (see `forward`). See the module docs for the range, undefined values and checkpoints.

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
        """Entropy of each neuron, ``[N]``; NaN for a neuron with no finite value."""
        self._settle()
        self._warn_about_dropped_values()
        return entropy_from_counts(self.counts, self.base, self.miller_madow, self.normalized)

    def _batch_value(self, bins: Tensor) -> Tensor:
        return entropy_from_counts(
            histogram_counts_in_range(bins, self.num_bins), self.base, self.miller_madow, self.normalized
        )


class NeuronMutualInformation(_ActivationHistogramMetric):
    """Streaming plug-in mutual information of every pair of neurons, ``[N, N]``.

    Keeps the joint histogram of each of the ``N (N - 1) / 2`` pairs (``8 * B**2`` bytes a pair).
    Counting costs about the same for any batch size, so batches are pooled as compact bin indices
    until ``pool_samples = max(4096, 4 * (B + 1)**2)`` samples have arrived (``N`` bytes a sample; a
    callback's 2,048 samples are then counted in one pass, which is 15 to 20 % faster than two); the pooled
    samples are always counted before ``compute()``, synchronisation and ``merge_state``;
    the diagonal of the result is each neuron's entropy. Arguments as in `NeuronEntropy`,
    plus ``backend`` (the counting kernel, see
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
        num_bins: int = _DEFAULTS.mutual_info_bins,
        value_range: ValueRange = None,
        *,
        backend: CountingBackend = "auto",
        **kwargs: Any,
    ) -> None:
        super().__init__(num_neurons, num_bins, value_range, **kwargs)
        resolve_counting_backend(backend, torch.device("cpu"))  # validates the name
        self.backend = backend
        self._pooled_dtype = bin_index_dtype(self.num_bins)
        self._clear_pending()
        self._joint_zero = False
        num_pairs = self.num_neurons * (self.num_neurons - 1) // 2
        self.add_state(
            "joint_counts",
            torch.zeros(num_pairs, self.num_bins, self.num_bins, dtype=torch.int64),
            dist_reduce_fx="sum",
        )

    @property
    def joint_counts(self) -> Tensor:  # type: ignore[override]
        """The joint histogram of every pair, ``[N (N - 1) / 2, B, B]`` int64 (the order of `pair_indices`).

        A state of the metric, always up to date: pooled samples are counted when it is read. The
        metric reads it only where it needs the histograms themselves (synchronisation, checkpoints,
        ``merge_state``, a full pool); ``compute()`` of a metric whose samples are all still pooled
        reduces them without writing the histograms, and ``reset()`` marks the state as zero rather
        than clearing tens of MiB.
        """
        self._flush_pending()
        if self._joint_zero:
            self._joint_store.zero_()
            self._joint_zero = False
        return self._joint_store

    @joint_counts.setter
    def joint_counts(self, value: Tensor) -> None:
        self._joint_store = value  # the whole state: whatever was pooled is part of it or dropped with it
        self._joint_zero = False
        self._clear_pending()

    def _reset_state(self, attr: str) -> None:
        if attr == "joint_counts":
            self._joint_zero = True  # zeroed when next read or counted into
        else:
            super()._reset_state(attr)

    @classmethod
    def state_bytes(cls, num_neurons: int, num_bins: int) -> int:
        """Bytes of histogram state: per-neuron counts plus one joint histogram per pair."""
        return 8 * num_neurons * num_bins + 8 * (num_neurons * (num_neurons - 1) // 2) * num_bins**2

    @property
    def _result_shape(self) -> tuple[int, ...]:
        return (self.num_neurons, self.num_neurons)

    @classmethod
    def _size_knobs(cls, num_neurons: int, num_bins: int, budget: int) -> str:
        fit_bins = _largest_fitting(lambda b: cls.state_bytes(num_neurons, b), budget, 1)
        fit_neurons = _largest_fitting(lambda n: cls.state_bytes(n, num_bins), budget, 1)
        bins = f"{fit_bins} would fit" if fit_bins else f"none fits {num_neurons} neurons"
        neurons = f"{fit_neurons} would fit" if fit_neurons else f"none fits {num_bins} bins"
        return (
            f"lower num_bins (state grows with num_bins**2; {bins}) or monitor fewer neurons "
            f"(grows with num_neurons**2; {neurons})"
        )

    def _pooled_bins_buffer(self, num_rows: int) -> Optional[Tensor]:
        return torch.empty(num_rows, self.num_neurons, dtype=self._pooled_dtype)

    def _count_pairs(self, bins: Tensor) -> None:
        # Counting touches every pair's (B + 1)**2 histogram cells whatever the batch size, so small
        # batches are pooled (as compact bin indices) and counted together.
        if self._pending_bins.add(bins.to(self._pooled_dtype)):
            self._flush_pending()

    def _flush_pending(self) -> None:
        pooled = self._pending_bins.take()
        if pooled is None:
            return
        (bins,) = pooled
        if self._joint_zero:
            self._joint_store.zero_()
            self._joint_zero = False
        add_joint_histogram_counts_in_range(bins, self.num_bins, self._joint_store, self.backend)

    def _clear_pending(self) -> None:
        pool = self.__dict__.get("_pending_bins")
        if pool is None:  # bin indices not yet counted into the joint state
            self._pending_bins = RowPool(max(4096, 4 * (self.num_bins + 1) ** 2))
        else:
            pool.clear()

    @property
    def pool_samples(self) -> int:
        """Samples pooled (as bin indices) before they are counted into the joint histograms."""
        return self._pending_bins.rows

    @pool_samples.setter
    def pool_samples(self, rows: int) -> None:
        self._pending_bins.rows = check_int(rows, "pool_samples", minimum=1)

    def compute(self) -> Tensor:
        """Symmetric ``[N, N]`` mutual information; the diagonal is each neuron's entropy.

        NaN for a pair without a sample where both values are finite (and on the diagonal for a
        neuron with no finite value).
        """
        self._finish_calibration()
        self._warn_about_dropped_values()
        if self._joint_zero and len(self._pending_bins):
            # every sample is still pooled: the MI comes from the pooled indices, and the state is not written
            # (on CPU with Numba each pair's histogram is reduced to its MI while it is in cache)
            pair_values = pairwise_mutual_information_in_range(
                self._pending_bins.peek()[0], self.num_bins, self.base, self.miller_madow, self.normalized, self.backend
            )
            return self._matrix_from_pairs(pair_values, self.counts)
        # without left-out values, a pair's marginals are its two neurons' own histograms
        shared = int(self.num_nonfinite) == 0
        return self._matrix(self.joint_counts.split(max(1, 2**22 // self.num_bins**2)), self.counts, shared)

    def _matrix(self, joint_blocks: Any, counts: Tensor, marginals_from_counts: bool = False) -> Tensor:
        """The MI matrix from blocks of joint histograms (row-major pairs) and per-neuron histograms."""
        rows, columns = cached_pair_indices(self.num_neurons, counts.device)
        values, first = [], 0
        for block in joint_blocks:
            size = block.shape[0]
            marginals = None
            if marginals_from_counts:
                marginals = (counts[rows[first : first + size]], counts[columns[first : first + size]])
            values.append(
                mutual_information_from_joint_counts(block, self.base, self.miller_madow, self.normalized, marginals)
            )
            first += size
        pair_values = torch.cat(values or [torch.zeros(0, dtype=torch.float64, device=counts.device)])
        return self._matrix_from_pairs(pair_values, counts)

    def _matrix_from_pairs(self, pair_values: Tensor, counts: Tensor) -> Tensor:
        """The MI matrix from the pairs' values (row-major) and the per-neuron histograms (its diagonal)."""
        diagonal = entropy_from_counts(counts, self.base, self.miller_madow, self.normalized)
        if self.normalized:
            diagonal = normalized_self_information(diagonal)
        return pairs_to_matrix(pair_values, diagonal)

    def _batch_value(self, bins: Tensor) -> Tensor:
        blocks = (counts for _, counts in iter_joint_histogram_counts_in_range(bins, self.num_bins, self.backend))
        return self._matrix(blocks, histogram_counts_in_range(bins, self.num_bins))
