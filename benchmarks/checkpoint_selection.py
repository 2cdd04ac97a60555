"""Do H and I pick better models than the label-free peers a user would reach for? Three architecture families.

Families (``study.experiments`` and ``study.families``): the paper's MLP
(3 x 256) on the 8x8 digits with a colour shortcut; a staged CNN (a miniature ResNet, its defaults are its
stages) on the digits with a patch shortcut; a [CLS] transformer (``nn.TransformerEncoder``, 4 x 64) on a
generated counting task with a token shortcut. Two settings each: a shortcut (binary label flipped with
probability 0.25, a shortcut agreeing with it with probability ``(1 + alpha) / 2``; ground truth: accuracy
with a random shortcut against the clean label) and label noise (a fraction ``beta`` of training and
validation labels redrawn; ground truth: clean test accuracy). Five levels x ``--seeds`` seeds.

Every run records at every epoch ``InformationMeasures`` at its defaults (layers found by the defaults on the
CNN and the transformer), in paper mode and with each binning (``layer``, ``global``, ``neuron``, 32 MI bins),
the effective rank of each layer and of the representation the head reads, the mean maximum softmax, the
softmax nuclear norm, Label Wave's prediction changes, and every 5 epochs KSG MI and WeightWatcher's alpha;
after training, the disagreement between seeds on shared unlabelled inputs. Then, per family and setting:

1. model selection: Kendall tau between each rule's ranking of a seed's final models and their ground truth
   (mean, sd, per seed; for H and I, in how many seeds the paper's direction held);
2. checkpoint selection within a run (regret against the run's best epoch) and early stopping, replayed;
3. whether the network took the shortcut / fitted the noisy labels, per seed (series where it did not
   are reported and left out of the pooled table);
4. a pooled table: on how many of the six family-by-setting cells each rule beat both in-distribution
   baselines (``val_loss:min``, ``val_acc:max``).

One torch thread per run, ``--workers`` runs side by side::

    python benchmarks/checkpoint_selection.py               # 3 families x 2 settings x 5 levels x 5 seeds
    python benchmarks/checkpoint_selection.py --quick       # every family, 3 levels, 1 seed, 15 epochs: a smoke run

Writes ``OUT/selection.json`` (``model_selection[FAMILY][SETTING]["kendall_tau"][RULE] = {mean, sd, n,
per_seed}``, ``checkpoint_selection[FAMILY][SETTING]["mean_regret"][RULE]`` likewise), ``OUT/runs.json``
and ``OUT/tables.md``.
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

FAMILIES = ("mlp", "cnn", "transformer")
SETTINGS = ("shortcut", "label_noise")
QUICK_LEVELS = (0.0, 0.5, 1.0)
LEVELS = (0.0, 0.25, 0.5, 0.75, 1.0)
EPOCHS = {
    ("mlp", "shortcut"): 60,
    ("mlp", "label_noise"): 100,
    ("cnn", "shortcut"): 40,
    ("cnn", "label_noise"): 50,
    ("transformer", "shortcut"): 40,
    ("transformer", "label_noise"): 50,
}
QUICK_EPOCHS = 15
BASELINES = ("val_loss:min", "val_acc:max")
# H and I under every binning and aggregate (mean over layers, deepest layer), KSG; then the peers and baselines
PREFIXES = ("infomem", "infomem_layer", "infomem_global", "infomem_neuron", "infomem_mi32", "infomem_paper")
MEASURES = [f"{p}/{where}{stat}" for p in PREFIXES for where in ("", "deepest/") for stat in ("entropy", "mutual_info")]
MEASURES.append("ksg/mutual_info")
PEERS = [
    "infomem/effective_rank:max",
    "infomem/deepest/effective_rank:max",
    "peer/rankme_head:max",
    "peer/max_softmax:max",
    "peer/nuclear_norm:max",
    "peer/ww_alpha:min",
    "peer/disagreement:min",
    "peer/label_wave:stop",
]
RULES = [f"{m}:{d}" for m in MEASURES for d in ("max", "min")] + PEERS + list(BASELINES) + ["last_epoch"]


def paper_rule(measure: str, setting: str) -> str:
    """The rule in the paper's direction: memorizing a shortcut lowers H and raises I, so the better model has
    the higher H and the lower I; fitting noisy labels raises H and lowers I, so there it is the reverse."""
    better_high = measure.endswith("entropy") == (setting == "shortcut")
    return f"{measure}:{'max' if better_high else 'min'}"


def table_rules(setting: str) -> list[str]:
    """The rules shown per cell: every H and I variant in the paper's direction, the peers, the baselines."""
    return [paper_rule(m, setting) for m in MEASURES] + PEERS + list(BASELINES) + ["last_epoch"]


def pooled_name(rule: str) -> str:
    """A rule's row in the pooled table: H and I by measure (the paper's direction in each setting)."""
    measure = rule.rpartition(":")[0]
    return f"{measure} (paper's direction)" if measure in MEASURES else rule


def _job(task: tuple[str, str, float, int, dict[str, Any], int]) -> dict[str, Any]:
    family, setting, level, seed, config_kwargs, threads = task
    print(f"  started: {family} {setting} level {level:.2f} seed {seed}", file=sys.stderr, flush=True)
    import torch

    torch.set_num_threads(threads)
    warnings.filterwarnings("ignore")
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    from study.experiments import RunConfig, run_one

    result = run_one(setting, level, seed, RunConfig(**config_kwargs))
    return {k: v for k, v in result.items() if not k.startswith("_")}


def run_all(args: argparse.Namespace) -> list[dict[str, Any]]:
    levels = QUICK_LEVELS if args.quick else LEVELS
    tasks = []
    for family in args.families:
        for setting in args.settings:
            for seed in range(args.seeds):
                for level in levels:
                    config = {
                        "family": family,
                        "epochs": args.epochs or (QUICK_EPOCHS if args.quick else EPOCHS[family, setting]),
                        "paper": True,
                        "ablations": True,
                        "peers": True,
                        "ksg_every": 5,
                        "per_sample_scores": family == "mlp" and setting == "label_noise" and not args.quick,
                    }
                    tasks.append((family, setting, level, seed, config, args.threads))
    tasks.sort(key=lambda t: -t[4]["epochs"] * (2 if t[0] == "transformer" else 1))  # the longest first
    print(
        f"{len(tasks)} runs ({', '.join(args.families)}; {len(levels)} levels x {args.seeds} seed(s) x "
        f"{len(args.settings)} setting(s)), "
        f"{args.workers} at a time, one torch thread each"
        + ("; QUICK: a smoke run, no conclusions" if args.quick else ""),
        file=sys.stderr,
        flush=True,
    )
    start = time.perf_counter()
    runs: list[dict[str, Any]] = []
    context = multiprocessing.get_context("spawn")
    with context.Pool(args.workers) as pool:
        for count, run in enumerate(pool.imap_unordered(_job, tasks), 1):
            runs.append(run)
            elapsed = time.perf_counter() - start
            print(
                f"[{count}/{len(tasks)}] {run['family']} {run['setting']} level {run['level']:.2f} seed {run['seed']}: "
                f"truth {run['final']['truth_acc']:.3f}, train {run['final']['train_acc']:.3f} "
                f"({run['seconds']:.0f} s; {elapsed:.0f} s elapsed)",
                file=sys.stderr,
                flush=True,
            )
    return sorted(runs, key=lambda r: (r["family"], r["setting"], r["seed"], r["level"]))


# ------------------------------------------------------------------------------------------ analysis
def add_disagreement(runs: list[dict[str, Any]]) -> None:
    """``peer/disagreement`` of each final model: its mean disagreement with the other seeds' final models of
    the same family, setting and level, on shared unlabelled in-distribution inputs."""
    import torch

    from lightning_infomem.functional.peers import prediction_disagreement

    for run in runs:
        others = [
            r
            for r in runs
            if (r["family"], r["setting"], r["level"]) == (run["family"], run["setting"], run["level"])
            and r["seed"] != run["seed"]
        ]
        if not others or not run["unlabelled_predictions"]:
            continue
        mine = torch.tensor(run["unlabelled_predictions"])
        value = float(
            np.mean([prediction_disagreement(mine, torch.tensor(r["unlabelled_predictions"])) for r in others])
        )
        run["final"]["peer/disagreement"] = value
        run["curves"][-1]["peer/disagreement"] = value


def _stat(values: list[float]) -> dict[str, Any]:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return {
        "mean": float(np.mean(finite)) if finite else math.nan,
        "sd": float(np.std(finite, ddof=1)) if len(finite) > 1 else math.nan,
        "n": len(finite),
        "per_seed": [None if v is None or not math.isfinite(v) else float(v) for v in values],
    }


def evidence(series: list[dict[str, Any]], setting: str) -> dict[str, Any]:
    """Whether the network really memorized, per seed: under the shortcut, the model at the strongest shortcut
    scores at least 0.10 below the no-shortcut model on shortcut-free data, which itself learned the task (at
    least 0.60); under label noise, every model fits its training labels (accuracy >= 0.95)."""
    per_seed = {}
    for seed in sorted({r["seed"] for r in series}):
        runs = {r["level"]: r["final"] for r in series if r["seed"] == seed}
        if setting == "shortcut":
            low, high = runs[min(runs)], runs[max(runs)]
            ok = high["truth_acc"] <= low["truth_acc"] - 0.10 and low["truth_acc"] >= 0.60
            why = f"truth acc {low['truth_acc']:.2f} without the shortcut, {high['truth_acc']:.2f} at its strongest"
        else:
            worst = min(r["train_acc"] for r in runs.values())
            ok = worst >= 0.95
            why = f"lowest training accuracy {worst:.2f}"
        per_seed[seed] = {"memorized": bool(ok), "why": why}
    valid = [seed for seed, v in per_seed.items() if v["memorized"]]
    return {"per_seed": per_seed, "valid_seeds": valid, "usable": len(valid) >= max(1, (len(per_seed) + 1) // 2)}


def analyse(runs: list[dict[str, Any]], patience: int) -> dict[str, Any]:
    from study.experiments import checkpoint_selection, early_stopping, model_selection

    add_disagreement(runs)
    report: dict[str, Any] = {
        k: {} for k in ("model_selection", "checkpoint_selection", "early_stopping", "fit", "evidence")
    }
    for family in FAMILIES:
        for setting in SETTINGS:
            series = [r for r in runs if (r["family"], r["setting"]) == (family, setting)]
            if not series:
                continue
            cell_evidence = evidence(series, setting)
            report["evidence"].setdefault(family, {})[setting] = cell_evidence
            tau_rules = [r for r in RULES if r not in ("last_epoch", "peer/label_wave:stop")]
            selection = model_selection(series, tau_rules)
            taus: dict[str, Any] = {}
            for rule in tau_rules:
                per_seed = selection["per_seed"][rule]
                taus[rule] = _stat(per_seed)
                if rule.rpartition(":")[0] in MEASURES and rule == paper_rule(rule.rpartition(":")[0], setting):
                    taus[rule]["paper_direction_seeds"] = sum(1 for t in per_seed if math.isfinite(t) and t > 0)
            seeds = sorted({r["seed"] for r in series})
            report["model_selection"].setdefault(family, {})[setting] = {"kendall_tau": taus, "seeds": seeds}
            checkpoints = checkpoint_selection(series, [r for r in RULES if r != "peer/disagreement:min"])
            regrets = {rule: _stat(values) for rule, values in checkpoints["regrets"].items()}
            report["checkpoint_selection"].setdefault(family, {})[setting] = {"mean_regret": regrets}
            report["early_stopping"].setdefault(family, {})[setting] = early_stopping(series, patience)
            report["fit"].setdefault(family, {})[setting] = {
                f"{level:.2f}": {
                    key: _stat([r["final"][key] for r in series if r["level"] == level])
                    for key in ("train_acc", "val_acc", "truth_acc")
                }
                for level in sorted({r["level"] for r in series})
            }
    per_sample = [r for r in runs if r.get("per_sample")]
    if per_sample:  # the MLP's label-noise runs: how each per-sample score finds the relabelled samples
        report["per_sample"] = {
            f"{level:.2f}": {
                name: {
                    metric: _stat([r["per_sample"][name][metric] for r in per_sample if r["level"] == level])
                    for metric in ("auroc", "found")
                }
                for name in per_sample[0]["per_sample"]
                if name != "noisy_fraction"
            }
            for level in sorted({r["level"] for r in per_sample})
            if all(r["per_sample"] for r in per_sample if r["level"] == level)
        }
    report["pooled"] = pooled(report)
    return report


def pooled(report: dict[str, Any]) -> dict[str, Any]:
    """For each rule (H and I in the paper's direction of each setting): in how many usable family-by-setting
    cells its mean tau beat both in-distribution baselines, and its mean checkpoint regret was below both."""
    out: dict[str, Any] = {}
    cells = [
        (family, setting)
        for family, settings in report["model_selection"].items()
        for setting in settings
        if report["evidence"][family][setting]["usable"]
    ]
    for row in dict.fromkeys(pooled_name(r) for r in table_rules("shortcut")):
        beat_tau, beat_regret, available = [], [], []
        for family, setting in cells:
            rule = next(r for r in table_rules(setting) if pooled_name(r) == row)
            taus = report["model_selection"][family][setting]["kendall_tau"]
            regrets = report["checkpoint_selection"][family][setting]["mean_regret"]
            if rule in taus and math.isfinite(taus[rule]["mean"]):
                available.append(f"{family}/{setting}")
                if taus[rule]["mean"] > max(taus[b]["mean"] for b in BASELINES):
                    beat_tau.append(f"{family}/{setting}")
            if rule in regrets and math.isfinite(regrets[rule]["mean"]):
                if regrets[rule]["mean"] < min(regrets[b]["mean"] for b in BASELINES):
                    beat_regret.append(f"{family}/{setting}")
        out[row] = {
            "cells": len(cells),
            "tau_available": available,
            "tau_beats_baselines": beat_tau,
            "regret_beats_baselines": beat_regret,
        }
    return out


# ------------------------------------------------------------------------------------------ output
def fmt(stat: dict[str, Any]) -> str:
    if not stat["n"]:
        return "n/a"
    return f"{stat['mean']:+.2f} ± {stat['sd']:.2f}" if stat["n"] > 1 else f"{stat['mean']:+.2f}"


def tables(report: dict[str, Any], quick: bool) -> str:
    lines = []
    if quick:
        lines.append("QUICK RUN: one seed, three levels, 15 epochs: a smoke test, not evidence; no conclusions.\n")
    for family, settings in report["model_selection"].items():
        for setting, selection in settings.items():
            cell = report["evidence"][family][setting]
            lines.append(f"## {family}, {setting}\n")
            lines.append("| level | train acc | val acc (in-distribution) | truth acc |")
            lines.append("| --- | --- | --- | --- |")
            for level, fit in report["fit"][family][setting].items():
                lines.append(
                    f"| {level} | "
                    + " | ".join(
                        f"{fit[k]['mean']:.3f} ± {fit[k]['sd']:.3f}" if fit[k]["n"] > 1 else f"{fit[k]['mean']:.3f}"
                        for k in ("train_acc", "val_acc", "truth_acc")
                    )
                    + " |"
                )
            memorized = [s for s, v in cell["per_seed"].items() if v["memorized"]]
            lines.append(
                f"\nMemorized in {len(memorized)} of {len(cell['per_seed'])} seeds "
                f"({'; '.join(f'seed {s}: ' + v['why'] for s, v in cell['per_seed'].items())})"
                + ("" if cell["usable"] else ": NOT USABLE as evidence")
                + "\n"
            )
            lines.append("| rule | Kendall tau (final models vs truth) | paper's direction | checkpoint regret |")
            lines.append("| --- | --- | --- | --- |")
            taus = selection["kendall_tau"]
            regrets = report["checkpoint_selection"][family][setting]["mean_regret"]
            for rule in table_rules(setting):
                tau = taus.get(rule)
                regret = regrets.get(rule)
                direction = (
                    f"{tau['paper_direction_seeds']}/{tau['n']}"
                    if tau is not None and "paper_direction_seeds" in tau
                    else ""
                )
                lines.append(
                    f"| `{rule}` | {fmt(tau) if tau else ''} | {direction} | "
                    f"{(fmt(regret).lstrip('+') if regret else '')} |"
                )
            lines.append("")
    cells = [(f, st) for f, settings in report["model_selection"].items() for st in settings]
    for title, section, field in (
        ("Kendall tau of the final models' ranking against ground truth", "model_selection", "kendall_tau"),
        (
            "Checkpoint regret (best truth acc of the run minus the kept checkpoint's)",
            "checkpoint_selection",
            "mean_regret",
        ),
    ):
        lines.append(f"## Across families: {title} (mean ± sd over seeds; H and I in the paper's direction)\n")
        header = " | ".join(
            f"{f} {st.replace('_', ' ')}" + ("" if report["evidence"][f][st]["usable"] else " (not usable)")
            for f, st in cells
        )
        lines.append(f"| rule | {header} |")
        lines.append("| --- |" + " --- |" * len(cells))
        for row in dict.fromkeys(pooled_name(r) for r in table_rules("shortcut")):
            values = []
            for f, st in cells:
                rule = next(r for r in table_rules(st) if pooled_name(r) == row)
                stat = report[section][f][st][field].get(rule)
                values.append(fmt(stat).lstrip("+") if stat and field == "mean_regret" else (fmt(stat) if stat else ""))
            lines.append(f"| `{row}` | " + " | ".join(values) + " |")
        lines.append("")
    if report.get("per_sample"):
        levels = report["per_sample"]
        names = list(next(iter(levels.values())))
        lines.append("## MLP, label noise: finding the relabelled training samples (AUROC / found; mean over seeds)\n")
        lines.append("| beta | " + " | ".join(names) + " |")
        lines.append("|" + " --- |" * (len(names) + 1))
        for level, scores in levels.items():
            cells_text = [f"{scores[n]['auroc']['mean']:.3f} / {scores[n]['found']['mean']:.3f}" for n in names]
            lines.append(f"| {level} | " + " | ".join(cells_text) + " |")
        lines.append("")
    lines.append("## Pooled: cells (usable family x setting) where each rule beat both val_loss:min and val_acc:max\n")
    lines.append("| rule | model selection (tau) | checkpoint selection (regret) |")
    lines.append("| --- | --- | --- |")
    for rule, entry in report["pooled"].items():
        lines.append(
            f"| `{rule}` | {len(entry['tau_beats_baselines'])}/{len(entry['tau_available'])} "
            f"{', '.join(entry['tau_beats_baselines'])} | {len(entry['regret_beats_baselines'])}/{entry['cells']} "
            f"{', '.join(entry['regret_beats_baselines'])} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="every family, 1 seed, 3 levels, 15 epochs: a smoke run")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per level (default 5; quick: 1)")
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=SETTINGS)
    parser.add_argument("--epochs", type=int, default=None, help="override the epochs of every run")
    parser.add_argument("--patience", type=int, default=5, help="EarlyStopping patience to replay")
    parser.add_argument("--workers", type=int, default=2, help="runs side by side (spawned processes)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--out", default="runs/checkpoint_selection")
    parser.add_argument("--analyse", metavar="RUNS_JSON", help="only analyse the runs.json of an earlier run")
    args = parser.parse_args(argv)
    if args.seeds is None:
        args.seeds = 1 if args.quick else 5
    os.makedirs(args.out, exist_ok=True)
    start = time.perf_counter()
    if args.analyse:
        with open(args.analyse) as handle:
            runs = json.load(handle)
    else:
        runs = run_all(args)
    report = analyse(runs, args.patience)
    report["settings"] = vars(args)
    report["wall_seconds"] = time.perf_counter() - start
    text = tables(report, args.quick)
    print(text)
    with open(os.path.join(args.out, "selection.json"), "w") as handle:
        json.dump(report, handle, indent=2, allow_nan=True)
    with open(os.path.join(args.out, "runs.json"), "w") as handle:
        json.dump(runs, handle, allow_nan=True)
    with open(os.path.join(args.out, "tables.md"), "w") as handle:
        handle.write(text)
    print(f"\nDone in {report['wall_seconds']:.0f} s; {args.out}/selection.json", file=sys.stderr)
    if args.quick:
        print("QUICK RUN: a smoke test of every family; it draws no conclusions.", file=sys.stderr)
    return report


if __name__ == "__main__":
    main()
