"""Validation-epoch time with and without ``InformationMeasures``, in the same run, for four model families.

Families (randomly initialised, real-sized; module trees as in their libraries, see ``tests/model_zoo.py``):

* ``mlp``: a 3 x 256 MLP on 64 inputs (the digits' size), batches of 256;
* ``distilbert``: DistilBERT-base (``transformers.DistilBertForSequenceClassification``, 6 blocks of 768),
  sequences of ``--tokens`` random token ids, batches of 32;
* ``bert``: BERT-base (``transformers.BertForSequenceClassification``, 12 blocks of 768), likewise;
* ``resnet18``: torchvision's ResNet-18 layout at ``--image-size`` pixels, batches of 64;
* ``vit``: timm's ViT-Tiny/16 layout (12 blocks of 192) at ``--image-size`` pixels, batches of 64.

Layer sets: ``default`` (what the callback picks with ``layers=None``) and ``recipe`` (the docs' recipe
for the family: every block of a transformer or ViT, the four stages of a ResNet, the hidden linear
layers of an MLP). The callback runs at its defaults otherwise. Runs alternate between the plain and
the monitored epoch so that drifts of the machine hit both; the figures are the ratio of the medians
and, steadier on a busy machine, the time spent inside the callback (hooks, after-batch work and the
epoch-end computation) over the plain epoch::

    python benchmarks/callback_overhead.py                         # all families, both layer sets
    python benchmarks/callback_overhead.py --families mlp --samples 2048
    python benchmarks/callback_overhead.py --device cuda
"""

from __future__ import annotations

import argparse
import gc
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
    parser.add_argument("--families", nargs="+", default=["mlp", "distilbert", "bert", "resnet18", "vit"])
    parser.add_argument("--layer-sets", nargs="+", default=["default", "recipe"], choices=["default", "recipe"])
    parser.add_argument("--samples", type=int, default=512, help="validation samples per epoch")
    parser.add_argument("--tokens", type=int, default=32, help="sequence length of the transformer inputs")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3, help="timed validation epochs per configuration")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    return parser


if __name__ == "__main__" and {"-h", "--help"} & set(sys.argv[1:]):
    build_parser().parse_args()  # prints the help and exits

import torch
from lightning.pytorch import LightningModule, Trainer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from machine import cpu_name, print_table  # noqa: E402
from model_zoo import ImageClassifier, ResNet18, TokenClassifier, VisionTransformer  # noqa: E402

from lightning_infomem import InformationMeasures  # noqa: E402

RECIPES = {
    "mlp": ["net.0", "net.2", "net.4"],
    "distilbert": "model.distilbert.transformer.layer.*",
    "bert": "model.bert.encoder.layer.*",
    "resnet18": ["model.layer1", "model.layer2", "model.layer3", "model.layer4"],
    "vit": "model.blocks.*",
}


class MLP(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(64, 256),
            nn.ReLU(),
            nn.Linear(256, 256),
            nn.ReLU(),
            nn.Linear(256, 256),
            nn.ReLU(),
            nn.Linear(256, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self(x), y))


def build(family: str, samples: int, args: argparse.Namespace) -> tuple[LightningModule, DataLoader]:
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    if family == "mlp":
        data = TensorDataset(torch.randn(samples, 64, generator=generator), torch.randint(0, 10, (samples,)))
        return MLP(), DataLoader(data, batch_size=256)
    if family == "distilbert":
        import transformers

        config = transformers.DistilBertConfig(vocab_size=30522, max_position_embeddings=512)
        model = TokenClassifier(transformers.DistilBertForSequenceClassification(config))
        ids = torch.randint(1000, 30000, (samples, args.tokens), generator=generator)
        return model, DataLoader(TensorDataset(ids, torch.randint(0, 2, (samples,))), batch_size=32)
    if family == "bert":
        import transformers

        model = TokenClassifier(transformers.BertForSequenceClassification(transformers.BertConfig()))
        ids = torch.randint(1000, 30000, (samples, args.tokens), generator=generator)
        return model, DataLoader(TensorDataset(ids, torch.randint(0, 2, (samples,))), batch_size=32)
    size = args.image_size
    images = TensorDataset(torch.randn(samples, 3, size, size, generator=generator), torch.randint(0, 10, (samples,)))
    if family == "resnet18":
        return ImageClassifier(ResNet18(num_classes=10)), DataLoader(images, batch_size=64)
    if family == "vit":
        vit = VisionTransformer(img_size=size, patch_size=16, embed_dim=192, depth=12, num_heads=3)
        return ImageClassifier(vit), DataLoader(images, batch_size=64)
    raise ValueError(family)


def timed(method: Callable, spent: list[float], sync: Callable[[], None]) -> Callable:
    """Wrap a callback method so that its wall time adds to ``spent[-1]``."""

    def wrapper(*a: Any, **k: Any) -> Any:
        sync()
        start = time.perf_counter()
        try:
            return method(*a, **k)
        finally:
            sync()
            spent[-1] += time.perf_counter() - start

    return wrapper


def measure(family: str, layers: str, args: argparse.Namespace) -> dict[str, Any]:
    model, loader = build(family, args.samples, args)
    device = torch.device(args.device)
    sync = (lambda: torch.cuda.synchronize()) if device.type == "cuda" else (lambda: None)
    spent: list[float] = []
    chosen: list[str] = []

    def run(with_callback: bool) -> float:
        callbacks = []
        if with_callback:
            callback = InformationMeasures(layers=None if layers == "default" else RECIPES[family])
            spent.append(0.0)
            callback._hook_for = _timed_hooks(callback, spent, sync)
            callback._drain = timed(callback._drain, spent, sync)
            callback._observe_readings = timed(callback._observe_readings, spent, sync)  # the first batch's probe
            callback.on_validation_epoch_end = timed(callback.on_validation_epoch_end, spent, sync)
            callbacks.append(callback)
        trainer = Trainer(
            accelerator="gpu" if device.type == "cuda" else "cpu",
            devices=1,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
            callbacks=callbacks,
        )
        gc.collect()  # the previous run's garbage is not collected inside this one
        sync()
        start = time.perf_counter()
        trainer.validate(model, loader, verbose=False)
        sync()
        if with_callback and not chosen:
            chosen.extend(callbacks[0].layer_names)
        return time.perf_counter() - start

    run(False)  # warm-up: first-call allocations and kernel selection
    run(True)
    plain, monitored = [], []
    for _ in range(args.repeats):
        plain.append(run(False))
        monitored.append(run(True))
    p, m = statistics.median(plain), statistics.median(monitored)
    own = statistics.median(spent[1:])
    return {
        "family": family,
        "layers": layers,
        "chosen": chosen,
        "plain": plain,
        "monitored": monitored,
        "ratio": m / p,
        "own": own,
        "own_ratio": (p + own) / p,
        "plain_median": p,
    }


def _timed_hooks(callback: InformationMeasures, spent: list[float], sync: Callable[[], None]) -> Callable:
    original = callback._hook_for

    def hook_for(*args: Any) -> Callable:
        return timed(original(*args), spent, sync)

    return hook_for


def main() -> None:
    args = build_parser().parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)

    print(f"torch {torch.__version__}, device {args.device}, threads {torch.get_num_threads()}, cpu {cpu_name()}")
    print(f"{args.samples} validation samples, {args.repeats} repeats, callback at its defaults otherwise")
    rows = []
    for family in args.families:
        for layers in args.layer_sets:
            result = measure(family, layers, args)
            shown = ", ".join(result["chosen"][:3]) + (", ..." if len(result["chosen"]) > 3 else "")
            print(
                f"{family:>10} {layers:>7}: {len(result['chosen'])} layers ({shown}); plain "
                f"{', '.join(f'{t:.3f}' for t in result['plain'])} s; with callback "
                f"{', '.join(f'{t:.3f}' for t in result['monitored'])} s",
                flush=True,
            )
            rows.append(
                (
                    f"{family} / {layers} ({len(result['chosen'])} layers)",
                    f"{result['plain_median']:.3f} s   {result['ratio']:.3f}x   inside {result['own']:.3f} s "
                    f"= {result['own_ratio']:.3f}x",
                )
            )
    print_table("validation epoch: plain median, ratio of medians, time inside the callback", rows)


if __name__ == "__main__":
    main()
