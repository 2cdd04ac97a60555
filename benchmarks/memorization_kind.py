"""Does the verdict say whether a network memorizes, since when, and which kind? Settings with a known truth.

Four families, each on one binary task so that every setting of a family differs only in what the labels
and a shortcut do (never in the number of classes):

- ``mlp``: the paper's MLP (3 x 256) on the 8x8 digits drawn in one of two colour channels;
- ``cnn``: a miniature ResNet (``StagedCNN``) on the grey digits with a 2x2 corner patch;
- ``transformer``: ``nn.TransformerEncoder`` 4 x 64 with a [CLS] head on generated token sequences,
  position 1 holding one of two tokens;
- ``bert``: Hugging Face ``BertForSequenceClassification`` built from a config (2 layers, width 64, no
  dropout) on the same sequences.

Label: ``digit >= 5`` (digits) or "group 0 occurs more often than group 1" (sequences). Settings:

- ``clean``; ``uniform_R``: each training and validation label flipped with probability R;
  ``oneway_R``: class-conditional noise, each label of class 1 turned into 0 with probability R;
- ``shortcut_A``: clean labels, the colour / patch / token agreeing with the label with probability
  ``(1 + A) / 2`` (pure shortcut, no flips);
- ``mixed``: the Colored MNIST construction: 25 % of labels flipped and a shortcut agreeing with the
  flipped label with probability 0.9.

Validation carries the same noise and shortcut as training (a user has no clean labels); the ground truth
is accuracy on a third split with clean labels and a random shortcut, which no callback sees. Per run the
truth is checked, not assumed: a noisy run memorizes when it fits at least half of its flipped training
labels; a shortcut run when its ground-truth accuracy ends at least 0.05 below the clean run of its seed;
a clean run never (its truth accuracy is reported). The onset's truth is the epoch where ground-truth
accuracy peaks.

Every run trains with ``InformationMeasures``, ``TrainingDynamics`` and ``MemorizationVerdict`` at their
defaults and records each epoch's logged keys, the verdict object and the ground truth. Then, per family
and pooled, with mean and sd over seeds:

- ``kind_auroc``: AUROC of ``kind_score`` for noise runs (positive) against shortcut runs, both memorizing;
- ``memorizing_auroc``: AUROC of the verdict's memorization score for memorizing runs against clean runs;
- ``onset_error_epochs``: |verdict onset - truth peak| on memorizing runs with pure label noise, beside the
  ``val_loss`` turn-up and Label Wave's stop;
- the false-alarm rate on clean runs and the verdicts' confusion table.

Settings of the verdict were chosen on seeds 0 and 1 (``--seeds 0 1``); the reported tables use seeds 2 to 6.

    python benchmarks/memorization_kind.py --out runs/kind                 # 4 families x 8 settings x 5 seeds
    python benchmarks/memorization_kind.py --quick --out runs/kind-quick   # 4 families x 4 settings x 2 seeds

Writes ``OUT/kind.json`` (``kind_auroc[FAMILY]``, ``memorizing_auroc[FAMILY]``, ``onset_error_epochs[FAMILY]``
as ``{mean, sd, n}``), ``OUT/runs.json`` and ``OUT/tables.md``.
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

FAMILIES = ("mlp", "cnn", "transformer", "bert")
SETTINGS = ("clean", "uniform_0.2", "uniform_0.3", "oneway_0.4", "shortcut_0.8", "shortcut_1.0", "mixed")
QUICK_SETTINGS = ("clean", "oneway_0.4", "shortcut_1.0", "mixed")  # BERT memorizes one-way noise in 50 epochs
EPOCHS = {"mlp": 60, "cnn": 40, "transformer": 50, "bert": 50}
QUICK_EPOCHS = {"mlp": 30, "cnn": 20, "transformer": 25, "bert": 50}
REPORT_SEEDS = (2, 3, 4, 5, 6)


def parse_setting(setting: str) -> dict[str, Any]:
    """``{"noise": "uniform" | "oneway" | None, "rate": float, "alpha": float | None}`` of a setting name."""
    if setting == "clean":
        return {"noise": None, "rate": 0.0, "alpha": None}
    if setting == "mixed":
        return {"noise": "uniform", "rate": 0.25, "alpha": 0.8}
    kind, _, value = setting.partition("_")
    if kind in ("uniform", "oneway"):
        return {"noise": kind, "rate": float(value), "alpha": None}
    if kind == "shortcut":
        return {"noise": None, "rate": 0.0, "alpha": float(value)}
    raise ValueError(f"unknown setting {setting!r}")


def truth_kind(setting: str) -> str:
    spec = parse_setting(setting)
    if spec["noise"] and spec["alpha"] is not None:
        return "both"
    if spec["noise"]:
        return "label_noise"
    if spec["alpha"] is not None:
        return "shortcut"
    return "none"


# ------------------------------------------------------------------------------------------------ data
def _noisy(clean: Any, spec: dict[str, Any], generator: Any) -> Any:
    import torch

    if spec["noise"] is None:
        return clean.clone()
    draw = torch.rand(clean.shape, generator=generator) < spec["rate"]
    if spec["noise"] == "oneway":
        draw &= clean == 1
    return torch.where(draw, 1 - clean, clean)


def _bits(labels: Any, alpha: Optional[float], generator: Any) -> Any:
    import torch

    if alpha is None:
        alpha = 0.0
    flip = torch.rand(labels.shape, generator=generator) < (1.0 - alpha) / 2.0
    return torch.where(flip, 1 - labels, labels)


def _digit_inputs(images: Any, bits: Any, family: str) -> Any:
    import torch

    if family == "mlp":  # the digit drawn in the red (bit 0) or green (bit 1) channel
        coloured = torch.zeros(images.shape[0], 2, 64, dtype=images.dtype)
        coloured[torch.arange(images.shape[0]), bits] = images
        return coloured.view(-1, 2, 8, 8)
    patched = images.reshape(-1, 1, 8, 8).clone()  # a 2x2 patch, top-left (bit 1) or top-right (bit 0)
    patched[bits == 1, :, :2, :2] = 1.0
    patched[bits == 0, :, :2, 6:] = 1.0
    return patched


def make_data(family: str, setting: str, seed: int) -> dict[str, Any]:
    """``{"train": (x, y, clean), "val": (x, y), "truth": (x, clean)}`` of one run (see the module docs)."""
    import torch
    from study.families import CLS, SHORTCUT_0, SHORTCUT_1, token_task

    from lightning_infomem.demos.digits import load_digits

    spec = parse_setting(setting)
    generator = torch.Generator().manual_seed(1_000 * seed + 17)
    if family in ("mlp", "cnn"):
        x, digits = load_digits(seed)
        clean = (digits >= 5).long()
        n = len(clean)
        parts = [slice(0, int(0.6 * n)), slice(int(0.6 * n), int(0.8 * n)), slice(int(0.8 * n), n)]
        out = {}
        for name, part in zip(("train", "val"), parts[:2], strict=True):
            labels = _noisy(clean[part], spec, generator)
            bits = _bits(labels, spec["alpha"], generator)
            out[name] = (_digit_inputs(x[part], bits, family), labels, clean[part])
        random_bits = _bits(clean[parts[2]], None, generator)
        out["truth"] = (_digit_inputs(x[parts[2]], random_bits, family), clean[parts[2]])
        return out
    out = {}
    for name, size in (("train", 1200), ("val", 400), ("truth", 400)):
        ids, _, clean = token_task(size, generator, True, 0.0, label_noise=0.0)
        labels = _noisy(clean, spec, generator) if name != "truth" else clean
        bits = _bits(labels, spec["alpha"] if name != "truth" else None, generator)
        ids[:, 1] = torch.where(bits == 1, SHORTCUT_1, SHORTCUT_0)
        assert bool((ids[:, 0] == CLS).all())
        out[name] = (ids, labels, clean) if name != "truth" else (ids, clean)
    return out


# ---------------------------------------------------------------------------------------------- models
def build_model(family: str, lr: float = 1e-3) -> Any:
    from study.families import StagedCNN, TokenTransformer

    from lightning_infomem.demos.runs import DigitsMLP

    if family == "mlp":
        return DigitsMLP(128, 2, 256, lr)
    if family == "cnn":
        return StagedCNN(1, 2, lr=lr)
    if family == "transformer":
        return TokenTransformer(2, lr=lr)
    if family == "bert":
        return _bert(lr)
    raise ValueError(f"family must be one of {FAMILIES}, received {family!r}")


def _bert(lr: float) -> Any:
    import torch
    import transformers
    from lightning.pytorch import LightningModule
    from study.families import VOCAB
    from torch import nn

    class BertClassifier(LightningModule):
        def __init__(self) -> None:
            super().__init__()
            config = transformers.BertConfig(
                vocab_size=VOCAB,
                hidden_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                intermediate_size=128,
                max_position_embeddings=32,
                hidden_dropout_prob=0.0,
                attention_probs_dropout_prob=0.0,
                num_labels=2,
            )
            self.model = transformers.BertForSequenceClassification(config)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.model(input_ids=ids).logits

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return nn.functional.cross_entropy(self(batch[0]), batch[1])

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            logits = self(batch[0])
            self.log("val_loss", nn.functional.cross_entropy(logits, batch[1]))
            self.log("val_acc", (logits.argmax(1) == batch[1]).float().mean())

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.Adam(self.parameters(), lr=lr)

    return BertClassifier()


# ------------------------------------------------------------------------------------------------- runs
def run_one(family: str, setting: str, seed: int, epochs: int) -> dict[str, Any]:
    """Train one run and record, per epoch, the logged keys, the verdict and the ground truth."""
    import torch
    from lightning.pytorch import Callback, Trainer, seed_everything
    from torch.utils.data import DataLoader, TensorDataset

    import lightning_infomem
    from lightning_infomem import IndexedDataset, InformationMeasures, TrainingDynamics

    start = time.perf_counter()
    seed_everything(seed, verbose=False)
    data = make_data(family, setting, seed)
    model = build_model(family)
    x, y, clean = data["train"]
    flipped = y != clean

    def accuracy(inputs: Any, labels: Any) -> Any:
        was = model.training
        model.eval()
        with torch.no_grad():
            correct = model(inputs).argmax(1) == labels
        model.train(was)
        return correct

    class Recorder(Callback):
        def __init__(self) -> None:
            self.rows: list[dict[str, Any]] = []

        def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
            if trainer.sanity_checking:
                return
            row = {"epoch": trainer.current_epoch}
            row.update({k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1})
            row["truth_acc"] = float(accuracy(*data["truth"]).double().mean())
            fitted = accuracy(x, y)
            row["train_acc"] = float(fitted.double().mean())
            row["flipped_fitted"] = float(fitted[flipped].double().mean()) if bool(flipped.any()) else float("nan")
            self.rows.append(row)

    measures = InformationMeasures(layers=["net.0", "net.2", "net.4"] if family == "mlp" else None, seed=seed)
    dynamics = TrainingDynamics(num_images=0, log_histograms=False)
    verdict = None
    if hasattr(lightning_infomem, "MemorizationVerdict"):
        verdict = lightning_infomem.MemorizationVerdict(print_summary=False)
    recorder = Recorder()
    trainer = Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        callbacks=[measures, dynamics, recorder] + ([verdict] if verdict is not None else []),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        deterministic=True,
    )
    train = DataLoader(
        IndexedDataset(TensorDataset(x, y)), batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(seed)
    )
    val = DataLoader(TensorDataset(*data["val"][:2]), batch_size=512)
    trainer.fit(model, train, val)
    result = verdict.verdict if verdict is not None else None
    scores = dynamics.scores
    return {
        "dynamics_history": dynamics.history,
        "per_sample": {
            "learned_epoch": [float(v) for v in scores["learned_epoch"]],
            "forgetting": [float(v) for v in scores["forgetting"]],
            "flipped": [bool(v) for v in flipped],
            "labels": [int(v) for v in y],
        },
        "family": family,
        "setting": setting,
        "seed": seed,
        "epochs": epochs,
        "truth_kind": truth_kind(setting),
        "curves": recorder.rows,
        "verdict": result.as_dict() if result is not None else None,
        "verdict_history": verdict.history if verdict is not None else [],
        "seconds": time.perf_counter() - start,
        "flipped_fraction": float(flipped.double().mean()),
    }


def recomputed_verdict(run: dict[str, Any]) -> dict[str, Any]:
    """The final verdict from a run's recorded curves (what the callback computes at the end of fit: the
    training accuracy of `TrainingDynamics`' history, the validation accuracy and loss of each epoch, the
    samples' learned epochs), with the current `lightning_infomem.functional.verdict`."""
    import torch

    from lightning_infomem.functional import memorization_evidence, memorization_verdict

    train = [row["dynamics/learned_fraction"] for row in run["dynamics_history"]]
    val = [row.get("val_acc", float("nan")) for row in run["curves"]]
    loss = [row.get("val_loss", float("nan")) for row in run["curves"]]
    learned = torch.tensor(run["per_sample"]["learned_epoch"], dtype=torch.float64)
    evidence = memorization_evidence(train, val, learned, val_loss=loss)
    return memorization_verdict(evidence, train).as_dict()


def _job(task: tuple[str, str, int, int]) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    family, setting, seed, epochs = task
    print(f"  start {family} {setting} seed {seed}", flush=True)
    return run_one(family, setting, seed, epochs)


def run_all(families: list[str], settings: list[str], seeds: list[int], quick: bool, workers: int) -> list[dict]:
    epochs = QUICK_EPOCHS if quick else EPOCHS
    tasks = [(f, s, seed, epochs[f]) for seed in seeds for f in families for s in settings]
    context = multiprocessing.get_context("spawn")
    runs = []
    with context.Pool(workers, maxtasksperchild=4) as pool:
        for run in pool.imap_unordered(_job, tasks):
            runs.append(run)
            print(f"done {run['family']} {run['setting']} seed {run['seed']} in {run['seconds']:.0f} s", flush=True)
    return runs


# --------------------------------------------------------------------------------------------- analysis
def memorized(run: dict[str, Any], clean_truth: Optional[float]) -> Optional[bool]:
    """Whether the run really memorized (its truth, checked): see the module docs."""
    final = run["curves"][-1]
    kind = run["truth_kind"]
    noisy = kind in ("label_noise", "both") and final["flipped_fitted"] >= 0.5
    shortcut = False
    if kind in ("shortcut", "both"):
        if clean_truth is None:
            return None
        shortcut = final["truth_acc"] <= clean_truth - 0.05
    if kind == "both":
        return noisy or shortcut
    return noisy if kind == "label_noise" else shortcut


def auroc(positive: list[float], negative: list[float]) -> float:
    """AUROC of positives against negatives (`lightning_infomem.demos.digits.detection_auroc`; NaN without both)."""
    import torch

    from lightning_infomem.demos.digits import detection_auroc

    if not positive or not negative:
        return float("nan")
    labels = torch.tensor([True] * len(positive) + [False] * len(negative))
    return detection_auroc(torch.tensor([*positive, *negative], dtype=torch.float64), labels)


def _stat(values: list[float]) -> dict[str, Any]:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return {"mean": float("nan"), "sd": float("nan"), "n": 0}
    return {
        "mean": float(np.mean(finite)),
        "sd": float(np.std(finite, ddof=1)) if len(finite) > 1 else 0.0,
        "n": len(finite),
    }


def truth_onset(run: dict[str, Any]) -> int:
    """The epoch where ground-truth accuracy peaks (the first of equal peaks)."""
    values = [row["truth_acc"] for row in run["curves"]]
    return int(np.argmax(values))


def val_loss_turn(run: dict[str, Any]) -> int:
    values = [row.get("val_loss", float("nan")) for row in run["curves"]]
    return int(np.nanargmin(values))


def label_wave(run: dict[str, Any]) -> Optional[int]:
    from lightning_infomem.functional import label_wave_stop

    changes = [row["dynamics/prediction_changes"] for row in run["curves"] if "dynamics/prediction_changes" in row]
    stop = label_wave_stop(changes)
    return None if stop is None else stop + 1  # prediction changes start at the second epoch


def analyse(runs: list[dict[str, Any]], seeds: list[int]) -> dict[str, Any]:
    families = sorted({run["family"] for run in runs}, key=FAMILIES.index)
    clean_truth = {(r["family"], r["seed"]): r["curves"][-1]["truth_acc"] for r in runs if r["setting"] == "clean"}
    for run in runs:
        run["memorized"] = memorized(run, clean_truth.get((run["family"], run["seed"])))
    report: dict[str, Any] = {
        "seeds": seeds,
        "kind_auroc": {},
        "memorizing_auroc": {},
        "onset_error_epochs": {},
        "val_loss_onset_error_epochs": {},
        "label_wave_onset_error_epochs": {},
        "false_alarm_rate": {},
        "confusion": {},
        "truth_checks": {},
    }
    for family in families + ["pooled"]:
        mine = [r for r in runs if family == "pooled" or r["family"] == family]
        kind, memo, onset, loss_onset, wave_onset, alarms = [], [], [], [], [], []
        for seed in seeds:
            own = [r for r in mine if r["seed"] == seed and r["verdict"] is not None]
            noise = [r["verdict"]["kind_score"] for r in own if r["truth_kind"] == "label_noise" and r["memorized"]]
            short = [r["verdict"]["kind_score"] for r in own if r["truth_kind"] == "shortcut" and r["memorized"]]
            kind.append(auroc(noise, short))
            positive = [r["verdict"]["memorizing_score"] for r in own if r["memorized"]]
            negative = [r["verdict"]["memorizing_score"] for r in own if r["truth_kind"] == "none"]
            memo.append(auroc(positive, negative))
            alarms += [float(bool(r["verdict"]["memorizing"])) for r in own if r["truth_kind"] == "none"]
            for r in own:
                if r["truth_kind"] == "label_noise" and r["memorized"]:
                    truth = truth_onset(r)
                    said = r["verdict"]["onset_epoch"]
                    onset.append(abs(said - truth) if said is not None else float("nan"))
                    loss_onset.append(abs(val_loss_turn(r) - truth))
                    wave = label_wave(r)
                    wave_onset.append(abs(wave - truth) if wave is not None else float("nan"))
        report["kind_auroc"][family] = _stat(kind)
        report["memorizing_auroc"][family] = _stat(memo)
        report["onset_error_epochs"][family] = _stat(onset)
        report["val_loss_onset_error_epochs"][family] = _stat(loss_onset)
        report["label_wave_onset_error_epochs"][family] = _stat(wave_onset)
        report["false_alarm_rate"][family] = _stat(alarms)
        confusion: dict[str, dict[str, int]] = {}
        for r in mine:
            if r["verdict"] is None:
                continue
            row = confusion.setdefault(r["setting"], {})
            row[r["verdict"]["kind"]] = row.get(r["verdict"]["kind"], 0) + 1
        report["confusion"][family] = confusion
        report["truth_checks"][family] = {
            setting: {
                "memorized": sum(bool(r["memorized"]) for r in mine if r["setting"] == setting),
                "runs": sum(1 for r in mine if r["setting"] == setting),
                "truth_acc": _stat([r["curves"][-1]["truth_acc"] for r in mine if r["setting"] == setting]),
                "train_acc": _stat([r["curves"][-1]["train_acc"] for r in mine if r["setting"] == setting]),
            }
            for setting in SETTINGS
            if any(r["setting"] == setting for r in mine)
        }
    report["dropped_signals"] = dropped_signals(runs)
    return report


def dropped_signals(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The candidate signals the verdict does not use, per family and truth: the change of the deepest layer's
    effective rank, H and I from the epoch of lowest validation loss to the last epoch, over their range in the
    run (+1: rose all the way, -1: fell all the way); a signal whose sign under label noise differs between
    families cannot say the kind without knowing the architecture."""
    out: dict[str, Any] = {}
    for family in FAMILIES:
        mine = [r for r in runs if r["family"] == family and r.get("memorized") is not None]
        if not mine:
            continue
        out[family] = {}
        for stat in ("effective_rank", "entropy", "mutual_info"):
            out[family][stat] = {}
            for kind in ("none", "label_noise", "shortcut"):
                values = []
                for r in mine:
                    if r["truth_kind"] != kind or (kind != "none" and not r["memorized"]):
                        continue
                    layers = sorted(
                        {
                            k.split("/")[1]
                            for row in r["curves"]
                            for k in row
                            if k.startswith("infomem/") and k.count("/") == 2
                        }
                    )
                    key = f"infomem/{layers[-1]}/{stat}" if layers else None
                    series = [row.get(key, float("nan")) for row in r["curves"]] if key else []
                    if not series or not all(math.isfinite(v) for v in series):
                        continue
                    turn = val_loss_turn(r)
                    spread = max(series) - min(series)
                    values.append((series[-1] - series[turn]) / spread if spread > 0 else 0.0)
                out[family][stat][kind] = _stat(values)
    return out


def save_figure(runs: list[dict[str, Any]], path: str, family: str = "mlp", seed: Optional[int] = None) -> str:
    """The verdict's per-epoch curves (memorizing and kind scores) of one seed of a family, one line per setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mine = [r for r in runs if r["family"] == family and r["verdict_history"]]
    seed = min(r["seed"] for r in mine) if seed is None else seed
    shown = [
        r
        for s in ("clean", "uniform_0.3", "shortcut_1.0", "mixed")
        for r in mine
        if r["seed"] == seed and r["setting"] == s
    ]
    figure, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    for r in shown:
        rows = r["verdict_history"]
        epochs = [row["epoch"] for row in rows]
        label = f"{r['setting']}: {r['verdict']['kind']}"
        axes[0].plot(epochs, [row["memorizing_score"] for row in rows], label=label)
        axes[1].plot(epochs, [row["kind_score"] for row in rows], label=label)
        axes[2].plot([row["epoch"] for row in r["curves"]], [row["truth_acc"] for row in r["curves"]], label=label)
    axes[0].set_title("verdict/memorizing_score")
    axes[1].set_title("verdict/kind_score (+1 noise, -1 shortcut)")
    axes[2].set_title("ground truth (no callback sees it)")
    for ax in axes:
        ax.set_xlabel("epoch")
    axes[2].legend(fontsize=7)
    figure.suptitle(f"{family}, seed {seed}: what MemorizationVerdict logs per epoch", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def fmt(stat: dict[str, Any], digits: int = 2) -> str:
    if not stat["n"]:
        return "n/a"
    return f"{stat['mean']:.{digits}f} ± {stat['sd']:.{digits}f} (n={stat['n']})"


def tables(report: dict[str, Any]) -> str:
    families = list(report["kind_auroc"])
    lines = [f"Seeds {report['seeds']}.\n", "| measure | " + " | ".join(families) + " |"]
    lines.append("| --- |" + " ---: |" * len(families))
    for key, name in (
        ("kind_auroc", "kind AUROC (noise vs shortcut)"),
        ("memorizing_auroc", "memorizing AUROC (vs clean)"),
        ("false_alarm_rate", "false alarms on clean runs"),
        ("onset_error_epochs", "onset error, verdict (epochs)"),
        ("val_loss_onset_error_epochs", "onset error, val_loss turn-up"),
        ("label_wave_onset_error_epochs", "onset error, Label Wave"),
    ):
        lines.append(f"| {name} | " + " | ".join(fmt(report[key][f]) for f in families) + " |")
    lines.append("\n## Verdicts per setting (runs)\n")
    for family in families:
        lines.append(
            f"- **{family}**: "
            + "; ".join(
                f"{setting}: " + ", ".join(f"{k} {v}" for k, v in sorted(row.items()))
                for setting, row in report["confusion"][family].items()
            )
        )
    lines.append("\n## Signals left out: the deepest layer from the lowest validation loss to the end (range units)\n")
    lines.append("| family | signal | clean | label noise | shortcut |")
    lines.append("| --- | --- | ---: | ---: | ---: |")
    for family, stats in report.get("dropped_signals", {}).items():
        for stat, cells in stats.items():
            lines.append(
                f"| {family} | {stat} | "
                + " | ".join(fmt(cells[k]) for k in ("none", "label_noise", "shortcut"))
                + " |"
            )
    lines.append("\n## Truth checks\n")
    lines.append("| family | setting | memorized | truth acc | train acc |")
    lines.append("| --- | --- | ---: | ---: | ---: |")
    for family in families:
        for setting, row in report["truth_checks"][family].items():
            lines.append(
                f"| {family} | {setting} | {row['memorized']} / {row['runs']} | {fmt(row['truth_acc'], 3)} |"
                f" {fmt(row['train_acc'], 3)} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/kind", help="output directory")
    parser.add_argument("--quick", action="store_true", help="4 settings, 2 seeds, shorter runs (under 10 minutes)")
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    parser.add_argument("--settings", nargs="+", default=None, choices=SETTINGS)
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="default: 2 to 6 (0 and 1 with --quick)")
    parser.add_argument("--workers", type=int, default=2, help="runs side by side (spawned processes)")
    parser.add_argument("--reanalyse", action="store_true", help="read OUT/runs.json instead of training")
    parser.add_argument("--figure", default=None, help="also draw one seed's verdict curves of the MLP to this PNG")
    parser.add_argument(
        "--recompute",
        action="store_true",
        help="with --reanalyse: the final verdicts again from each run's recorded curves with the current code",
    )
    args = parser.parse_args(argv)
    seeds = args.seeds or ([0, 1] if args.quick else list(REPORT_SEEDS))
    settings = args.settings or list(QUICK_SETTINGS if args.quick else SETTINGS)
    os.makedirs(args.out, exist_ok=True)
    start = time.perf_counter()
    if args.reanalyse:
        with open(os.path.join(args.out, "runs.json")) as handle:
            runs = json.load(handle)
        if args.recompute:
            for run in runs:
                run["verdict"] = recomputed_verdict(run)
    else:
        runs = run_all(args.families, settings, seeds, args.quick, args.workers)
        with open(os.path.join(args.out, "runs.json"), "w") as handle:
            json.dump(runs, handle)
    report = analyse(runs, seeds)
    report["wall_seconds"] = time.perf_counter() - start
    previous = os.path.join(args.out, "kind.json")
    if args.reanalyse and os.path.exists(previous):  # the study's own wall time, not the re-analysis'
        with open(previous) as handle:
            report["wall_seconds"] = json.load(handle).get("wall_seconds", report["wall_seconds"])
    with open(os.path.join(args.out, "kind.json"), "w") as handle:
        json.dump(report, handle, indent=1)
    if args.figure and any(r["family"] == "mlp" for r in runs):
        save_figure(runs, args.figure)
    text = tables(report)
    with open(os.path.join(args.out, "tables.md"), "w") as handle:
        handle.write(text)
    print(text)
    print(f"wall time {report['wall_seconds']:.0f} s; wrote {args.out}/kind.json, runs.json, tables.md")
    return report


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
