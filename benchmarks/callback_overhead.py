"""Validation-epoch time with and without ``InformationMeasures``, in the same run.

Model: a ResNet-18 (CIFAR-style stem, 11.2 M parameters) at 32x32 inputs; 2,048 validation images;
callback at default settings (four default layers, 2,048 samples, 128 neurons per layer, 100
entropy bins, 16 MI bins). Runs alternate between the two configurations so that drifts of the
machine hit both; the figures are the ratio of the medians and, steadier on a busy machine, the
time spent inside the callback itself (its hooks and its epoch-end computation) over the plain epoch.

    python benchmarks/callback_overhead.py            # CPU
    python benchmarks/callback_overhead.py --device cuda
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
from lightning.pytorch import LightningModule, Trainer
from torch import nn

from lightning_infomem import InformationMeasures


class BasicBlock(nn.Module):
    def __init__(self, inputs: int, outputs: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inputs, outputs, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(outputs)
        self.conv2 = nn.Conv2d(outputs, outputs, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(outputs)
        self.shortcut = nn.Sequential()
        if stride != 1 or inputs != outputs:
            self.shortcut = nn.Sequential(nn.Conv2d(inputs, outputs, 1, stride, bias=False), nn.BatchNorm2d(outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet18(LightningModule):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU())
        widths, layers, inputs = (64, 128, 256, 512), [], 64
        for stage, width in enumerate(widths):
            stride = 1 if stage == 0 else 2
            layers.append(nn.Sequential(BasicBlock(inputs, width, stride), BasicBlock(width, width, 1)))
            inputs = width
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self(x), y))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3, help="timed validation epochs per configuration")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = parser.parse_args()

    torch.manual_seed(0)
    images = torch.randn(args.images, 3, 32, 32)
    labels = torch.randint(0, 10, (args.images,))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, labels), batch_size=args.batch_size)
    model = ResNet18()
    accelerator = "gpu" if args.device == "cuda" else "cpu"

    own_seconds: list[float] = []

    def timed(method):
        """Wrap a callback method to add its wall time to the last entry of ``own_seconds``."""

        def wrapper(*a, **k):
            if args.device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            try:
                return method(*a, **k)
            finally:
                if args.device == "cuda":
                    torch.cuda.synchronize()
                own_seconds[-1] += time.perf_counter() - start

        return wrapper

    def run(with_callback: bool) -> tuple[float, InformationMeasures | None]:
        callback = InformationMeasures() if with_callback else None
        if callback is not None:
            own_seconds.append(0.0)
            callback._observe = timed(callback._observe)
            callback.on_validation_epoch_end = timed(callback.on_validation_epoch_end)
        trainer = Trainer(
            accelerator=accelerator,
            devices=1,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
            callbacks=[callback] if callback else [],
        )
        if args.device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        trainer.validate(model, loader, verbose=False)
        if args.device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start, callback

    run(False)  # warm-up: first-call allocations and kernel selection
    run(True)
    plain, monitored = [], []
    callback = None
    for _ in range(args.repeats):
        plain.append(run(False)[0])
        seconds, callback = run(True)
        monitored.append(seconds)

    cpu = platform.processor() or platform.machine()
    print(f"torch {torch.__version__}, device {args.device}, threads {torch.get_num_threads()}, cpu {cpu}")
    print(f"ResNet-18 at 32x32, {args.images} validation images, batch {args.batch_size}, {args.repeats} repeats")
    if callback is not None:
        widths = {name: callback.layer_widths[name] for name in callback.layer_names}
        print(f"monitored layers (width): {widths}, max_neurons {callback.max_neurons}")
    p, m = statistics.median(plain), statistics.median(monitored)
    print(f"validation epoch without callback: {p:.3f} s (runs: {', '.join(f'{t:.3f}' for t in plain)})")
    print(f"validation epoch with callback:    {m:.3f} s (runs: {', '.join(f'{t:.3f}' for t in monitored)})")
    print(f"overhead ratio (median with / median without): {m / p:.3f}x")
    own = statistics.median(own_seconds[1:])
    print(f"time inside the callback (hooks + epoch end), median: {own:.3f} s = {own / p:.1%} of the plain epoch")
    print(f"overhead ratio from the callback's own time: {(p + own) / p:.3f}x")


if __name__ == "__main__":
    main()
