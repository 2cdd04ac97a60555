"""Cost of input loss curvature scoring relative to a training epoch.

For two small models on the digits training set (1,437 samples): an MLP on ``[S, 64]`` and a CNN on
``[S, 1, 8, 8]``, it times

* one training epoch: plain PyTorch, Adam, ``--train-batch`` samples per step (forward, backward, step);
* one scoring pass of :func:`lightning_infomem.functional.input_loss_curvature` over the same samples
  with ``--score-batch`` samples per pass, for several ``num_probes``;
* the same inside Lightning: ``Trainer.fit`` epochs with and without the ``LossCurvature`` callback.

Each figure is the median of ``--repeats`` runs after a warm-up. Run from the repository root::

    python benchmarks/curvature_cost.py               # about a minute on a 2-core CPU
    python benchmarks/curvature_cost.py --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from typing import Callable


def build_parser() -> argparse.ArgumentParser:
    """The command line (built before the heavy imports, so that --help answers at once)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (tiny models: 1 is fastest)")
    parser.add_argument("--train-batch", type=int, default=64)
    parser.add_argument("--score-batch", type=int, default=512)
    parser.add_argument("--probes", type=int, nargs="+", default=[1, 5, 10, 20])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--lightning-epochs", type=int, default=5)
    return parser


if __name__ == "__main__" and {"-h", "--help"} & set(sys.argv[1:]):
    build_parser().parse_args()  # prints the help and exits

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_infomem import IndexedDataset, LossCurvature
from lightning_infomem.functional import input_loss_curvature


def digits(image: bool) -> tuple[Tensor, Tensor]:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data / 16.0, dtype=torch.float32)[:1437]
    y = torch.tensor(data.target, dtype=torch.int64)[:1437]
    return (x.reshape(-1, 1, 8, 8) if image else x), y


def make_model(kind: str) -> nn.Module:
    torch.manual_seed(0)
    if kind == "mlp":
        return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10))
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, 10),
    )


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def median_seconds(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


class Wrapped(LightningModule):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):  # noqa: ANN001
        x, y, _ = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def lightning_epoch_seconds(kind: str, x: Tensor, y: Tensor, args: argparse.Namespace, with_callback: bool) -> float:
    data = IndexedDataset(TensorDataset(x, y))
    train = DataLoader(data, batch_size=args.train_batch, shuffle=True)
    callbacks = []
    if with_callback:
        callbacks.append(
            LossCurvature(
                DataLoader(data, batch_size=args.score_batch), num_probes=10, num_images=0, log_histograms=False
            )
        )
    trainer = Trainer(
        max_epochs=args.lightning_epochs + 1,
        accelerator="gpu" if args.device == "cuda" else "cpu",
        devices=1,
        logger=False,
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    epoch_times: list[float] = []

    class Clock(Callback):
        def on_train_epoch_start(self, trainer, pl_module):  # noqa: ANN001
            self.start = time.perf_counter()

        def on_train_epoch_end(self, trainer, pl_module):  # noqa: ANN001
            sync(torch.device(args.device))
            epoch_times.append(time.perf_counter() - self.start)

    trainer.callbacks.append(Clock())  # runs after LossCurvature, so its epoch time includes the scoring
    trainer.fit(Wrapped(make_model(kind)), train)
    return statistics.median(epoch_times[1:])


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    device = torch.device(args.device)
    print(
        f"device {device}, {torch.get_num_threads()} thread(s), train batch {args.train_batch}, "
        f"score batch {args.score_batch}, median of {args.repeats}"
    )
    print("| model | what | seconds | x training epoch |")
    print("| --- | --- | --- | --- |")
    for kind in ("mlp", "cnn"):
        bench(kind, args, device)


def bench(kind: str, args: argparse.Namespace, device: torch.device) -> None:
    """Print the table rows of one model."""
    x, y = digits(image=kind == "cnn")
    x, y = x.to(device), y.to(device)
    model = make_model(kind).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def train_epoch() -> None:
        model.train()
        order = torch.randperm(len(y), device=device)
        for start in range(0, len(y), args.train_batch):
            index = order[start : start + args.train_batch]
            loss = nn.functional.cross_entropy(model(x[index]), y[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    epoch = median_seconds(train_epoch, args.repeats, device)
    print(f"| {kind} | training epoch (plain PyTorch) | {epoch:.4f} | 1.00 |")
    for probes in args.probes:
        generator = torch.Generator().manual_seed(0)
        seconds = median_seconds(
            lambda p=probes, g=generator: input_loss_curvature(
                model, x, y, num_probes=p, generator=g, chunk_size=args.score_batch
            ),
            args.repeats,
            device,
        )
        print(f"| {kind} | scoring, num_probes={probes} | {seconds:.4f} | {seconds / epoch:.2f} |")
    plain = lightning_epoch_seconds(kind, x.cpu(), y.cpu(), args, with_callback=False) if device.type == "cpu" else None
    if plain is not None:
        scored = lightning_epoch_seconds(kind, x.cpu(), y.cpu(), args, with_callback=True)
        print(f"| {kind} | Lightning epoch | {plain:.4f} | {plain / epoch:.2f} |")
        print(
            f"| {kind} | Lightning epoch + LossCurvature(num_probes=10) | {scored:.4f} | {scored / epoch:.2f} "
            f"(x{scored / plain:.2f} the Lightning epoch) |"
        )


if __name__ == "__main__":
    main()
