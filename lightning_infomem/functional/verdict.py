"""Is a network memorizing, since when, and which kind: the verdict from its training dynamics.

Pure functions of what a training run shows without clean labels: per epoch, the training accuracy (each
sample scored at its training pass, on its given label) and the validation accuracy (on the validation
labels, noisy or shortcut-carrying as they come); per training sample, the epoch from which it stays
fitted (``learned_epoch`` of `dynamics_scores`). Two kinds of evidence, each in ``[0, 1]``:

- **noise-like** (fitting labels the features do not support): the network goes on fitting training
  samples that the validation set does not follow. ``gap``: training minus validation accuracy (mean of
  the last two epochs); ``late_fraction``: the share of training samples fitted for good only after the
  gap opened (``onset``: the first epoch where the gap reaches ``settings.gap_opening``). Evidence: the
  smaller of the two, from ``noise_low`` (0) to ``noise_high`` (1).
- **shortcut-like** (a feature that gives the labels at once): ``instant_fraction``, the share of training
  samples fitted within the first ``instant_epochs`` epochs and never got wrong again. A shortcut that
  agrees with every label fits the whole set at once and nothing is ever forgotten; learning the task's
  own features leaves some samples to later epochs. Evidence from ``shortcut_low`` (0) to ``shortcut_high``
  (1); where the noise evidence holds, the labels the network fits at once can only be the share that is
  not noisy, so the thresholds ``mixed_low`` / ``mixed_high`` apply ("both").

``kind_score = noise - shortcut`` (+1 noise-like, -1 shortcut-like), ``memorizing_score = max(noise,
shortcut)``. What a run cannot show is said as such: with fewer than ``min_epochs`` epochs seen by both
training and validation the verdict is ``"undetermined"`` with ``memorizing=None``, and so is a
memorizing score between ``undetermined_low`` and ``undetermined_high``.

Which signals were kept and which dropped, with the study behind each threshold (chosen on seeds 0 and 1,
reported on seeds 2 to 6): docs/verdict.md.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Optional, Sequence

import torch
from torch import Tensor

__all__ = ["KINDS", "Verdict", "VerdictSettings", "memorization_evidence", "memorization_verdict"]

KINDS = ("label_noise", "shortcut", "both", "none", "undetermined")


@dataclass(frozen=True)
class VerdictSettings:
    """Thresholds of the verdict (see the module docs); the defaults were chosen on the study's seeds 0 and 1."""

    gap_opening: float = 0.05
    noise_low: float = 0.04
    noise_high: float = 0.10
    instant_epochs: int = 1
    shortcut_low: float = 0.96
    shortcut_high: float = 0.99
    mixed_low: float = 0.64
    mixed_high: float = 0.72
    min_epochs: int = 4
    undetermined_low: float = 0.35
    undetermined_high: float = 0.65

    def __post_init__(self) -> None:
        for low, high in (
            ("noise_low", "noise_high"),
            ("shortcut_low", "shortcut_high"),
            ("mixed_low", "mixed_high"),
            ("undetermined_low", "undetermined_high"),
        ):
            a, b = getattr(self, low), getattr(self, high)
            if not (isinstance(a, (int, float)) and isinstance(b, (int, float)) and 0.0 <= a < b <= 1.0):
                raise ValueError(f"VerdictSettings: need 0 <= {low} < {high} <= 1, received {a!r} and {b!r}")
        if not 0.0 < self.gap_opening < 1.0:
            raise ValueError(f"VerdictSettings: gap_opening must be in (0, 1), received {self.gap_opening!r}")
        for name in ("instant_epochs", "min_epochs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"VerdictSettings: {name} must be an int >= 0, received {value!r}")


@dataclass(frozen=True)
class Verdict:
    """Whether a run memorizes, since when and which kind, with the evidence behind it.

    ``memorizing``: ``True``, ``False`` or ``None`` (undetermined); ``kind``: one of `KINDS`; ``kind_score``
    in ``[-1, 1]`` (+1 noise-like, -1 shortcut-like, 0 without a lean); ``onset_epoch``: the epoch it
    started (``None`` when not memorizing); ``memorizing_score`` in ``[0, 1]``; ``evidence``: the signals
    (``gap``, ``late_fraction``, ``instant_fraction``, ``noise``, ``shortcut``, ``epochs``); ``reason``: why
    it is undetermined, if it is. The callback adds ``suspicious`` (training sample indices, most
    suspicious first) and ``layers`` (where the activations moved most since the onset).
    """

    memorizing: Optional[bool]
    kind: str
    kind_score: float
    onset_epoch: Optional[int]
    memorizing_score: float
    evidence: dict[str, float] = field(default_factory=dict)
    reason: str = ""
    suspicious: list[int] = field(default_factory=list)
    layers: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """The verdict as plain Python values (JSON-able)."""
        return asdict(self)


def _clip(value: float) -> float:
    return min(1.0, max(0.0, value))


def _ramp(value: float, low: float, high: float) -> float:
    return _clip((value - low) / (high - low)) if math.isfinite(value) else 0.0


def memorization_evidence(
    train_accuracy: Sequence[float],
    val_accuracy: Sequence[float],
    learned_epoch: Tensor,
    settings: Optional[VerdictSettings] = None,
    val_loss: Optional[Sequence[float]] = None,
) -> dict[str, float]:
    """The verdict's signals from per-epoch accuracies and per-sample ``learned_epoch`` (see the module docs).

    ``train_accuracy[e]`` and ``val_accuracy[e]`` are epoch ``e``'s (the same epochs, oldest first; NaN where
    an epoch has none); ``learned_epoch`` is ``[N]`` (``inf`` for a sample never fitted for good, NaN for one
    never presented); ``val_loss[e]``, if given, the validation loss of the same epochs. Returns ``{"epochs",
    "gap", "late_fraction", "instant_fraction", "gap_opened", "loss_turn", "noise", "shortcut"}``
    (``gap_opened`` NaN where the gap never opened, ``loss_turn`` NaN without validation losses).

    Example:
        >>> learned = torch.tensor([0.0, 0.0, 0.0, 7.0])  # one sample fitted only at epoch 7
        >>> train = [0.7, 0.75, 0.75, 0.75, 0.8, 0.8, 0.9, 1.0]
        >>> val = [0.7, 0.75, 0.75, 0.75, 0.7, 0.65, 0.6, 0.6]
        >>> loss = [0.6, 0.55, 0.5, 0.52, 0.6, 0.7, 0.8, 0.9]
        >>> e = memorization_evidence(train, val, learned, val_loss=loss)
        >>> e["gap_opened"], e["loss_turn"], round(e["gap"], 2), e["late_fraction"], e["noise"]
        (4.0, 2.0, 0.35, 0.25, 1.0)
    """
    settings = settings or VerdictSettings()
    train = torch.as_tensor(list(train_accuracy), dtype=torch.float64)
    val = torch.as_tensor(list(val_accuracy), dtype=torch.float64)
    if train.shape != val.shape:
        raise ValueError(
            f"memorization_evidence: train_accuracy and val_accuracy must cover the same epochs, received "
            f"{train.numel()} and {val.numel()} values"
        )
    learned = torch.as_tensor(learned_epoch, dtype=torch.float64).flatten()
    presented = ~torch.isnan(learned)
    learned = learned[presented]
    both = ~(torch.isnan(train) | torch.isnan(val))
    epochs = int(both.sum())
    gap_series = torch.where(both, train - val, torch.full_like(train, math.nan))
    seen = torch.nonzero(both).flatten()
    gap = float(gap_series[seen[-2:]].mean()) if seen.numel() else math.nan
    opened = torch.nonzero(gap_series >= settings.gap_opening).flatten()
    onset = float(opened[0]) if opened.numel() else math.nan
    loss_turn = math.nan
    if val_loss is not None:
        losses = torch.as_tensor(list(val_loss), dtype=torch.float64)
        if losses.shape != train.shape:
            raise ValueError(
                f"memorization_evidence: val_loss must cover the epochs of train_accuracy, received {losses.numel()} "
                f"values for {train.numel()}"
            )
        finite = torch.nonzero(torch.isfinite(losses)).flatten()
        if finite.numel():
            loss_turn = float(finite[torch.argmin(losses[finite])])
    if learned.numel():
        cut = onset if math.isfinite(onset) else float(seen[-1]) if seen.numel() else math.inf
        late = float(((learned > cut) & torch.isfinite(learned)).double().mean())
        instant = float((learned <= settings.instant_epochs).double().mean())
    else:
        late = instant = math.nan
    noise = _ramp(min(gap, late), settings.noise_low, settings.noise_high)
    if noise >= 0.5:
        shortcut = _ramp(instant, settings.mixed_low, settings.mixed_high)
    else:
        shortcut = _ramp(instant, settings.shortcut_low, settings.shortcut_high)
    return {
        "epochs": float(epochs),
        "gap": gap,
        "late_fraction": late,
        "instant_fraction": instant,
        "gap_opened": onset,
        "loss_turn": loss_turn,
        "noise": noise,
        "shortcut": shortcut,
    }


def memorization_verdict(
    evidence: dict[str, float], train_accuracy: Sequence[float] = (), settings: Optional[VerdictSettings] = None
) -> Verdict:
    """The verdict from `memorization_evidence` (and the training accuracies, for a shortcut's onset).

    Example:
        >>> v = memorization_verdict({"epochs": 8.0, "gap": 0.3, "late_fraction": 0.2, "instant_fraction": 0.4,
        ...                           "gap_opened": 4.0, "loss_turn": 4.0, "noise": 1.0, "shortcut": 0.0})
        >>> v.memorizing, v.kind, v.kind_score, v.onset_epoch
        (True, 'label_noise', 1.0, 4)
    """
    settings = settings or VerdictSettings()
    epochs = int(evidence.get("epochs", 0))
    noise, shortcut = float(evidence.get("noise", 0.0)), float(evidence.get("shortcut", 0.0))
    score = max(noise, shortcut)
    kind_score = max(-1.0, min(1.0, noise - shortcut))
    if epochs < settings.min_epochs:
        return Verdict(
            None,
            "undetermined",
            0.0,
            None,
            score,
            dict(evidence),
            f"{epochs} epoch(s) seen by both training and validation; the verdict needs {settings.min_epochs}",
        )
    if settings.undetermined_low < score < settings.undetermined_high:
        return Verdict(
            None,
            "undetermined",
            kind_score,
            None,
            score,
            dict(evidence),
            f"weak evidence: memorizing score {score:.2f} between {settings.undetermined_low} and "
            f"{settings.undetermined_high}",
        )
    if score < 0.5:
        return Verdict(False, "none", kind_score, None, score, dict(evidence))
    is_noise, is_shortcut = noise >= 0.5, shortcut >= 0.5
    kind = "both" if is_noise and is_shortcut else "label_noise" if is_noise else "shortcut"
    onsets = []
    if is_noise:  # where the validation loss turns up; without validation losses, where the gap opened
        for key in ("loss_turn", "gap_opened"):
            if math.isfinite(evidence.get(key, math.nan)):
                onsets.append(int(evidence[key]))
                break
    if is_shortcut:
        onsets.append(_fitted_epoch(train_accuracy, evidence.get("instant_fraction", math.nan)))
    onset = min(onsets) if onsets else None
    return Verdict(True, kind, kind_score, onset, score, dict(evidence))


def _fitted_epoch(train_accuracy: Sequence[float], level: float) -> int:
    """The first epoch whose training accuracy reaches ``level`` (0 where none is known)."""
    for epoch, value in enumerate(train_accuracy):
        if math.isfinite(value) and math.isfinite(level) and value >= level - 1e-9:
            return epoch
    return 0
