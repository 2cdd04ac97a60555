"""The CNN and transformer families of the memorization experiments, built the way users build them.

- ``cnn``: `StagedCNN`, a miniature ResNet (a stem, three stages of two residual conv-BatchNorm-ReLU
  blocks, global average pooling, a linear head) on the 8x8 digits, one grey channel. Its shortcut is a
  **patch**: a bright 2x2 square in the top-left corner (shortcut bit 1) or the top-right corner (bit 0).
- ``transformer``: `TokenTransformer`, an ``nn.TransformerEncoder`` (4 layers, width 64) reading a [CLS]
  token, on generated token sequences whose label is a counting rule the network can learn: which group
  of content tokens occurs most often. Its shortcut is a **token**: position 1 holds one of two tokens.

The shortcut bit agrees with the (25 %-flipped) binary label with probability ``(1 + alpha) / 2``, as the
colour does for the MLP (`lightning_infomem.demos.digits.coloured_digits`, ../METHODS.md section 1); the
out-of-distribution split draws it at random (``alpha = 0``) and is scored against the clean label.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import LightningModule
from torch import Tensor, nn

__all__ = ["StagedCNN", "TokenTransformer", "patch_digits", "token_task"]

PAD, CLS, SHORTCUT_0, SHORTCUT_1 = 0, 1, 2, 3
CONTENT_START, GROUPS, TOKENS_PER_GROUP, CONTENT_LENGTH = 4, 4, 5, 14
VOCAB = CONTENT_START + GROUPS * TOKENS_PER_GROUP


def _shortcut_bits(labels: Tensor, alpha: float, generator: torch.Generator) -> Tensor:
    flip = torch.rand(labels.shape, generator=generator) < (1.0 - alpha) / 2.0
    return torch.where(flip, 1 - labels, labels)


def _noisy_binary(clean: Tensor, generator: torch.Generator, label_noise: float = 0.25) -> Tensor:
    return torch.where(torch.rand(clean.shape, generator=generator) < label_noise, 1 - clean, clean)


def patch_digits(
    images: Tensor, digits: Tensor, alpha: float, generator: torch.Generator, label_noise: float = 0.25
) -> tuple[Tensor, Tensor, Tensor]:
    """``(images [S, 1, 8, 8], labels, bits)``: the binary label ``digit >= 5`` flipped with probability
    ``label_noise``; a 2x2 patch at full intensity in the top-left corner where the shortcut bit is 1, the
    top-right where it is 0, the bit agreeing with the label with probability ``(1 + alpha) / 2``.

    Example:
        >>> x, digits = torch.rand(100, 64), torch.randint(0, 10, (100,))
        >>> images, labels, bits = patch_digits(x, digits, 1.0, torch.Generator().manual_seed(0))
        >>> images.shape, bool((bits == labels).all()), bool((images[bits == 1, 0, :2, :2] == 1).all())
        (torch.Size([100, 1, 8, 8]), True, True)
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], received {alpha!r}")
    labels = _noisy_binary((digits >= 5).long(), generator, label_noise)
    bits = _shortcut_bits(labels, alpha, generator)
    patched = images.reshape(-1, 1, 8, 8).clone()
    left = bits == 1
    patched[left, :, :2, :2] = 1.0
    patched[~left, :, :2, 6:] = 1.0
    return patched, labels, bits


def _group_counts(content: Tensor) -> Tensor:
    groups = (content - CONTENT_START) // TOKENS_PER_GROUP
    return torch.nn.functional.one_hot(groups, GROUPS).sum(dim=1)


def token_task(
    num: int, generator: torch.Generator, binary: bool, alpha: float = 0.0, label_noise: float = 0.25
) -> tuple[Tensor, Tensor, Tensor]:
    """``(ids [num, 16], labels, clean)``: [CLS], a shortcut position, 14 content tokens from 4 groups of 5.

    ``binary=False``: the label is the group that occurs most often (4 classes; sequences with a tie are
    drawn again), position 1 holds ``SHORTCUT_0`` (no shortcut). ``binary=True``: the clean label is whether
    group 0 occurs more often than group 1 (ties drawn again), flipped with probability ``label_noise``;
    position 1 holds ``SHORTCUT_1`` where the shortcut bit is 1, agreeing with the label with probability
    ``(1 + alpha) / 2``.

    Example:
        >>> ids, labels, clean = token_task(64, torch.Generator().manual_seed(0), binary=False)
        >>> ids.shape, int(labels.max()) <= 3, bool((labels == clean).all())
        (torch.Size([64, 16]), True, True)
    """
    kept: list[Tensor] = []
    while sum(len(k) for k in kept) < num:
        content = torch.randint(CONTENT_START, VOCAB, (2 * num, CONTENT_LENGTH), generator=generator)
        counts = _group_counts(content)
        if binary:
            unique = counts[:, 0] != counts[:, 1]
        else:
            top = counts.max(dim=1, keepdim=True).values
            unique = (counts == top).sum(dim=1) == 1
        kept.append(content[unique])
    content = torch.cat(kept)[:num]
    counts = _group_counts(content)
    if binary:
        clean = (counts[:, 0] > counts[:, 1]).long()
        labels = _noisy_binary(clean, generator, label_noise)
        shortcut = torch.where(_shortcut_bits(labels, alpha, generator) == 1, SHORTCUT_1, SHORTCUT_0)
    else:
        clean = counts.argmax(dim=1)
        labels = clean.clone()
        shortcut = torch.full((num,), SHORTCUT_0)
    ids = torch.cat([torch.full((num, 1), CLS), shortcut[:, None], content], dim=1)
    return ids, labels, clean


class _Classifier(LightningModule):
    """Cross-entropy, Adam, ``val_loss`` and ``val_acc`` on the validation labels (noisy as trained)."""

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        return nn.functional.cross_entropy(self(batch[0]), batch[1])

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        logits = self(batch[0])
        self.log("val_loss", nn.functional.cross_entropy(logits, batch[1]))
        self.log("val_acc", (logits.argmax(1) == batch[1]).float().mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


class _ResidualBlock(nn.Module):
    def __init__(self, channels_in: int, channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels_in, channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU()
        self.shortcut = (
            nn.Sequential(nn.Conv2d(channels_in, channels, 1, stride, bias=False), nn.BatchNorm2d(channels))
            if stride != 1 or channels_in != channels
            else nn.Identity()
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class StagedCNN(_Classifier):
    """A miniature ResNet: a 3x3 stem, stages of two residual blocks at ``widths`` (the second and third
    halving the resolution), global average pooling, a linear head. The default layers are its stages.

    Example:
        >>> from lightning_infomem.introspection.layers import choose_default_layers
        >>> choose_default_layers(StagedCNN(1, 10)).names
        ['stage1', 'stage2', 'stage3']
    """

    def __init__(self, channels: int, classes: int, widths: tuple[int, ...] = (16, 32, 64), lr: float = 1e-3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.stem = nn.Sequential(
            nn.Conv2d(channels, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU()
        )
        previous = widths[0]
        for i, width in enumerate(widths, 1):
            stride = 1 if i == 1 else 2
            self.add_module(
                f"stage{i}", nn.Sequential(_ResidualBlock(previous, width, stride), _ResidualBlock(width, width, 1))
            )
            previous = width
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(previous, classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x.reshape(x.shape[0], self.hparams.channels, 8, 8))
        for i in range(1, len(self.hparams.widths) + 1):
            x = getattr(self, f"stage{i}")(x)
        return self.head(self.pool(x).flatten(1))


class TokenTransformer(_Classifier):
    """Token and position embeddings, an ``nn.TransformerEncoder`` (``layers`` x width ``width``), a linear head
    on the [CLS] token (position 0). The default layers are its encoder layers, read at the first token.

    Example:
        >>> from lightning_infomem.introspection.layers import choose_default_layers
        >>> choose_default_layers(TokenTransformer(2)).names
        ['encoder.layers.0', 'encoder.layers.1', 'encoder.layers.2', 'encoder.layers.3']
    """

    def __init__(self, classes: int, width: int = 64, layers: int = 4, heads: int = 4, lr: float = 1e-3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.tokens = nn.Embedding(VOCAB, width)
        self.positions = nn.Parameter(torch.randn(1, 2 + CONTENT_LENGTH, width) * 0.02)
        layer = nn.TransformerEncoderLayer(width, heads, 2 * width, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, classes)

    def forward(self, ids: Tensor) -> Tensor:
        hidden = self.encoder(self.tokens(ids) + self.positions[:, : ids.shape[1]])
        return self.head(self.norm(hidden[:, 0]))
