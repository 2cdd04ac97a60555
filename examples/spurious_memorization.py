"""Spurious memorization in a few neurons on a coloured-background digits set ("The Silent Majority").

Builds a Waterbirds-like set from scikit-learn's digits: the label is ``digit >= 5`` (two classes)
and the spurious attribute is a background colour (which of two input channels carries a constant
background). In training the colour agrees with the label for ``--agreement`` (95 %) of the
samples; the rest form the two minority groups. At test the colour is independent of the label,
so the four groups (label x colour) are balanced. Group ids: ``2 * label + colour``; groups 0 and
3 are the majority, 1 and 2 the minority.

It reports, for a small MLP trained with plain cross-entropy (ERM):

* per-group memorization gap (train minus test accuracy, ``GroupMemorizationGap``);
* the critical-neuron probe: per-group test accuracy before and after zeroing / re-initialising
  the top ``k`` units found by the gradient score on each group's lowest-confidence training
  samples, next to as many random units (the paper's signature: minority groups fall, majority
  groups barely move);
* worst-group test accuracy of ERM vs masked consistency training (``MaskedConsistencyModule``,
  1 % smallest-magnitude weights masked, NT-Xent at temperature 0.5 on the penultimate ReLU
  features ``net.4``, 0.2 x cross-entropy), same epochs, over several seeds: mean, min and max.

Run::

    python examples/spurious_memorization.py                          # 5 seeds, about a minute on 2 CPU cores
    python examples/spurious_memorization.py --quick --out runs/quick  # 2 seeds, fewer epochs; writes report.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from typing import Any


def build_parser() -> argparse.ArgumentParser:
    """The command line (built before the heavy imports, so that --help answers at once)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--agreement", type=float, default=0.95, help="train fraction whose colour agrees with label")
    parser.add_argument("--k", type=int, default=3, help="critical units per group (and random units)")
    parser.add_argument("--num-samples", type=int, default=200, help="lowest-confidence samples per group")
    parser.add_argument("--repeats", type=int, default=5, help="re-initialisations averaged")
    parser.add_argument("--fraction", type=float, default=0.01, help="pruned fraction of the masked view")
    parser.add_argument(
        "--feature-layer", default="net.4", help="submodule compared by the NT-Xent ('' for the logits)"
    )
    parser.add_argument("--out", default="runs/spurious_memorization", help="folder for report.json")
    parser.add_argument("--quick", action="store_true", help="2 seeds, 25 epochs, 2 repeats")
    return parser


if __name__ == "__main__" and {"-h", "--help"} & set(sys.argv[1:]):
    build_parser().parse_args()  # prints the help and exits

import numpy as np
import torch
from lightning.pytorch import LightningModule, Trainer
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_infomem import MaskedConsistencyModule, probe_critical_neurons
from lightning_infomem.metrics.groups import GroupAccuracy, GroupMemorizationGap

GROUP_NAMES = ["<5 / colour 0 (maj)", "<5 / colour 1 (min)", ">=5 / colour 0 (min)", ">=5 / colour 1 (maj)"]
MINORITY = [1, 2]
MAJORITY = [0, 3]


def spurious_digits(seed: int = 0, agreement: float = 0.95, num_train: int = 1200) -> dict[str, Tensor]:
    """``x`` ``[S, 2, 8, 8]``, ``y`` (``digit >= 5``), ``a`` (colour) and ``g`` (group) for train and test."""
    from sklearn.datasets import load_digits

    data = load_digits()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(data.target))
    ink = torch.tensor(data.images[order] / 16.0, dtype=torch.float32)
    y = torch.tensor(data.target[order] >= 5, dtype=torch.int64)
    agree = torch.tensor(rng.random(len(y)) < agreement)
    random_colour = torch.tensor(rng.integers(0, 2, len(y)), dtype=torch.int64)
    colour = torch.where(agree, y, 1 - y)
    colour[num_train:] = random_colour[num_train:]  # test: colour independent of the label
    background = 0.5 * (1 - ink)
    x = torch.stack([ink + background * (colour == c).float()[:, None, None] for c in (0, 1)], dim=1)
    g = 2 * y + colour
    out = {}
    for split, part in (("train", slice(0, num_train)), ("test", slice(num_train, None))):
        out[f"x_{split}"], out[f"y_{split}"], out[f"g_{split}"] = x[part], y[part], g[part]
    return out


class SpuriousMLP(LightningModule):
    """``Flatten -> Linear(128, 64) -> ReLU -> Linear(64, 64) -> ReLU -> Linear(64, 2)``, Adam."""

    def __init__(self, seed: int, lr: float = 0.003, hidden: int = 64) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.lr = lr
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(128, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 2)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch[0], batch[1]
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def fit(module: LightningModule, data: dict[str, Tensor], epochs: int, seed: int) -> None:
    loader = DataLoader(
        TensorDataset(data["x_train"], data["y_train"]),
        batch_size=64,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
    )
    trainer = Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, loader)


@torch.no_grad()
def group_report(model: nn.Module, data: dict[str, Tensor]) -> dict[str, list[float]]:
    model.eval()
    gap = GroupMemorizationGap(4)
    gap.update(model(data["x_train"]), data["y_train"], data["g_train"], train=True)
    gap.update(model(data["x_test"]), data["y_test"], data["g_test"], train=False)
    test = GroupAccuracy(4)
    test.update(model(data["x_test"]), data["y_test"], data["g_test"])
    return {
        "train_accuracy": gap.train_accuracy.tolist(),
        "test_accuracy": test.compute().tolist(),
        "memorization_gap": gap.compute().tolist(),
    }


def probe_summary(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Mean change (points) of the accuracy of the group whose units were modified, minority vs majority."""
    summary = {}
    for selection in ("gradient", "random"):
        for modification in ("zero", "reinit"):
            chosen = [r for r in rows if r["selection"] == selection and r["modification"] == modification]
            for kind, groups in (("minority", MINORITY), ("majority", MAJORITY)):
                own = [100 * r["change"][r["group"]] for r in chosen if r["group"] in groups]
                summary[f"{selection} {modification}: {kind} own-group change"] = float(np.mean(own))
    return summary


def run_seed(seed: int, args: argparse.Namespace) -> dict[str, Any]:
    start = time.time()
    data = spurious_digits(seed, args.agreement)
    erm = SpuriousMLP(seed)
    fit(erm, data, args.epochs, seed)
    result: dict[str, Any] = {"seed": seed, "erm": group_report(erm, data)}
    probe = probe_critical_neurons(
        erm,
        (data["x_train"], data["y_train"], data["g_train"]),
        (data["x_test"], data["y_test"], data["g_test"]),
        num_groups=4,
        k=args.k,
        selections=("gradient", "random"),
        modifications=("zero", "reinit"),
        num_samples=args.num_samples,
        sigma=0.01,
        repeats=args.repeats,
        seed=seed,
        group_names=GROUP_NAMES,
    )
    result["probe"] = probe.to_dict()
    result["probe_summary"] = probe_summary(probe.rows)
    result["probe_table"] = probe.markdown()
    masked = MaskedConsistencyModule(
        SpuriousMLP(seed), fraction=args.fraction, temperature=0.5, ce_weight=0.2, feature_layer=args.feature_layer
    )
    fit(masked, data, args.epochs, seed)
    result["masked"] = group_report(masked.module, data)
    result["seconds"] = time.time() - start
    return result


def spread(values: list[float]) -> dict[str, float]:
    return {"mean": float(np.mean(values)), "min": float(np.min(values)), "max": float(np.max(values))}


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for method in ("erm", "masked"):
        summary[f"{method} worst-group test accuracy"] = spread([min(r[method]["test_accuracy"]) for r in runs])
        summary[f"{method} mean test accuracy"] = spread([float(np.mean(r[method]["test_accuracy"])) for r in runs])
        for g, name in enumerate(GROUP_NAMES):
            summary[f"{method} gap {name}"] = spread([r[method]["memorization_gap"][g] for r in runs])
    for key in runs[0]["probe_summary"]:
        summary[f"probe {key}"] = spread([r["probe_summary"][key] for r in runs])
    return summary


def markdown(summary: dict[str, Any]) -> str:
    lines = ["| quantity | mean | min | max |", "| --- | --- | --- | --- |"]
    for key, value in summary.items():
        lines.append(f"| {key} | {value['mean']:.3f} | {value['min']:.3f} | {value['max']:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    args.feature_layer = args.feature_layer or None
    if args.quick:
        args.seeds, args.epochs, args.repeats = 2, 25, 2
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*isinstance.*LeafSpec.*")
    warnings.filterwarnings("ignore", ".*GPU available.*")
    import logging

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    runs = []
    for seed in range(args.seeds):
        result = run_seed(seed, args)
        print(
            f"seed {seed}: worst-group ERM {min(result['erm']['test_accuracy']):.3f}, "
            f"masked {min(result['masked']['test_accuracy']):.3f} ({result['seconds']:.1f} s)",
            file=sys.stderr,
        )
        runs.append(result)
    summary = summarise(runs)
    print(runs[0]["probe_table"])
    print()
    print(markdown(summary))
    os.makedirs(args.out, exist_ok=True)
    report = {"settings": vars(args), "groups": GROUP_NAMES, "summary": summary, "runs": runs}
    with open(os.path.join(args.out, "report.json"), "w") as handle:
        json.dump(report, handle, indent=2)
    return report


if __name__ == "__main__":
    main()
