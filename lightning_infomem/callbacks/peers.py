"""`PredictionPeers`: the label-free peers of H and I that read a model's predictions on the validation data."""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn
from typing_extensions import override

from lightning_infomem._warn_once import WarnOnce
from lightning_infomem.callbacks._spawn import SpawnedResults
from lightning_infomem.callbacks.state_keys import prefixed_state_key
from lightning_infomem.checks import check_prefix, join_key
from lightning_infomem.data import batch_size_of
from lightning_infomem.introspection.logits import choose_logits_module, logits_candidates, logits_of
from lightning_infomem.metrics.peers import SoftmaxPeers

__all__ = ["PredictionPeers"]


class PredictionPeers(Callback):
    """Logs, at every validation epoch, two label-free statistics of the model's softmax predictions that a user
    would otherwise compare models by: ``peers/max_softmax`` (average confidence, the mean maximum softmax
    probability) and ``peers/nuclear_norm`` (the nuclear norm of the ``[samples, classes]`` softmax matrix over
    ``sqrt(samples * min(samples, classes))``, Deng et al., ICML 2023; higher: higher accuracy expected).

    Both are streaming (`lightning_infomem.metrics.SoftmaxPeers`), summed across processes, and logged
    through ``pl_module.log`` so ``ModelCheckpoint`` and ``EarlyStopping`` can monitor them; how they compare
    with H, I and the validation loss on three model families is in docs/selection.md. The logits come
    from the model's head, found as `TrainingDynamics` finds it (the last ``nn.Linear``, or the model around
    it where the head gives per-token logits; a Hugging Face output's ``logits``), decided on the first
    validation batch; ``logits_module`` names it instead. With several validation dataloaders each key ends in
    ``/dataloader_idx_K``. The sanity check is not measured.

    Args:
        logits_module: name of the module whose output is the logits (``""``: the ``LightningModule``);
            ``None`` finds it.
        output_transform: function from that module's output to the ``[batch, classes]`` logits.
        prefix: key prefix (``""``: none).

    Example:
        >>> import torch
        >>> from lightning.pytorch import LightningModule, Trainer
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> class Model(LightningModule):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
        ...     def validation_step(self, batch, batch_idx):
        ...         return self.net(batch[0])
        >>> peers = PredictionPeers()
        >>> trainer = Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[peers])
        >>> _ = trainer.validate(Model(), DataLoader(TensorDataset(torch.randn(64, 4)), batch_size=16), verbose=False)
        >>> sorted(peers.history[-1])
        ['epoch', 'peers/max_softmax', 'peers/nuclear_norm']
    """

    def __init__(
        self,
        logits_module: Optional[str] = None,
        output_transform: Optional[Callable[[Any], Tensor]] = None,
        prefix: str = "peers",
    ) -> None:
        self.logits_module = logits_module
        self.output_transform = output_transform
        self.prefix = check_prefix(prefix)
        self._history: list[dict[str, Any]] = []
        self._spawned = SpawnedResults()  # the history measured by this callback's copy in a ddp_spawn worker
        self.metrics: dict[int, SoftmaxPeers] = {}
        self._candidates: list[tuple[str, nn.Module]] = []
        self._chosen: Optional[tuple[str, nn.Module]] = None
        self._captured: list[tuple[nn.Module, Any]] = []
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._num_loaders = 1
        self._warn_once = WarnOnce()

    @property
    def state_key(self) -> str:
        return prefixed_state_key(self, self.prefix)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"history": [dict(row) for row in self.history]}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._history = [dict(row) for row in state_dict.get("history", [])]

    @property
    def history(self) -> list[dict[str, Any]]:
        """One dict per validation: the epoch and every logged value. After a fit under ``ddp_spawn`` the values were
        computed in the worker processes; the main process reads them back from rank 0 here."""
        state = self._spawned.receive()
        if state is not None:
            self._history = state["history"]
        return self._history

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._candidates = logits_candidates(pl_module, self.logits_module, "PredictionPeers")
        self._chosen = self._candidates[0] if len(self._candidates) == 1 else None

    def _hook(self, module: nn.Module, args: Any, output: Any) -> None:
        self._captured.append((module, output))

    @override
    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._remove_hooks()
        if trainer.sanity_checking:
            return
        num_batches = trainer.num_val_batches
        self._num_loaders = max(1, len(num_batches) if isinstance(num_batches, (list, tuple)) else 1)
        watched = [self._chosen] if self._chosen is not None else self._candidates
        self._handles = [module.register_forward_hook(self._hook) for _, module in watched]
        for metric in self.metrics.values():
            metric.reset()

    @override
    def on_validation_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        captured, self._captured = self._captured, []
        if trainer.sanity_checking or not captured:
            return
        batch_size = batch_size_of(batch)
        if self._chosen is None and batch_size is not None:
            self._chosen = choose_logits_module(
                self._candidates, captured, batch_size, "PredictionPeers", self.output_transform
            )
            self._remove_hooks()
            self._handles = [self._chosen[1].register_forward_hook(self._hook)]
            rank_zero_info(f"PredictionPeers: logits from {self._chosen[0] or 'the LightningModule'!r}")
        if self._chosen is None:
            return
        for module, output in captured:
            if module is not self._chosen[1]:
                continue
            logits = logits_of(output, self.output_transform)
            if not isinstance(logits, Tensor) or logits.ndim != 2:
                shape = list(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
                self._warn_once(
                    "not-2d",
                    f"PredictionPeers: the logits of {self._chosen[0] or 'the LightningModule'!r} are {shape}, not "
                    "[batch, classes] (a head applied to every token?), so nothing is logged; name the module whose "
                    "output is one row of logits per sample with logits_module=..., or pass output_transform=... that "
                    "picks the token to score",
                )
                continue
            metric = self.metrics.get(dataloader_idx)
            if metric is None or metric.num_classes != logits.shape[1]:
                metric = self.metrics[dataloader_idx] = SoftmaxPeers(logits.shape[1]).to(logits.device)
            metric.update(logits)
            break  # the first output of the batch: the forward pass

    @override
    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._remove_hooks()
        if trainer.sanity_checking or not self.metrics:
            return
        row: dict[str, Any] = {"epoch": trainer.current_epoch}
        for loader, metric in sorted(self.metrics.items()):  # every process computes: the states are summed
            for name, value in metric.compute().items():
                key = join_key(self.prefix, name)
                if self._num_loaders > 1:
                    key = f"{key}/dataloader_idx_{loader}"
                row[key] = float(value)
                pl_module.log(key, value.float(), add_dataloader_idx=False, sync_dist=False)
        if len(row) > 1:
            self._history.append(row)

    @override
    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._remove_hooks()

    @override
    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._remove_hooks()
        if trainer.global_rank == 0 and self._spawned.in_worker():
            self._spawned.send({"history": self._history})

    def _remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._captured = []
