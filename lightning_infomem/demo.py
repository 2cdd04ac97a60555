"""The paper's finding in miniature, on the scikit-learn digits.

Reproduces the two controlled experiments of Bansal, Pruthi & Belinkov (NeurIPS 2022) with an
MLP on the 8x8 digits that ship with scikit-learn, using only the public API:

- shortcut series: a colour that agrees with the label on a fraction ``alpha`` of the training
  images (Colored MNIST in miniature; random colour at evaluation);
- shuffled-label series: a fraction ``beta`` of the training labels redrawn at random, trained
  until the network fits them.

Every model trains with `InformationMeasures` attached and logs to
TensorBoard. The final models are then measured on in-distribution validation images with the
package defaults and with the paper's settings (`InformationMeasures.paper`, plus the KSG
kNN mutual information), and ranked against their shortcut-free / clean test accuracy (Kendall tau).

    python -m lightning_infomem.demo [--quick] [--out DIR] [--seed N]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
import warnings
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
from lightning.pytorch import LightningModule, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_infomem.callback import InformationMeasures
from lightning_infomem.functional import mean_off_diagonal
from lightning_infomem.functional.ksg import ksg_mutual_information
from lightning_infomem.reporting import write_csv

LEVELS = (0.0, 0.25, 0.5, 0.75, 1.0)
NUM_CLASSES = 10
# One colour per class for the shortcut (RGB, far apart).
PALETTE = torch.tensor(
    [
        [1.0, 0.1, 0.1],
        [0.1, 1.0, 0.1],
        [0.1, 0.1, 1.0],
        [1.0, 1.0, 0.1],
        [1.0, 0.1, 1.0],
        [0.1, 1.0, 1.0],
        [1.0, 0.55, 0.1],
        [0.55, 0.1, 1.0],
        [0.1, 0.55, 0.55],
        [0.6, 0.6, 0.6],
    ]
)


@dataclass
class Settings:
    """Training budget of one demo run."""

    shortcut_epochs: int
    shuffled_epochs: int
    hidden: int
    ksg_neurons: int
    batch_size: int = 128
    lr: float = 1e-3


FULL = Settings(shortcut_epochs=30, shuffled_epochs=150, hidden=256, ksg_neurons=64)
QUICK = Settings(shortcut_epochs=4, shuffled_epochs=6, hidden=64, ksg_neurons=16)


class DigitsMLP(LightningModule):
    """The paper's MLP (three hidden layers of ``hidden`` ReLU units), Adam, cross-entropy."""

    def __init__(self, in_features: int, hidden: int = 256, lr: float = 1e-3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(
            nn.Linear(in_features, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, NUM_CLASSES),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        self.log("val_acc", (self(x).argmax(1) == y).float().mean(), prog_bar=False)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


# ------------------------------------------------------------------------------------------ data
def load_splits(seed: int) -> dict[str, tuple[Tensor, Tensor]]:
    """Digits scaled to [0, 1], split 60 / 15 / 25 % into train / validation / test (stratified by shuffling)."""
    from sklearn.datasets import load_digits

    images, labels = load_digits(return_X_y=True)
    x = torch.tensor(images / 16.0, dtype=torch.float32)
    y = torch.tensor(labels, dtype=torch.int64)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    x, y = x[order], y[order]
    n_train, n_val = int(0.6 * len(y)), int(0.15 * len(y))
    return {
        "train": (x[:n_train], y[:n_train]),
        "val": (x[n_train : n_train + n_val], y[n_train : n_train + n_val]),
        "test": (x[n_train + n_val :], y[n_train + n_val :]),
    }


def colorize(x: Tensor, colour_ids: Tensor) -> Tensor:
    """Grey 8x8 digits ``[n, 64]`` painted in the given palette colours: ``[n, 3 * 64]``."""
    return (x.unsqueeze(1) * PALETTE[colour_ids].unsqueeze(2)).flatten(1)


def shortcut_colours(y: Tensor, alpha: float, generator: torch.Generator) -> Tensor:
    """The label's colour with probability ``alpha``, a uniformly random colour otherwise."""
    random = torch.randint(0, NUM_CLASSES, y.shape, generator=generator)
    agree = torch.rand(y.shape, generator=generator) < alpha
    return torch.where(agree, y, random)


def shuffle_labels(y: Tensor, beta: float, generator: torch.Generator) -> Tensor:
    """A fraction ``beta`` of the labels redrawn uniformly at random."""
    redraw = torch.rand(y.shape, generator=generator) < beta
    return torch.where(redraw, torch.randint(0, NUM_CLASSES, y.shape, generator=generator), y)


def make_experiment(series: str, level: float, splits: dict, seed: int) -> dict[str, tuple[Tensor, Tensor]]:
    """Train / in-distribution validation / evaluation sets of one model of a series."""
    g = torch.Generator().manual_seed(seed * 1000 + int(level * 100))
    (xt, yt), (xv, yv), (xs, ys) = splits["train"], splits["val"], splits["test"]
    if series == "shortcut":
        return {
            "train": (colorize(xt, shortcut_colours(yt, level, g)), yt),
            "val": (colorize(xv, shortcut_colours(yv, level, g)), yv),  # in-distribution
            "test_iid": (colorize(xs, shortcut_colours(ys, level, g)), ys),
            "test_ood": (colorize(xs, torch.randint(0, NUM_CLASSES, ys.shape, generator=g)), ys),
        }
    noisy = shuffle_labels(yt, level, g)
    return {
        "train": (xt, noisy),
        "val": (xv, yv),
        "test_iid": (xs, ys),
        "test_ood": (xs, ys),  # no shift: clean test accuracy is what the ranking is judged against
    }


def accuracy(model: nn.Module, data: tuple[Tensor, Tensor]) -> float:
    model.eval()
    with torch.no_grad():
        return float((model(data[0]).argmax(1) == data[1]).float().mean())


# ------------------------------------------------------------------------------------ measuring
def capture_activations(model: nn.Module, layers: list[str], x: Tensor) -> dict[str, Tensor]:
    """Outputs of the named modules on ``x`` (eval mode), ``[S, N]`` each."""
    modules = dict(model.named_modules())
    captured: dict[str, Tensor] = {}
    handles = [
        modules[name].register_forward_hook(lambda m, a, out, name=name: captured.__setitem__(name, out.detach()))
        for name in layers
    ]
    try:
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return captured


def measure(model: LightningModule, callback: InformationMeasures, data: tuple[Tensor, Tensor]) -> InformationMeasures:
    loader = DataLoader(TensorDataset(*data), batch_size=256)
    trainer = Trainer(
        callbacks=[callback],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.validate(model, loader, verbose=False)
    return callback


def kendall_tau(a: list[float], b: list[float]) -> float:
    """Kendall tau-b rank correlation (0 when either ranking is constant)."""
    from scipy.stats import kendalltau

    tau = kendalltau(a, b).statistic
    return 0.0 if tau is None or math.isnan(tau) else float(tau)


# ------------------------------------------------------------------------------------------ run
def train_one(series: str, level: float, data: dict, settings: Settings, seed: int, out: str) -> dict[str, Any]:
    seed_everything(seed, verbose=False)
    model = DigitsMLP(data["train"][0].shape[1], settings.hidden, settings.lr)
    epochs = settings.shortcut_epochs if series == "shortcut" else settings.shuffled_epochs
    name = f"{series}_{level:.2f}"
    curves = InformationMeasures(every_n_epochs=max(1, epochs // 10), heatmap_every_n_epochs=5)
    checkpoint = ModelCheckpoint(
        dirpath=os.path.join(out, "checkpoints", name), monitor="val_acc", mode="max", save_weights_only=True
    )
    trainer = Trainer(
        max_epochs=epochs,
        callbacks=[curves, checkpoint],
        logger=TensorBoardLogger(os.path.join(out, "tensorboard"), name=name, version=0),
        check_val_every_n_epoch=max(1, epochs // 10),
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=5,
        deterministic=True,
    )
    train = DataLoader(TensorDataset(*data["train"]), batch_size=settings.batch_size, shuffle=True)
    val = DataLoader(TensorDataset(*data["val"]), batch_size=256)
    trainer.fit(model, train, val)
    if series == "shortcut" and checkpoint.best_model_path:  # the paper keeps the best validation accuracy
        model = DigitsMLP.load_from_checkpoint(checkpoint.best_model_path)
    curves.to_csv(os.path.join(out, "curves", f"{name}.csv"))

    layers = curves.layer_names
    default = measure(model, InformationMeasures(layers=layers, log_histograms=False), data["val"])
    paper = measure(model, InformationMeasures.paper(layers=layers), data["val"])
    activations = capture_activations(model, layers, data["val"][0])
    g = torch.Generator().manual_seed(seed)
    ksg = {}
    for layer, acts in activations.items():
        subset = torch.randperm(acts.shape[1], generator=g)[: settings.ksg_neurons]
        ksg[layer] = ksg_mutual_information(acts[:, subset].double(), k=3)
    result: dict[str, Any] = {
        "series": series,
        "level": level,
        "train_acc": accuracy(model, data["train"]),
        "iid_acc": accuracy(model, data["test_iid"]),
        "ood_acc": accuracy(model, data["test_ood"]),
    }
    for label, callback in (("default", default), ("paper", paper)):
        row = callback.history[-1]
        result[f"{label}_entropy"] = row[f"{callback.prefix}/entropy"]
        result[f"{label}_mutual_info"] = row[f"{callback.prefix}/mutual_info"]
        for layer in layers:
            result[f"{label}_entropy/{layer}"] = row[f"{callback.prefix}/{layer}/entropy"]
            result[f"{label}_mutual_info/{layer}"] = row[f"{callback.prefix}/{layer}/mutual_info"]
    result["ksg_mutual_info"] = float(np.mean([float(mean_off_diagonal(m)) for m in ksg.values()]))
    for layer, matrix in ksg.items():
        result[f"ksg_mutual_info/{layer}"] = float(mean_off_diagonal(matrix))
    per_neuron = {layer: paper.entropy_metrics[layer].compute().tolist() for layer in layers}
    mi_values = {layer: matrix[~torch.eye(matrix.shape[0], dtype=torch.bool)].tolist() for layer, matrix in ksg.items()}
    result["_per_neuron_entropy"] = per_neuron
    result["_ksg_pairs"] = mi_values
    result["_curves"] = curves.history
    return result


def rank_agreement(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Kendall tau between each measure and the shortcut-free (or clean) test accuracy."""
    target = [r["ood_acc"] for r in rows]
    keys = ["default_entropy", "default_mutual_info", "paper_entropy", "paper_mutual_info", "ksg_mutual_info"]
    return {key: kendall_tau([r[key] for r in rows], target) for key in keys}


def format_table(series: str, rows: list[dict[str, Any]], layers: list[str]) -> str:
    level_name = "alpha" if series == "shortcut" else "beta"
    ood_name = "ood_acc" if series == "shortcut" else "test_acc"
    head = (
        f"{level_name:>5} | {'train':>5} {'iid':>5} {ood_name:>8} | "
        + " ".join(f"H[{i}]".rjust(6) for i in range(len(layers)))
        + " | "
        + " ".join(f"I[{i}]".rjust(6) for i in range(len(layers)))
        + f" | {'H':>5} {'I':>5} | {'H_pap':>5} {'I_pap':>5} {'I_ksg':>5}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['level']:>5.2f} | {r['train_acc']:>5.3f} {r['iid_acc']:>5.3f} {r['ood_acc']:>8.3f} | "
            + " ".join(f"{r[f'default_entropy/{layer}']:>6.3f}" for layer in layers)
            + " | "
            + " ".join(f"{r[f'default_mutual_info/{layer}']:>6.3f}" for layer in layers)
            + f" | {r['default_entropy']:>5.3f} {r['default_mutual_info']:>5.3f}"
            + f" | {r['paper_entropy']:>5.3f} {r['paper_mutual_info']:>5.3f} {r['ksg_mutual_info']:>5.3f}"
        )
    return "\n".join(lines)


def save_figures(series: str, rows: list[dict[str, Any]], out: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy.stats import gaussian_kde

    written = []
    layers = list(rows[0]["_per_neuron_entropy"])
    level_name = "alpha" if series == "shortcut" else "beta"

    fig, axes = plt.subplots(1, len(layers), figsize=(4 * len(layers), 3.6), sharey=True)
    for ax, layer in zip(np.atleast_1d(axes), layers, strict=True):
        ax.boxplot([r["_per_neuron_entropy"][layer] for r in rows], notch=True, showfliers=False)
        ax.set_xticks(range(1, len(rows) + 1), [f"{r['level']:.2f}" for r in rows])
        ax.set_title(f"layer {layer}")
        ax.set_xlabel(level_name)
    np.atleast_1d(axes)[0].set_ylabel("per-neuron entropy H (nats, paper binning)")
    fig.suptitle(f"{series}: per-neuron entropy")
    fig.tight_layout()
    written.append(os.path.join(out, f"{series}_entropy_boxplots.png"))
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(layers), figsize=(4 * len(layers), 3.6), sharey=True)
    for ax, layer in zip(np.atleast_1d(axes), layers, strict=True):
        values = [np.asarray(r["_ksg_pairs"][layer]) for r in rows]
        grid = np.linspace(min(v.min() for v in values), max(v.max() for v in values), 200)
        for r, v, colour in zip(rows, values, plt.cm.viridis(np.linspace(0, 0.9, len(rows))), strict=True):
            if v.size > 1 and v.std() > 0:
                ax.plot(grid, gaussian_kde(v)(grid), color=colour, label=f"{level_name}={r['level']:.2f}")
        ax.set_title(f"layer {layer}")
        ax.set_xlabel("pairwise MI (KSG, nats)")
    np.atleast_1d(axes)[0].set_ylabel("density")
    np.atleast_1d(axes)[-1].legend(fontsize=7)
    fig.suptitle(f"{series}: distribution of pairwise mutual information")
    fig.tight_layout()
    written.append(os.path.join(out, f"{series}_mi_densities.png"))
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)

    fig, (ax_h, ax_i) = plt.subplots(1, 2, figsize=(9, 3.6))
    for r in rows:
        epochs = [c["epoch"] for c in r["_curves"]]
        ax_h.plot(epochs, [c["infomem/entropy"] for c in r["_curves"]], marker="o", label=f"{r['level']:.2f}")
        ax_i.plot(epochs, [c["infomem/mutual_info"] for c in r["_curves"]], marker="o", label=f"{r['level']:.2f}")
    ax_h.set(xlabel="epoch", ylabel="mean H (nats)", title="entropy during training")
    ax_i.set(xlabel="epoch", ylabel="mean I (nats)", title="mutual information during training")
    ax_i.legend(title=level_name, fontsize=7)
    fig.tight_layout()
    written.append(os.path.join(out, f"{series}_curves.png"))
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)
    return written


def run(out: str, quick: bool = False, seed: int = 0, levels: tuple[float, ...] = LEVELS) -> dict[str, Any]:
    """Train both series, measure, rank, and write tables, figures, CSV and JSON under ``out``."""
    settings = QUICK if quick else FULL
    os.makedirs(out, exist_ok=True)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    splits = load_splits(seed)
    print(f"TensorBoard curves: tensorboard --logdir {os.path.join(out, 'tensorboard')}", flush=True)
    start = time.perf_counter()
    total = 2 * len(levels)
    report: dict[str, Any] = {"settings": settings.__dict__, "seed": seed, "quick": quick, "series": {}}
    for series in ("shortcut", "shuffled"):
        rows = []
        for level in levels:
            done = len(report["series"]) * len(levels) + len(rows)
            print(
                f"[{done + 1}/{total}] {series} {'alpha' if series == 'shortcut' else 'beta'}={level:.2f} ...",
                end=" ",
                flush=True,
            )
            began = time.perf_counter()
            data = make_experiment(series, level, splits, seed)
            rows.append(train_one(series, level, data, settings, seed, out))
            elapsed = time.perf_counter() - start
            eta = elapsed / (done + 1) * (total - done - 1)
            print(f"{time.perf_counter() - began:.1f}s (elapsed {elapsed:.0f}s, about {eta:.0f}s left)", flush=True)
        layers = list(rows[0]["_per_neuron_entropy"])
        taus = rank_agreement(rows)
        table = format_table(series, rows, layers)
        print(f"\n{series} series (H and I in nats; H[i], I[i] per layer {layers}, package defaults):")
        print(table)
        print(
            "Kendall tau vs "
            + ("shortcut-free" if series == "shortcut" else "clean test")
            + " accuracy: "
            + ", ".join(f"{k} {v:+.2f}" for k, v in taus.items())
            + "\n"
        )
        public = [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]
        write_csv(public, os.path.join(out, f"{series}_results.csv"))
        figures = save_figures(series, rows, out)
        report["series"][series] = {"rows": public, "kendall_tau": taus, "table": table, "figures": figures}
    report["wall_seconds"] = round(time.perf_counter() - start, 1)
    with open(os.path.join(out, "results.json"), "w") as handle:
        json.dump(report, handle, indent=2)
    print(f"Done in {report['wall_seconds']:.0f}s. Tables, figures, CSV and JSON in {out}")
    return report


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m lightning_infomem.demo",
        description="Information measures reflect memorization: the paper's two experiments on the digits.",
    )
    parser.add_argument("--quick", action="store_true", help="a small CI-sized run (under a minute)")
    parser.add_argument("--out", default="infomem_demo", help="output folder (default: ./infomem_demo)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
    import logging

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    run(args.out, quick=args.quick, seed=args.seed)


if __name__ == "__main__":
    main()
