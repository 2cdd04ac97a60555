"""Per-sample training-dynamics statistics from the logits of the training passes themselves.

For one presentation of a sample (its logits ``z`` in a training step, its assigned label ``y``):

* loss: ``-log softmax(z)[y]`` (cross-entropy), or the caller's per-sample loss;
* margin: ``z[y] - max_{c != y} z[c]`` (Pleiss et al., NeurIPS 2020: its mean over training is the
  area under the margin, AUM; low marks mislabelled samples);
* probability: ``softmax(z)[y]`` (dataset cartography, Swayamdipta et al., EMNLP 2020: its mean is the
  confidence, its standard deviation the variability);
* correct: ``margin > 0`` (the assigned class has the strictly largest logit).

`presentation_statistics` gives these for a batch as one ``[B, K]`` tensor, so that a single
``index_add_`` accumulates them per sample. Accumulated over the presentations of a sample:

* cumulative sample loss (Ravikumar et al., ICML 2025): the sum of the losses; mean loss: sum / count;
* AUM: mean margin; confidence: mean probability; variability: ``sqrt(mean(p**2) - mean(p)**2)``;
* forgetting events (Toneva et al., ICLR 2019): correct-to-incorrect transitions between consecutive
  epochs (a sample presented several times in one epoch counts as correct in that epoch when it was
  correct at every presentation of it); a sample never learned (never correct) counts as forgotten
  infinitely often, as in the paper; `update_forgetting` keeps this state epoch by epoch;
* learned epoch: the first epoch from which the sample is correct at every later epoch it was seen
  (``inf`` while it is not learned).
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch
from torch import Tensor

__all__ = [
    "STATISTICS",
    "ForgettingState",
    "dynamics_scores",
    "new_forgetting_state",
    "presentation_statistics",
    "update_forgetting",
]

# columns of presentation_statistics, and of the per-sample sums the callback accumulates
STATISTICS = ("presentations", "loss", "margin", "probability", "probability_squared", "correct")


def presentation_statistics(logits: Tensor, targets: Tensor, losses: Optional[Tensor] = None) -> Tensor:
    """``[B, len(STATISTICS)]`` statistics of one presentation of each sample, in float64 (float32 on MPS).

    Args:
        logits: ``[B, C]`` logits of the training pass (any floating dtype).
        targets: ``[B]`` integer class labels, the ones trained on.
        losses: ``[B]`` per-sample losses to record instead of the cross-entropy of ``logits``.

    Example:
        >>> import torch
        >>> stats = presentation_statistics(torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0]))
        >>> dict(zip(STATISTICS, stats[1].tolist()))["margin"], stats[:, STATISTICS.index("correct")].tolist()
        (-1.0, [1.0, 0.0])
    """
    if logits.ndim != 2:
        raise ValueError(
            f"logits must have shape [batch, classes], received {list(logits.shape)}; pass output_transform=... "
            "that picks the classification logits"
        )
    if targets.ndim != 1 or targets.shape[0] != logits.shape[0] or targets.is_floating_point():
        raise ValueError(
            f"targets must be integer class labels of shape [{logits.shape[0]}], received "
            f"{targets.dtype} {list(targets.shape)}"
        )
    dtype = torch.float32 if logits.device.type == "mps" else torch.float64
    z = logits.detach().to(dtype)
    y = targets.detach().long().unsqueeze(1)
    log_probability = torch.log_softmax(z, dim=1).gather(1, y).squeeze(1)
    assigned = z.gather(1, y).squeeze(1)
    others = z.scatter(1, y, -math.inf).amax(dim=1) if z.shape[1] > 1 else torch.full_like(assigned, -math.inf)
    margin = assigned - others
    probability = log_probability.exp()
    loss = -log_probability if losses is None else losses.detach().to(dtype).reshape(-1)
    return torch.stack(
        [torch.ones_like(margin), loss, margin, probability, probability * probability, (margin > 0).to(dtype)], dim=1
    )


class ForgettingState(NamedTuple):
    """Per-sample state of the forgetting and learned-epoch statistics, ``[N]`` each.

    ``last_correct``: 1 correct, 0 incorrect at the latest epoch seen, -1 never seen; ``events``: forgetting
    events so far; ``ever_correct``; ``last_incorrect_epoch`` (-1: never incorrect); ``first_epoch``
    (-1: never seen).
    """

    last_correct: Tensor
    events: Tensor
    ever_correct: Tensor
    last_incorrect_epoch: Tensor
    first_epoch: Tensor


def new_forgetting_state(num_samples: int, device: Optional[torch.device] = None) -> ForgettingState:
    """The state of ``num_samples`` samples never seen."""
    minus_one = torch.full((num_samples,), -1, dtype=torch.int64, device=device)
    return ForgettingState(
        minus_one.clone(),
        torch.zeros(num_samples, dtype=torch.int64, device=device),
        torch.zeros(num_samples, dtype=torch.bool, device=device),
        minus_one.clone(),
        minus_one.clone(),
    )


def update_forgetting(state: ForgettingState, seen: Tensor, correct: Tensor, epoch: int) -> ForgettingState:
    """The state after one epoch: ``seen`` and ``correct`` are ``[N]`` presentation and correct counts of it.

    A sample seen in the epoch is correct in it when it was correct at every presentation.

    Example:
        >>> import torch
        >>> state = new_forgetting_state(2)
        >>> state = update_forgetting(state, torch.tensor([1, 1]), torch.tensor([1, 0]), epoch=0)
        >>> state = update_forgetting(state, torch.tensor([1, 1]), torch.tensor([0, 1]), epoch=1)
        >>> state.events.tolist(), state.last_incorrect_epoch.tolist()
        ([1, 0], [1, 0])
    """
    was_seen = seen > 0
    now_correct = was_seen & (correct >= seen)
    forgotten = was_seen & (state.last_correct == 1) & ~now_correct
    last_correct = torch.where(was_seen, now_correct.long(), state.last_correct)
    incorrect = was_seen & ~now_correct
    return ForgettingState(
        last_correct,
        state.events + forgotten.long(),
        state.ever_correct | now_correct,
        torch.where(incorrect, torch.full_like(state.last_incorrect_epoch, epoch), state.last_incorrect_epoch),
        torch.where(was_seen & (state.first_epoch < 0), torch.full_like(state.first_epoch, epoch), state.first_epoch),
    )


def dynamics_scores(sums: Tensor, state: ForgettingState) -> dict[str, Tensor]:
    """Every training-dynamics score from per-sample ``sums`` (``[N, len(STATISTICS)]``) and the forgetting state.

    Returns float64 ``[N]`` tensors: ``cumulative_loss``, ``mean_loss``, ``aum``, ``forgetting`` (``inf``
    for a sample never learned), ``learned_epoch`` (``inf`` while not learned), ``confidence``,
    ``variability`` and ``presentations``; NaN for a sample never presented.

    Example:
        >>> import torch
        >>> sums = presentation_statistics(torch.tensor([[2.0, 0.0]]), torch.tensor([0]))
        >>> state = update_forgetting(new_forgetting_state(1), torch.tensor([1]), torch.tensor([1]), epoch=0)
        >>> {k: round(float(v), 3) for k, v in dynamics_scores(sums, state).items()}["aum"]
        2.0
    """
    sums = sums.to(torch.float64)
    count = sums[:, STATISTICS.index("presentations")]
    seen = count > 0
    safe = count.clamp_min(1)
    nan = torch.full_like(count, math.nan)
    inf = torch.full_like(count, math.inf)

    def mean(column: str) -> Tensor:
        return torch.where(seen, sums[:, STATISTICS.index(column)] / safe, nan)

    confidence = mean("probability")
    variance = (mean("probability_squared") - confidence * confidence).clamp_min(0)
    events = state.events.to(torch.float64)
    learned_from = torch.where(state.last_incorrect_epoch >= 0, state.last_incorrect_epoch + 1, state.first_epoch).to(
        torch.float64
    )
    return {
        "cumulative_loss": torch.where(seen, sums[:, STATISTICS.index("loss")], nan),
        "mean_loss": mean("loss"),
        "aum": mean("margin"),
        "forgetting": torch.where(seen, torch.where(state.ever_correct, events, inf), nan),
        "learned_epoch": torch.where(seen, torch.where(state.last_correct == 1, learned_from, inf), nan),
        "confidence": confidence,
        "variability": torch.where(seen, variance.sqrt(), nan),
        "presentations": count.clone(),
    }
