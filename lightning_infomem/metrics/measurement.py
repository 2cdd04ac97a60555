"""One evaluation's information measurement of a set of layers: metrics, sample quota, range calibration.

`InformationMeasures` keeps one `ActivationMeasurement` per validation dataloader; the
measurement receives ``[batch, neurons]`` activations per layer (already reduced and subset) and
turns them into per-layer entropy vectors and MI matrices, and into the values the callback logs.
It knows nothing of Lightning: it is driven by ``observe`` and ``results`` calls, which makes it
usable (and testable) on its own.

Binning ranges are calibrated on each process's first ``calibration_samples / world_size``
samples of every layer (gathered under DDP), from finite values only: one range per layer, per
neuron, or one over all layers (``"global"``), chosen separately for entropy and for MI. A layer
whose calibration samples hold no finite value keeps waiting for finite samples; at the end, a
layer that never had one is undefined and its values are NaN.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Optional

import torch
from torch import Tensor
from torchmetrics.utilities.distributed import gather_all_tensors

from lightning_infomem.functional.effective_rank import effective_rank_from_gram
from lightning_infomem.functional.joint_counts import (
    cached_pair_indices,
)
from lightning_infomem.metrics.calibration import HeldBackSamples, calibrate_held_back
from lightning_infomem.metrics.information import (
    NeuronEntropy,
    NeuronMutualInformation,
    StateTooLargeError,
    format_bytes,
)
from lightning_infomem.metrics.settings import MeasurementSettings
from lightning_infomem.pooling import RowPool

__all__ = ["ActivationMeasurement", "LayerResult", "MeasurementSettings", "summarize"]


_LONGEST_WAIT = 4  # the first calibration waits for the other layers until one holds this many times its target
_UPDATE_ROWS = 1024  # calibrated activations are counted in updates of at least this many rows (see pooling)


class LayerResult(NamedTuple):
    """One layer's measurement: ``entropy`` ``[N]``, ``mutual_info`` ``[N, N]`` (diagonal: entropy), both
    float64 and NaN where undefined, the ``clipped_fraction`` of its values (over all processes), whether
    the layer had any finite activation at all (``defined``), and the ``effective_rank`` (RankMe) of its
    measured samples of every process, those with every value finite (NaN where none is)."""

    entropy: Tensor
    mutual_info: Tensor
    clipped_fraction: float
    defined: bool
    effective_rank: float = math.nan

    @property
    def spread(self) -> bool:
        """Whether any monitored neuron varied (positive entropy): a layer without spread measures nothing."""
        return bool((self.entropy > 0).any())

    @property
    def mean_entropy(self) -> float:
        """Mean entropy over the neurons with a defined entropy; NaN for an undefined layer."""
        if not self.defined:
            return math.nan
        return float(torch.nanmean(self.entropy))

    @property
    def pairs(self) -> Tensor:
        """The MI of each pair ``i < j`` (the order of `pair_indices`), ``[N (N - 1) / 2]``; NaN where undefined."""
        rows, columns = cached_pair_indices(self.mutual_info.shape[0], self.mutual_info.device)
        return self.mutual_info[rows, columns]

    @property
    def mean_mutual_info(self) -> float:
        """Mean MI over the defined pairs (0 for one neuron: no pairs); NaN for an undefined layer."""
        if not self.defined:
            return math.nan
        pairs = self.pairs
        if pairs.numel() == 0:
            return 0.0
        return float(torch.nanmean(pairs))  # NaN when no pair is defined


def summarize(results: dict[str, LayerResult]) -> tuple[float, float]:
    """``(entropy, mutual_info)`` over the layers: the mean over every defined neuron and every defined pair.

    NaN when any layer is undefined (a diverged model must not look like a measured one) and when no layer
    has spread (a dead network, every monitored neuron constant, measures nothing: its H = I = 0 must not
    look like the least memorizing model). Layers without spread are left out while any layer has
    spread; the MI is 0 when no layer has a pair of neurons.
    """
    if not results or any(not result.defined for result in results.values()):
        return math.nan, math.nan
    if not any(result.spread for result in results.values()):
        return math.nan, math.nan
    results = {name: result for name, result in results.items() if result.spread}
    entropies = torch.cat([result.entropy for result in results.values()])
    entropy = float(torch.nanmean(entropies))
    pair_sum, pair_count = 0.0, 0
    for result in results.values():
        pairs = result.pairs
        defined = ~torch.isnan(pairs)
        pair_sum += float(pairs[defined].sum())
        pair_count += int(defined.sum())
    return entropy, (pair_sum / pair_count if pair_count else 0.0)


class ActivationMeasurement:
    """Streaming H and I of several layers over one stream of evaluation samples.

    Args:
        layer_names: the layers, in a fixed order (the order of collective steps under DDP).
        settings: estimator settings.
        max_samples: samples per layer over all processes (``None``: all).
        world_size: number of processes sharing the samples (each takes ``ceil(max_samples / world_size)``).
        distributed: whether this measurement runs under a distributed strategy (collective steps).

    Example:
        >>> import torch
        >>> measurement = ActivationMeasurement(["a"], MeasurementSettings(calibration_samples=64))
        >>> measurement.observe("a", torch.randn(100, 4))
        >>> result = measurement.results()["a"]
        >>> result.entropy.shape, result.mutual_info.shape, result.defined
        (torch.Size([4]), torch.Size([4, 4]), True)
    """

    def __init__(
        self,
        layer_names: list[str],
        settings: MeasurementSettings,
        *,
        max_samples: Optional[int] = None,
        world_size: int = 1,
        distributed: bool = False,
    ) -> None:
        self.layer_names = list(layer_names)
        self.settings = settings
        self.world_size = world_size
        self.distributed = distributed
        self.sample_quota = None if max_samples is None else -(-max_samples // world_size)
        self.calibration_quota = -(-settings.calibration_samples // world_size)
        self.entropy_metrics: dict[str, NeuronEntropy] = {}
        self.mutual_info_metrics: dict[str, NeuronMutualInformation] = {}
        self.reset()

    def reset(self) -> None:
        """Start a new evaluation: the counts, quotas and ranges are cleared; the metrics are kept (and reused)."""
        for metric in (*self.entropy_metrics.values(), *self.mutual_info_metrics.values()):
            metric.reset()
        self.seen = {name: 0 for name in self.layer_names}
        self._held_back = {name: HeldBackSamples() for name in self.layer_names}
        self._calibrated: set[str] = set()
        self._observed: set[str] = set()
        self._pending: dict[str, RowPool] = {}  # calibrated batches not yet counted
        self._gram: dict[str, Tensor] = {}  # each layer's sum of x^T x over its finite samples (effective rank)
        self._first_calibration_done = False

    # ------------------------------------------------------------------------------ sampling
    def remaining(self, name: str) -> Optional[int]:
        """Samples layer ``name`` still takes on this process (``None``: no limit)."""
        if self.sample_quota is None:
            return None
        return max(0, self.sample_quota - self.seen[name])

    def observe(self, name: str, activations: Tensor, neurons: Optional[Tensor] = None) -> None:
        """Add a batch ``[B, N]`` of layer ``name``, cut to the layer's remaining sample quota (the quota is kept
        here alone); ``neurons``: the columns to keep (after the cut, so no work is spent on rows past the quota)."""
        remaining = self.remaining(name)
        if remaining is not None:
            activations = activations[:remaining]
        if neurons is not None and activations.shape[0]:
            activations = activations.index_select(1, neurons.to(activations.device))
        if activations.shape[0] == 0:
            return
        if activations.untyped_storage().nbytes() > activations.numel() * activations.element_size():
            # a view of a larger tensor (e.g. the first token of [B, T, D] hidden states): keep only the rows
            activations = activations.clone()
        self.seen[name] += int(activations.shape[0])
        if self.settings.effective_rank:
            self._add_to_gram(name, activations)
        metric = self.entropy_metrics.get(name)
        if metric is None or metric.num_neurons != activations.shape[1] or metric.counts.device != activations.device:
            self._create_metrics(name, activations)
        self._observed.add(name)
        if name in self._calibrated:
            self._update(name, activations)
            return
        self._held_back[name].add(activations)
        self._try_calibration(final=False)

    def _create_metrics(self, name: str, activations: Tensor) -> None:
        settings, width = self.settings, int(activations.shape[1])
        common: dict[str, Any] = {
            "miller_madow": settings.miller_madow,
            "sync_on_compute": True,
            "distributed_available_fn": lambda: self.distributed,
        }
        entropy = NeuronEntropy(width, settings.entropy_bins, max_state_bytes=settings.max_state_bytes, **common)
        mutual_info = NeuronMutualInformation(
            width, settings.mutual_info_bins, max_state_bytes=settings.max_state_bytes, **common
        )
        self.entropy_metrics[name] = entropy.to(activations.device)
        self.mutual_info_metrics[name] = mutual_info.to(activations.device)

    def _update(self, name: str, activations: Tensor) -> None:
        """Count a batch, pooled with the following ones up to ``_UPDATE_ROWS`` rows (fewer, larger updates
        are cheaper: every update runs the same dozen tensor operations per metric)."""
        if self._pending.setdefault(name, RowPool(_UPDATE_ROWS)).add(activations):
            self._flush_updates(name)

    def _flush_updates(self, name: str) -> None:
        pool = self._pending.pop(name, None)
        pooled = None if pool is None else pool.take()
        if pooled is not None:
            (batch,) = pooled
            self.entropy_metrics[name].update(batch)
            self.mutual_info_metrics[name].update(batch)

    # --------------------------------------------------------------------------- calibration
    def _target(self) -> int:
        return self.calibration_quota if self.sample_quota is None else min(self.calibration_quota, self.sample_quota)

    def _try_calibration(self, final: bool) -> None:
        """Calibrate the layers whose held-back samples reached the target (all waiting layers if ``final``).

        The first calibration waits until every layer has its samples, so that one global range can
        pool them, but not for ever: once a layer holds ``_LONGEST_WAIT`` times its target (a monitored
        module that is never called would otherwise make every other layer hold back all its samples),
        the layers seen so far are calibrated. Afterwards a layer still without a range (no finite
        value yet, or seen later) is retried on its own (all of them together under global binning).
        Decisions depend only on sample counts, which are equal on every process, so every process
        takes the same collective steps.
        """
        waiting = [name for name in self.layer_names if name not in self._calibrated and name in self._observed]
        if not waiting:
            return
        target = self._target()
        any_global = "global" in (self.settings.entropy_binning, self.settings.mutual_info_binning)
        if not self._first_calibration_done or any_global:
            watched = self.layer_names if not self._first_calibration_done else waiting
            rows = [self._held_back[name].rows for name in waiting]
            if (
                final
                or all(self._held_back[name].rows >= target for name in watched)
                or max(rows) >= (_LONGEST_WAIT * target)
            ):
                self._calibrate(waiting, final)
            return
        for name in waiting:
            if final or self._held_back[name].rows >= target:
                self._calibrate([name], final)

    def _calibrate(self, group: list[str], final: bool) -> None:
        """Fix the ranges of ``group`` on its held-back samples (a collective step under DDP)."""
        self._first_calibration_done = True
        settings = self.settings
        outcomes = calibrate_held_back(
            {name: self._held_back[name] for name in group},
            [settings.entropy_binning, settings.mutual_info_binning],
            self.calibration_quota,
            {name: self.entropy_metrics[name].num_neurons for name in group},
            {name: self.entropy_metrics[name].counts.device for name in group},
            quantile=settings.range_quantile,
            final=final,
            distributed=self.distributed,
        )
        for name, outcome in outcomes.items():
            if outcome.ranges is None:  # no finite value yet: counted as undefined, later samples are awaited
                for metric in (self.entropy_metrics[name], self.mutual_info_metrics[name]):
                    metric.count_undefined(outcome.unusable)
                continue
            entropy_range, mutual_info_range = outcome.ranges
            self.entropy_metrics[name].set_value_range(*entropy_range)
            self.mutual_info_metrics[name].set_value_range(*mutual_info_range)
            if outcome.samples.shape[0]:
                self._update(name, outcome.samples)
            self._calibrated.add(name)

    # ------------------------------------------------------------------------------- results
    @property
    def measured(self) -> list[str]:
        """Layers that received activations in this evaluation (on this process)."""
        return [name for name in self.layer_names if name in self._observed]

    def results(self) -> dict[str, LayerResult]:
        """Finish calibration and compute every measured layer (collective steps under DDP)."""
        self._try_calibration(final=True)
        for name in list(self._pending):
            self._flush_updates(name)
        out: dict[str, LayerResult] = {}
        for name in self.measured:
            entropy_metric = self.entropy_metrics[name]
            entropy = entropy_metric.compute()
            mutual_info = self.mutual_info_metrics[name].compute()
            with entropy_metric.sync_context(should_sync=self.distributed):  # all processes' small counters
                clipped = entropy_metric.clipped_fraction
                defined = int(entropy_metric.num_samples) * entropy_metric.num_neurons > int(
                    entropy_metric.num_nonfinite
                )
            rank = self._effective_rank(name) if self.settings.effective_rank else math.nan
            out[name] = LayerResult(entropy, mutual_info, clipped, defined, rank)
        return out

    def _add_to_gram(self, name: str, activations: Tensor) -> None:
        """Add a batch's ``x^T x`` (its rows with every value finite), in float64: products and sums, so that the
        sum does not depend on how the samples are split into batches or processes (float32 products differed by
        about 1e-4 relative in the effective rank between one process, DDP and batch sizes)."""
        x = activations.detach().to(torch.float64)
        if x.device.type == "cpu":  # no synchronisation to avoid: check the small product, not the batch
            product = x.T @ x
            if not bool(torch.isfinite(product).all()):  # a non-finite value in the batch
                x = torch.where(torch.isfinite(x).all(dim=1, keepdim=True), x, 0.0)
                product = x.T @ x
        else:  # a row with a non-finite value is zeroed, which leaves it out of x^T x, without a host round trip
            x = torch.where(torch.isfinite(x).all(dim=1, keepdim=True), x, 0.0)
            product = x.T @ x
        gram = self._gram.get(name)
        if gram is None:
            try:
                gram = self._gram[name] = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64, device=x.device)
            except (RuntimeError, MemoryError) as error:  # the allocator's words name no layer and no fix
                raise StateTooLargeError(
                    f"layer {name!r}: the effective rank's Gram matrix of its {x.shape[1]} neurons would take "
                    f"{format_bytes(8 * x.shape[1] ** 2)}, which could not be allocated ({str(error)[:80]}); monitor "
                    "fewer neurons (max_neurons=...) or leave the effective rank out "
                    "(settings=MeasurementSettings(effective_rank=False))"
                ) from None
        gram += product

    def _effective_rank(self, name: str) -> float:
        """RankMe of the layer's measured samples, of every process (a collective step under DDP)."""
        width = self.entropy_metrics[name].num_neurons
        gram = self._gram.get(name)
        if gram is None:
            gram = torch.zeros(width, width, dtype=torch.float64, device=self.entropy_metrics[name].counts.device)
        if self.distributed:
            gram = torch.stack(gather_all_tensors(gram.contiguous())).sum(dim=0)
        return float(effective_rank_from_gram(gram))
