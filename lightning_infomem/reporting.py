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
    margin = torch.ones(height, 84, 3)
    ramp = torch.linspace(1.0, 0.0, height).unsqueeze(1).expand(height, 14)
    margin[:, 6:20] = _viridis(ramp)
    _draw_text(margin, labels[0], top=0, left=24)
    _draw_text(margin, labels[1], top=max(0, height - 10), left=24)
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
