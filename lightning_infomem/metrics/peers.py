"""Label-free statistics of a model's softmax predictions as a streaming torchmetrics ``Metric``.

The state is the ``[C, C]`` Gram matrix of the softmax probabilities, the sum of the largest probability and
the sample count, all summed across processes: the nuclear norm of the ``[S, C]`` softmax matrix is the sum
of the square roots of its Gram matrix's eigenvalues, so any split into batches and processes gives the
value of `lightning_infomem.functional.peers.softmax_nuclear_norm` on all the samples.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from lightning_infomem.checks import check_int
from lightning_infomem.functional.peers import softmax_nuclear_norm_from_gram

__all__ = ["SoftmaxPeers"]


class SoftmaxPeers(Metric):
    """Average confidence (mean maximum softmax) and the normalised softmax nuclear norm (Deng et al., ICML 2023)
    of unlabelled logits; ``compute()`` returns ``{"max_softmax": ..., "nuclear_norm": ...}`` (NaN before any
    sample).

    Args:
        num_classes: the logits' width.
        kwargs: passed to ``torchmetrics.Metric``.

    Example:
        >>> import torch
        >>> metric = SoftmaxPeers(num_classes=3)
        >>> metric.update(torch.tensor([[9.0, 0.0, 0.0], [0.0, 9.0, 0.0], [0.0, 0.0, 9.0]]))
        >>> {k: round(float(v), 3) for k, v in metric.compute().items()}
        {'max_softmax': 1.0, 'nuclear_norm': 1.0}
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    def __init__(self, num_classes: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.num_classes = check_int(num_classes, "num_classes", minimum=2)
        self.add_state("gram", torch.zeros(num_classes, num_classes, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("max_sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, logits: Tensor) -> None:
        if logits.ndim != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(
                f"SoftmaxPeers expects [samples, {self.num_classes}] logits, received {list(logits.shape)}"
            )
        probabilities = torch.softmax(logits.detach().double(), dim=1)  # NaN logits (a diverged model) give NaN
        self.gram += probabilities.T @ probabilities
        self.max_sum += probabilities.amax(dim=1).sum()
        self.count += probabilities.shape[0]

    def compute(self) -> dict[str, Tensor]:
        samples = float(self.count)
        if samples == 0:
            nan = torch.tensor(float("nan"), dtype=torch.float64, device=self.gram.device)
            return {"max_softmax": nan, "nuclear_norm": nan}
        if not bool(torch.isfinite(self.gram).all()):
            nan = torch.tensor(float("nan"), dtype=torch.float64, device=self.gram.device)
            return {"max_softmax": nan, "nuclear_norm": nan}
        nuclear = softmax_nuclear_norm_from_gram(self.gram, int(samples))
        return {"max_softmax": self.max_sum / samples, "nuclear_norm": nuclear}
