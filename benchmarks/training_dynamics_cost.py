"""Training-epoch time with and without ``TrainingDynamics``, in the same run.

Models: the digits MLP (64 -> 256 -> 256 -> 10, 1,437 samples, batches of 64) and a ResNet-18 (torchvision
layout, 11.2 M parameters) on ``--images`` random 32 x 32 images (batches of 64); both trained by
``Trainer.fit`` with Adam on ``IndexedDataset`` batches. Each configuration runs ``--epochs`` epochs; the
epoch times (from ``on_train_epoch_start`` to ``on_train_epoch_end``, so setup is left out) of the
later epochs are compared, the plain and the monitored runs alternating ``--repeats`` times. Also
reported: the time spent inside the callback (hook, after-batch accumulation, epoch end)::

    python benchmarks/training_dynamics_cost.py
    python benchmarks/training_dynamics_cost.py --models mlp --repeats 5
    python benchmarks/training_dynamics_cost.py --device cuda
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time
import warnings
from typing import Any, Callable


def build_parser() -> argparse.ArgumentParser:
    """The command line (built before the heavy imports, so that --help answers at once)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["mlp", "resnet18"], choices=["mlp", "resnet18"])
    parser.add_argument("--images", type=int, default=512, help="training images of the ResNet-18")
    parser.add_argument("--epochs", type=int, default=4, help="epochs per run (the first is a warm-up)")
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs per configuration")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=None)
    return parser


if __name__ == "__main__" and {"-h", "--help"} & set(sys.argv[1:]):
    build_parser().parse_args()  # prints the help and exits

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from machine import cpu_name, print_table  # noqa: E402
from model_zoo import ResNet18  # noqa: E402

from lightning_infomem import IndexedDataset, TrainingDynamics  # noqa: E402


class Classifier(LightningModule):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y, _ = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def build(kind: str, images: int) -> tuple[Classifier, DataLoader]:
    torch.manual_seed(0)
    if kind == "mlp":
        from sklearn.datasets import load_digits

        data = load_digits()
        x = torch.tensor(data.data[:1437] / 16.0, dtype=torch.float32)
        y = torch.tensor(data.target[:1437], dtype=torch.int64)
        net: nn.Module = nn.Sequential(
            nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)
        )
    else:
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(images, 3, 32, 32, generator=generator)
        y = torch.randint(0, 10, (images,), generator=generator)
        net = ResNet18(num_classes=10)
    loader = DataLoader(IndexedDataset(TensorDataset(x, y)), batch_size=64, shuffle=True)
    return Classifier(net), loader


class EpochTimer(Callback):
    def __init__(self, sync: Callable[[], None]) -> None:
        self.sync = sync
        self.seconds: list[float] = []
        self._start = 0.0

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.sync()
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.sync()
        self.seconds.append(time.perf_counter() - self._start)


def timed(method: Callable, spent: list[float], sync: Callable[[], None]) -> Callable:
    def wrapper(*a: Any, **k: Any) -> Any:
        sync()
        start = time.perf_counter()
        try:
            return method(*a, **k)
        finally:
            sync()
            spent[0] += time.perf_counter() - start

    return wrapper


def run(
    kind: str, with_callback: bool, args: argparse.Namespace, sync: Callable[[], None]
) -> tuple[list[float], float]:
    model, loader = build(kind, args.images)
    timer = EpochTimer(sync)
    callbacks: list[Callback] = [timer]
    spent = [0.0]
    if with_callback:
        dynamics = TrainingDynamics(num_images=0, log_histograms=False)
        dynamics.on_train_epoch_start = timed(dynamics.on_train_epoch_start, spent, sync)
        dynamics.on_train_batch_start = timed(dynamics.on_train_batch_start, spent, sync)
        dynamics.on_train_batch_end = timed(dynamics.on_train_batch_end, spent, sync)
        dynamics.on_train_epoch_end = timed(dynamics.on_train_epoch_end, spent, sync)
        callbacks.insert(0, dynamics)  # its epoch end runs before the timer's: inside the epoch time
    trainer = Trainer(
        max_epochs=args.epochs,
        accelerator="gpu" if args.device == "cuda" else "cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        callbacks=callbacks,
    )
    trainer.fit(model, loader)
    return timer.seconds[1:], spent[0] / args.epochs  # the first epoch warms up


def main() -> None:
    args = build_parser().parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    sync = (lambda: torch.cuda.synchronize()) if args.device == "cuda" else (lambda: None)
    print(f"torch {torch.__version__}, device {args.device}, threads {torch.get_num_threads()}, cpu {cpu_name()}")
    rows = []
    for kind in args.models:
        plain: list[float] = []
        monitored: list[float] = []
        inside: list[float] = []
        for _ in range(args.repeats):
            plain += run(kind, False, args, sync)[0]
            seconds, own = run(kind, True, args, sync)
            monitored += seconds
            inside.append(own)
        p, m = statistics.median(plain), statistics.median(monitored)
        own = statistics.median(inside)
        print(
            f"{kind}: plain epochs {', '.join(f'{t:.3f}' for t in plain)} s; with callback "
            f"{', '.join(f'{t:.3f}' for t in monitored)} s",
            flush=True,
        )
        rows.append((f"{kind}: plain epoch (median)", f"{p:.3f} s"))
        rows.append((f"{kind}: epoch with TrainingDynamics (median)", f"{m:.3f} s"))
        rows.append((f"{kind}: ratio of medians", f"{m / p:.3f}x"))
        rows.append((f"{kind}: time inside the callback per epoch", f"{own * 1e3:.1f} ms = {(p + own) / p:.3f}x"))
    print_table("TrainingDynamics cost against a training epoch", rows)


if __name__ == "__main__":
    main()
