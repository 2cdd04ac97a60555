"""Epoch time with and without the verdict (``TrainingDynamics`` + ``MemorizationVerdict`` at their defaults).

On the models and data of ``benchmarks/memorization_kind.py`` (the MLP, the staged CNN, the [CLS]
transformer and the Hugging Face BERT, each on its binary task with 20 % flipped labels). One epoch is
the time from one ``on_train_epoch_start`` to the next: the training batches, the validation epoch and
every end-of-epoch hook. The first two epochs are left out (warm-up, the readings' first batch); plain
and monitored runs alternate ``--repeats`` times and the ratio of the medians is printed per family::

    python benchmarks/verdict_cost.py                       # 4 families, 3 repeats, 8 epochs, 1 thread
    python benchmarks/verdict_cost.py --families mlp --repeats 5
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time
import warnings
from typing import Any


def epoch_times(family: str, with_verdict: bool, epochs: int) -> list[float]:
    from lightning.pytorch import Callback, Trainer, seed_everything
    from torch.utils.data import DataLoader, TensorDataset

    from lightning_infomem import IndexedDataset, MemorizationVerdict, TrainingDynamics

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from memorization_kind import build_model, make_data

    seed_everything(0, verbose=False)
    data = make_data(family, "uniform_0.2", 0)
    x, y, _ = data["train"]
    starts: list[float] = []

    class Clock(Callback):
        def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
            starts.append(time.perf_counter())

        def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
            starts.append(time.perf_counter())

    callbacks: list[Any] = [Clock()]
    if with_verdict:
        callbacks = [TrainingDynamics(), MemorizationVerdict(print_summary=False), *callbacks]
    trainer = Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    train = DataLoader(IndexedDataset(TensorDataset(x, y)), batch_size=64, shuffle=True)
    val = DataLoader(TensorDataset(*data["val"][:2]), batch_size=512)
    trainer.fit(build_model(family), train, val)
    return [b - a for a, b in zip(starts[2:-1], starts[3:], strict=True)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--families", nargs="+", default=["mlp", "cnn", "transformer", "bert"])
    parser.add_argument("--repeats", type=int, default=3, help="alternating plain / monitored runs")
    parser.add_argument("--epochs", type=int, default=8, help="epochs per run (the first two are left out)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__))))
    from machine import cpu_name

    print(f"{cpu_name()}, torch {torch.__version__}, {args.threads} thread(s), {args.repeats} repeats")
    print("| family | plain epoch (ms, median) | with the verdict (ms) | ratio |")
    print("| --- | ---: | ---: | ---: |")
    for family in args.families:
        plain: list[float] = []
        monitored: list[float] = []
        for _ in range(args.repeats):
            plain += epoch_times(family, False, args.epochs)
            monitored += epoch_times(family, True, args.epochs)
        a, b = statistics.median(plain), statistics.median(monitored)
        print(f"| {family} | {1000 * a:.1f} | {1000 * b:.1f} | {b / a:.3f}x |", flush=True)


if __name__ == "__main__":
    main()
