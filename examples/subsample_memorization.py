"""Feldman & Zhang memorization scores on digits with flipped labels, next to the loss curvature.

Flips 5 % of the digits training labels (uniformly to another class), trains ``t`` small MLPs, each on
an independent random 70 % subset, with `train_on_subsets` (resumable: rerun the command after a
crash or Ctrl-C and it continues; parallel: ``--workers``), and reports:

* the AUROC of the memorization score for separating flipped from clean training examples;
* the same AUROC for the input loss curvature (`LossCurvature`, one model trained on the whole noisy
  training set), and the agreement of the two scores (Spearman rank correlation, cosine similarity);
* the paper's RMS error bound ``sqrt(1/(p t) + 1/((1-p) t))`` for the ``t`` used, and the mean
  standard error of the estimates;
* the share of examples with mem >= 0.25, and the same-class high-influence pairs
  (infl >= 0.15, mem >= 0.25) on the 360 held-out digits.

Figures: an image grid of the highest-memorization training examples (assigned label, true label)
and the score distributions. Run::

    python examples/subsample_memorization.py            # t = 200 models, a few minutes on 2 CPU cores
    python examples/subsample_memorization.py --quick    # t = 20 models, under a minute
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import sys
import time
import warnings
from typing import Any


def build_parser() -> argparse.ArgumentParser:
    """The command line (built before the heavy imports, so that --help answers at once)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=int, default=200, help="t, the number of subset models")
    parser.add_argument("--fraction", type=float, default=0.7, help="subset size as a fraction of the training set")
    parser.add_argument("--noise", type=float, default=0.05, help="fraction of training labels flipped")
    parser.add_argument("--epochs", type=int, default=100, help="enough to fit the noisy labels")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=2, help="training processes")
    parser.add_argument("--num-probes", type=int, default=10, help="curvature probes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/subsample_memorization", help="model records and results")
    parser.add_argument("--figures", default=None, help="folder of the figures (default: --out)")
    parser.add_argument("--quick", action="store_true", help="t = 20 models")
    return parser


if __name__ == "__main__" and {"-h", "--help"} & set(sys.argv[1:]):
    build_parser().parse_args()  # prints the help and exits

import numpy as np
import torch
from lightning.pytorch import LightningModule, Trainer
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_infomem import IndexedDataset, LossCurvature, train_on_subsets
from lightning_infomem.demos.digits import digits_split, flip_labels

warnings.filterwarnings("ignore", ".*does not have many workers.*")
warnings.filterwarnings("ignore", ".*isinstance.*LeafSpec.*")


class MLP(LightningModule):
    """``64 -> hidden -> hidden -> 10`` ReLU MLP trained with Adam; batches ``(x, y)`` or ``(x, y, index)``."""

    def __init__(self, hidden: int = 128, lr: float = 3e-3) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 10)
        )
        self.lr = lr

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch[0], batch[1]
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def quiet_trainer(epochs: int, **kwargs: Any) -> Trainer:
    return Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )


def build(index: int, epochs: int) -> tuple[LightningModule, Trainer]:
    """The builder for `train_on_subsets`: module level (picklable into worker processes)."""
    return MLP(), quiet_trainer(epochs)


def auroc(scores: Tensor, positives: Tensor) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(positives.numpy(), scores.double().numpy()))


def curvature_scores(x: Tensor, noisy: Tensor, epochs: int, num_probes: int, batch_size: int) -> Tensor:
    """Mean input loss curvature over training of one model fitted to the whole noisy training set."""
    torch.manual_seed(0)
    dataset = IndexedDataset(TensorDataset(x, noisy))
    callback = LossCurvature(DataLoader(dataset, batch_size=512), num_probes=num_probes, num_images=0, seed=0)
    trainer = quiet_trainer(epochs, callbacks=[callback])
    train = DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(0))
    trainer.fit(MLP(), train)
    return callback.scores["curvature"]


def save_figures(x: Tensor, noisy: Tensor, clean: Tensor, flipped: Tensor, mem: Tensor, curv: Tensor, out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = torch.argsort(mem, descending=True)[:24]
    fig, axes = plt.subplots(3, 8, figsize=(12, 5.2))
    for ax, i in zip(axes.flat, order.tolist(), strict=False):
        ax.imshow(x[i].reshape(8, 8).numpy(), cmap="gray_r")
        color = "red" if flipped[i] else "black"
        ax.set_title(f"label {int(noisy[i])} (true {int(clean[i])})\nmem {float(mem[i]):.2f}", fontsize=8, color=color)
        ax.axis("off")
    fig.suptitle("Highest-memorization digits training examples (red: label flipped)")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "subsample_memorization_grid.png"), dpi=90)
    plt.close(fig)

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    bins = np.linspace(-0.2, 1.0, 49)
    left.hist(mem[~flipped].numpy(), bins=bins, alpha=0.7, label="clean", density=True)
    left.hist(mem[flipped].numpy(), bins=bins, alpha=0.7, label="flipped", density=True)
    left.axvline(0.25, color="gray", ls="--", lw=1)
    left.set_xlabel("memorization score")
    left.set_ylabel("density")
    left.legend()
    right.scatter(curv[~flipped].numpy(), mem[~flipped].numpy(), s=6, alpha=0.5, label="clean")
    right.scatter(curv[flipped].numpy(), mem[flipped].numpy(), s=10, alpha=0.8, label="flipped")
    right.set_xscale("log")
    right.set_xlabel("input loss curvature (mean over training)")
    right.set_ylabel("memorization score")
    right.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out, "subsample_memorization_scores.png"), dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    if args.quick:
        args.models = 20
        args.out = args.out + "_quick"
    torch.set_num_threads(1)
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    start = time.perf_counter()

    x, clean, x_test, y_test = digits_split()
    noisy, flipped = flip_labels(clean, args.noise, seed=1000 + args.seed)
    records = train_on_subsets(
        functools.partial(build, epochs=args.epochs),
        TensorDataset(x, noisy),
        args.out,
        test_dataset=TensorDataset(x_test, y_test),
        num_models=args.models,
        fraction=args.fraction,
        seed=args.seed,
        batch_size=args.batch_size,
        workers=args.workers,
    )
    train_seconds = time.perf_counter() - start
    mem_est = records.memorization()
    mem = mem_est.value
    print(f"trained {records.num_models} models in {train_seconds:.0f} s", file=sys.stderr)

    curv_start = time.perf_counter()
    curv = curvature_scores(x, noisy, args.epochs, args.num_probes, args.batch_size)
    curv_seconds = time.perf_counter() - curv_start

    from scipy.stats import spearmanr

    top = records.influence_topk(1, same_class=True)
    top_mem = mem[top.indices[:, 0].clamp_min(0)]
    high_pairs = int(((top.values[:, 0] >= 0.15) & (top_mem >= 0.25) & (top.indices[:, 0] >= 0)).sum())
    assert records.test_correct is not None
    result = {
        "models": records.num_models,
        "fraction": records.fraction,
        "train examples": int(mem.numel()),
        "flipped": int(flipped.sum()),
        "defined": int(mem_est.defined.sum()),
        "AUROC memorization (flipped vs clean)": auroc(mem, flipped),
        "AUROC curvature (flipped vs clean)": auroc(curv, flipped),
        "Spearman(memorization, curvature)": float(spearmanr(mem.numpy(), curv.numpy()).statistic),
        "cosine(memorization, curvature)": float(torch.nn.functional.cosine_similarity(mem, curv.double(), dim=0)),
        "RMS error bound sqrt(1/(pt)+1/((1-p)t))": records.rms_error_bound(),
        "mean standard error": float(mem_est.stderr[mem_est.defined].mean()),
        "mean memorization, flipped": float(mem[flipped].mean()),
        "mean memorization, clean": float(mem[~flipped].mean()),
        "share mem >= 0.25": float((mem >= 0.25).double().mean()),
        "share of flipped among mem >= 0.25": float(flipped[mem >= 0.25].double().mean()),
        "flipped among the 24 highest": int(flipped[torch.argsort(mem, descending=True)[:24]].sum()),
        "test accuracy (mean over models)": float(records.test_correct.double().mean()),
        "high-influence test examples (infl >= 0.15, mem >= 0.25, same class)": high_pairs,
        "seconds training subset models (this run)": train_seconds,
        "seconds per model (one worker)": float(records.seconds.mean()) if records.seconds is not None else None,
        "seconds curvature model": curv_seconds,
    }
    figures = args.figures or args.out
    os.makedirs(figures, exist_ok=True)
    save_figures(x, noisy, clean, flipped, mem, curv, figures)
    records.to_csv(
        os.path.join(args.out, "memorization.csv"),
        extra={"flipped": flipped.tolist(), "true_label": clean.tolist(), "curvature": curv.tolist()},
    )
    result["seconds total"] = time.perf_counter() - start
    with open(os.path.join(args.out, "results.json"), "w") as handle:
        json.dump({"settings": vars(args), "results": result}, handle, indent=2)
    print("| quantity | value |\n| --- | --- |")
    for key, value in result.items():
        print(f"| {key} | {value:.3f} |" if isinstance(value, float) else f"| {key} | {value} |")
    return result


if __name__ == "__main__":
    main()
