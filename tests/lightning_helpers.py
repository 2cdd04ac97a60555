"""Small Lightning models and data on scikit-learn's digits for the callback tests.

Module level (not inside test files) so that ``ddp_spawn`` workers can unpickle them.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Optional

import numpy as np
import pytest
import torch
from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

NUM_VAL = 360  # even, so that two DDP ranks split it without padding


@lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    y = data.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(x))
    return x[order], y[order]


def digits_tensors(split: str = "train", image: bool = False) -> tuple[Tensor, Tensor]:
    """``(x, y)`` of the fixed train (1,437 samples) or validation (360 samples) split.

    ``image=True`` gives ``[S, 1, 8, 8]`` instead of ``[S, 64]``.
    """
    x, y = _digits()
    if split == "train":
        x, y = x[NUM_VAL:], y[NUM_VAL:]
    elif split == "val":
        x, y = x[:NUM_VAL], y[:NUM_VAL]
    else:
        raise ValueError(split)
    xt = torch.from_numpy(x.copy())
    if image:
        xt = xt.reshape(-1, 1, 8, 8)
    return xt, torch.from_numpy(y.copy())


def digits_loaders(
    batch_size: int = 128, image: bool = False, num_val: Optional[int] = None
) -> tuple[DataLoader, DataLoader]:
    x, y = digits_tensors("train", image)
    xv, yv = digits_tensors("val", image)
    if num_val is not None:
        xv, yv = xv[:num_val], yv[:num_val]
    train = DataLoader(
        TensorDataset(x, y), batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    val = DataLoader(TensorDataset(xv, yv), batch_size=batch_size, shuffle=False)
    return train, val


class DigitsDataModule(LightningDataModule):
    """Digits as a datamodule (for LightningCLI)."""

    def __init__(self, batch_size: int = 128, image: bool = False) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.image = image

    def train_dataloader(self) -> DataLoader:
        return digits_loaders(self.batch_size, self.image)[0]

    def val_dataloader(self) -> DataLoader:
        return digits_loaders(self.batch_size, self.image)[1]


class _Classifier(LightningModule):
    net: nn.Module

    def __init__(self, lr: float = 0.01) -> None:
        super().__init__()
        self.lr = lr

    def forward(self, x: Tensor) -> Any:
        return self.net(x)

    def logits(self, x: Tensor) -> Tensor:
        return self(x)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self.logits(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self.logits(x), y)
        self.log("val_loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


class DigitsMLP(_Classifier):
    """``Linear(64, 32) -> ReLU -> Linear(32, 32) -> ReLU -> Linear(32, 10)``."""

    def __init__(self, lr: float = 0.01, hidden: int = 32) -> None:
        super().__init__(lr)
        torch.manual_seed(0)
        self.net = nn.Sequential(
            nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 10)
        )


class DigitsCNN(_Classifier):
    """Two 3x3 convolutions on ``[B, 1, 8, 8]`` digits, global average pooling, a linear head."""

    def __init__(self, lr: float = 0.01) -> None:
        super().__init__(lr)
        torch.manual_seed(0)
        self.net = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 12, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(12, 10),
        )


class NaNLinear(nn.Linear):
    """In eval mode, writes NaN into neuron 0 of every 5th sample and Inf into neuron 1 of every 7th of a batch."""

    def forward(self, x: Tensor) -> Tensor:
        out = super().forward(x)
        if not self.training:
            out = out.clone()
            out[::5, 0] = float("nan")
            out[::7, 1] = float("inf")
        return out


class NaNDigitsMLP(_Classifier):
    """The digits MLP whose first layer emits NaN / Inf for some samples at validation."""

    def __init__(self, lr: float = 0.01) -> None:
        super().__init__(lr)
        torch.manual_seed(0)
        self.net = nn.Sequential(NaNLinear(64, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 10))

    def logits(self, x: Tensor) -> Tensor:
        return torch.nan_to_num(self(x))


class SequenceBlock(nn.Module):
    """Embeds 8x8 digits as 8 tokens of 8 pixels and returns ``(hidden [B, 8, H], {"pooled": [B, H]})``."""

    def __init__(self, hidden: int = 16) -> None:
        super().__init__()
        self.proj = nn.Linear(8, hidden)

    def forward(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        hidden = torch.tanh(self.proj(x.reshape(-1, 8, 8)))
        return hidden, {"pooled": hidden.mean(dim=1)}


class DictBlock(nn.Module):
    """Returns a dict with a non-tensor entry first, then the activations."""

    def __init__(self, hidden: int = 16) -> None:
        super().__init__()
        self.proj = nn.Linear(16, hidden)

    def forward(self, x: Tensor) -> dict[str, Any]:
        return {"note": None, "hidden": torch.relu(self.proj(x)), "extra": x}


class DigitsSequenceModel(_Classifier):
    """Tuple-returning sequence block -> dict-returning block -> linear head."""

    def __init__(self, lr: float = 0.01) -> None:
        super().__init__(lr)
        torch.manual_seed(0)
        self.encoder = SequenceBlock(16)
        self.block = DictBlock(16)
        self.head = nn.Linear(16, 10)

    def forward(self, x: Tensor) -> Tensor:
        hidden, pooled = self.encoder(x)
        out = self.block(pooled["pooled"])
        return self.head(out["hidden"])


def fast_trainer(tmp_path: Any, **kwargs: Any) -> Trainer:
    """A quiet CPU Trainer; ``kwargs`` override the defaults."""
    options: dict[str, Any] = {
        "default_root_dir": str(tmp_path),
        "accelerator": "cpu",
        "devices": 1,
        "max_epochs": 2,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "log_every_n_steps": 5,
    }
    options.update(kwargs)
    return Trainer(**options)


class HistoryDump(Callback):
    """From rank 0, save the ``InformationMeasures`` state after each validation (for ``ddp_spawn`` runs,
    whose callback objects live in the worker processes)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        from lightning_infomem import InformationMeasures

        (callback,) = [c for c in trainer.callbacks if isinstance(c, InformationMeasures)]
        world_size = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
        if trainer.is_global_zero:
            torch.save(
                {
                    "history": callback.history,
                    "neuron_indices": callback.neuron_indices,
                    "samples_seen": dict(callback.measurement.seen),
                    "world_size": world_size,
                },
                self.path,
            )


def tiny_gpt2_classifier(num_labels: int) -> nn.Module:
    """A Hugging Face GPT-2 sequence classifier from a tiny config (random weights, no download; pad id 0)."""
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(
        n_embd=32, n_head=2, n_layer=2, vocab_size=50, num_labels=num_labels, pad_token_id=0
    )
    config.bos_token_id = config.eos_token_id = 1
    return transformers.GPT2ForSequenceClassification(config)


def observed_readings(model: nn.Module, names: list[str], *inputs: Any, **kwargs: Any) -> dict:
    """The readings `ReadingProbe` observes for the named modules on one call ``model(*inputs, **kwargs)`` (eval mode,
    no gradient), as the callback observes them on its first measured batch."""
    from lightning_infomem.introspection import ReadingProbe, batch_masks, named_layers

    modules = dict(named_layers(model))
    probe = ReadingProbe(model, {name: modules[name] for name in names})
    model.eval()
    first = next(v for v in (*inputs, *kwargs.values()) if isinstance(v, Tensor))
    with torch.no_grad():
        probe.start()
        try:
            model(*inputs, **kwargs)
        finally:
            probe.stop()
        return probe.observe(batch_size=first.shape[0], masks=batch_masks(kwargs)).readings


def expected_row(acts: dict[str, Tensor]) -> dict[str, float]:
    """Per-layer values the callback logs, from the functional core: the entropy on one range over all layers,
    the MI on each layer's own min-max range (the defaults)."""
    from lightning_infomem.functional import mean_off_diagonal, neuron_entropy, pairwise_mutual_information

    row = {}
    everything = (min(float(x.min()) for x in acts.values()), max(float(x.max()) for x in acts.values()))
    for name, x in acts.items():
        value_range = (float(x.min()), float(x.max()))
        row[f"infomem/{name}/entropy"] = float(neuron_entropy(x, 100, everything).mean())
        row[f"infomem/{name}/mutual_info"] = float(mean_off_diagonal(pairwise_mutual_information(x, 16, value_range)))
    return row
