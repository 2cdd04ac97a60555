"""Reporting helpers: CSV export of curves and heatmap images of MI matrices (no plotting library needed)."""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Mapping
from typing import Any, Union

import torch
from torch import Tensor

__all__ = ["heatmap_image", "write_csv"]

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


def heatmap_image(matrix: Tensor, min_size: int = 256) -> Tensor:
    """An ``[H, W, 3]`` float image in ``[0, 1]`` of a matrix, viridis colours, scaled to its own min..max.

    Small matrices are enlarged by pixel repetition to at least ``min_size`` pixels a side. Non-finite
    entries are drawn as 0; an empty matrix gives a blank ``min_size`` square.

    Example:
        >>> import torch
        >>> heatmap_image(torch.eye(4), min_size=8).shape
        torch.Size([8, 8, 3])
    """
    if matrix.ndim != 2:
        raise ValueError(f"matrix must be 2-D, received shape {list(matrix.shape)}")
    if matrix.numel() == 0:  # nothing to show: a blank (darkest colour) square
        return _VIRIDIS[0].expand(min_size, min_size, 3).clone()
    values = matrix.detach().to(torch.float32).cpu()
    values = torch.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
    low, high = values.min(), values.max()
    scaled = (values - low) / (high - low) if high > low else torch.zeros_like(values)
    position = scaled * (len(_VIRIDIS) - 1)
    lower = position.floor().long().clamp(max=len(_VIRIDIS) - 2)
    frac = (position - lower).unsqueeze(-1)
    image = _VIRIDIS[lower] * (1 - frac) + _VIRIDIS[lower + 1] * frac
    repeat = max(1, -(-min_size // max(matrix.shape)))
    return image.repeat_interleave(repeat, dim=0).repeat_interleave(repeat, dim=1)


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
