"""The ``MaskedConsistency`` callback and the ``MaskedConsistencyModule`` wrapper: masked consistency training.

A network is trained with a magnitude-pruned masked view pulled towards the full view by a
symmetric NT-Xent loss plus a weighted cross-entropy (You et al., 2025), which keeps the few
neurons that memorize minority groups from carrying the prediction alone. The loss itself is
`lightning_infomem.functional.spurious.masked_consistency_loss`. See ``docs/spurious.md``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Callable, Optional

from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor, nn
from typing_extensions import override

from lightning_infomem.functional.spurious import WeightMasks, magnitude_mask, masked_consistency_loss, supported_layers

__all__ = ["MaskedConsistency", "MaskedConsistencyModule"]


class MaskedConsistency(Callback):
    """Recomputes the magnitude mask of ``pl_module`` at the start of every training epoch.

    Use ``callback.loss(pl_module, x, y)`` in your ``training_step`` in place of the cross-entropy
    (or wrap the module in `MaskedConsistencyModule`, which does this for you).

    Args:
        fraction: fraction of the weights pruned in the masked view (1 % by default).
        temperature: NT-Xent temperature.
        ce_weight: weight of the cross-entropy term.
        layers: linear / conv layers to mask (qualified names in ``pl_module``; default all).
        prune: ``"smallest"`` (magnitude pruning) or ``"largest"`` magnitudes are masked.
        feature_layer: submodule whose output the NT-Xent compares (default: the logits).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> callback = MaskedConsistency(fraction=0.1)
        >>> model = nn.Linear(4, 3)
        >>> callback.update_masks(model)
        >>> loss, parts = callback.loss(model, torch.randn(8, 4), torch.randint(0, 3, (8,)))
        >>> int((~callback.masks[""]).sum())
        1
    """

    def __init__(
        self,
        fraction: float = 0.01,
        temperature: float = 0.5,
        ce_weight: float = 0.2,
        layers: Optional[Iterable[str]] = None,
        prune: str = "smallest",
        feature_layer: Optional[str] = None,
    ) -> None:
        if not 0.0 <= fraction < 1.0:
            raise ValueError(f"fraction must be in [0, 1), received {fraction}")
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, received {temperature}")
        if ce_weight < 0:
            raise ValueError(f"ce_weight must be non-negative, received {ce_weight}")
        if prune not in ("smallest", "largest"):
            raise ValueError(f'prune must be "smallest" or "largest", received {prune!r}')
        self.fraction = fraction
        self.temperature = temperature
        self.ce_weight = ce_weight
        self.layers = None if layers is None else list(layers)
        self.prune = prune
        self.feature_layer = feature_layer
        self.masks: Optional[WeightMasks] = None
        self.mask_updates = 0

    def update_masks(self, model: nn.Module) -> None:
        """Recompute the masks from the current weights of ``model``."""
        self.masks = magnitude_mask(model, self.fraction, self.layers, self.prune)
        self.mask_updates += 1

    @override
    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.update_masks(pl_module)

    def loss(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The masked consistency loss of a batch (computes the masks first if there are none)."""
        if self.masks is None:
            self.update_masks(model)
        assert self.masks is not None
        return masked_consistency_loss(model, x, y, self.masks, self.temperature, self.ce_weight, self.feature_layer)


class MaskedConsistencyModule(LightningModule):
    """Wraps an existing classifier ``LightningModule`` to train it with masked consistency.

    ``training_step`` computes the masked consistency loss of ``module`` on ``batch_to_xy(batch)``
    (default: ``batch`` is ``(x, y, ...)``), logging ``train_loss``, ``train_consistency`` and
    ``train_cross_entropy``; the masks are recomputed at the start of every epoch. The arguments
    are those of `MaskedConsistency`. Validation, test,
    prediction and optimizers are the wrapped module's. ``forward`` is the wrapped module's.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> class Net(LightningModule):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.net = nn.Linear(4, 3)
        ...     def forward(self, x):
        ...         return self.net(x)
        ...     def configure_optimizers(self):
        ...         return torch.optim.SGD(self.parameters(), lr=0.1)
        >>> wrapped = MaskedConsistencyModule(Net(), fraction=0.1)
        >>> wrapped(torch.randn(2, 4)).shape
        torch.Size([2, 3])
    """

    def __init__(
        self,
        module: LightningModule,
        fraction: float = 0.01,
        temperature: float = 0.5,
        ce_weight: float = 0.2,
        layers: Optional[Iterable[str]] = None,
        prune: str = "smallest",
        batch_to_xy: Optional[Callable[[Any], tuple[Tensor, Tensor]]] = None,
        feature_layer: Optional[str] = None,
    ) -> None:
        super().__init__()
        if not isinstance(module, nn.Module):
            raise ValueError(f"module must be a LightningModule (or nn.Module), received {type(module).__name__}")
        self.module = module
        self.consistency = MaskedConsistency(fraction, temperature, ce_weight, layers, prune, feature_layer)
        supported_layers(module, self.consistency.layers)
        self.batch_to_xy = batch_to_xy

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)

    @override
    def on_train_epoch_start(self) -> None:
        self.consistency.update_masks(self.module)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = self.batch_to_xy(batch) if self.batch_to_xy is not None else (batch[0], batch[1])
        loss, parts = self.consistency.loss(self.module, x, y)
        self.log("train_loss", loss)
        self.log("train_consistency", parts["consistency"])
        self.log("train_cross_entropy", parts["cross_entropy"])
        return loss

    def _delegate(self, step: str, *args: Any, **kwargs: Any) -> Any:
        """Run the wrapped module's step with this module's trainer, so that its ``self.log`` calls work."""
        if self._trainer is not None:
            self.module.trainer = self._trainer
            self.module._current_fx_name = self._current_fx_name
        return getattr(self.module, step)(*args, **kwargs)

    def validation_step(self, *args: Any, **kwargs: Any) -> Any:
        return self._delegate("validation_step", *args, **kwargs)

    def test_step(self, *args: Any, **kwargs: Any) -> Any:
        return self._delegate("test_step", *args, **kwargs)

    def predict_step(self, *args: Any, **kwargs: Any) -> Any:
        return self._delegate("predict_step", *args, **kwargs)

    def configure_optimizers(self) -> Any:
        return self.module.configure_optimizers()
