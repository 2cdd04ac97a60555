"""Find flipped labels on digits with the input loss curvature, next to the simple rankings.

Flips 1, 2, 5 and 10 % of the digits training labels to another class (uniformly among the other
nine), trains a small MLP with the ``LossCurvature`` callback, and reports the AUROC of each
per-sample score for separating the flipped samples from the clean ones:

* ``curvature``: the callback's score, mean over all training epochs of ``mean_i ||g_i||``;
* ``curvature (last epoch)``: the same, scored after the last epoch only;
* ``final loss``: cross-entropy of the assigned label after training (eval mode);
* ``low confidence``: 1 - the softmax probability of the assigned label, averaged over training
  steps (recorded in ``training_step``);
* ``low AUM``: minus the area under the margin (Pleiss et al. 2020), the mean over training epochs
  of ``logit[assigned] - max(other logits)``, recorded in ``training_step``.

Nothing is tuned on the flipped labels: every setting is fixed below. Run::

    python examples/curvature_mislabeled.py               # 4 noise levels x 2 seeds, a few minutes on 2 CPU cores
    python examples/curvature_mislabeled.py --quick       # a seconds-long smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningModule, Trainer
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_infomem import IndexedDataset, LossCurvature

SCORES = ["curvature", "curvature (last epoch)", "final loss", "low confidence", "low AUM"]


def load_digits_split(seed: int = 0) -> tuple[Tensor, Tensor]:
    """The digits images as ``[S, 64]`` floats in ``[0, 1]`` and labels; the first 80 % (shuffled by ``seed``)."""
    from sklearn.datasets import load_digits

    data = load_digits()
    order = np.random.default_rng(seed).permutation(len(data.target))
    x = torch.tensor(data.data[order] / 16.0, dtype=torch.float32)
    y = torch.tensor(data.target[order], dtype=torch.int64)
    num_train = int(0.8 * len(y))
    return x[:num_train], y[:num_train]


def flip_labels(labels: Tensor, fraction: float, seed: int, num_classes: int = 10) -> tuple[Tensor, Tensor]:
    """``(noisy labels, flipped mask)``: ``round(fraction * S)`` samples get another class, uniformly."""
    generator = torch.Generator().manual_seed(seed)
    num_flipped = round(fraction * labels.numel())
    flipped = torch.zeros(labels.numel(), dtype=torch.bool)
    flipped[torch.randperm(labels.numel(), generator=generator)[:num_flipped]] = True
    shift = torch.randint(1, num_classes, (labels.numel(),), generator=generator)
    noisy = torch.where(flipped, (labels + shift) % num_classes, labels)
    return noisy, flipped


class RecordingMLP(LightningModule):
    """An MLP that records, per sample index, the margin and the confidence of the assigned label."""

    def __init__(self, num_samples: int, hidden: int = 128, lr: float = 1e-3, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(
            nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 10)
        )
        self.lr = lr
        self.margin_sum = torch.zeros(num_samples, dtype=torch.float64)
        self.confidence_sum = torch.zeros(num_samples, dtype=torch.float64)
        self.count = torch.zeros(num_samples, dtype=torch.float64)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y, index = batch
        logits = self(x)
        with torch.no_grad():
            assigned = logits.gather(1, y[:, None])[:, 0]
            others = logits.scatter(1, y[:, None], float("-inf")).amax(dim=1)
            confidence = logits.softmax(dim=1).gather(1, y[:, None])[:, 0]
            index = index.cpu()
            self.margin_sum.index_add_(0, index, (assigned - others).double().cpu())
            self.confidence_sum.index_add_(0, index, confidence.double().cpu())
            self.count.index_add_(0, index, torch.ones(len(index), dtype=torch.float64))
        return nn.functional.cross_entropy(logits, y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def auroc(scores: Tensor, positives: Tensor) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(positives.numpy(), scores.double().numpy()))


def run_one(fraction: float, seed: int, epochs: int, num_probes: int, batch_size: int = 64) -> dict[str, float]:
    """Train once with ``fraction`` of the labels flipped; the AUROC of every score."""
    x, clean = load_digits_split()
    noisy, flipped = flip_labels(clean, fraction, seed=1000 + seed)
    dataset = IndexedDataset(TensorDataset(x, noisy))
    train = DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed))
    scoring = DataLoader(dataset, batch_size=512, shuffle=False)
    model = RecordingMLP(len(dataset), seed=seed)
    curvature = LossCurvature(scoring, num_probes=num_probes, seed=seed, num_images=0)
    trainer = Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        callbacks=[curvature],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=True,
    )
    start = time.perf_counter()
    trainer.fit(model, train)
    seconds = time.perf_counter() - start
    model.eval()
    with torch.no_grad():
        logits = model(x)
        final_loss = nn.functional.cross_entropy(logits, noisy, reduction="none")
        train_accuracy_noisy = float((logits.argmax(1) == noisy).float().mean())
    scores = {
        "curvature": curvature.scores,
        "curvature (last epoch)": curvature.last_scores,
        "final loss": final_loss,
        "low confidence": 1 - model.confidence_sum / model.count,
        "low AUM": -model.margin_sum / model.count,
    }
    result = {name: auroc(value, flipped) for name, value in scores.items()}
    result.update(
        noise=fraction, seed=seed, flipped=int(flipped.sum()), fit_accuracy=train_accuracy_noisy, seconds=seconds
    )
    return result


def summarise(results: list[dict[str, float]]) -> list[dict[str, Any]]:
    rows = []
    for fraction in sorted({r["noise"] for r in results}):
        runs = [r for r in results if r["noise"] == fraction]
        row: dict[str, Any] = {"noise": fraction, "flipped": runs[0]["flipped"], "seeds": len(runs)}
        for name in [*SCORES, "fit_accuracy"]:
            values = np.array([r[name] for r in runs])
            row[name] = float(values.mean())
            row[f"{name} min"] = float(values.min())
            row[f"{name} max"] = float(values.max())
        rows.append(row)
    return rows


def markdown_table(rows: list[dict[str, Any]]) -> str:
    header = "| noise | flipped | " + " | ".join(SCORES) + " | fit of noisy labels |"
    lines = [header, "|" + " --- |" * (len(SCORES) + 3)]
    for row in rows:
        cells = []
        for name in [*SCORES, "fit_accuracy"]:
            if row["seeds"] > 1:
                cells.append(f"{row[name]:.3f} ({row[name + ' min']:.3f}-{row[name + ' max']:.3f})")
            else:
                cells.append(f"{row[name]:.3f}")
        lines.append(f"| {row['noise']:.0%} | {row['flipped']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--noise", type=float, nargs="+", default=[0.01, 0.02, 0.05, 0.10])
    parser.add_argument("--seeds", type=int, default=2, help="seeds per noise level (model, order, probes, flips)")
    parser.add_argument("--epochs", type=int, default=200, help="enough to fit the noisy training labels")
    parser.add_argument("--num-probes", type=int, default=10)
    parser.add_argument("--out", default="runs/curvature_mislabeled", help="folder for results.json and results.csv")
    parser.add_argument("--quick", action="store_true", help="10 %% noise, 1 seed, 3 epochs, 2 probes")
    args = parser.parse_args(argv)
    if args.quick:
        args.noise, args.seeds, args.epochs, args.num_probes = [0.10], 1, 3, 2
    torch.set_num_threads(1)  # tiny model: one thread is fastest, and robust to busy cores
    import warnings

    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*isinstance.*LeafSpec.*")
    results = []
    for fraction in args.noise:
        for seed in range(args.seeds):
            result = run_one(fraction, seed, args.epochs, args.num_probes)
            print(
                f"noise {fraction:.0%} seed {seed}: "
                + ", ".join(f"{name} {result[name]:.3f}" for name in SCORES)
                + f" ({result['seconds']:.1f} s)",
                file=sys.stderr,
            )
            results.append(result)
    rows = summarise(results)
    print(markdown_table(rows))
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w") as handle:
        json.dump({"settings": vars(args), "runs": results, "summary": rows}, handle, indent=2)
    from lightning_infomem.reporting import write_csv

    write_csv(results, os.path.join(args.out, "results.csv"))
    return rows


if __name__ == "__main__":
    main()
