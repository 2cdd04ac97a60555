"""Reporting: CSV files, heatmap images of MI matrices, and histograms and images for every logger.

The scalars go through ``pl_module.log`` to every logger. Histograms and images go to the loggers that
can show them, at the step of the scalars of the same epoch (`logging_step`): TensorBoard (histograms,
images, figures), Weights & Biases (``wandb.Histogram``, ``wandb.Image``) and MLflow (images and figures
as PNG artifacts of the run; MLflow has no histograms). Any other logger gets the scalars only, and
the callback says so once (`where_histograms_go`).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Optional, Union

import numpy as np
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import Logger, MLFlowLogger, TensorBoardLogger, WandbLogger
from torch import Tensor

__all__ = [
    "heatmap_image",
    "log_figure",
    "log_histogram",
    "log_image",
    "logging_step",
    "shows_histograms",
    "where_histograms_go",
    "write_csv",
]

# Anchor colours of the perceptually uniform "viridis" map, interpolated linearly.
_VIRIDIS = torch.tensor(
    [
        [0.267, 0.005, 0.329],
        [0.283, 0.141, 0.458],
        [0.254, 0.265, 0.530],
        [0.207, 0.372, 0.553],
        [0.164, 0.471, 0.558],
        [0.128, 0.567, 0.551],
        [0.135, 0.659, 0.518],
        [0.267, 0.749, 0.441],
        [0.478, 0.821, 0.318],
        [0.741, 0.873, 0.150],
        [0.993, 0.906, 0.144],
    ]
)


# A 3 x 5 pixel font for the colour bar's numbers (no plotting library needed).
_GLYPHS = {
    "0": "111101101101111",
    "1": "010110010010111",
    "2": "111001111100111",
    "3": "111001111001111",
    "4": "101101111001001",
    "5": "111100111001111",
    "6": "111100111101111",
    "7": "111001001001001",
    "8": "111101111101111",
    "9": "111101111001111",
    ".": "000000000000010",
    "-": "000000111000000",
    "+": "000010111010000",
    "e": "111100111100111",
    "n": "000110101101101",
    "a": "000111101111101",
    "i": "010000010010010",
    "f": "011100110100100",
}


def _draw_text(image: Tensor, text: str, top: int, left: int, scale: int = 2) -> None:
    """Draw ``text`` in black into an ``[H, W, 3]`` image, in place (characters outside the font are skipped)."""
    for position, char in enumerate(text):
        glyph = _GLYPHS.get(char)
        if glyph is None:
            continue
        cells = torch.tensor([int(bit) for bit in glyph], dtype=torch.bool).view(5, 3)
        pixels = cells.repeat_interleave(scale, 0).repeat_interleave(scale, 1)
        x0 = left + position * 4 * scale
        height = min(pixels.shape[0], image.shape[0] - top)
        width = min(pixels.shape[1], image.shape[1] - x0)
        if height <= 0 or width <= 0:
            continue
        region = image[top : top + height, x0 : x0 + width]
        region[pixels[:height, :width]] = 0.0


_LABEL_LEFT = 24  # the colour bar's labels start this many pixels into its margin


def _viridis(scaled: Tensor) -> Tensor:
    position = scaled.clamp(0, 1) * (len(_VIRIDIS) - 1)
    lower = position.floor().long().clamp(max=len(_VIRIDIS) - 2)
    frac = (position - lower).unsqueeze(-1)
    return _VIRIDIS[lower] * (1 - frac) + _VIRIDIS[lower + 1] * frac


def heatmap_image(matrix: Tensor, min_size: int = 256, colour_bar: bool = False) -> Tensor:
    """An ``[H, W, 3]`` float image in ``[0, 1]`` of a matrix, viridis colours, scaled to its own min..max.

    Small matrices are enlarged by pixel repetition to at least ``min_size`` pixels a side. Non-finite
    entries are drawn as 0; an empty matrix gives a blank ``min_size`` square. ``colour_bar=True``
    adds, on a white margin to the right, the colour scale with the values of its top (the maximum)
    and bottom (the minimum), so the image says which numbers its colours stand for.

    Example:
        >>> import torch
        >>> heatmap_image(torch.eye(4), min_size=8).shape
        torch.Size([8, 8, 3])
        >>> heatmap_image(torch.eye(4), min_size=64, colour_bar=True).shape
        torch.Size([64, 148, 3])
    """
    if matrix.ndim != 2:
        raise ValueError(f"matrix must be 2-D, received shape {list(matrix.shape)}")
    if matrix.numel() == 0:  # nothing to show: a blank (darkest colour) square
        return _VIRIDIS[0].expand(min_size, min_size, 3).clone()
    values = matrix.detach().to(torch.float32).cpu()
    values = torch.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
    low, high = values.min(), values.max()
    scaled = (values - low) / (high - low) if high > low else torch.zeros_like(values)
    image = _viridis(scaled)
    repeat = max(1, -(-min_size // max(matrix.shape)))
    image = image.repeat_interleave(repeat, dim=0).repeat_interleave(repeat, dim=1)
    if not colour_bar:
        return image
    height = image.shape[0]
    labels = [f"{float(high):.3g}", f"{float(low):.3g}"]
    # wide enough for the longer label (4 * scale pixels a character): "1.02e-08" must not lose its last digit
    margin = torch.ones(height, max(84, _LABEL_LEFT + 8 * max(map(len, labels)) + 4), 3)
    ramp = torch.linspace(1.0, 0.0, height).unsqueeze(1).expand(height, 14)
    margin[:, 6:20] = _viridis(ramp)
    _draw_text(margin, labels[0], top=0, left=_LABEL_LEFT)
    _draw_text(margin, labels[1], top=max(0, height - 10), left=_LABEL_LEFT)
    return torch.cat([image, margin], dim=1)


def write_csv(rows: Iterable[Mapping[str, Any]], path: Union[str, os.PathLike]) -> str:
    """Write dict rows to a CSV file, one column per key seen in any row (in first-seen order).

    Returns the path written.
    """
    rows = list(rows)
    columns: list[str] = []
    for row in rows:
        columns.extend(key for key in row if key not in columns)
    directory = os.path.dirname(os.fspath(path))
    if directory:
        os.makedirs(directory, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return os.fspath(path)


# --------------------------------------------------------------------------------------- loggers
def logging_step(trainer: Trainer) -> int:
    """The step at which Lightning logs the scalars of an epoch end (validation or training).

    Lightning passes ``fit_loop.epoch_loop._batches_that_stepped`` to the loggers for metrics logged with
    ``pl_module.log`` outside a training step; it has no public accessor (``trainer.global_step`` counts
    optimizer steps and is one ahead at a validation inside the training loop). Histograms and images
    logged at this step line up with the scalars of the same epoch.
    """
    return int(trainer.fit_loop.epoch_loop._batches_that_stepped)


def shows_histograms(logger: Logger) -> bool:
    """Whether histograms and images logged through `log_histogram` / `log_image` reach ``logger``."""
    return isinstance(logger, (TensorBoardLogger, WandbLogger)) or _is_mlflow(logger)


def _is_mlflow(logger: Logger) -> bool:
    return isinstance(logger, MLFlowLogger)


def _image_uint8(image: Tensor) -> np.ndarray:
    return (image.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


def log_histogram(loggers: Sequence[Logger], tag: str, values: Tensor, step: int) -> None:
    """A histogram of ``values`` to every logger that shows histograms (TensorBoard, W&B); MLflow has none.

    Call on rank 0 only (the loggers write from rank 0).
    """
    values = values.detach().float().cpu()
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_histogram(tag, values, step)
        elif isinstance(logger, WandbLogger):
            import wandb

            logger.log_metrics({tag: wandb.Histogram(values.numpy())}, step)


def log_image(loggers: Sequence[Logger], tag: str, image: Tensor, step: int) -> None:
    """An ``[H, W, 3]`` image in ``[0, 1]`` to TensorBoard, W&B (``wandb.Image``) and MLflow (a PNG artifact).

    MLflow keeps it as ``<tag>/step_<step>.png`` among the run's artifacts. Call on rank 0 only.
    """
    array = None
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(tag, image, step, dataformats="HWC")
            continue
        array = _image_uint8(image) if array is None else array
        if isinstance(logger, WandbLogger):
            logger.log_image(tag, [array], step)
        elif _is_mlflow(logger):
            logger.experiment.log_image(logger.run_id, array, artifact_file=f"{tag}/step_{step:06d}.png")


def log_figure(loggers: Sequence[Logger], tag: str, figure: Any, step: int) -> None:
    """A matplotlib figure to TensorBoard, W&B (``wandb.Image``) and MLflow (a PNG artifact). Call on rank 0 only."""
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_figure(tag, figure, step, close=False)
        elif isinstance(logger, WandbLogger):
            import wandb

            logger.log_metrics({tag: wandb.Image(figure)}, step)
        elif _is_mlflow(logger):
            logger.experiment.log_figure(logger.run_id, figure, artifact_file=f"{tag}/step_{step:06d}.png")


def where_histograms_go(loggers: Sequence[Logger], what: str) -> Optional[str]:
    """One line for the user when some loggers get only the scalars: which ones, and where ``what`` went.

    ``None`` when every logger shows histograms and images (or there is no logger).
    """
    others = [type(logger).__name__ for logger in loggers if not shows_histograms(logger)]
    if not others:
        return None
    shown = [type(logger).__name__ for logger in loggers if shows_histograms(logger)]
    where = (
        f"they go to {', '.join(shown)}"
        if shown
        else ("add a TensorBoardLogger, WandbLogger or MLFlowLogger to see them")
    )
    return f"{what}: {', '.join(others)} gets the scalars only (no histograms or images); {where}"
