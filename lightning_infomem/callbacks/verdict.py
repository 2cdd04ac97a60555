"""The ``MemorizationVerdict`` callback: is the network memorizing, since when, and which kind.

It reads what `TrainingDynamics` already records on the training set (each sample's correctness at its
training pass, the epoch from which it stays fitted) and, through a forward hook on the same logits module,
the validation accuracy on the validation labels. `lightning_infomem.functional.verdict` turns them into
the verdict; `InformationMeasures`, where present, says in which layers it shows.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn
from typing_extensions import override

from lightning_infomem._warn_once import WarnOnce
from lightning_infomem.callbacks.state_keys import prefixed_state_key
from lightning_infomem.callbacks.training_dynamics import TrainingDynamics
from lightning_infomem.checks import check_bool, check_int, check_prefix, join_key
from lightning_infomem.data import sum_over_processes, targets_of
from lightning_infomem.functional.verdict import (
    Verdict,
    VerdictSettings,
    memorization_evidence,
    memorization_verdict,
)
from lightning_infomem.introspection.logits import logits_of
from lightning_infomem.reporting import log_figure, logging_step, shows_histograms

__all__ = ["MemorizationVerdict"]

_ADVICE = {
    "label_noise": (
        "Under label noise the validation loss on the (equally noisy) validation labels ranks checkpoints well: "
        "ModelCheckpoint(monitor='val_loss', mode='min'), or stop at the onset; the suspicious samples are the "
        "ones to relabel or drop."
    ),
    "shortcut": (
        "Validation data that carries the same shortcut cannot show it (its accuracy rises with it): compare runs "
        "by infomem/effective_rank (higher) or infomem/mutual_info (lower), and test on data where the suspected "
        "feature is broken (MaskedConsistency, probe_critical_neurons)."
    ),
    "both": (
        "Both at once: the suspicious samples carry the noise; the shortcut needs data where the suspected feature "
        "is broken. Do not trust val_loss alone for checkpoints."
    ),
    "none": "No sign of memorization: any monitor will do, val_loss included.",
    "undetermined": "Train longer, validate every epoch, or check the warnings above.",
}


class MemorizationVerdict(Callback):
    """Say whether the network is memorizing, since which epoch, and which kind: noisy labels or a shortcut.

    Needs `TrainingDynamics` among the callbacks (it reads its per-sample record of the training passes) and
    validation batches that carry integer labels (``(x, y, ...)`` or a dict with ``labels``). No clean, group
    or out-of-distribution labels: the verdict uses the labels as they come. The evidence
    (`lightning_infomem.functional.verdict`):

    - **noise-like**: training accuracy runs ahead of validation accuracy (``gap``) and a share of training
      samples (``late_fraction``) is fitted only after the gap opened: the network fits labels that do not
      generalise. Onset: the epoch of the lowest validation loss (on the validation labels), where it turns up.
    - **shortcut-like**: nearly every training sample is fitted within the first epochs and never got wrong
      again (``instant_fraction``), as a feature that gives every label at once does; where noise-like
      evidence holds too, a share fitted at once that is as large as the labels that are not noisy.

    Logged each validation epoch (monitorable by ``ModelCheckpoint`` / ``EarlyStopping``; the training side as of
    the previous epoch): ``<prefix>/memorizing_score`` (0 to 1), ``<prefix>/kind_score`` (-1 shortcut-like to
    +1 noise-like) and ``<prefix>/gap``. After ``fit``, `verdict` holds a `Verdict` (``memorizing``, ``kind``,
    ``kind_score``, ``onset_epoch``, ``memorizing_score``, ``evidence``, ``suspicious``: training sample
    indices fitted only after the onset, lowest area under the margin first; ``layers``: where
    `InformationMeasures` saw the effective rank move most since the onset), and one paragraph is printed:
    the verdict, the evidence, what to monitor, the suspicious samples and the layers. With image inputs and a
    logger that shows images, a grid of the suspicious samples is logged as ``<prefix>/suspicious``.

    What it cannot see, and the study behind each threshold (a perfect shortcut that the validation data
    shares is caught only by how fast it is fitted; an easy task fitted at once looks the same): docs/verdict.md.

    Args:
        settings: the verdict's thresholds (`VerdictSettings`; its defaults come from the study).
        num_suspicious: how many suspicious training samples the verdict lists.
        print_summary: print the paragraph at the end of ``fit`` (rank 0).
        prefix: first part of the logged keys and of the state key.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> from lightning.pytorch import LightningModule, Trainer
        >>> from lightning_infomem import IndexedDataset, MemorizationVerdict, TrainingDynamics
        >>> class Net(LightningModule):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 2))
        ...     def training_step(self, batch, batch_idx):
        ...         return nn.functional.cross_entropy(self.net(batch[0]), batch[1])
        ...     def validation_step(self, batch, batch_idx):
        ...         self.net(batch[0])
        ...     def configure_optimizers(self):
        ...         return torch.optim.Adam(self.parameters(), lr=0.01)
        >>> x = torch.randn(200, 8)
        >>> y = (x[:, 0] > 0).long()
        >>> train = DataLoader(IndexedDataset(TensorDataset(x[:150], y[:150])), batch_size=32, shuffle=True)
        >>> val = DataLoader(TensorDataset(x[150:], y[150:]), batch_size=50)
        >>> verdict = MemorizationVerdict(print_summary=False)
        >>> trainer = Trainer(max_epochs=6, callbacks=[TrainingDynamics(), verdict], logger=False,
        ...                   enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
        >>> trainer.fit(Net(), train, val)
        >>> verdict.verdict.kind in ("none", "shortcut", "label_noise", "both", "undetermined")
        True
    """

    def __init__(
        self,
        settings: Optional[VerdictSettings] = None,
        num_suspicious: int = 20,
        print_summary: bool = True,
        prefix: str = "verdict",
    ) -> None:
        if settings is not None and not isinstance(settings, VerdictSettings):
            raise TypeError(f"settings must be a VerdictSettings, received {type(settings).__name__}")
        self.settings = settings or VerdictSettings()
        self.num_suspicious = check_int(num_suspicious, "num_suspicious", minimum=0)
        self.print_summary = check_bool(print_summary, "print_summary")
        self.prefix = check_prefix(prefix)
        self.history: list[dict[str, Any]] = []
        self.verdict: Optional[Verdict] = None
        self._dynamics: Optional[TrainingDynamics] = None
        self._measures: Optional[Callback] = None
        self._handle: Optional[Any] = None
        self._captured: list[Any] = []
        self._sums = torch.zeros(3, dtype=torch.float64)  # correct, count, loss
        self._warn = WarnOnce()

    # ------------------------------------------------------------------------------------ state
    @property
    def state_key(self) -> str:
        return prefixed_state_key(self, self.prefix)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"history": [dict(row) for row in self.history]}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = [dict(row) for row in state_dict.get("history", [])]

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.update(_handle=None, _captured=[], _dynamics=None, _measures=None)
        return state

    # ------------------------------------------------------------------------------------ hooks
    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        dynamics = [cb for cb in trainer.callbacks if isinstance(cb, TrainingDynamics)]
        if not dynamics:
            raise ValueError(
                "MemorizationVerdict reads the per-sample record of the training passes: add TrainingDynamics() to "
                "the callbacks (and wrap the training set in IndexedDataset so that batches carry sample indices)"
            )
        self._dynamics = dynamics[0]
        from lightning_infomem.callbacks.information import InformationMeasures

        measures = [cb for cb in trainer.callbacks if isinstance(cb, InformationMeasures)]
        self._measures = measures[0] if measures else None

    @override
    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._remove_hook()
        self._captured.clear()
        self._sums = torch.zeros(3, dtype=torch.float64, device=pl_module.device)
        if trainer.sanity_checking or self._dynamics is None:
            return
        name, module = self._dynamics.logits_source
        if module is None:
            return
        captured = self._captured

        def hook(module: nn.Module, args: Any, output: Any) -> None:
            captured.append(output)

        self._handle = module.register_forward_hook(hook)

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
        captured = list(self._captured)
        self._captured.clear()
        if self._handle is None or dataloader_idx != 0:
            return
        targets = targets_of(batch)
        if targets is None:
            self._warn(
                "no-labels",
                "MemorizationVerdict: the validation batches carry no integer labels (expected (x, y, ...) or a dict "
                "with 'labels'); without validation accuracy the verdict stays undetermined",
            )
            return
        transform: Optional[Callable[[Any], Tensor]] = self._dynamics.output_transform if self._dynamics else None
        for output in captured:
            logits = logits_of(output, transform)
            if isinstance(logits, Tensor) and logits.ndim == 2 and logits.shape[0] == targets.shape[0]:
                break
        else:
            self._warn(
                "no-logits",
                "MemorizationVerdict: the logits module of TrainingDynamics produced no [batch, classes] output in "
                "validation; without validation accuracy the verdict stays undetermined",
            )
            return
        logits = logits.detach().double()
        targets = targets.to(logits.device)
        valid = (targets >= 0) & (targets < logits.shape[1])  # -100 (ignored) and out-of-range labels count nowhere
        safe = torch.where(valid, targets, torch.zeros_like(targets))
        losses = nn.functional.cross_entropy(logits, safe, reduction="none")  # no host round trip per batch
        correct = ((logits.argmax(1) == targets) & valid).sum()
        self._sums += torch.stack([correct.double(), valid.sum().double(), (losses * valid).sum()])

    @override
    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._remove_hook()
        if trainer.sanity_checking or self._dynamics is None or trainer.state.fn != "fit":
            return
        sums = sum_over_processes(trainer, self._sums.reshape(1, 3)).reshape(3).cpu()
        count = float(sums[1])
        row = {
            "epoch": trainer.current_epoch,
            "val_accuracy": float(sums[0]) / count if count else math.nan,
            "val_loss": float(sums[2]) / count if count else math.nan,
        }
        self.history = [r for r in self.history if r["epoch"] != row["epoch"]] + [row]
        verdict = self._judge()
        row.update(memorizing_score=verdict.memorizing_score, kind_score=verdict.kind_score)
        row["gap"] = verdict.evidence.get("gap", math.nan)
        for name in ("memorizing_score", "kind_score", "gap"):
            value = row[name]
            if math.isfinite(value):
                pl_module.log(
                    join_key(self.prefix, name),
                    torch.tensor(value, dtype=torch.float32),
                    on_step=False,
                    on_epoch=True,
                    batch_size=1,
                )

    @override
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._dynamics is None:
            return
        self.verdict = self._judge(final=True)
        if trainer.global_rank != 0:
            return
        if self.print_summary:
            rank_zero_info(self.summary())
        self._log_grid(trainer)

    @override
    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._remove_hook()

    @override
    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._remove_hook()

    # ----------------------------------------------------------------------------------- verdict
    def _series(self) -> tuple[list[float], list[float], list[float]]:
        """Training accuracy, validation accuracy and validation loss per epoch (0 to the latest), NaN where an
        epoch has none."""
        assert self._dynamics is not None
        key = join_key(self._dynamics.prefix, "learned_fraction")
        train = {int(r["epoch"]): float(r[key]) for r in self._dynamics.history if key in r}
        val = {int(r["epoch"]): float(r["val_accuracy"]) for r in self.history}
        loss = {int(r["epoch"]): float(r["val_loss"]) for r in self.history}
        epochs = range(max([*train, *val], default=-1) + 1)
        return (
            [train.get(e, math.nan) for e in epochs],
            [val.get(e, math.nan) for e in epochs],
            [loss.get(e, math.nan) for e in epochs],
        )

    def _judge(self, final: bool = False) -> Verdict:
        assert self._dynamics is not None
        train, val, loss = self._series()
        scores = self._dynamics.scores if self._dynamics.epochs_scored else {}
        learned = scores.get("learned_epoch", torch.zeros(0))
        evidence = memorization_evidence(train, val, learned.cpu(), self.settings, val_loss=loss)
        verdict = memorization_verdict(evidence, train, self.settings)
        if not final:
            return verdict
        if not self.history:
            reason = "no validation epoch ran (the verdict compares training with validation)"
            return Verdict(None, "undetermined", 0.0, None, verdict.memorizing_score, verdict.evidence, reason)
        suspicious = self._suspicious(scores, evidence) if verdict.memorizing else []
        layers = self._layers(verdict.onset_epoch) if verdict.memorizing else []
        return Verdict(
            verdict.memorizing,
            verdict.kind,
            verdict.kind_score,
            verdict.onset_epoch,
            verdict.memorizing_score,
            verdict.evidence,
            verdict.reason,
            suspicious,
            layers,
        )

    def _suspicious(self, scores: dict[str, Tensor], evidence: dict[str, float]) -> list[int]:
        """Training samples fitted for good only after the onset (or never), lowest area under the margin first."""
        if not scores or self.num_suspicious == 0:
            return []
        learned, aum = scores["learned_epoch"].cpu(), scores["aum"].cpu()
        onset = evidence.get("gap_opened", math.nan)
        cut = onset if math.isfinite(onset) else self.settings.instant_epochs
        late = torch.nonzero((learned > cut) & ~torch.isnan(learned)).flatten()
        order = torch.argsort(torch.nan_to_num(aum[late], nan=math.inf))
        return late[order][: self.num_suspicious].tolist()

    def _layers(self, onset: Optional[int]) -> list[str]:
        """The layers whose effective rank moved most (relative) from the onset to the last epoch, with the values."""
        measures = self._measures
        history = getattr(measures, "history", None)
        if measures is None or not history or onset is None:
            return []
        prefix = getattr(measures, "prefix", "infomem")
        by_epoch = {int(r["epoch"]): r for r in history}
        start = by_epoch.get(onset) or by_epoch[min(by_epoch, key=lambda e: abs(e - onset))]
        end = by_epoch[max(by_epoch)]
        moves = []
        for key, before in start.items():
            parts = key.split("/")
            if len(parts) != 3 or parts[0] != prefix or parts[2] != "effective_rank" or key not in end:
                continue
            after = float(end[key])
            if math.isfinite(before) and math.isfinite(after) and before > 0:
                moves.append((abs(after - before) / before, f"{parts[1]} (effective rank {before:.1f} -> {after:.1f})"))
        return [text for _, text in sorted(moves, reverse=True)[:3]]

    def summary(self) -> str:
        """The end-of-fit paragraph: the verdict, the evidence, what to do, the suspicious samples, the layers."""
        v = self.verdict
        if v is None:
            return "MemorizationVerdict: no verdict yet (it is given at the end of fit)."
        e = v.evidence
        if v.kind == "undetermined":
            head = f"MemorizationVerdict: undetermined ({v.reason})."
        elif not v.memorizing:
            head = "MemorizationVerdict: not memorizing."
        else:
            what = {"label_noise": "noisy labels", "shortcut": "a shortcut", "both": "noisy labels and a shortcut"}
            head = f"MemorizationVerdict: memorizing {what[v.kind]} since epoch {v.onset_epoch}."
        parts = [
            head,
            f"Memorizing score {v.memorizing_score:.2f}, kind score {v.kind_score:+.2f} (+1 noise-like, -1 "
            "shortcut-like).",
            f"Evidence: training accuracy ahead of validation by {e.get('gap', math.nan):.3f}; "
            f"{e.get('late_fraction', math.nan):.1%} of training samples fitted only after the gap opened; "
            f"{e.get('instant_fraction', math.nan):.1%} fitted within {self.settings.instant_epochs + 1} epoch(s) "
            "and never lost.",
            _ADVICE[v.kind],
        ]
        if v.suspicious:
            parts.append(f"Suspicious training samples (index): {v.suspicious}.")
        if v.layers:
            parts.append(f"Where it shows: {', '.join(v.layers)}.")
        return " ".join(parts)

    def _log_grid(self, trainer: Trainer) -> None:
        v = self.verdict
        loggers = [logger for logger in trainer.loggers if shows_histograms(logger)]
        if v is None or not v.suspicious or not loggers or self._dynamics is None:
            return
        dataset = getattr(trainer.train_dataloader, "dataset", None)
        if dataset is None:
            return
        figure = self._dynamics._image_grid(dataset, v.suspicious[:16])
        if figure is not None:
            import matplotlib.pyplot as plt

            log_figure(loggers, join_key(self.prefix, "suspicious"), figure, logging_step(trainer))
            plt.close(figure)

    def _remove_hook(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
