"""Why does ranking by I go the wrong way on a Hugging Face BERT with a token shortcut?

The held-out check of docs/selection.md: a BERT built from a config (2 layers, width 64), the token task's
shortcut series (binary label flipped with probability 0.25, position 1 holding a token that agrees with
the label with probability ``(1 + alpha) / 2``, alpha in 0, 0.25, 0.5, 0.75, 1), ground truth the accuracy
with a random shortcut token. Ranking a seed's five final models by I (lower is better, the paper's
direction under a shortcut) against the ground truth, as Kendall tau, for each way of measuring:

- ``defaults``: ``InformationMeasures()`` (the encoder layers, read at the [CLS] token, MI on per-layer ranges);
- ``neuron``: MI on per-neuron ranges (``mutual_info_binning="neuron"``);
- ``quantile``: per-layer ranges cut at the 1 % and 99 % quantiles (``range_quantile=0.01``);
- ``mean``: the mean over tokens instead of the [CLS] token (``sequence_reduction="mean"``);
- ``last``: the last encoder layer alone.

Beside them, the same for the study's ``nn.TransformerEncoder`` (``TokenTransformer``), and per layer an
outlier statistic of the [CLS] activations: the largest neuron's standard deviation over the median one's
(LayerNorm outlier dimensions stretch a shared range and leave the other neurons in a few bins)::

    python benchmarks/bert_reversal.py                   # 2 families x 5 alphas x seeds 0-4
    python benchmarks/bert_reversal.py --seeds 0 --epochs 10
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import sys
import time
import warnings
from typing import Any, Optional

import numpy as np

ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)
VARIANTS = {
    "defaults": {},
    "neuron": {"mutual_info_binning": "neuron"},
    "quantile": {"range_quantile": 0.01},
    "mean": {"sequence_reduction": "mean"},
}


def _run(task: tuple[str, float, int, int]) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from lightning.pytorch import Trainer, seed_everything
    from study.families import token_task
    from torch.utils.data import DataLoader, TensorDataset

    from lightning_infomem import InformationMeasures

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from memorization_kind import build_model

    family, alpha, seed, epochs = task
    start = time.perf_counter()
    seed_everything(seed, verbose=False)
    generator = torch.Generator().manual_seed(10_000 * seed + int(alpha * 1000))
    (xt, yt, _), (xv, yv, _) = (token_task(n, generator, True, alpha) for n in (1200, 400))
    xo, _, yo = token_task(400, generator, True, 0.0)
    model = build_model(family)
    callbacks = [
        InformationMeasures(every_n_epochs=epochs, prefix=name, seed=seed, log_histograms=False, **options)
        for name, options in VARIANTS.items()
    ]
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
    train = DataLoader(
        TensorDataset(xt, yt), batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(seed)
    )
    trainer.fit(model, train, DataLoader(TensorDataset(xv, yv), batch_size=512))
    model.eval()
    with torch.no_grad():
        truth = float((model(xo).argmax(1) == yo).double().mean())
        in_dist = float((model(xv).argmax(1) == yv).double().mean())
    row: dict[str, Any] = {"family": family, "alpha": alpha, "seed": seed, "truth_acc": truth, "val_acc": in_dist}
    layers = callbacks[0].layer_names
    for callback in callbacks:
        last = callback.history[-1]
        row[f"{callback.prefix}"] = last[f"{callback.prefix}/mutual_info"]
        if callback.prefix == "defaults":
            row["last"] = last[f"defaults/{layers[-1]}/mutual_info"]
            row["layers"] = list(layers)
            row["per_layer"] = {name: last[f"defaults/{name}/mutual_info"] for name in layers}
    row["outliers"] = _outliers(model, layers, xv)
    row["seconds"] = time.perf_counter() - start
    return row


def _outliers(model: Any, layers: list[str], x: Any) -> dict[str, float]:
    """Per layer: the largest [CLS]-neuron standard deviation over the median one's."""
    import torch

    modules = dict(model.named_modules())
    kept: dict[str, Any] = {}
    handles = [
        modules[name].register_forward_hook(
            lambda m, a, out, name=name: kept.__setitem__(name, (out[0] if isinstance(out, tuple) else out)[:, 0])
        )
        for name in layers
    ]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    out = {}
    for name, value in kept.items():
        sd = value.double().std(dim=0)
        out[name] = float(sd.max() / sd.median().clamp_min(1e-12))
    return out


def analyse(rows: list[dict[str, Any]]) -> dict[str, Any]:
    from lightning_infomem.demos.runs import kendall_tau

    report: dict[str, Any] = {}
    for family in sorted({r["family"] for r in rows}):
        mine = [r for r in rows if r["family"] == family]
        seeds = sorted({r["seed"] for r in mine})
        taus: dict[str, list[float]] = {}
        for name in [*VARIANTS, "last"]:
            for seed in seeds:
                series = sorted((r for r in mine if r["seed"] == seed), key=lambda r: r["alpha"])
                # lower I is better: rank by -I against the truth
                taus.setdefault(name, []).append(
                    kendall_tau([-r[name] for r in series], [r["truth_acc"] for r in series])
                )
        report[family] = {
            "kendall_tau": {
                k: {"mean": float(np.nanmean(v)), "sd": float(np.nanstd(v, ddof=1)), "per_seed": v}
                for k, v in taus.items()
            },
            "truth_acc": {a: float(np.mean([r["truth_acc"] for r in mine if r["alpha"] == a])) for a in ALPHAS},
            "val_acc": {a: float(np.mean([r["val_acc"] for r in mine if r["alpha"] == a])) for a in ALPHAS},
            "outliers": {
                layer: float(np.median([r["outliers"][layer] for r in mine])) for layer in mine[0]["outliers"]
            },
        }
    return report


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--families", nargs="+", default=["bert", "transformer"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default="runs/bert_reversal")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    tasks = [(f, a, s, args.epochs) for s in args.seeds for f in args.families for a in ALPHAS]
    start = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(args.workers, maxtasksperchild=4) as pool:
        rows = []
        for row in pool.imap_unordered(_run, tasks):
            rows.append(row)
            print(f"done {row['family']} alpha {row['alpha']} seed {row['seed']} in {row['seconds']:.0f} s", flush=True)
    report = analyse(rows)
    report["wall_seconds"] = time.perf_counter() - start
    with open(os.path.join(args.out, "reversal.json"), "w") as handle:
        json.dump({"report": report, "rows": rows}, handle, indent=1)
    for family, part in report.items():
        if family == "wall_seconds":
            continue
        print(f"\n{family}: truth acc by alpha {part['truth_acc']}; val acc {part['val_acc']}")
        print(f"  outlier ratio per layer (median over runs): {part['outliers']}")
        for name, stat in part["kendall_tau"].items():
            print(f"  I ({name}): tau {stat['mean']:+.2f} ± {stat['sd']:.2f}  per seed {np.round(stat['per_seed'], 2)}")
    print(f"wall time {report['wall_seconds']:.0f} s")


if __name__ == "__main__":
    main()
