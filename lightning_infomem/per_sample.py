"""The per-sample result API: one implementation for `TrainingDynamics`, `LossCurvature` and `SubsampleRecords`.

`scores` is a mapping from score name to a ``[num_samples]`` float64 tensor on the CPU (NaN for a sample
never scored): ``"cumulative_loss"``, ``"aum"``, ... for `TrainingDynamics`; ``"curvature"`` for
`LossCurvature`; ``"memorization"`` and ``"memorization_stderr"`` for `SubsampleRecords`. On all
three, ``topk(k, name)`` gives the ``k`` most suspicious samples by one score, ``rows()`` and
``to_csv(path)`` one row per sample, and ``log_scores(loggers, step)`` a histogram per score and, for
image inputs, a grid of the top samples to every logger that shows them (the callbacks call it at the
end of each scored epoch).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, Callable, Optional, Union

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from torch.utils.data import Dataset

from lightning_infomem._warn_once import WarnOnce
from lightning_infomem.checks import check_int, join_key
from lightning_infomem.reporting import (
    log_figure,
    log_histogram,
    logging_step,
    shows_histograms,
    where_histograms_go,
    write_csv,
)

__all__ = ["PerSampleScores"]


class PerSampleScores:
    """Mixin: the shared result API of everything that scores every training sample.

    Subclasses set ``primary_score`` and ``suspicious_when_high`` (per score: whether a high value marks
    a suspicious sample: memorized, mislabelled, hard), implement `scores`, and hold ``labels`` (``[N]``,
    -1 where unknown); those that draw image grids also hold ``num_images`` and ``batch_unpack``.
    """

    primary_score: str = "score"
    suspicious_when_high: dict[str, bool] = {}
    labels: Tensor
    num_images: int = 0
    batch_unpack: Optional[Callable[[Any], Any]] = None

    @property
    def scores(self) -> dict[str, Tensor]:
        """Every score by name, each ``[N]`` float64 on the CPU (NaN for a sample never scored)."""
        raise NotImplementedError

    # ------------------------------------------------------------- results of ddp_spawn workers
    @property
    def history(self) -> list[dict[str, Any]]:
        """One dict per scored epoch (after a ``ddp_spawn`` fit: the rank-0 worker's, brought back)."""
        self._collect_spawned()
        return self.__dict__.setdefault("_history", [])

    @history.setter
    def history(self, rows: list[dict[str, Any]]) -> None:
        self.__dict__["_history"] = rows

    @property
    def epochs_scored(self) -> list[int]:
        """The epochs whose scores were added (after a ``ddp_spawn`` fit: the rank-0 worker's)."""
        self._collect_spawned()
        return self.__dict__.setdefault("_epochs_scored", [])

    @epochs_scored.setter
    def epochs_scored(self, epochs: list[int]) -> None:
        self.__dict__["_epochs_scored"] = epochs

    def _send_spawned(self, trainer: Trainer) -> None:
        """From the rank-0 copy in a ``ddp_spawn`` worker: leave the results for the main process's callback."""
        spawned = self.__dict__.get("_spawned")
        if spawned is not None and trainer.global_rank == 0 and spawned.in_worker():
            spawned.send({"state": self.state_dict()})  # type: ignore[attr-defined]

    def _collect_spawned(self) -> None:
        """In the main process after a ``ddp_spawn`` fit: take over what the rank-0 worker scored (once)."""
        spawned = self.__dict__.get("_spawned")
        state = None if spawned is None else spawned.receive()
        if state is not None:
            self.load_state_dict(state["state"])  # type: ignore[attr-defined]

    def topk(self, k: int, name: Optional[str] = None) -> tuple[Tensor, Tensor]:
        """``(values, indices)`` of the ``k`` most suspicious samples by score ``name`` (default: the primary one).

        Most suspicious first: the highest values, or the lowest for a score where low is suspicious
        (see ``suspicious_when_high``); samples never scored (NaN) come last.
        """
        k = check_int(k, "k", minimum=0)
        table = self.scores
        name = self.primary_score if name is None else name
        if name not in table:
            raise ValueError(f"{type(self).__name__} has no score {name!r}; its scores are {sorted(table)}")
        scores = table[name]
        key = scores if self.suspicious_when_high.get(name, True) else -scores
        key = torch.nan_to_num(key, nan=float("-inf"), posinf=float("inf"), neginf=float("-inf"))
        values, indices = torch.topk(key, min(k, scores.numel()))
        return scores[indices], indices

    def rows(self, extra: Optional[Mapping[str, Sequence[Any]]] = None) -> list[dict[str, Any]]:
        """One dict per sample: ``index``, ``label`` (-1 where unknown), every score of `scores`, and the
        columns of ``extra`` (name -> one value per sample)."""
        table = {name: values.tolist() for name, values in self.scores.items()}
        labels = self.labels.tolist()
        count = len(labels)
        for name, values in (extra or {}).items():
            if len(values) != count:
                raise ValueError(f"extra column {name!r} has {len(values)} values for {count} samples")
        table.update({name: list(values) for name, values in (extra or {}).items()})
        return [
            {"index": i, "label": int(labels[i]), **{name: values[i] for name, values in table.items()}}
            for i in range(count)
        ]

    def to_csv(
        self,
        path: Union[str, os.PathLike],
        sort: bool = True,
        sort_by: Optional[str] = None,
        extra: Optional[Mapping[str, Sequence[Any]]] = None,
    ) -> str:
        """Write `rows` (with the ``extra`` columns) to a CSV file, most suspicious first by ``sort_by`` (the
        primary score) if ``sort``; returns the path.

        Raises ``ValueError`` when no sample has been scored yet (rather than write an empty file).
        """
        rows = self.rows(extra)
        if not rows:
            raise ValueError(f"{type(self).__name__} has scored no sample yet: there is nothing to write")
        if sort:
            name = self.primary_score if sort_by is None else sort_by
            _, order = self.topk(len(rows), name)
            rows = [rows[i] for i in order.tolist()]
        return write_csv(rows, path)

    # -------------------------------------------------------------------------------- logging
    def log_scores(
        self, loggers: Sequence[Logger], step: int, dataset: Optional[Dataset] = None, histograms: bool = True
    ) -> None:
        """A histogram per score and, for image inputs, a grid of the ``num_images`` top samples by the primary
        score, to every logger in ``loggers`` that shows them (see `lightning_infomem.reporting`). Call on rank 0.

        ``dataset`` is where the grid reads the samples (by position, as they were scored).
        """
        loggers = [logger for logger in loggers if shows_histograms(logger)]
        if not loggers:
            return
        prefix = getattr(self, "prefix", "")
        for name, values in (self.scores if histograms else {}).items():
            finite = values[torch.isfinite(values)]
            if finite.numel():
                log_histogram(loggers, join_key(prefix, name), finite, step)
        figure = self._image_grid(dataset) if self.num_images > 0 and dataset is not None else None
        if figure is not None:
            import matplotlib.pyplot as plt

            log_figure(loggers, join_key(prefix, f"top_{self.primary_score}"), figure, step)
            plt.close(figure)

    def _log_scores(self, trainer: Trainer, dataset: Optional[Dataset], histograms: bool) -> None:
        """`log_scores` from a callback: at the step of the epoch's scalars, from rank 0, saying once which
        loggers get the scalars only."""
        if not trainer.loggers or not (histograms or self.num_images > 0):
            return
        note = where_histograms_go(trainer.loggers, f"{type(self).__name__}: the score histograms and image grid")
        if note is not None:
            self._tell_once("where", note)
        if trainer.global_rank == 0:
            self.log_scores(trainer.loggers, logging_step(trainer), dataset, histograms)

    def _warn_once(self, key: str, message: str) -> None:
        warn = self.__dict__.get("_warnings")
        if warn is None:
            warn = self.__dict__["_warnings"] = WarnOnce()
        warn(key, message)

    def _tell_once(self, key: str, message: str) -> None:
        told = self.__dict__.setdefault("_told", set())
        if key not in told:
            told.add(key)
            rank_zero_info(message)

    def _image_grid(self, dataset: Dataset, indices: Optional[Sequence[int]] = None) -> Any:
        """A matplotlib figure of the top samples by the primary score, or of the samples at ``indices`` (image
        inputs only), or ``None``."""
        if indices is None:
            indices = self.topk(self.num_images)[1].tolist()
        images = []
        try:
            for i in indices:
                batch = torch.utils.data.default_collate([dataset[i]])
                x = self.batch_unpack(batch)[0] if self.batch_unpack is not None else batch[0]
                images.append(x[0])
        except Exception:  # noqa: BLE001 - a dataset we cannot index by position: no grid
            self._warn_once(
                "grid", f"{type(self).__name__}: cannot read samples by index from the dataset; no image grid"
            )
            return None
        if not images or not isinstance(images[0], Tensor) or images[0].ndim != 3 or images[0].shape[0] not in (1, 3):
            return None
        try:
            import matplotlib.pyplot as plt
        except ImportError:
            self._warn_once("matplotlib", f"{type(self).__name__}: the image grid needs matplotlib; skipped")
            return None
        columns = min(8, len(images))
        rows = -(-len(images) // columns)
        figure, axes = plt.subplots(rows, columns, figsize=(1.6 * columns, 1.8 * rows), squeeze=False)
        for ax in axes.flat:
            ax.axis("off")
        values = self.scores[self.primary_score]
        for ax, image, i in zip(axes.flat, images, indices, strict=False):
            value = float(values[i])
            image = image.detach().float().cpu()
            low, high = image.min(), image.max()
            image = (image - low) / (high - low) if high > low else torch.zeros_like(image)
            if image.shape[0] == 1:
                ax.imshow(image[0].numpy(), cmap="gray")
            else:
                ax.imshow(image.permute(1, 2, 0).numpy())
            ax.set_title(f"#{i} y={int(self.labels[i])}\n{value:.3g}", fontsize=7)
        figure.tight_layout()
        return figure
