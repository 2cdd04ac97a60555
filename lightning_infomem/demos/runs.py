"""The demo's runs: the paper's MLP on the digits, its two settings, and ranking final models by a measure.

- `digits_data`: the two controlled settings on scikit-learn's digits (60 / 20 / 20 % splits). ``shortcut``:
  the paper's Colored MNIST construction (binary label ``digit >= 5`` flipped with probability 0.25 in
  training and validation; a colour agreeing with the noisy label with probability ``(1 + alpha) / 2``;
  ground truth: accuracy with a random colour against the clean label). ``label_noise``: a fraction
  ``beta`` of the training and validation labels redrawn (ground truth: clean test accuracy).
- `DigitsMLP`: the paper's MLP (three hidden layers of 256 ReLU units).
- `train_run`: one model trained with `InformationMeasures`, `TrainingDynamics` and `MemorizationVerdict`,
  with its curves, its ground truth per epoch and its verdict.
- `model_selection`: Kendall tau between each rule's ranking of a seed's final models and their ground truth.

The benchmarks' study (``benchmarks/study``) builds its other families beside these.
"""

from __future__ import annotations

import math
import time
from typing import Any, Optional

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_infomem.demos.digits import coloured_digits, load_digits, redraw_labels

__all__ = [
    "LAYERS",
    "SETTINGS",
    "DigitsMLP",
    "digits_data",
    "kendall_tau",
    "model_selection",
    "rule_value",
    "train_run",
]

SETTINGS = ("shortcut", "label_noise")
LAYERS = ["net.0", "net.2", "net.4"]  # the pre-activation outputs of the three hidden layers


def digits_data(
    setting: str, level: float, seed: int, split_seed: int = 0, generator: Optional[torch.Generator] = None
) -> dict[str, Any]:
    """``{"train": (x, y), "val": (x, y), "truth": (x, y), "true_train": y_clean, "classes": C}`` of one run.

    ``val`` carries the same shortcut or noise as ``train``; ``truth`` is the split with a random colour and
    clean labels (``shortcut``) or the clean test split (``label_noise``).

    Example:
        >>> data = digits_data("shortcut", 1.0, seed=0)
        >>> x, y = data["train"]
        >>> x.shape, data["classes"]
        (torch.Size([1078, 2, 8, 8]), 2)
    """
    if setting not in SETTINGS:
        raise ValueError(f"setting must be one of {SETTINGS}, received {setting!r}")
    if generator is None:
        generator = torch.Generator().manual_seed(10_000 * seed + int(round(level * 1000)))
    x, digits = load_digits(split_seed)
    n = len(digits)
    cut_train, cut_val = int(0.6 * n), int(0.8 * n)
    parts = [slice(0, cut_train), slice(cut_train, cut_val), slice(cut_val, n)]
    if setting == "shortcut":
        (xt, yt, _), (xv, yv, _) = (coloured_digits(x[p], digits[p], level, generator) for p in parts[:2])
        xo, _, _ = coloured_digits(x[parts[2]], digits[parts[2]], 0.0, generator)
        return {
            "train": (xt, yt),
            "val": (xv, yv),
            "truth": (xo, (digits[parts[2]] >= 5).long()),
            "true_train": (digits[parts[0]] >= 5).long(),
            "classes": 2,
        }
    yt = redraw_labels(digits[parts[0]], level, generator)
    yv = redraw_labels(digits[parts[1]], level, generator)
    return {
        "train": (x[parts[0]], yt),
        "val": (x[parts[1]], yv),
        "truth": (x[parts[2]], digits[parts[2]]),
        "true_train": digits[parts[0]],
        "classes": 10,
    }


class DigitsMLP(LightningModule):
    """The paper's MLP: three hidden layers of ``hidden`` ReLU units, Adam, cross-entropy.

    Logs ``val_loss`` and ``val_acc`` (on the validation labels, noisy or shortcut-carrying as trained).
    """

    def __init__(self, in_features: int, classes: int, hidden: int = 256, lr: float = 1e-3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(
            nn.Linear(in_features, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.flatten(1))

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch[0], batch[1]
        return nn.functional.cross_entropy(self(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch[0], batch[1]
        logits = self(x)
        self.log("val_loss", nn.functional.cross_entropy(logits, y))
        self.log("val_acc", (logits.argmax(1) == y).float().mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


def accuracy(model: nn.Module, data: tuple[Tensor, Tensor]) -> float:
    was_training = model.training
    model.eval()
    with torch.no_grad():
        value = float((model(data[0]).argmax(1) == data[1]).double().mean())
    model.train(was_training)
    return value


def kendall_tau(a: list[float], b: list[float]) -> float:
    """Kendall tau-b (NaN when either ranking is constant or a value is missing)."""
    from scipy.stats import kendalltau

    if len(a) < 2 or any(not math.isfinite(v) for v in [*a, *b]):
        return math.nan
    tau = kendalltau(a, b).statistic
    return math.nan if tau is None else float(tau)


def rule_value(row: dict[str, Any], rule: str) -> float:
    """The value a rule maximises on a recorded epoch: ``key:max`` -> value, ``key:min`` -> -value (NaN if absent)."""
    key, _, direction = rule.rpartition(":")
    value = row.get(key)
    if value is None or not math.isfinite(value):
        return math.nan
    return value if direction == "max" else -value


def rules_of(runs: list[dict[str, Any]]) -> list[str]:
    """Every rule the recorded keys allow: both directions of each measured key, ``val_*`` baselines, last epoch."""
    rows = [row for run in runs for row in (*run["curves"], run["final"])]
    keys = sorted({k for row in rows for k in row if k.startswith(("infomem", "ksg"))})
    rules = [f"{key}:{direction}" for key in keys for direction in ("min", "max")]
    return rules + ["val_loss:min", "val_acc:max", "last_epoch"]


def _final_with(run: dict[str, Any], rule: str) -> dict[str, Any]:
    """The last recorded epoch that has the rule's key (KSG is measured every few epochs, the last one included)."""
    key = rule.rpartition(":")[0]
    for row in reversed(run["curves"]):
        if key in row:
            return row
    return run["final"]


def model_selection(runs: list[dict[str, Any]], rules: Optional[list[str]] = None) -> dict[str, Any]:
    """Kendall tau between each rule's ranking of the final models of a series and their ground-truth accuracy.

    Per seed (the levels of one seed form a series), then the mean and standard deviation over seeds.
    ``rules``: the rules to score (default: every one the recorded keys allow, `rules_of`).
    """
    out: dict[str, Any] = {"kendall_tau": {}, "kendall_tau_sd": {}, "per_seed": {}}
    seeds = sorted({run["seed"] for run in runs})
    for rule in rules_of(runs) if rules is None else rules:
        if rule == "last_epoch":
            continue
        taus = []
        for seed in seeds:
            series = sorted((r for r in runs if r["seed"] == seed), key=lambda r: r["level"])
            values = [rule_value(_final_with(r, rule), rule) for r in series]
            taus.append(kendall_tau(values, [r["final"]["truth_acc"] for r in series]))
        finite = [t for t in taus if math.isfinite(t)]
        out["per_seed"][rule] = taus
        out["kendall_tau"][rule] = float(np.mean(finite)) if finite else math.nan
        out["kendall_tau_sd"][rule] = float(np.std(finite, ddof=1)) if len(finite) > 1 else math.nan
    return out


class _Recorder(Callback):
    """After every validation: the logged keys, the ground-truth and the training accuracy."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data
        self.rows: list[dict[str, Any]] = []

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        row: dict[str, Any] = {"epoch": trainer.current_epoch}
        row.update(
            {
                key: float(value)
                for key, value in trainer.callback_metrics.items()
                if key.startswith(("infomem", "val_", "verdict")) and not key.endswith("clipped_fraction")
            }
        )
        row["truth_acc"] = accuracy(pl_module, self.data["truth"])
        row["train_acc"] = accuracy(pl_module, self.data["train"])
        self.rows.append(row)


def train_run(
    setting: str,
    level: float,
    seed: int,
    epochs: int,
    measure_every: int = 1,
    log_dir: Optional[str] = None,
    hidden: int = 256,
    lr: float = 1e-3,
) -> dict[str, Any]:
    """Train one `DigitsMLP` with `InformationMeasures`, `TrainingDynamics` and `MemorizationVerdict` attached.

    Returns ``{"setting", "level", "seed", "curves", "final", "verdict", "verdict_summary", "seconds",
    "_model", "_data"}``: a row per validation epoch (the logged keys, ``truth_acc``, ``train_acc``), the last
    one, and the verdict (`Verdict.as_dict`) with its printed paragraph.
    """
    from lightning_infomem import IndexedDataset, InformationMeasures, MemorizationVerdict, TrainingDynamics

    start = time.perf_counter()
    seed_everything(seed, verbose=False)
    data = digits_data(setting, level, seed)
    x, y = data["train"]
    model = DigitsMLP(x[0].numel(), data["classes"], hidden, lr)
    verdict = MemorizationVerdict(print_summary=False)
    recorder = _Recorder(data)
    callbacks: list[Callback] = [
        InformationMeasures(layers=LAYERS, every_n_epochs=measure_every, seed=seed),
        TrainingDynamics(num_images=0, log_histograms=False),
        verdict,
        recorder,
    ]
    logger: Any = False
    if log_dir is not None:
        from lightning.pytorch.loggers import TensorBoardLogger

        logger = TensorBoardLogger(log_dir, name=f"{setting}_{level:.2f}_seed{seed}", version=0)
    trainer = Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=logger,
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        deterministic=True,
        log_every_n_steps=10,
    )
    train = DataLoader(
        IndexedDataset(TensorDataset(x, y)), batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(seed)
    )
    trainer.fit(model, train, DataLoader(TensorDataset(*data["val"]), batch_size=512))
    result = verdict.verdict
    return {
        "setting": setting,
        "level": level,
        "seed": seed,
        "curves": recorder.rows,
        "final": dict(recorder.rows[-1]),
        "verdict": result.as_dict() if result is not None else {},
        "verdict_summary": verdict.summary(),
        "seconds": time.perf_counter() - start,
        "_model": model,
        "_data": data,
    }
