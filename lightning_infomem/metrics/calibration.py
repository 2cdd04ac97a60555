"""Calibrating a binning range on held-back samples: shared by the streaming metrics and the callback.

A range is read off the first ``quota`` held-back samples of every process (gathered under DDP, so
that every process fixes the identical range), from their finite values only. Where those samples
hold no finite value at all, there is no range yet: the caller keeps waiting for finite samples
(and, if none ever comes, reports its values as undefined). With one range per neuron, a neuron
without a finite calibration value takes the range of all finite calibration values.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor
from torchmetrics.utilities.distributed import gather_all_tensors

from lightning_infomem.functional.binning import binning_dtype, calibrate_value_range

__all__ = ["HeldBackSamples", "calibrated_range", "gather_calibration_samples"]


class HeldBackSamples:
    """``[S, N]`` batches held back until a range is calibrated, and how many rows arrived since the last try.

    ``rows`` counts every arriving row, also those without a finite value, so that under DDP every
    process reaches a quota at the same batch (the processes see equal numbers of samples).
    """

    def __init__(self) -> None:
        self.batches: list[Tensor] = []
        self.rows = 0

    def add(self, batch: Tensor) -> None:
        if batch.shape[0]:
            self.batches.append(batch)
        self.rows += int(batch.shape[0])

    def take(self) -> list[Tensor]:
        """The held-back batches, leaving none."""
        batches, self.batches, self.rows = self.batches, [], 0
        return batches

    def keep(self, batches: list[Tensor]) -> None:
        """Hold back ``batches`` again (rows after a failed try), counting towards the next quota."""
        self.batches = [b for b in batches if b.shape[0]]
        self.rows = sum(int(b.shape[0]) for b in self.batches)

    def __len__(self) -> int:
        return sum(int(b.shape[0]) for b in self.batches)


def gather_calibration_samples(
    held_back: list[Tensor],
    quota: int,
    num_neurons: int,
    device: torch.device,
    process_group: Any = None,
    distributed: Optional[bool] = None,
) -> tuple[Tensor, Tensor]:
    """The samples a binning range is calibrated on, and all held-back local samples.

    Returns ``(calibration, local)`` in `binning_dtype`: ``local`` is every held-back sample of this
    process; the range uses only its first ``quota`` samples (so it does not depend on the batch
    size), gathered from every process when ``distributed`` (default: whenever
    ``torch.distributed`` is initialised with more than one process), so that all processes fix the
    identical range. A collective call: under DDP every process must make it.
    """
    dtype = binning_dtype(device)
    if held_back:
        local = torch.cat([t.to(device=device, dtype=dtype) for t in held_back])
    else:
        local = torch.zeros(0, num_neurons, device=device, dtype=dtype)
    calibration = local[:quota]
    if distributed is None:
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    if distributed and torch.distributed.get_world_size(process_group) > 1:
        calibration = torch.cat(gather_all_tensors(calibration.contiguous(), group=process_group))
    return calibration, local


def calibrated_range(
    samples: Tensor, per_neuron: bool = False, quantile: float = 0.0
) -> Optional[tuple[Tensor, Tensor]]:
    """`calibrate_value_range` of ``samples``, or ``None`` when they hold no finite value.

    With ``per_neuron``, a neuron without a finite value takes the range of all finite values, so
    that its later values are binned (and, outside it, counted as clipped) rather than all put in one bin.
    Synchronises with the device once (to decide whether a range exists).

    Example:
        >>> import torch
        >>> x = torch.tensor([[0.0, float("nan")], [4.0, float("nan")]])
        >>> [t.tolist() for t in calibrated_range(x, per_neuron=True)]
        [[0.0, 0.0], [4.0, 4.0]]
        >>> calibrated_range(torch.full((2, 2), float("inf"))) is None
        True
    """
    low, high = calibrate_value_range(samples, per_neuron=per_neuron, quantile=quantile)
    undefined = torch.isnan(low) | torch.isnan(high)
    if per_neuron and bool(undefined.any()):
        overall_low, overall_high = calibrate_value_range(samples, per_neuron=False, quantile=quantile)
        low, high = torch.where(undefined, overall_low, low), torch.where(undefined, overall_high, high)
        undefined = torch.isnan(low) | torch.isnan(high)
    if bool(undefined.all()):
        return None
    return low, high
