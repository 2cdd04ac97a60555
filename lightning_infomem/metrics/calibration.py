"""Calibrating binning ranges on held-back samples: the one calibrator of the streaming metrics and the measurement.

A range is read off the first ``quota`` held-back samples of every process (gathered under DDP, so
that every process fixes the identical range), from their finite values only. Where those samples
hold no finite value at all, there is no range yet: the caller keeps waiting for finite samples
(and, if none ever comes, reports its values as undefined). With one range per neuron, a neuron
without a finite calibration value takes the range of all finite calibration values.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal, NamedTuple, Optional

import torch
from torch import Tensor
from torchmetrics.utilities.distributed import gather_all_tensors

from lightning_infomem.functional.binning import binning_dtype, calibrate_value_range

__all__ = [
    "Binning",
    "Calibration",
    "HeldBackSamples",
    "calibrate_held_back",
    "calibrated_range",
    "gather_calibration_samples",
    "policy_ranges",
]

Binning = Literal["layer", "neuron", "global"]


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


def policy_ranges(
    binning: Binning, samples: Mapping[str, Tensor], quantile: float = 0.0
) -> dict[str, Optional[tuple[Tensor, Tensor]]]:
    """The range of each stream of ``samples`` under one policy; ``None`` where a stream has no finite value.

    ``"global"``: one range over the values of every stream; ``"layer"``: one range per stream;
    ``"neuron"``: one per neuron of each stream.

    Example:
        >>> import torch
        >>> found = policy_ranges("global", {"a": torch.tensor([[0.0], [1.0]]), "b": torch.tensor([[5.0], [2.0]])})
        >>> [float(v) for v in found["a"]], [float(v) for v in found["b"]]
        ([0.0, 5.0], [0.0, 5.0])
    """
    if binning == "global":
        pooled = torch.cat([s.reshape(-1, 1) for s in samples.values()]) if samples else torch.zeros(0, 1)
        found = calibrated_range(pooled, quantile=quantile)
        # a stream of only NaN / Inf stays undefined, whatever the range of the others
        return {name: found if bool(torch.isfinite(s).any()) else None for name, s in samples.items()}
    return {name: calibrated_range(s, per_neuron=binning == "neuron", quantile=quantile) for name, s in samples.items()}


class Calibration(NamedTuple):
    """One stream's outcome: ``ranges`` (one per requested policy) and every held-back local ``samples`` to
    count now; or, where the calibration samples had no finite value, ``ranges=None`` and the number of
    ``unusable`` rows to count as undefined (the rows after the quota are held back again for the next try)."""

    ranges: Optional[tuple[tuple[Tensor, Tensor], ...]]
    samples: Optional[Tensor]
    unusable: int


def calibrate_held_back(
    held_back: Mapping[str, HeldBackSamples],
    policies: Sequence[Binning],
    quota: int,
    widths: Mapping[str, int],
    devices: Mapping[str, torch.device],
    *,
    quantile: float = 0.0,
    final: bool = False,
    distributed: Optional[bool] = None,
    process_group: Any = None,
) -> dict[str, Calibration]:
    """Fix the ranges of every stream in ``held_back`` on its first ``quota`` held-back samples (all processes').

    One range per stream and policy (``"global"`` pools the streams given together). A collective step
    under DDP: every process calls it with the same streams. With ``final`` every held-back sample is in
    the calibration set, so a stream without a finite value counts all of them as unusable.

    Example:
        >>> import torch
        >>> held = HeldBackSamples()
        >>> held.add(torch.tensor([[0.0, 1.0], [4.0, 3.0]]))
        >>> out = calibrate_held_back({"a": held}, ["layer"], 2, {"a": 2}, {"a": torch.device("cpu")})
        >>> [float(v) for v in out["a"].ranges[0]], out["a"].samples.shape[0]
        ([0.0, 4.0], 2)
    """
    samples, local = {}, {}
    for name, held in held_back.items():
        samples[name], local[name] = gather_calibration_samples(
            held.take(), quota, widths[name], devices[name], process_group, distributed
        )
    found = {policy: policy_ranges(policy, samples, quantile) for policy in dict.fromkeys(policies)}
    out: dict[str, Calibration] = {}
    for name, held in held_back.items():
        ranges = tuple(found[policy][name] for policy in policies)
        if any(r is None for r in ranges):  # no finite value: these samples are unusable; wait for finite ones
            unusable = local[name] if final else local[name][:quota]
            if not final:
                held.keep([local[name][quota:]])
            out[name] = Calibration(None, None, int(unusable.shape[0]))
        else:
            out[name] = Calibration(ranges, local[name], 0)  # type: ignore[arg-type]
    return out
