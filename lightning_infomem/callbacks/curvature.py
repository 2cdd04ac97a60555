"""The ``LossCurvature`` callback: per-sample input loss curvature, averaged over training epochs.

Garg, Ravikumar & Roy (ICML 2024) score a training sample by the curvature of its loss with respect to
its input, averaged over training: high scores mark mislabeled, atypical and conflicting samples. See
`input_loss_curvature` for the estimator.

Samples are identified by a stable index carried in every batch; `IndexedDataset` adds it.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import move_data_to_device
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from typing_extensions import override

from lightning_infomem.callbacks._spawn import SpawnedResults
from lightning_infomem.callbacks.state_keys import prefixed_state_key
from lightning_infomem.checks import check_bool, check_float, check_int, check_optional_int, check_prefix, join_key
from lightning_infomem.data import (
    BatchUnpack,
    accumulation_dtype,
    check_indexed_loader,
    default_batch_unpack,
    sum_over_processes,
)
from lightning_infomem.functional.curvature import LossFn, input_loss_curvature_estimates
from lightning_infomem.per_sample import PerSampleScores

__all__ = ["LossCurvature"]


class LossCurvature(PerSampleScores, Callback):
    """Score every training sample by its input loss curvature, averaged over training epochs.

    After every ``every_n_epochs``-th training epoch the callback scores the training set (or
    ``dataloader``) with `input_loss_curvature_estimates`, model in eval
    mode, and adds each sample's score to a running mean over the scored epochs. High mean curvature
    marks mislabeled, atypical and conflicting samples (Garg, Ravikumar & Roy, ICML 2024).

    Batches must carry a stable sample index: wrap the dataset in `IndexedDataset` (batches
    ``(x, y, index)``), or pass ``batch_unpack``. Scoring uses the labels as trained on.

    Under DDP each process scores its own share (the training loader's ``DistributedSampler``, or every
    ``world_size``-th batch of ``dataloader``); the scores are summed by index over processes, so every
    process holds the same `scores`. The running sums survive checkpointing and resume.

    Results (the per-sample API of `TrainingDynamics` and `SubsampleRecords`): `scores` (``curvature``,
    ``last_curvature``, ``epochs``: ``[N]`` each, NaN for a sample never scored), ``topk(k, name)``,
    ``rows()`` and ``to_csv(path)``; for every logger that shows them, a histogram per score
    (``<prefix>/curvature``, ...) and, for image inputs ``[C, H, W]``, an image grid
    ``<prefix>/top_curvature`` of the ``num_images`` highest-curvature samples with their index, label and
    score. The mean score of the epoch is logged as ``<prefix>/mean`` through ``pl_module.log``.

    Cost: ``num_probes + 1`` forward-backward passes per sample per scored epoch (a training epoch is one
    forward-backward plus the optimizer step). Cut it with ``every_n_epochs``, ``num_probes`` and
    ``max_batches``.

    Args:
        dataloader: what to score; ``None``: the trainer's training dataloader (which includes its
            augmentation; pass an augmentation-free loader over the same indexed samples to avoid it).
        every_n_epochs: score after epochs with ``(epoch + 1) % every_n_epochs == 0``.
        num_probes: Rademacher probes per sample.
        step: finite-difference step ``h``.
        squared: accumulate ``mean ||g||^2`` (paper) instead of ``mean ||g||`` (authors' code).
        loss_fn: ``(outputs, targets) -> [S]`` per-sample loss; default cross-entropy.
        forward: ``(pl_module, inputs) -> outputs``; default ``pl_module(inputs)``.
        batch_unpack: ``batch -> (inputs, targets, indices)``; default `default_batch_unpack`.
        max_batches: score at most this many batches per scored epoch (per process); ``None`` for all.
        num_images: highest-curvature samples in the TensorBoard image grid (0 disables).
        log_histograms: log the TensorBoard histogram of scores.
        prefix: first part of logged keys and of the state key.
        seed: seed of the probes (a new generator per scored epoch and process, from ``seed``, the epoch
            and the rank, so a resumed run draws the probes a continuous run would).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> from lightning.pytorch import LightningModule, Trainer
        >>> from lightning_infomem import IndexedDataset
        >>> class Net(LightningModule):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.net = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3))
        ...     def forward(self, x):
        ...         return self.net(x)
        ...     def training_step(self, batch, batch_idx):
        ...         x, y, _ = batch
        ...         return nn.functional.cross_entropy(self(x), y)
        ...     def configure_optimizers(self):
        ...         return torch.optim.SGD(self.parameters(), lr=0.1)
        >>> data = IndexedDataset(TensorDataset(torch.randn(40, 8), torch.randint(0, 3, (40,))))
        >>> callback = LossCurvature(num_probes=2)
        >>> trainer = Trainer(max_epochs=2, callbacks=[callback], logger=False, enable_progress_bar=False,
        ...                   enable_model_summary=False, enable_checkpointing=False)
        >>> trainer.fit(Net(), DataLoader(data, batch_size=16, shuffle=True))
        >>> callback.scores["curvature"].shape, callback.epochs_scored
        (torch.Size([40]), [0, 1])
        >>> values, indices = callback.topk(3)
    """

    def __init__(
        self,
        dataloader: Optional[DataLoader] = None,
        *,
        every_n_epochs: int = 1,
        num_probes: int = 10,
        step: float = 1e-3,
        squared: bool = False,
        loss_fn: Optional[LossFn] = None,
        forward: Optional[Callable[[LightningModule, Tensor], Tensor]] = None,
        batch_unpack: Optional[BatchUnpack] = None,
        max_batches: Optional[int] = None,
        num_images: int = 16,
        log_histograms: bool = True,
        prefix: str = "curvature",
        seed: int = 0,
    ) -> None:
        self.dataloader = dataloader
        self.every_n_epochs = check_int(every_n_epochs, "every_n_epochs", minimum=1)
        self.num_probes = check_int(num_probes, "num_probes", minimum=1)
        self.step = check_float(step, "step", minimum=0.0, exclusive_minimum=True)
        self.squared = squared
        self.loss_fn = loss_fn
        self.forward = forward
        self.batch_unpack = default_batch_unpack if batch_unpack is None else batch_unpack
        self.max_batches = check_optional_int(max_batches, "max_batches", minimum=1)
        self.num_images = check_int(num_images, "num_images", minimum=0)
        self.log_histograms = check_bool(log_histograms, "log_histograms")
        self.prefix = check_prefix(prefix)
        self.seed = check_int(seed, "seed")

        self.score_sum = torch.zeros(0, dtype=torch.float64)
        self.num_scored = torch.zeros(0, dtype=torch.int64)
        self.labels = torch.zeros(0, dtype=torch.int64)
        self.last_scores = torch.zeros(0, dtype=torch.float64)
        self.epochs_scored = []
        self.history = []
        self._spawned = SpawnedResults()  # results scored by this callback's copy in a ddp_spawn worker

    _TENSORS = ("score_sum", "num_scored", "labels", "last_scores")

    def __getstate__(self) -> dict[str, Any]:
        # ddp_spawn pickles callbacks through shared memory, which refuses empty tensors: send numpy arrays.
        state = dict(self.__dict__)
        for name in self._TENSORS:
            state[name] = state[name].numpy()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        for name in self._TENSORS:
            state[name] = torch.from_numpy(state[name].copy())
        self.__dict__.update(state)

    # ------------------------------------------------------------------------------ identity
    @property
    def state_key(self) -> str:
        return prefixed_state_key(self, self.prefix)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "score_sum": self.score_sum.clone(),
            "num_scored": self.num_scored.clone(),
            "labels": self.labels.clone(),
            "last_scores": self.last_scores.clone(),
            "epochs_scored": list(self.epochs_scored),
            "history": [dict(row) for row in self.history],
            "squared": self.squared,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if bool(state_dict.get("squared", self.squared)) != self.squared:
            self._warn_once(
                "squared",
                "LossCurvature: the checkpoint accumulated a different score (squared=...); its sums are kept",
            )
        self.score_sum = state_dict["score_sum"].to(torch.float64).cpu()
        self.num_scored = state_dict["num_scored"].to(torch.int64).cpu()
        self.labels = state_dict.get("labels", torch.full_like(self.num_scored, -1)).cpu()
        self.last_scores = state_dict.get("last_scores", torch.full_like(self.score_sum, float("nan"))).cpu()
        self.epochs_scored = list(state_dict.get("epochs_scored", []))
        self.history = [dict(row) for row in state_dict.get("history", [])]

    # ------------------------------------------------------------------------------- results
    primary_score = "curvature"
    suspicious_when_high = {"curvature": True, "last_curvature": True, "epochs": True}

    @property
    def scores(self) -> dict[str, Tensor]:
        """``curvature`` (the mean over the epochs that scored the sample), ``last_curvature`` (the latest scored
        epoch) and ``epochs`` (how many epochs scored it), each ``[N]`` float64; NaN for a sample never scored."""
        self._collect_spawned()
        count = self.num_scored.to(torch.float64)
        mean = torch.where(count > 0, self.score_sum / count.clamp_min(1), torch.full_like(count, float("nan")))
        return {"curvature": mean, "last_curvature": self.last_scores.clone(), "epochs": count}

    # ----------------------------------------------------------------------------- lifecycle
    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if (trainer.current_epoch + 1) % self.every_n_epochs != 0:
            return
        if trainer.current_epoch in self.epochs_scored:
            return
        self.score_epoch(trainer, pl_module)

    def score_epoch(self, trainer: Trainer, pl_module: LightningModule) -> Tensor:
        """Score the samples now and add the result to the running means; returns this epoch's ``[N]`` scores."""
        rank, world_size = trainer.global_rank, trainer.world_size
        if self.dataloader is not None:
            loader, shard = self.dataloader, world_size > 1
        else:
            loader, shard = trainer.train_dataloader, False
            if loader is None:
                raise RuntimeError("LossCurvature: the trainer has no training dataloader; pass dataloader=...")
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + trainer.current_epoch * 1009 + rank)
        forward = (lambda x: self.forward(pl_module, x)) if self.forward is not None else pl_module
        device = pl_module.device
        indices, values, label_list = [], [], []
        batches = 0
        for batch_idx, batch in enumerate(loader):
            if shard and batch_idx % world_size != rank:
                continue
            if self.max_batches is not None and batches >= self.max_batches:
                break
            batches += 1
            x, y, index = self.batch_unpack(batch)
            x, y = move_data_to_device((x, y), device)
            estimates = input_loss_curvature_estimates(
                forward, x, y, self.num_probes, self.step, self.loss_fn, generator=generator
            )
            values.append((estimates.squared_norm if self.squared else estimates.norm).detach().to(torch.float64))
            indices.append(torch.as_tensor(index, device=device).long())
            is_label = isinstance(y, Tensor) and y.ndim == 1 and not y.is_floating_point()
            label_list.append(y.long() if is_label else torch.full_like(indices[-1], -1))
        self._accumulate(trainer, pl_module, indices, values, label_list)
        return self.last_scores

    def _accumulate(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        indices: list[Tensor],
        values: list[Tensor],
        labels: list[Tensor],
    ) -> None:
        device = pl_module.device
        index = torch.cat(indices) if indices else torch.zeros(0, dtype=torch.long, device=device)
        value = torch.cat(values) if values else torch.zeros(0, dtype=torch.float64, device=device)
        label = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long, device=device)
        if index.numel() and int(index.min()) < 0:
            raise ValueError("LossCurvature: sample indices must be >= 0")
        local_size = torch.tensor(
            max(int(index.max()) + 1 if index.numel() else 0, self.score_sum.numel()), device=device
        )
        size = int(trainer.strategy.reduce(local_size, reduce_op="max"))
        # Dense per-index sums, summed over processes: identical on every process. A DistributedSampler
        # pads with repeated samples, so a sample may be scored twice; the count makes that a mean.
        dtype = accumulation_dtype(device)
        epoch_sum = torch.zeros(size, dtype=dtype, device=device).index_add_(0, index, value.to(dtype))
        epoch_count = torch.zeros(size, dtype=dtype, device=device).index_add_(
            0, index, torch.ones_like(value, dtype=dtype)
        )
        epoch_label = torch.full((size,), -1, dtype=torch.long, device=device).scatter_(0, index, label)
        epoch_sum = sum_over_processes(trainer, epoch_sum)
        epoch_count = sum_over_processes(trainer, epoch_count)
        if trainer.world_size > 1:
            epoch_label = trainer.strategy.reduce(epoch_label.double(), reduce_op="max").long()
        epoch_sum, epoch_count, epoch_label = epoch_sum.cpu().double(), epoch_count.cpu().double(), epoch_label.cpu()
        scored = epoch_count > 0
        epoch_scores = torch.where(scored, epoch_sum / epoch_count.clamp_min(1), torch.nan)
        self._grow(size)
        self.score_sum[scored] += epoch_scores[scored]
        self.num_scored[scored] += 1
        self.labels = torch.where(epoch_label >= 0, epoch_label, self.labels)
        self.last_scores = epoch_scores
        self.epochs_scored.append(trainer.current_epoch)
        mean = float(epoch_scores[scored].mean()) if bool(scored.any()) else float("nan")
        not_finite = int((~torch.isfinite(epoch_scores[scored])).sum())
        if not_finite:
            self._warn_once(
                "not-finite",
                f"LossCurvature: {not_finite} of the {int(scored.sum())} scores of epoch {trainer.current_epoch} are "
                "NaN or infinite (a loss that is not finite for those samples, or a model that diverged); they "
                "make those samples' means NaN and rank last in topk",
            )
        self.history.append(
            {"epoch": trainer.current_epoch, "global_step": trainer.global_step, join_key(self.prefix, "mean"): mean}
        )
        if scored.any():
            pl_module.log(join_key(self.prefix, "mean"), torch.tensor(mean, dtype=torch.float32, device=device))
        dataset = getattr(self.dataloader, "dataset", None)
        self._log_scores(trainer, dataset if dataset is not None else self._train_dataset, self.log_histograms)

    def _grow(self, size: int) -> None:
        extra = size - self.score_sum.numel()
        if extra > 0:
            self.score_sum = torch.cat([self.score_sum, torch.zeros(extra, dtype=torch.float64)])
            self.num_scored = torch.cat([self.num_scored, torch.zeros(extra, dtype=torch.int64)])
            self.labels = torch.cat([self.labels, torch.full((extra,), -1, dtype=torch.int64)])

    _train_dataset: Optional[Dataset] = None

    @override
    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._send_spawned(trainer)

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        loader = trainer.train_dataloader
        self._train_dataset = getattr(loader, "dataset", None)
        if self.batch_unpack is default_batch_unpack:
            check_indexed_loader(self.dataloader if self.dataloader is not None else loader, "LossCurvature")
        self._inputs_checked = False
        if self.dataloader is not None:  # a scoring loader of its own: its first batch, before any training
            self._check_inputs(next(iter(self.dataloader)))

    @override
    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if not getattr(self, "_inputs_checked", True):
            self._check_inputs(batch)

    def _check_inputs(self, batch: Any) -> None:
        """Refuse integer inputs (token ids) on the first batch: the curvature is taken with respect to the inputs."""
        self._inputs_checked = True
        inputs = self.batch_unpack(batch)[0]
        if isinstance(inputs, Tensor) and not inputs.is_floating_point():
            raise ValueError(
                f"LossCurvature: the inputs are {inputs.dtype} (token ids?), but the curvature is taken with respect "
                "to the inputs, which must be floating point. For a token model, score through its embeddings: a "
                "batch_unpack that turns the ids into the model's current input embeddings (detached), and "
                "forward=lambda module, embeddings: module.model(inputs_embeds=embeddings).logits; a tested recipe is "
                "in docs/curvature.md ('Token models')"
            )
