"""Find flipped labels on digits with every per-sample score of the package, on the same runs.

Flips 1, 2, 5 and 10 % of the digits training labels (1,437 samples) to another class (uniformly
among the other nine), trains an MLP (64-128-128-10, ReLU, Adam 1e-3, batch 64, 200 epochs: until it
fits the noisy labels) with ``TrainingDynamics`` and ``LossCurvature(num_probes=10)`` attached to the
same run, and reports for each score, over the seeds, the AUROC of flipped against clean samples and
the fraction of flipped samples found when flagging as many samples as were flipped:

* training dynamics (`TrainingDynamics`, free: from the training passes' own logits): cumulative
  loss, low AUM, forgetting events, late learned epoch, low confidence, high variability;
* input loss curvature (`LossCurvature`): the mean over all epochs;
* final loss: the cross-entropy of the assigned label after training (eval mode);
* Feldman-Zhang memorization (`train_on_subsets`, t = 200 models on 70 % subsets) where its
  runner has run on the same data: 5 % noise, seed 0 (the models of
  ``examples/subsample_memorization.py``, shared and resumed through ``--fz-dir``).

Each score's cost is the time spent computing it as a multiple of one plain training epoch (per
epoch for the scores accumulated every epoch; in all for the final loss and Feldman-Zhang). Nothing
is tuned on the flipped labels. Run::

    python examples/mislabeled_scores.py            # 4 noise levels x 3 seeds, and t = 200 at 5 %
    python examples/mislabeled_scores.py --quick    # a seconds-long smoke run (no Feldman-Zhang)
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
from typing import Any, Callable

SMOKE_RUN = (
    "--quick: a smoke run (one seed, 3 epochs, 2 probes: the model does not fit the noisy labels yet), to check "
    "that everything runs. Its AUROCs are not evidence; run without --quick for the README's figures."
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--noise", type=float, nargs="+", default=[0.01, 0.02, 0.05, 0.10])
    parser.add_argument("--seeds", type=int, default=3, help="seeds per noise level (model, order, probes, flips)")
    parser.add_argument("--epochs", type=int, default=200, help="enough to fit the noisy training labels")
    parser.add_argument("--num-probes", type=int, default=10)
    parser.add_argument(
        "--fz-models", type=int, default=200, help="Feldman-Zhang models at 5 %% noise, seed 0 (0: none)"
    )
    parser.add_argument("--fz-dir", default="runs/subsample_memorization", help="their records (shared, resumable)")
    parser.add_argument("--workers", type=int, default=2, help="processes training the Feldman-Zhang models")
    parser.add_argument("--out", default="runs/mislabeled_scores", help="folder for results.json and results.csv")
    parser.add_argument(
        "--quick", action="store_true", help="10 %% noise, 1 seed, 3 epochs, 2 probes, no Feldman-Zhang"
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    parse_args()  # --help and argument errors answer before torch and Lightning are imported

import numpy as np  # noqa: E402
import torch  # noqa: E402
from lightning.pytorch import Callback, LightningModule, Trainer  # noqa: E402
from torch import Tensor, nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from lightning_infomem import IndexedDataset, LossCurvature, TrainingDynamics, train_on_subsets  # noqa: E402
from lightning_infomem.demos.digits import detection_auroc, digits_split, flip_labels, found_fraction  # noqa: E402

# (score name, where it comes from, high is suspicious)
SCORES = [
    ("cumulative loss", "dynamics:cumulative_loss", True),
    ("low AUM", "dynamics:aum", False),
    ("forgetting", "dynamics:forgetting", True),
    ("late learned epoch", "dynamics:learned_epoch", True),
    ("low confidence", "dynamics:confidence", False),
    ("high variability", "dynamics:variability", True),
    ("curvature", "curvature", True),
    ("final loss", "final_loss", True),
    ("FZ memorization", "memorization", True),
]


class MLP(LightningModule):
    """``64 -> 128 -> 128 -> 10`` ReLU MLP, Adam; batches ``(x, y, index)``."""

    def __init__(self, seed: int, lr: float = 1e-3) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10))
        self.lr = lr

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y, _ = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


class Stopwatch(Callback):
    """Times every training epoch (train epoch start to end)."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._start = 0.0

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.seconds.append(time.perf_counter() - self._start)


def time_methods(callback: Callback, names: list[str]) -> list[float]:
    """Wrap the callback's methods so that their wall time adds up in the returned one-element list."""
    spent = [0.0]

    def wrap(method: Callable) -> Callable:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                spent[0] += time.perf_counter() - start

        return timed

    for name in names:
        setattr(callback, name, wrap(getattr(callback, name)))
    return spent


def quiet_trainer(epochs: int, callbacks: list[Callback]) -> Trainer:
    return Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=True,
    )


def run_one(fraction: float, seed: int, epochs: int, num_probes: int) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """Train once with ``fraction`` of the labels flipped; every score, its AUROC, found fraction and cost."""
    x, clean, _, _ = digits_split()
    noisy, flipped = flip_labels(clean, fraction, seed=1000 + seed)
    dataset = IndexedDataset(TensorDataset(x, noisy))
    train = DataLoader(dataset, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(seed))
    curvature = LossCurvature(DataLoader(dataset, batch_size=512), num_probes=num_probes, seed=seed, num_images=0)
    dynamics = TrainingDynamics(num_images=0, log_histograms=False)
    curvature_time = time_methods(curvature, ["on_train_epoch_end"])
    dynamics_time = time_methods(
        dynamics, ["on_train_epoch_start", "on_train_batch_start", "on_train_batch_end", "on_train_epoch_end"]
    )
    stopwatch = Stopwatch()
    model = MLP(seed)
    quiet_trainer(epochs, [curvature, dynamics, stopwatch]).fit(model, train)  # the stopwatch's epoch ends last
    plain_epoch = (sum(stopwatch.seconds) - curvature_time[0] - dynamics_time[0]) / len(stopwatch.seconds)
    start = time.perf_counter()
    model.eval()
    with torch.no_grad():
        logits = model(x)
        final_loss = nn.functional.cross_entropy(logits, noisy, reduction="none")
    final_seconds = time.perf_counter() - start
    table = dynamics.scores
    scores = {f"dynamics:{name}": value for name, value in table.items()}
    scores.update(curvature=curvature.scores["curvature"], final_loss=final_loss)
    result: dict[str, Any] = {
        "noise": fraction,
        "seed": seed,
        "flipped": int(flipped.sum()),
        "fit of noisy labels": float((logits.argmax(1) == noisy).double().mean()),
        "plain epoch seconds": plain_epoch,
        "cost dynamics": dynamics_time[0] / len(stopwatch.seconds) / plain_epoch,
        "cost curvature": curvature_time[0] / len(stopwatch.seconds) / plain_epoch,
        "cost final loss": final_seconds / plain_epoch,
    }
    for name, source, high in SCORES:
        if source in scores:
            result[f"AUROC {name}"] = detection_auroc(scores[source], flipped, high)
            value = scores[source] if high else -scores[source]
            result[f"found {name}"] = found_fraction(value, flipped)
    return result, {"flipped": flipped, "noisy": noisy, **scores}


def feldman_zhang(fz_dir: str, models: int, workers: int) -> tuple[Tensor, float]:
    """Memorization of the 5 %-noise, seed-0 training set from ``examples/subsample_memorization.py``'s runner."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import subsample_memorization as fz

    x, clean, x_test, y_test = digits_split()
    noisy, _ = flip_labels(clean, 0.05, seed=1000)
    start = time.perf_counter()
    records = train_on_subsets(
        functools.partial(fz.build, epochs=100),
        TensorDataset(x, noisy),
        fz_dir,
        test_dataset=TensorDataset(x_test, y_test),
        num_models=models,
        fraction=0.7,
        seed=0,
        batch_size=128,
        workers=workers,
    )
    print(f"Feldman-Zhang: {records.num_models} models ready in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    seconds = float(records.seconds.sum()) if records.seconds is not None else float("nan")
    return records.memorization().value, seconds


def summarise(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for fraction in sorted({r["noise"] for r in results}):
        runs = [r for r in results if r["noise"] == fraction]
        row: dict[str, Any] = {"noise": fraction, "flipped": runs[0]["flipped"], "seeds": len(runs)}
        keys = [k for k in runs[0] if k.startswith(("AUROC", "found", "cost", "fit"))]
        for key in keys:
            values = np.array([r[key] for r in runs if key in r], dtype=float)
            row[key] = float(values.mean())
            row[f"{key} sd"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
            row[f"{key} n"] = len(values)
        rows.append(row)
    return rows


def markdown_table(rows: list[dict[str, Any]], what: str) -> str:
    names = [name for name, _, _ in SCORES if any(f"{what} {name}" in row for row in rows)]
    lines = ["| noise (flipped) | " + " | ".join(names) + " |", "|" + " --- |" * (len(names) + 1)]
    for row in rows:
        cells = []
        for name in names:
            key = f"{what} {name}"
            if key not in row:
                cells.append("")
            elif row[f"{key} n"] > 1:
                cells.append(f"{row[key]:.3f} ± {row[key + ' sd']:.3f}")
            else:
                cells.append(f"{row[key]:.3f} (1 run)")
        lines.append(f"| {row['noise']:.0%} ({row['flipped']}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    if args.quick:
        args.noise, args.seeds, args.epochs, args.num_probes, args.fz_models = [0.10], 1, 3, 2, 0
        print(SMOKE_RUN, file=sys.stderr)
    torch.set_num_threads(1)  # tiny model: one thread is fastest, and robust to busy cores
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*isinstance.*LeafSpec.*")
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    results = []
    for fraction in args.noise:
        for seed in range(args.seeds):
            start = time.perf_counter()
            result, scores = run_one(fraction, seed, args.epochs, args.num_probes)
            if args.fz_models and fraction == 0.05 and seed == 0:
                memorization, fz_seconds = feldman_zhang(args.fz_dir, args.fz_models, args.workers)
                result["AUROC FZ memorization"] = detection_auroc(memorization, scores["flipped"], True)
                result["found FZ memorization"] = found_fraction(memorization, scores["flipped"])
                result["cost FZ memorization"] = fz_seconds / result["plain epoch seconds"]
            print(
                f"noise {fraction:.0%} seed {seed}: "
                + ", ".join(
                    f"{name} {result[f'AUROC {name}']:.3f}" for name, _, _ in SCORES if f"AUROC {name}" in result
                )
                + f" ({time.perf_counter() - start:.1f} s)",
                file=sys.stderr,
            )
            results.append(result)
    rows = summarise(results)
    print("AUROC, flipped vs clean (mean ± sd over seeds):\n" + markdown_table(rows, "AUROC"))
    print("\nFraction of the flipped samples among as many top-scored ones:\n" + markdown_table(rows, "found"))
    costs = {
        key[5:]: float(np.mean([r[key] for r in results if key in r])) for key in results[0] if key.startswith("cost")
    }
    if any("cost FZ memorization" in r for r in results):
        costs["FZ memorization"] = float(
            np.mean([r["cost FZ memorization"] for r in results if "cost FZ memorization" in r])
        )
    print("\nCost, as a multiple of one plain training epoch:", ", ".join(f"{k} {v:.3g}x" for k, v in costs.items()))
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w") as handle:
        json.dump({"settings": vars(args), "runs": results, "summary": rows, "costs": costs}, handle, indent=2)
    from lightning_infomem.reporting import write_csv

    write_csv(results, os.path.join(args.out, "results.csv"))
    if args.quick:
        print("\n" + SMOKE_RUN)
    return rows


if __name__ == "__main__":
    main()
