"""The paper's finding in miniature, on the scikit-learn digits, over several seeds.

Reproduces the two controlled experiments of Bansal, Pruthi & Belinkov (NeurIPS 2022) with the
paper's MLP on the 8x8 digits that ship with scikit-learn, with the constructions of
`lightning_infomem.demos.runs` (the MLP family of ``benchmarks/checkpoint_selection.py``):

- shortcut series: the paper's Colored MNIST construction (binary label ``digit >= 5`` flipped with
  probability 0.25; a colour agreeing with the noisy label with probability ``(1 + alpha) / 2``),
  ground truth the accuracy with random colour;
- label-noise series: a fraction ``beta`` of the training and validation labels redrawn, trained
  until the network fits them, ground truth the clean test accuracy.

Every model trains with `InformationMeasures`, `TrainingDynamics` and `MemorizationVerdict` attached and
logs to TensorBoard; each run's verdict is in the tables. The final models are
measured on in-distribution validation images with the package defaults, with the paper's settings
(`InformationMeasures.paper`) and with the KSG kNN mutual information, and each measure's ranking
of the models is compared with their ground-truth accuracy (Kendall tau, per seed), next to the
rankings by in-distribution validation loss and accuracy, what a user has without a clean or
out-of-distribution set. Each run uses one torch thread, so the figures do not depend on the
machine's thread count; ``--workers`` runs train side by side.

    python -m lightning_infomem.demo [--quick] [--out DIR] [--seeds N] [--workers N]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import multiprocessing
import os
import sys
import time
import warnings
from typing import Any, Optional

import numpy as np

LEVELS = (0.0, 0.25, 0.5, 0.75, 1.0)
EPOCHS = {"shortcut": 60, "label_noise": 100}
KSG_NEURONS = 64
MEASURE_EVERY = 5  # InformationMeasures during training: every 5th epoch
COLUMNS = [
    ("train_acc", "train"),
    ("val_acc", "val"),
    ("truth_acc", "truth"),
    ("infomem/entropy", "H"),
    ("infomem/mutual_info", "I"),
    ("infomem_paper/entropy", "H paper"),
    ("infomem_paper/mutual_info", "I paper"),
    ("ksg/mutual_info", "I KSG"),
]
# the direction the paper predicts means "better": a shortcut lowers H and raises I, label noise the reverse
RULES = {
    "shortcut": [
        "infomem/entropy:max",
        "infomem/mutual_info:min",
        "infomem_paper/entropy:max",
        "infomem_paper/mutual_info:min",
        "ksg/mutual_info:min",
        "val_loss:min",
        "val_acc:max",
    ],
    "label_noise": [
        "infomem/entropy:min",
        "infomem/mutual_info:max",
        "infomem_paper/entropy:min",
        "infomem_paper/mutual_info:max",
        "ksg/mutual_info:max",
        "val_loss:min",
        "val_acc:max",
    ],
}


def train_and_measure(task: tuple[str, float, int, str]) -> dict[str, Any]:
    """One model of a series, trained and then measured three ways (runs in a worker process)."""
    setting, level, seed, out = task
    import torch

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    from lightning.pytorch import Trainer
    from torch.utils.data import DataLoader, TensorDataset

    from lightning_infomem import InformationMeasures
    from lightning_infomem.demos.runs import LAYERS, train_run
    from lightning_infomem.functional import ksg_mutual_information, mean_off_diagonal
    from lightning_infomem.reporting import write_csv

    run = train_run(
        setting, level, seed, EPOCHS[setting], measure_every=MEASURE_EVERY, log_dir=os.path.join(out, "tensorboard")
    )
    model, data = run.pop("_model"), run.pop("_data")
    write_csv(run["curves"], os.path.join(out, "curves", f"{setting}_{level:.2f}_seed{seed}.csv"))
    paper = InformationMeasures.paper(layers=LAYERS, log_histograms=False, heatmap_every_n_measurements=0)
    trainer = Trainer(
        callbacks=[paper],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        accelerator="cpu",
    )
    trainer.validate(model, DataLoader(TensorDataset(*data["val"]), batch_size=512), verbose=False)
    final = dict(run["final"])
    final.update({k: v for k, v in paper.history[-1].items() if k.startswith("infomem_paper") and "clipped" not in k})
    acts = _activations(model, data["val"][0])
    generator = torch.Generator().manual_seed(seed)
    ksg_pairs = {}
    for layer, x in acts.items():
        subset = torch.randperm(x.shape[1], generator=generator)[:KSG_NEURONS]
        matrix = ksg_mutual_information(x[:, subset].double(), k=3)
        final[f"ksg/{layer}/mutual_info"] = float(mean_off_diagonal(matrix))
        ksg_pairs[layer] = matrix[~torch.eye(matrix.shape[0], dtype=torch.bool)].tolist()
    final["ksg/mutual_info"] = float(np.mean([final[f"ksg/{layer}/mutual_info"] for layer in LAYERS]))
    run["final"] = final
    run["per_neuron_entropy"] = {layer: result.entropy.tolist() for layer, result in paper.layer_results().items()}
    run["ksg_pairs"] = ksg_pairs
    run["peak_memory_mb"] = _peak_memory_mb()
    return run


def _peak_memory_mb() -> float:
    """This process's peak resident memory so far, in MB (NaN where the platform does not say)."""
    try:
        import resource
    except ImportError:  # Windows
        return math.nan
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 if sys.platform != "darwin" else peak / 2**20  # KB on Linux, bytes on macOS


def _activations(model: Any, x: Any) -> dict[str, Any]:
    """The hidden layers' pre-activation outputs ``[S, 256]`` on ``x`` (eval mode, no gradient)."""
    import torch

    from lightning_infomem.demos.runs import LAYERS

    modules = dict(model.named_modules())
    kept: dict[str, Any] = {}
    handles = [
        modules[name].register_forward_hook(lambda m, a, out, name=name: kept.update({name: out})) for name in LAYERS
    ]
    model.eval()
    try:
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return {name: kept[name].detach() for name in LAYERS}


def summary_table(runs: list[dict[str, Any]], setting: str) -> str:
    name = "alpha" if setting == "shortcut" else "beta"
    header = f"| {name} | " + " | ".join(label for _, label in COLUMNS) + " | verdict |"
    lines = [header, "|" + " ---: |" * (len(COLUMNS) + 1) + " --- |"]
    for level in sorted({r["level"] for r in runs}):
        same = [r for r in runs if r["level"] == level]
        cells = []
        for key, _ in COLUMNS:
            values = np.array([r["final"][key] for r in same])
            cells.append(f"{values.mean():.3f} ± {values.std(ddof=1):.3f}" if len(values) > 1 else f"{values[0]:.3f}")
        lines.append(f"| {level:.2f} | " + " | ".join(cells) + f" | {verdict_cell(same)} |")
    return "\n".join(lines)


def verdict_cell(runs: list[dict[str, Any]]) -> str:
    """The verdicts of the runs of a level, most frequent first: ``label_noise 3/3``."""
    kinds = [r.get("verdict", {}).get("kind", "n/a") for r in runs]
    counts = sorted({k: kinds.count(k) for k in kinds}.items(), key=lambda item: -item[1])
    return ", ".join(f"{kind} {count}/{len(kinds)}" for kind, count in counts)


def tau_table(selection: dict[str, Any], setting: str) -> str:
    lines = ["| rule (the paper's direction) | Kendall tau vs ground truth (mean ± sd over seeds) |", "| --- | ---: |"]
    for rule in RULES[setting]:
        tau, sd = selection["kendall_tau"].get(rule, math.nan), selection["kendall_tau_sd"].get(rule, math.nan)
        lines.append(f"| `{rule}` | {tau:+.2f}" + (f" ± {sd:.2f}" if math.isfinite(sd) else "") + " |")
    return "\n".join(lines)


def save_figures(runs: list[dict[str, Any]], setting: str, out: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy.stats import gaussian_kde

    from lightning_infomem.demos.runs import LAYERS

    name = "alpha" if setting == "shortcut" else "beta"
    seed0 = sorted((r for r in runs if r["seed"] == min(x["seed"] for x in runs)), key=lambda r: r["level"])
    written = []
    fig, axes = plt.subplots(1, len(LAYERS), figsize=(4 * len(LAYERS), 3.6), sharey=True)
    for ax, layer in zip(axes, LAYERS, strict=True):
        ax.boxplot([r["per_neuron_entropy"][layer] for r in seed0], notch=True, showfliers=False)
        ax.set_xticks(range(1, len(seed0) + 1), [f"{r['level']:.2f}" for r in seed0])
        ax.set_title(f"layer {layer}")
        ax.set_xlabel(name)
    axes[0].set_ylabel("per-neuron entropy H (nats, paper settings)")
    fig.suptitle(f"{setting}: per-neuron entropy of the final models (seed {seed0[0]['seed']})")
    fig.tight_layout()
    written.append(os.path.join(out, f"{setting}_entropy_boxplots.png"))
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(LAYERS), figsize=(4 * len(LAYERS), 3.6), sharey=True)
    colours = plt.cm.viridis(np.linspace(0, 0.9, len(seed0)))
    for ax, layer in zip(axes, LAYERS, strict=True):
        values = [np.asarray(r["ksg_pairs"][layer]) for r in seed0]
        grid = np.linspace(min(v.min() for v in values), max(v.max() for v in values), 200)
        for r, v, colour in zip(seed0, values, colours, strict=True):
            if v.size > 1 and v.std() > 0:
                ax.plot(grid, gaussian_kde(v)(grid), color=colour, label=f"{name}={r['level']:.2f}")
        ax.set_title(f"layer {layer}")
        ax.set_xlabel("pairwise MI (KSG, nats)")
    axes[0].set_ylabel("density")
    axes[-1].legend(fontsize=7)
    fig.suptitle(f"{setting}: distribution of pairwise mutual information (seed {seed0[0]['seed']})")
    fig.tight_layout()
    written.append(os.path.join(out, f"{setting}_mi_densities.png"))
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for r, colour in zip(seed0, colours, strict=True):
        # the epochs the callback measured (between them the logged values are the previous measurement's)
        rows = [row for row in r["curves"] if "infomem/entropy" in row and (row["epoch"] + 1) % MEASURE_EVERY == 0]
        epochs = [row["epoch"] for row in rows]
        axes[0].plot(
            [row["epoch"] for row in r["curves"]],
            [row["truth_acc"] for row in r["curves"]],
            color=colour,
            label=f"{r['level']:.2f}",
        )
        axes[1].plot(epochs, [row["infomem/entropy"] for row in rows], marker=".", color=colour)
        axes[2].plot(epochs, [row["infomem/mutual_info"] for row in rows], marker=".", color=colour)
    axes[0].set(xlabel="epoch", ylabel="ground-truth accuracy", title="ground truth during training")
    axes[1].set(xlabel="epoch", ylabel="mean H (nats)", title="entropy during training")
    axes[2].set(xlabel="epoch", ylabel="mean I (nats)", title="mutual information during training")
    axes[0].legend(title=name, fontsize=7)
    fig.tight_layout()
    written.append(os.path.join(out, f"{setting}_curves.png"))
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)
    return written


def run(out: str, quick: bool = False, seeds: Optional[int] = None, workers: int = 2) -> dict[str, Any]:
    """Train both series, measure, rank, and write tables, figures, CSV and JSON under ``out``."""
    from lightning_infomem.demos.runs import model_selection
    from lightning_infomem.reporting import write_csv

    seeds = (1 if quick else 3) if seeds is None else seeds
    os.makedirs(out, exist_ok=True)
    print(f"TensorBoard curves: tensorboard --logdir {os.path.join(out, 'tensorboard')}", flush=True)
    tasks = [(s, level, seed, out) for s in ("shortcut", "label_noise") for seed in range(seeds) for level in LEVELS]
    start = time.perf_counter()
    runs: list[dict[str, Any]] = []
    context = multiprocessing.get_context("spawn")
    with context.Pool(max(1, workers)) as pool:
        for count, result in enumerate(pool.imap_unordered(train_and_measure, tasks), 1):
            runs.append(result)
            elapsed = time.perf_counter() - start
            name = "alpha" if result["setting"] == "shortcut" else "beta"
            print(
                f"[{count}/{len(tasks)}] {result['setting']} {name}={result['level']:.2f} seed {result['seed']}: "
                f"{result['seconds']:.1f}s (elapsed {elapsed:.0f}s, about "
                f"{elapsed / count * (len(tasks) - count):.0f}s left)",
                flush=True,
            )
    report: dict[str, Any] = {"quick": quick, "seeds": seeds, "series": {}}
    for setting in ("shortcut", "label_noise"):
        series = sorted((r for r in runs if r["setting"] == setting), key=lambda r: (r["seed"], r["level"]))
        selection = model_selection(series)
        table, taus = summary_table(series, setting), tau_table(selection, setting)
        truth = "accuracy with random colour (clean labels)" if setting == "shortcut" else "clean test accuracy"
        print(f"\n{setting} series, final models (H and I in nats, mean over the hidden layers; truth: {truth}):")
        print(table)
        print("\nRanking the final models of a seed by each measure, against the ground truth:")
        print(taus)
        rows = [{"setting": setting, "level": r["level"], "seed": r["seed"], **r["final"]} for r in series]
        write_csv(rows, os.path.join(out, f"{setting}_results.csv"))
        figures = save_figures(series, setting, out)
        report["series"][setting] = {
            "rows": rows,
            "kendall_tau": {rule: selection["kendall_tau"].get(rule) for rule in RULES[setting]},
            "kendall_tau_sd": {rule: selection["kendall_tau_sd"].get(rule) for rule in RULES[setting]},
            "table": table,
            "figures": figures,
        }
    shown = [r for r in runs if r["setting"] == "label_noise" and r["level"] == 0.5 and r["seed"] == 0]
    if shown and "verdict_summary" in shown[0]:
        print("\nWhat MemorizationVerdict printed at the end of one run (label noise, beta = 0.50, seed 0):")
        print(shown[0]["verdict_summary"])
        report["verdict_summary"] = shown[0]["verdict_summary"]
    if quick:
        print(
            "\nQUICK RUN: one seed. The models fit as in the full run, but one seed is no evidence: "
            "read the full run (or benchmarks/checkpoint_selection.py) for conclusions."
        )
    report["wall_seconds"] = round(time.perf_counter() - start, 1)
    peaks = [r.get("peak_memory_mb", math.nan) for r in runs]
    report["peak_memory_mb_per_worker"] = max(peaks) if peaks else math.nan
    with open(os.path.join(out, "results.json"), "w") as handle:
        json.dump(report, handle, indent=2)
    print(
        f"Done in {report['wall_seconds']:.0f}s; peak memory of a worker {report['peak_memory_mb_per_worker']:.0f} MB. "
        f"Tables, figures, CSV and JSON in {out}"
    )
    return report


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m lightning_infomem.demo",
        description="Information measures reflect memorization: the paper's two experiments on the digits.",
    )
    parser.add_argument("--quick", action="store_true", help="one seed instead of three (about a minute)")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per level (default 3, quick 1)")
    parser.add_argument("--workers", type=int, default=2, help="models trained side by side (processes)")
    parser.add_argument("--out", default="infomem_demo", help="output folder (default: ./infomem_demo)")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    run(args.out, quick=args.quick, seeds=args.seeds, workers=args.workers)


if __name__ == "__main__":
    sys.exit(main())
