"""Does monitoring H and I pick better models? Model and checkpoint selection on the digits, against the baselines.

Two settings (see ``lightning_infomem.demos.experiments``): a shortcut (the paper's Colored MNIST construction:
binary label ``digit >= 5`` flipped with probability 0.25, a colour agreeing with the noisy label with
probability ``(1 + alpha) / 2``; ground truth: accuracy with random colour against the clean label) and
label noise (a fraction ``beta`` of training and validation labels redrawn; ground truth: clean test
accuracy). Five levels each, ``--seeds`` seeds, an MLP (3 x 256, Adam 1e-3, batch 64) trained 60 epochs
(shortcut) or 100 epochs (label noise, until it fits its training labels). At every epoch the run
records ``InformationMeasures`` at its defaults (entropy on one range over the layers, MI on
per-layer ranges), in paper mode and in three ablations of the defaults (``binning="layer"``, the
defaults before these experiments; ``binning="global"``; ``mutual_info_bins=32``), the KSG MI of 32 neurons per layer
(every 5 epochs and at the end), the in-distribution ``val_loss`` and ``val_acc`` (on noisy labels: all
a user has), and the ground-truth accuracy. Then:

1. model selection across runs: Kendall tau between each rule's ranking of the final models of a
   series and their ground-truth accuracy (per seed, then mean and spread);
2. checkpoint selection within a run: the ground-truth accuracy of the checkpoint each rule keeps
   and its regret against the best checkpoint of the run; early stopping (patience 5) replayed;
3. for label noise, how well the per-sample scores (``TrainingDynamics``, ``LossCurvature``) find
   the relabelled training samples.

Every run uses one torch thread (the results do not depend on the machine's thread count, and a
busy machine does not slow it down disproportionately); ``--workers`` runs run side by side::

    python benchmarks/checkpoint_selection.py                 # 2 x 5 levels x 3 seeds, about 15 minutes on 2 cores
    python benchmarks/checkpoint_selection.py --quick         # 2 x 3 levels x 1 seed, a smoke run
    python benchmarks/checkpoint_selection.py --seeds 5 --out runs/selection

Writes ``OUT/selection.json``, ``OUT/runs.json`` (every recorded curve) and one figure per setting.
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
from typing import Any

import numpy as np

QUICK_LEVELS = (0.0, 0.5, 1.0)
LEVELS = (0.0, 0.25, 0.5, 0.75, 1.0)
EPOCHS = {"shortcut": 60, "label_noise": 100}
# the rules the paper predicts, and the user's baselines, shown first in the tables
HEADLINE = [
    "infomem/entropy:max",
    "infomem/mutual_info:min",
    "infomem_paper/entropy:max",
    "infomem_paper/mutual_info:min",
    "ksg/mutual_info:min",
    "infomem_layer/entropy:max",
    "infomem_layer/mutual_info:min",
    "infomem_global/entropy:max",
    "infomem_global/mutual_info:min",
    "infomem_mi32/mutual_info:min",
    "infomem/entropy:min",
    "infomem/mutual_info:max",
    "infomem_paper/entropy:min",
    "infomem_paper/mutual_info:max",
    "ksg/mutual_info:max",
    "infomem_layer/entropy:min",
    "infomem_layer/mutual_info:max",
    "infomem_global/entropy:min",
    "infomem_global/mutual_info:max",
    "infomem_mi32/mutual_info:max",
    "val_loss:min",
    "val_acc:max",
    "last_epoch",
]


def _job(task: tuple[str, float, int, dict[str, Any], int]) -> dict[str, Any]:
    setting, level, seed, config_kwargs, threads = task
    import torch

    torch.set_num_threads(threads)
    warnings.filterwarnings("ignore")
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    from lightning_infomem.demos.experiments import RunConfig, run_one

    result = run_one(setting, level, seed, RunConfig(**config_kwargs))
    return {k: v for k, v in result.items() if not k.startswith("_")}


def run_all(args: argparse.Namespace) -> list[dict[str, Any]]:
    levels = QUICK_LEVELS if args.quick else LEVELS
    tasks = []
    for setting in ("shortcut", "label_noise"):
        for seed in range(args.seeds):
            for level in levels:
                config = {
                    "epochs": args.epochs or EPOCHS[setting],
                    "paper": not args.quick,
                    "ablations": not args.quick,
                    "ksg_every": 0 if args.quick else 5,
                    "per_sample_scores": setting == "label_noise" and not args.quick,
                }
                tasks.append((setting, level, seed, config, args.threads))
    start = time.perf_counter()
    runs: list[dict[str, Any]] = []
    context = multiprocessing.get_context("spawn")
    with context.Pool(args.workers) as pool:
        for count, run in enumerate(pool.imap_unordered(_job, tasks), 1):
            runs.append(run)
            elapsed = time.perf_counter() - start
            print(
                f"[{count}/{len(tasks)}] {run['setting']} level {run['level']:.2f} seed {run['seed']}: "
                f"truth {run['final']['truth_acc']:.3f}, train {run['final']['train_acc']:.3f} "
                f"({run['seconds']:.0f} s; {elapsed:.0f} s elapsed, about "
                f"{elapsed / count * (len(tasks) - count):.0f} s left)",
                file=sys.stderr,
                flush=True,
            )
    return sorted(runs, key=lambda r: (r["setting"], r["seed"], r["level"]))


def analyse(runs: list[dict[str, Any]], patience: int) -> dict[str, Any]:
    from lightning_infomem.demos.experiments import checkpoint_selection, early_stopping, model_selection

    report: dict[str, Any] = {"model_selection": {}, "checkpoint_selection": {}, "early_stopping": {}, "fit": {}}
    for setting in ("shortcut", "label_noise"):
        series = [r for r in runs if r["setting"] == setting]
        if not series:
            continue
        report["model_selection"][setting] = model_selection(series)
        report["checkpoint_selection"][setting] = checkpoint_selection(series)
        report["early_stopping"][setting] = early_stopping(series, patience)
        report["fit"][setting] = {
            f"{level:.2f}": {
                key: _mean_sd([r["final"][key] for r in series if r["level"] == level])
                for key in ("train_acc", "val_acc", "truth_acc")
            }
            | {
                "best_truth_acc": _mean_sd(
                    [max(row["truth_acc"] for row in r["curves"]) for r in series if r["level"] == level]
                )
            }
            for level in sorted({r["level"] for r in series})
        }
        per_sample = [r for r in series if r.get("per_sample")]
        if per_sample:
            report.setdefault("per_sample", {})[setting] = {
                f"{level:.2f}": {
                    name: {
                        metric: _mean_sd([r["per_sample"][name][metric] for r in per_sample if r["level"] == level])
                        for metric in ("auroc", "found")
                    }
                    for name in per_sample[0]["per_sample"]
                    if name != "noisy_fraction"
                }
                for level in sorted({r["level"] for r in per_sample})
                if any(r["level"] == level for r in per_sample)
            }
    return report


def _mean_sd(values: list[float]) -> dict[str, float]:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return {"mean": math.nan, "sd": math.nan, "n": 0}
    return {
        "mean": float(np.mean(values)),
        "sd": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
        "n": len(values),
    }


def tables(report: dict[str, Any], quick: bool) -> str:
    lines = []
    if quick:
        lines.append(
            "QUICK RUN: one seed, three levels, no paper mode or KSG: a smoke test, not evidence; no conclusions.\n"
        )
    for setting in report["model_selection"]:
        truth = "out-of-distribution accuracy" if setting == "shortcut" else "clean test accuracy"
        lines.append(f"## {setting}: how the models fit (ground truth: {truth}; mean ± sd over seeds)\n")
        lines.append(
            "| level | train acc (noisy labels) | val acc (in-distribution) | truth acc, final "
            "| truth acc, best epoch |"
        )
        lines.append("| --- | --- | --- | --- | --- |")
        for level, fit in report["fit"][setting].items():
            cells = [fmt(fit[k]) for k in ("train_acc", "val_acc", "truth_acc", "best_truth_acc")]
            lines.append(f"| {level} | " + " | ".join(cells) + " |")
        ms = report["model_selection"][setting]
        cs = report["checkpoint_selection"][setting]
        es = report["early_stopping"][setting]
        lines.append(f"\n## {setting}: selecting by each rule (mean ± sd over seeds)\n")
        lines.append(
            "| rule | Kendall tau, final models vs truth | truth acc of the kept checkpoint | regret | epoch kept |"
            f" early stopping (patience {es['patience']}): stop epoch, truth acc kept |"
        )
        lines.append("| --- | --- | --- | --- | --- | --- |")
        rules = [r for r in HEADLINE if r in cs["mean_regret"]]
        rules += sorted(r for r in cs["mean_regret"] if r not in rules and "/net." in r)
        for rule in rules:
            tau = ms["kendall_tau"].get(rule, math.nan)
            tau_sd = ms["kendall_tau_sd"].get(rule, math.nan)
            stop = es["rules"].get(rule)
            stop_text = f"{stop['mean_stop_epoch']:.1f}, {stop['mean_truth_acc_kept']:.3f}" if stop else ""
            lines.append(
                f"| `{rule}` | {tau:+.2f} ± {tau_sd:.2f} | {cs['mean_truth_acc'][rule]:.3f} | "
                f"{cs['mean_regret'][rule]:.3f} ± {cs['regret_sd'][rule]:.3f} | {cs['mean_chosen_epoch'][rule]:.1f} | "
                f"{stop_text} |"
            )
        lines.append(
            f"\nBest checkpoint of each run: truth acc {cs['mean_best_truth_acc']:.3f} at epoch "
            f"{cs['mean_best_epoch']:.1f} on average.\n"
        )
    for setting, levels in report.get("per_sample", {}).items():
        lines.append(f"## {setting}: finding the relabelled training samples (AUROC / found; mean over seeds)\n")
        names = list(next(iter(levels.values())))
        lines.append("| level | " + " | ".join(names) + " |")
        lines.append("|" + " --- |" * (len(names) + 1))
        for level, scores in levels.items():
            cells = [f"{scores[n]['auroc']['mean']:.3f} / {scores[n]['found']['mean']:.3f}" for n in names]
            lines.append(f"| {level} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def fmt(stat: dict[str, float]) -> str:
    return f"{stat['mean']:.3f} ± {stat['sd']:.3f}" if stat["n"] > 1 else f"{stat['mean']:.3f}"


def figures(runs: list[dict[str, Any]], out: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lightning_infomem.demos.experiments import chosen_checkpoint

    keys = [
        ("truth_acc", None),
        ("val_acc", "val_acc:max"),
        ("val_loss", "val_loss:min"),
        ("infomem/entropy", "infomem/entropy:max"),
        ("infomem/mutual_info", "infomem/mutual_info:min"),
        ("infomem_paper/entropy", "infomem_paper/entropy:max"),
        ("infomem_paper/mutual_info", "infomem_paper/mutual_info:min"),
        ("ksg/mutual_info", "ksg/mutual_info:min"),
    ]
    written = []
    for setting in ("shortcut", "label_noise"):
        series = [r for r in runs if r["setting"] == setting and r["seed"] == 0]
        if not series:
            continue
        present = [(k, rule) for k, rule in keys if any(k in row for row in series[0]["curves"])]
        fig, axes = plt.subplots(
            2, (len(present) + 1) // 2, figsize=(3.6 * ((len(present) + 1) // 2), 6.4), squeeze=False
        )
        colours = plt.cm.viridis(np.linspace(0, 0.9, len(series)))
        for ax, (key, rule) in zip(axes.flat, present, strict=False):
            for run, colour in zip(series, colours, strict=True):
                rows = [row for row in run["curves"] if key in row]
                ax.plot(
                    [row["epoch"] for row in rows],
                    [row[key] for row in rows],
                    color=colour,
                    lw=1.2,
                    label=f"{run['level']:.2f}",
                )
                chosen = (
                    chosen_checkpoint(run["curves"], rule)
                    if rule
                    else max(run["curves"], key=lambda row: row["truth_acc"])
                )
                if chosen is not None and key in chosen:
                    ax.plot([chosen["epoch"]], [chosen[key]], "o", color=colour, ms=6, mec="black")
            ax.set_title(key + (f"  (o: {rule.rpartition(':')[2]})" if rule else "  (o: best)"), fontsize=8)
            ax.set_xlabel("epoch", fontsize=8)
            ax.tick_params(labelsize=7)
        for ax in list(axes.flat)[len(present) :]:
            ax.axis("off")
        axes.flat[0].legend(title="alpha" if setting == "shortcut" else "beta", fontsize=7, title_fontsize=7)
        fig.suptitle(f"{setting}, seed 0: ground truth and monitored keys per epoch; o = the epoch each rule keeps")
        fig.tight_layout()
        path = os.path.join(out, f"selection_{setting}.png")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--quick", action="store_true", help="1 seed, 3 levels, no paper mode, KSG or per-sample scores"
    )
    parser.add_argument("--seeds", type=int, default=None, help="seeds per level (default 3; quick: 1)")
    parser.add_argument("--epochs", type=int, default=None, help="override the epochs of both settings")
    parser.add_argument("--patience", type=int, default=5, help="EarlyStopping patience to replay")
    parser.add_argument("--workers", type=int, default=2, help="runs side by side (spawned processes)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--out", default="runs/checkpoint_selection")
    args = parser.parse_args(argv)
    if args.seeds is None:
        args.seeds = 1 if args.quick else 3
    os.makedirs(args.out, exist_ok=True)
    start = time.perf_counter()
    runs = run_all(args)
    report = analyse(runs, args.patience)
    report["settings"] = vars(args)
    report["wall_seconds"] = time.perf_counter() - start
    text = tables(report, args.quick)
    print(text)
    report["figures"] = figures(runs, args.out)
    with open(os.path.join(args.out, "selection.json"), "w") as handle:
        json.dump(report, handle, indent=2, allow_nan=True)
    with open(os.path.join(args.out, "runs.json"), "w") as handle:
        json.dump(runs, handle, allow_nan=True)
    with open(os.path.join(args.out, "tables.md"), "w") as handle:
        handle.write(text)
    print(f"\nDone in {report['wall_seconds']:.0f} s; {args.out}/selection.json", file=sys.stderr)
    return report


if __name__ == "__main__":
    main()
