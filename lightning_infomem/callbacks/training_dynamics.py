"""The ``TrainingDynamics`` callback: per-sample memorization scores from the training passes that already run.

A forward hook on the module that produces the logits keeps them during each training batch; after
the batch the callback keeps them (detached) with the batch's labels and sample indices, and every
few thousand samples turns them into per-sample statistics (`presentation_statistics`) added up
by index on the model's device: no second forward pass, no host round trip per batch. At the end
of each training epoch the sums of all processes are added together, the forgetting state is
updated, and the scores are available.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn
from torch.utils.data import Dataset
from typing_extensions import override

from lightning_infomem.callbacks._spawn import SpawnedResults
from lightning_infomem.callbacks.state_keys import prefixed_state_key
from lightning_infomem.checks import check_bool, check_int, check_prefix, join_key
from lightning_infomem.data import (
    BatchUnpack,
    accumulation_dtype,
    check_indexed_loader,
    default_batch_unpack,
    sum_over_processes,
    training_set_size,
)
from lightning_infomem.functional.peers import changed_predictions
from lightning_infomem.functional.training_dynamics import (
    STATISTICS,
    ForgettingState,
    dynamics_scores,
    new_forgetting_state,
    presentation_statistics,
    update_forgetting,
)
from lightning_infomem.introspection.logits import choose_logits_module, logits_candidates, logits_of
from lightning_infomem.per_sample import PerSampleScores
from lightning_infomem.pooling import RowPool

__all__ = ["TrainingDynamics"]

LossFn = Callable[[Tensor, Tensor], Tensor]

# Batches are pooled (their detached logits, labels and indices) and turned into statistics together:
# a few dozen small tensor operations per pool instead of per batch. At most this many samples wait.
_POOL_SAMPLES = 8192  # presentations scored together (see lightning_infomem.pooling)


class TrainingDynamics(PerSampleScores, Callback):
    """Score every training sample from the predictions the training steps already make.

    Per sample, by the stable index that `IndexedDataset` puts in each batch (see
    `presentation_statistics` and `dynamics_scores` for the exact definitions):

    - ``cumulative_loss`` (sum of the training losses, Ravikumar et al., ICML 2025) and ``mean_loss``;
    - ``aum``: area under the margin (Pleiss et al., NeurIPS 2020), the mean of assigned-class logit
      minus the largest other logit; low marks mislabelled samples;
    - ``forgetting``: forgetting events (Toneva et al., ICLR 2019), correct-to-incorrect transitions
      between consecutive epochs, ``inf`` for a sample never learned; ``learned_epoch``: the first epoch
      from which it stays correct (``inf`` while not learned);
    - ``confidence`` and ``variability``: mean and standard deviation of the true-class probability
      (dataset cartography, Swayamdipta et al., EMNLP 2020); ``presentations``.

    What the scores see: the logits of the training forward pass itself, so with data augmentation
    they are those of the augmented input, in training mode (dropout on, BatchNorm on batch
    statistics), before the step's update; under mixed precision they are computed in float64 from
    the half-precision logits; with gradient accumulation every micro-batch counts; a sample shown
    twice in one epoch (as ``DistributedSampler`` pads) counts once per presentation in the sums and,
    for forgetting, is correct in that epoch when it was correct at every presentation.

    How the logits reach it: a forward hook on ``logits_module``, present during training epochs (its
    outputs outside training batches, as in validation, are dropped). ``None`` hooks the last
    ``nn.Linear`` of the model (the classification head of an MLP, a ResNet's ``fc``, a ViT's
    ``head``, a Hugging Face ``classifier`` / ``score``), printed at the start; ``""`` hooks the
    ``LightningModule`` itself (its ``forward`` output). Its output (or the first tensor of it, or
    ``output_transform(output)``) must be ``[batch, classes]`` logits. If the module is called more
    than once per step, the first call with the batch's size is used.

    Batches must carry a stable sample index: wrap the dataset in `IndexedDataset` (batches
    ``(x, y, index)``) or pass ``batch_unpack``; ``y`` must be integer class labels.

    Results (the API `LossCurvature` shares): `scores` (a dict of ``[N]`` tensors, NaN for a sample never
    presented), ``topk(k, name)`` (most suspicious first: high loss, low AUM, many forgetting events,
    late learning, low confidence), ``rows()``, ``to_csv(path)``; with a ``TensorBoardLogger``, a
    histogram per score and, for image inputs, a grid of the samples of highest cumulative loss. Logged
    each epoch through ``pl_module.log``: ``<prefix>/forgetting_events`` (in that epoch) and, from the
    second epoch on, ``<prefix>/prediction_changes``: how many samples' predicted class (at their
    training pass) changed since their previous epoch, the signal of Label Wave (Yuan et al., ICLR
    2024: under label noise, its first local minimum is where the network starts fitting the noisy
    labels; `lightning_infomem.functional.label_wave_stop` finds it in `history`). `history` also has
    the epoch's ``<prefix>/mean_loss`` and ``<prefix>/learned_fraction`` (the fraction of samples whose
    latest epoch was correct). The sums survive checkpoints and resume exactly;
    under DDP every process holds the same scores.

    Args:
        logits_module: name of the module whose output is the logits (see above).
        loss_fn: ``(logits, targets) -> [B]`` per-sample loss to accumulate; default cross-entropy of the
            logits (pass the training loss if it differs, e.g. with label smoothing).
        output_transform: function from the module's output to the ``[batch, classes]`` logits.
        batch_unpack: ``batch -> (inputs, targets, indices)``; default `default_batch_unpack`.
        num_images: samples in the TensorBoard image grid (0 disables).
        log_histograms: log a TensorBoard histogram per score each epoch.
        prefix: first part of the logged keys and of the state key.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> from lightning.pytorch import LightningModule, Trainer
        >>> from lightning_infomem import IndexedDataset
        >>> class Net(LightningModule):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
        ...     def training_step(self, batch, batch_idx):
        ...         x, y, _ = batch
        ...         return nn.functional.cross_entropy(self.net(x), y)
        ...     def configure_optimizers(self):
        ...         return torch.optim.SGD(self.parameters(), lr=0.1)
        >>> data = IndexedDataset(TensorDataset(torch.randn(40, 8), torch.randint(0, 3, (40,))))
        >>> dynamics = TrainingDynamics()
        >>> trainer = Trainer(max_epochs=3, callbacks=[dynamics], logger=False, enable_progress_bar=False,
        ...                   enable_model_summary=False, enable_checkpointing=False)
        >>> trainer.fit(Net(), DataLoader(data, batch_size=16, shuffle=True))
        >>> dynamics.scores["cumulative_loss"].shape, dynamics.epochs_scored
        (torch.Size([40]), [0, 1, 2])
        >>> values, indices = dynamics.topk(5, "aum")  # the five lowest areas under the margin
    """

    primary_score = "cumulative_loss"
    suspicious_when_high = {
        "cumulative_loss": True,
        "mean_loss": True,
        "aum": False,
        "forgetting": True,
        "learned_epoch": True,
        "confidence": False,
        "variability": True,
        "presentations": True,
    }

    def __init__(
        self,
        logits_module: Optional[str] = None,
        *,
        loss_fn: Optional[LossFn] = None,
        output_transform: Optional[Callable[[Any], Tensor]] = None,
        batch_unpack: Optional[BatchUnpack] = None,
        num_images: int = 16,
        log_histograms: bool = True,
        prefix: str = "dynamics",
    ) -> None:
        if logits_module is not None and not isinstance(logits_module, str):
            raise ValueError(f"logits_module must be a module name, '' or None, received {logits_module!r}")
        self.logits_module = logits_module
        self.loss_fn = loss_fn
        self.output_transform = output_transform
        self.batch_unpack = default_batch_unpack if batch_unpack is None else batch_unpack
        self.num_images = check_int(num_images, "num_images", minimum=0)
        self.log_histograms = check_bool(log_histograms, "log_histograms")
        self.prefix = check_prefix(prefix)

        self.sums = torch.zeros(0, len(STATISTICS), dtype=torch.float64)
        self.state = new_forgetting_state(0)
        self.labels = torch.zeros(0, dtype=torch.int64)
        self.predictions = torch.zeros(0, dtype=torch.int64)  # each sample's predicted class at its last epoch
        self._epoch_predictions = torch.zeros(0, dtype=torch.int64)
        self._epoch_changes = torch.zeros((), dtype=torch.float64)
        self.epochs_scored = []
        self.history = []
        self._spawned = SpawnedResults()  # results scored by this callback's copy in a ddp_spawn worker
        self._epoch_sums = torch.zeros(0, len(STATISTICS), dtype=torch.float64)
        self._sized = True
        self._module: Optional[nn.Module] = None
        self._module_name = ""
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._candidates: list[tuple[str, nn.Module]] = []
        self._captured: list[Tensor] = []
        self._pending = RowPool(_POOL_SAMPLES)  # (index, targets, logits) of training batches not yet scored
        self._hook = self._make_hook()
        self._train_dataset: Optional[Dataset] = None

    # ------------------------------------------------------------------------------ identity
    @property
    def state_key(self) -> str:
        return prefixed_state_key(self, self.prefix)

    @override
    def state_dict(self) -> dict[str, Any]:
        self._flush()
        return {
            "sums": self.sums.detach().cpu().double().clone(),
            "epoch_sums": self._epoch_sums.detach().cpu().double().clone(),
            "forgetting": {name: value.detach().cpu().clone() for name, value in self.state._asdict().items()},
            "labels": self.labels.detach().cpu().clone(),
            "predictions": self.predictions.detach().cpu().clone(),
            "epochs_scored": list(self.epochs_scored),
            "history": [dict(row) for row in self.history],
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.sums = state_dict["sums"].double()
        self._epoch_sums = state_dict["epoch_sums"].double()
        self.state = ForgettingState(**state_dict["forgetting"])
        self.labels = state_dict["labels"].long()
        self.predictions = state_dict.get("predictions", torch.full_like(self.labels, -1)).long()
        self._epoch_predictions = torch.full_like(self.predictions, -1)
        self.epochs_scored = list(state_dict.get("epochs_scored", []))
        self.history = [dict(row) for row in state_dict.get("history", [])]

    def __getstate__(self) -> dict[str, Any]:
        # ddp_spawn pickles callbacks through shared memory, which refuses empty tensors; the hook is rebuilt
        state = dict(self.__dict__)
        for name in ("sums", "_epoch_sums", "labels", "predictions", "_epoch_predictions", "_epoch_changes"):
            state[name] = state[name].cpu().numpy()
        state["state"] = {k: v.cpu().numpy() for k, v in self.state._asdict().items()}
        state["_hook"] = state["_module"] = None
        state["_handles"], state["_candidates"] = [], []
        state["_captured"], state["_pending"] = [], RowPool(_POOL_SAMPLES)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        for name in ("sums", "_epoch_sums", "labels", "predictions", "_epoch_predictions", "_epoch_changes"):
            state[name] = torch.from_numpy(state[name].copy())
        state["state"] = ForgettingState(**{k: torch.from_numpy(v.copy()) for k, v in state["state"].items()})
        self.__dict__.update(state)
        self._hook = self._make_hook()

    # ------------------------------------------------------------------------------- results
    @property
    def scores(self) -> dict[str, Tensor]:
        """Every score by name, ``[N]`` float64 on the CPU (see the class docs); NaN for a sample never presented."""
        self._collect_spawned()
        state = ForgettingState(*(value.cpu() for value in self.state))
        return dynamics_scores(self.sums.cpu(), state)

    # ----------------------------------------------------------------------------- lifecycle
    @property
    def logits_source(self) -> tuple[str, Optional[nn.Module]]:
        """``(name, module)`` whose output is read as the logits (``("", None)`` before training starts; the
        name ``""`` is the LightningModule itself)."""
        return self._module_name, self._module

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._candidates = logits_candidates(pl_module, self.logits_module, "TrainingDynamics")
        self._module_name, self._module = self._candidates[0]
        if len(self._candidates) == 1:
            rank_zero_info(f"TrainingDynamics: logits from {self._module_name or 'the LightningModule'!r}")
        self._train_dataset = getattr(trainer.train_dataloader, "dataset", None)
        if self.batch_unpack is default_batch_unpack:
            check_indexed_loader(trainer.train_dataloader, "TrainingDynamics")
        size = training_set_size(trainer)
        self._sized = size is not None
        if size is not None and self.sums.shape[0] > size:
            raise ValueError(
                f"TrainingDynamics: the restored scores cover {self.sums.shape[0]} samples but the training set has "
                f"{size}; resume on the dataset the checkpoint was trained on (the scores are per sample index)"
            )
        self._resize(max(size or 0, self.sums.shape[0]), pl_module.device)

    def _resize(self, size: int, device: torch.device) -> None:
        dtype = accumulation_dtype(device)
        extra = size - self.sums.shape[0]
        if extra > 0:
            grow = torch.zeros(extra, len(STATISTICS), dtype=dtype)
            self.sums = torch.cat([self.sums.to(dtype=dtype).cpu(), grow])
            self._epoch_sums = torch.cat([self._epoch_sums.to(dtype=dtype).cpu(), grow])
            self.labels = torch.cat([self.labels.cpu(), torch.full((extra,), -1, dtype=torch.int64)])
            self.predictions = torch.cat([self.predictions.cpu(), torch.full((extra,), -1, dtype=torch.int64)])
            self._epoch_predictions = torch.cat(
                [self._epoch_predictions.cpu(), torch.full((extra,), -1, dtype=torch.int64)]
            )
            fresh = new_forgetting_state(extra)
            self.state = ForgettingState(
                *(torch.cat([old.cpu(), new]) for old, new in zip(self.state, fresh, strict=True))
            )
        self.sums = self.sums.to(device=device, dtype=dtype)
        self._epoch_sums = self._epoch_sums.to(device=device, dtype=dtype)
        self.labels = self.labels.to(device)
        self.predictions = self.predictions.to(device)
        self._epoch_predictions = self._epoch_predictions.to(device)
        self._epoch_changes = self._epoch_changes.to(device)
        self.state = ForgettingState(*(value.to(device) for value in self.state))

    def _make_hook(self) -> Callable[..., None]:
        captured = self._captured = []

        def hook(module: nn.Module, args: Any, output: Any) -> None:
            captured.append((module, output))

        return hook

    @override
    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._remove_hook()
        self._captured.clear()
        if self._module is not None:
            watched = [module for _, module in self._candidates] if len(self._candidates) > 1 else [self._module]
            self._handles = [module.register_forward_hook(self._hook) for module in watched]

    @override
    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        self._captured.clear()  # anything kept since the last training batch (validation) is not a training pass

    @override
    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        captured = list(self._captured)
        self._captured.clear()
        _, targets, index = self.batch_unpack(batch)
        if len(self._candidates) > 1 and captured:
            self._choose_logits_module(captured, index.shape[0])
        logits, seen = None, []
        for module, output in captured:
            if module is not self._module:
                continue
            value = self._logits_of(output)
            if isinstance(value, Tensor) and value.ndim >= 1 and value.shape[0] == index.shape[0]:
                logits = value
                break
            seen.append(list(value.shape) if isinstance(value, Tensor) else type(value).__name__)
        if logits is None:
            self._warn_once(
                "no-logits",
                f"TrainingDynamics: {self._module_name or 'the LightningModule'!r} produced no [batch, classes] "
                f"output during a training step (outputs seen: {seen or 'none'}), so the batch is not recorded; pass "
                "logits_module=... naming the module whose output is the logits (or output_transform=...)",
            )
            return
        if logits.ndim != 2:
            raise ValueError(
                f"TrainingDynamics: the logits of {self._module_name or 'the LightningModule'!r} have shape "
                f"{list(logits.shape)}, not [batch, classes] (per-token logits of a sequence model?); name the module "
                "whose output is one row of logits per sample with logits_module=... (for a Hugging Face "
                "...ForSequenceClassification model, the model itself: its output's logits are pooled by its own rule)"
            )
        if self._pending.add(index.detach(), targets.detach(), logits.detach()):
            self._flush()

    def _logits_of(self, output: Any) -> Any:
        return logits_of(output, self.output_transform)

    def _choose_logits_module(self, captured: list[tuple[nn.Module, Any]], batch_size: int) -> None:
        """On the first training batch: the logits the model returns (`choose_logits_module`)."""
        name, module = choose_logits_module(
            self._candidates, captured, batch_size, "TrainingDynamics", self.output_transform
        )
        self._module_name, self._module = name, module
        self._candidates = [(name, module)]
        self._remove_hook()
        self._handles = [module.register_forward_hook(self._hook)]
        rank_zero_info(f"TrainingDynamics: logits from {name or 'the LightningModule'!r}")

    def _flush(self) -> None:
        """Turn the pooled batches into statistics and add them up by sample index (on the model's device)."""
        pooled = self._pending.take()
        if pooled is None:
            return
        device = self._epoch_sums.device
        index, targets, logits = (tensor.to(device) for tensor in pooled)
        index = index.long()
        index, targets, logits = self._checked(index, targets, logits)
        if index.numel() == 0:
            return
        losses = self.loss_fn(logits, targets) if self.loss_fn is not None else None
        stats = presentation_statistics(logits, targets, losses)
        if not self._sized:  # an unsized dataset: grow to the largest index (one host synchronisation)
            self._resize(max(self.sums.shape[0], int(index.max()) + 1), device)
        self._epoch_sums.index_add_(0, index, stats.to(self._epoch_sums.dtype))
        self.labels.scatter_(0, index, targets.long())
        predicted = logits.argmax(dim=1)
        previous = self.predictions[index]  # at the sample's last epoch (synchronised across processes)
        self._epoch_changes += changed_predictions(previous, predicted).to(self._epoch_changes.dtype)
        self._epoch_predictions.scatter_(0, index, predicted)

    def _checked(self, index: Tensor, targets: Tensor, logits: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The pooled batches' rows that can be scored: indices inside the training set and labels among the
        classes; rows labelled -100 (Hugging Face's ignored label) are left out with one warning; any other index or
        label out of range is an error naming it (index_add_ would fail without a word about why, or count it)."""
        size, classes = self.sums.shape[0], logits.shape[1]
        bad_index = (index < 0) | (index >= size) if self._sized else index < 0
        ignored = targets == -100
        out_of_classes = (targets < 0) | (targets >= classes)
        if not bool((bad_index | out_of_classes).any()):  # one host round trip per flush, in the common case
            return index, targets, logits
        if bool(bad_index.any()):
            raise ValueError(
                f"TrainingDynamics: batch_unpack gave sample indices {index[bad_index][:5].tolist()} outside 0.."
                f"{size - 1} (the training set has {size} samples); the indices must be the IndexedDataset's (the last "
                "element of each batch by default)"
            )
        if bool(ignored.any()):
            self._warn_once(
                "ignored-labels",
                "TrainingDynamics: some samples are labelled -100 (Hugging Face's ignored label): they are not scored "
                "and keep NaN scores",
            )
            keep = ~ignored
            index, targets, logits = index[keep], targets[keep], logits[keep]
        bad_label = (targets < 0) | (targets >= classes)
        if bool(bad_label.any()):
            raise ValueError(
                f"TrainingDynamics: labels {targets[bad_label][:5].tolist()} are not among the logits' {classes} "
                "classes (0.."
                f"{classes - 1}); check batch_unpack's targets, or the logits module"
            )
        return index, targets, logits

    def _remove_hook(self) -> None:
        for handle in getattr(self, "_handles", []):
            handle.remove()
        self._handles = []

    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._remove_hook()
        self._captured.clear()
        self._flush()
        epoch = trainer.current_epoch
        epoch_sums = sum_over_processes(trainer, self._epoch_sums)
        if trainer.world_size > 1 and isinstance(
            getattr(trainer.train_dataloader, "sampler", None), torch.utils.data.DistributedSampler
        ):
            # the distributed sampler pads the processes' shares to equal length with repeated samples: a sample
            # it gave twice in one epoch is one presentation (the mean of its two), not two
            presentations = epoch_sums[:, STATISTICS.index("presentations")]
            repeated = presentations > 1
            if bool(repeated.any()):
                epoch_sums[repeated] = epoch_sums[repeated] / presentations[repeated, None]
        changes = float(sum_over_processes(trainer, self._epoch_changes.reshape(1))[0])
        epoch_predictions = self._epoch_predictions
        if trainer.world_size > 1:
            self.labels = trainer.strategy.reduce(self.labels.double(), reduce_op="max").long()
            epoch_predictions = trainer.strategy.reduce(epoch_predictions.double(), reduce_op="max").long()
        self.predictions = torch.where(epoch_predictions >= 0, epoch_predictions, self.predictions)
        self._epoch_predictions = torch.full_like(self.predictions, -1)
        self._epoch_changes.zero_()
        seen = epoch_sums[:, STATISTICS.index("presentations")]
        correct = epoch_sums[:, STATISTICS.index("correct")]
        before = self.state.events.sum()
        self.sums = self.sums + epoch_sums
        self.state = update_forgetting(self.state, seen, correct, epoch)
        self._epoch_sums.zero_()
        self.epochs_scored.append(epoch)
        presented = float(seen.sum())
        row = {
            "epoch": epoch,
            "global_step": trainer.global_step,
            join_key(self.prefix, "mean_loss"): float(epoch_sums[:, STATISTICS.index("loss")].sum())
            / max(presented, 1.0),
            join_key(self.prefix, "forgetting_events"): float(self.state.events.sum() - before),
            join_key(self.prefix, "learned_fraction"): float((self.state.last_correct == 1).sum())
            / max(1, int((self.state.last_correct >= 0).sum())),
            join_key(self.prefix, "prediction_changes"): changes if len(self.epochs_scored) > 1 else math.nan,
        }
        self.history.append(row)
        # two scalars through Lightning's log (about 0.5 ms a call on a CPU): the others are in `history`
        for name in ("forgetting_events", "prediction_changes"):
            key = join_key(self.prefix, name)
            if math.isfinite(row[key]):
                value = torch.tensor(row[key], dtype=torch.float32)
                pl_module.log(key, value, on_step=False, on_epoch=True, batch_size=1)
        self._log_scores(trainer, self._train_dataset, self.log_histograms)

    @override
    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._remove_hook()

    @override
    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._remove_hook()
        self._send_spawned(trainer)
