"""Controlled memorization experiments on the digits, and the rules a user would pick checkpoints by.

Two settings, built so that the network really memorizes (see `lightning_infomem.demos.digits`):

- ``shortcut``: the paper's Colored MNIST construction. Binary label ``digit >= 5`` flipped with
  probability 0.25 in training and in-distribution validation; a colour that agrees with the noisy
  label with probability ``(1 + alpha) / 2``. Ground truth: accuracy on an out-of-distribution test
  split with random colour, against the clean label (``digit >= 5``).
- ``label_noise``: a fraction ``beta`` of the training *and* validation labels redrawn uniformly
  (a user has no clean validation labels). Ground truth: accuracy on a clean test split.

`run_one` trains one MLP (three hidden layers of 256 ReLU units, the paper's) with
`InformationMeasures` at its defaults and in paper mode (and, every few epochs, the KSG mutual
information of a fixed neuron subset), and records per validation epoch every logged key, the
in-distribution validation loss and accuracy, and the ground-truth accuracy. `model_selection`,
`checkpoint_selection` and `early_stopping` then score the rules a user could select by: for a rule
``"key:min"`` or ``"key:max"`` (or ``"last_epoch"``), which model or checkpoint it picks and how good
that one really is.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_infomem.callbacks.information import InformationMeasures
from lightning_infomem.demos.digits import load_digits, redraw_labels
from lightning_infomem.demos.runs import (
    DigitsMLP,
    accuracy,
    digits_data,
    kendall_tau,
    model_selection,
    rule_value,
    rules_of,
)
from lightning_infomem.functional.ksg import ksg_mutual_information
from lightning_infomem.functional.mutual_information import mean_off_diagonal
from lightning_infomem.metrics.settings import MeasurementSettings

__all__ = [
    "FAMILIES",
    "SETTINGS",
    "DigitsMLP",
    "RunConfig",
    "checkpoint_selection",
    "chosen_checkpoint",
    "early_stopping",
    "kendall_tau",
    "make_data",
    "model_selection",
    "rule_value",
    "run_one",
]

SETTINGS = ("shortcut", "label_noise")
FAMILIES = ("mlp", "cnn", "transformer")
LEVELS = (0.0, 0.25, 0.5, 0.75, 1.0)
LAYERS = ["net.0", "net.2", "net.4"]  # the pre-activation outputs of the three hidden layers


@dataclass
class RunConfig:
    """How one run trains and measures."""

    epochs: int = 60
    hidden: int = 256
    lr: float = 1e-3
    batch_size: int = 64
    paper: bool = True  # also InformationMeasures.paper() at every measured epoch
    ablations: bool = False  # also binning="layer" (the former defaults), binning="global", mutual_info_bins=32
    ksg_every: int = 5  # KSG MI every this many epochs (0: never)
    ksg_neurons: int = 32
    measure_every: int = 1  # InformationMeasures every_n_epochs
    per_sample_scores: bool = False  # TrainingDynamics and LossCurvature on the training set
    verdict: bool = False  # TrainingDynamics and MemorizationVerdict: is it memorizing, and which kind
    family: str = "mlp"  # "mlp", "cnn" or "transformer" (see study.families)
    peers: bool = False  # the label-free peers of H and I at every epoch (see EpochRecorder)
    curvature_probes: int = 10
    log_dir: Optional[str] = None  # TensorBoard logs of the run (None: no logger)
    extra: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------ data
def make_data(setting: str, level: float, seed: int, split_seed: int = 0, family: str = "mlp") -> dict[str, Any]:
    """Train / in-distribution validation / ground-truth sets of one run: 60 / 20 / 20 % of the digits (the
    ``mlp`` and ``cnn`` families) or 1,200 / 400 / 400 generated token sequences (``transformer``).

    Returns ``{"train": (x, y), "val": (x, y), "truth": (x, y), "true_train": y_clean, "classes": C,
    "unlabelled": x}``: ``val`` carries the same shortcut or noise as ``train``; ``truth`` is the
    out-of-distribution split (random shortcut, clean label) or the clean test split; ``unlabelled`` is
    an in-distribution input set shared by every seed of a level (for the disagreement between runs).
    The shortcut is a colour (``mlp``), a patch (``cnn``) or a token (``transformer``).
    """
    if setting not in SETTINGS:
        raise ValueError(f"setting must be one of {SETTINGS}, received {setting!r}")
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, received {family!r}")
    data = _family_data(setting, level, seed, split_seed, family)
    shared = torch.Generator().manual_seed(77_777 + int(round(level * 1000)))
    data["unlabelled"] = _family_data(setting, level, 0, split_seed, family, shared)["val"][0]
    return data


def _family_data(
    setting: str, level: float, seed: int, split_seed: int, family: str, generator: Optional[torch.Generator] = None
) -> dict[str, Any]:
    from study.families import patch_digits, token_task

    if generator is None:
        generator = torch.Generator().manual_seed(10_000 * seed + int(round(level * 1000)))
    if family == "transformer":
        if setting == "shortcut":
            (xt, yt, clean), (xv, yv, _) = (token_task(n, generator, True, level) for n in (1200, 400))
            xo, _, yo = token_task(400, generator, True, 0.0)
            return {"train": (xt, yt), "val": (xv, yv), "truth": (xo, yo), "true_train": clean, "classes": 2}
        (xt, _, clean), (xv, _, clean_v), (xo, _, yo) = (token_task(n, generator, False) for n in (1200, 400, 400))
        yt, yv = redraw_labels(clean, level, generator, 4), redraw_labels(clean_v, level, generator, 4)
        return {"train": (xt, yt), "val": (xv, yv), "truth": (xo, yo), "true_train": clean, "classes": 4}
    x, digits = load_digits(split_seed)
    n = len(digits)
    cut_train, cut_val = int(0.6 * n), int(0.8 * n)
    parts = [slice(0, cut_train), slice(cut_train, cut_val), slice(cut_val, n)]
    if family == "cnn" and setting == "shortcut":
        (xt, yt, _), (xv, yv, _) = (patch_digits(x[p], digits[p], level, generator) for p in parts[:2])
        xo, _, _ = patch_digits(x[parts[2]], digits[parts[2]], 0.0, generator)
        return {
            "train": (xt, yt),
            "val": (xv, yv),
            "truth": (xo, (digits[parts[2]] >= 5).long()),
            "true_train": (digits[parts[0]] >= 5).long(),
            "classes": 2,
        }
    return digits_data(setting, level, seed, split_seed, generator)


def capture_activations(model: nn.Module, layers: list[str], x: Tensor) -> dict[str, Tensor]:
    """Activations ``[S, N]`` of the named modules on ``x`` (eval mode, no gradient), read as the callback reads
    them (observed by `ReadingProbe`: spatial average, the token of a sequence)."""
    from lightning_infomem.introspection import ReadingProbe, named_layers, read

    modules = dict(named_layers(model))
    probe = ReadingProbe(model, {name: modules[name] for name in layers})
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            probe.start()
            try:
                model(x)
            finally:
                probe.stop()
            result = probe.observe(batch_size=len(x), masks={})
    finally:
        model.train(was_training)
    return {name: read(result.outputs[name][0], result.readings.get(name)).detach() for name in layers}


class EpochRecorder(Callback):
    """After every validation: the logged keys, the ground-truth and training accuracy, the label-free peers
    (``peers=True``) and, every few epochs, KSG MI and WeightWatcher's alpha.

    Peers, on the in-distribution validation inputs unless said: ``peer/max_softmax`` (mean maximum softmax),
    ``peer/nuclear_norm`` (normalised softmax nuclear norm), ``peer/rankme_head`` (the effective rank of the
    representation the head reads), ``peer/label_wave`` (training predictions changed since the previous
    epoch), ``peer/ww_alpha`` (WeightWatcher's mean alpha, where the package imports). Also the deepest
    monitored layer's values under ``<prefix>/deepest/<stat>``, so that rules compare across families.
    """

    def __init__(self, data: dict[str, Any], config: RunConfig, seed: int, layers: Callable[[], list[str]]) -> None:
        self.data = data
        self.config = config
        self.rows: list[dict[str, Any]] = []
        self.layers = layers
        self.subsets: dict[str, Optional[Tensor]] = {}
        self._generator = torch.Generator().manual_seed(seed)
        self._train_predictions: Optional[Tensor] = None
        self.unlabelled_predictions: list[int] = []

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        epoch = trainer.current_epoch
        row: dict[str, Any] = {"epoch": epoch}
        row.update({key: float(value) for key, value in trainer.callback_metrics.items() if _is_epoch_key(key)})
        row.update(_deepest(row, self.layers()))
        row["truth_acc"] = accuracy(pl_module, self.data["truth"])
        row["train_acc"] = accuracy(pl_module, self.data["train"])
        every = self.config.ksg_every
        periodic = bool(every) and ((epoch + 1) % every == 0 or epoch + 1 == self.config.epochs)
        if periodic:
            row.update(self.ksg(pl_module))
        if self.config.peers:
            row.update(self.peers(pl_module, periodic or epoch + 1 == self.config.epochs))
        if epoch + 1 == self.config.epochs:
            self.unlabelled_predictions = predictions(pl_module, self.data["unlabelled"]).tolist()
        self.rows.append(row)

    def ksg(self, model: nn.Module) -> dict[str, float]:
        """KSG MI (k = 3) of a fixed random subset of each layer's neurons on the validation inputs."""
        acts = capture_activations(model, self.layers(), self.data["val"][0])
        values = {}
        for name, x in acts.items():
            if self.subsets.get(name) is None:
                self.subsets[name] = torch.randperm(x.shape[1], generator=self._generator)[: self.config.ksg_neurons]
            subset = x[:, self.subsets[name]].double()
            values[f"ksg/{name}/mutual_info"] = float(mean_off_diagonal(ksg_mutual_information(subset, k=3)))
        values["ksg/mutual_info"] = float(np.mean(list(values.values())))
        return values

    def peers(self, model: nn.Module, periodic: bool) -> dict[str, float]:
        from lightning_infomem.functional import effective_rank
        from lightning_infomem.functional.peers import mean_max_softmax, prediction_changes, softmax_nuclear_norm

        features: list[Tensor] = []
        handle = _head_of(model).register_forward_pre_hook(lambda m, args: features.append(args[0].detach()) and None)
        try:
            logits = _eval(model, self.data["val"][0])
        finally:
            handle.remove()
        values = {
            "peer/max_softmax": mean_max_softmax(logits),
            "peer/nuclear_norm": softmax_nuclear_norm(logits),
            "peer/rankme_head": float(effective_rank(features[0].flatten(1).double())),
        }
        train_predictions = predictions(model, self.data["train"][0])
        if self._train_predictions is not None:
            values["peer/label_wave"] = float(prediction_changes(self._train_predictions, train_predictions))
        self._train_predictions = train_predictions
        if periodic:
            alpha = weightwatcher_alpha(model)
            if alpha is not None:
                values["peer/ww_alpha"] = alpha
        return values


def _deepest(row: dict[str, Any], layers: list[str]) -> dict[str, float]:
    """``<prefix>/deepest/<stat>``: the deepest monitored layer's value of every logged prefix and statistic."""
    if not layers:
        return {}
    out = {}
    suffix = f"/{layers[-1]}/"
    for key, value in row.items():
        if suffix in key:
            prefix, _, stat = key.partition(suffix)
            out[f"{prefix}/deepest/{stat}"] = value
    return out


def _head_of(model: nn.Module) -> nn.Module:
    """The output head: the last ``nn.Linear`` of the model."""
    return [m for m in model.modules() if isinstance(m, nn.Linear)][-1]


def _eval(model: nn.Module, x: Tensor) -> Tensor:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return model(x)
    finally:
        model.train(was_training)


def predictions(model: nn.Module, x: Tensor) -> Tensor:
    """The predicted classes of ``x`` (eval mode)."""
    return _eval(model, x).argmax(dim=1)


def weightwatcher_alpha(model: nn.Module) -> Optional[float]:
    """WeightWatcher's mean power-law exponent alpha over the model's layers (the optional ``weightwatcher``
    package; ``None`` where it does not import or fits no layer)."""
    import contextlib
    import io
    import logging
    import warnings

    try:
        import weightwatcher
    except Exception:  # noqa: BLE001 - an optional benchmark dependency
        return None
    logging.getLogger("weightwatcher").setLevel(logging.ERROR)
    quiet = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
        warnings.simplefilter("ignore")
        details = weightwatcher.WeightWatcher(model=model).analyze(plot=False)
    alphas = [float(a) for a in details.get("alpha", []) if a is not None and math.isfinite(float(a))]
    return float(np.mean(alphas)) if alphas else None


def _is_epoch_key(key: str) -> bool:
    return key.startswith(("infomem", "val_")) and not key.endswith("clipped_fraction")


def build_model(family: str, data: dict[str, Any], config: RunConfig) -> LightningModule:
    """The model of a family for a run's data: the paper's MLP, a staged CNN, or a [CLS] transformer."""
    from study.families import StagedCNN, TokenTransformer

    if family == "mlp":
        return DigitsMLP(data["train"][0][0].numel(), data["classes"], config.hidden, config.lr)
    if family == "cnn":
        channels = data["train"][0][0].numel() // 64
        return StagedCNN(channels, data["classes"], lr=config.lr)
    if family == "transformer":
        return TokenTransformer(data["classes"], lr=config.lr)
    raise ValueError(f"family must be one of {FAMILIES}, received {family!r}")


def run_one(setting: str, level: float, seed: int, config: RunConfig) -> dict[str, Any]:
    """Train one model of a series and record its curves (see the module docs); returns a JSON-able dict."""
    start = time.perf_counter()
    seed_everything(seed, verbose=False)
    data = make_data(setting, level, seed, family=config.family)
    x, y = data["train"]
    model = build_model(config.family, data, config)
    layers = LAYERS if config.family == "mlp" else None  # the defaults, as a user gets them
    measures = InformationMeasures(layers=layers, every_n_epochs=config.measure_every, seed=seed)
    recorder = EpochRecorder(data, config, seed, lambda: measures.layer_names)
    callbacks: list[Callback] = [measures]
    if config.paper:
        callbacks.append(InformationMeasures.paper(layers=layers, every_n_epochs=config.measure_every))
    if config.ablations:
        for prefix, change in (
            ("infomem_layer", {"binning": "layer"}),
            ("infomem_global", {"binning": "global"}),
            ("infomem_neuron", {"binning": "neuron"}),
            ("infomem_mi32", {"mutual_info_bins": 32}),
        ):
            callbacks.append(
                InformationMeasures(
                    layers=layers,
                    every_n_epochs=config.measure_every,
                    seed=seed,
                    prefix=prefix,
                    settings=MeasurementSettings().replace(**change),
                )
            )
    dynamics = curvature = verdict = None
    if config.verdict and not config.per_sample_scores:
        from lightning_infomem import IndexedDataset, MemorizationVerdict, TrainingDynamics

        dynamics = TrainingDynamics(num_images=0, log_histograms=False)
        verdict = MemorizationVerdict(print_summary=False)
        callbacks += [dynamics, verdict]
        train_set: Any = IndexedDataset(TensorDataset(x, y))
    elif config.per_sample_scores:
        from lightning_infomem import IndexedDataset, LossCurvature, TrainingDynamics

        dynamics = TrainingDynamics(num_images=0, log_histograms=False)
        scoring = DataLoader(IndexedDataset(TensorDataset(x, y)), batch_size=512)
        curvature = LossCurvature(scoring, num_probes=config.curvature_probes, seed=seed, num_images=0)
        callbacks += [dynamics, curvature]
        if config.verdict:
            from lightning_infomem import MemorizationVerdict

            verdict = MemorizationVerdict(print_summary=False)
            callbacks.append(verdict)
        train_set = IndexedDataset(TensorDataset(x, y))
    else:
        train_set = TensorDataset(x, y)
    callbacks.append(recorder)
    logger: Any = False
    if config.log_dir is not None:
        from lightning.pytorch.loggers import TensorBoardLogger

        logger = TensorBoardLogger(config.log_dir, name=f"{setting}_{level:.2f}_seed{seed}", version=0)
    trainer = Trainer(
        max_epochs=config.epochs,
        accelerator="cpu",
        devices=1,
        logger=logger,
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        deterministic=True,
        log_every_n_steps=10,
    )
    train = DataLoader(
        train_set, batch_size=config.batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed)
    )
    val = DataLoader(TensorDataset(*data["val"]), batch_size=512)
    trainer.fit(model, train, val)
    result: dict[str, Any] = {
        "setting": setting,
        "level": level,
        "seed": seed,
        "config": {k: v for k, v in asdict(config).items() if k != "extra"},
        "curves": recorder.rows,
        "final": dict(recorder.rows[-1]),
        "seconds": time.perf_counter() - start,
        "family": config.family,
        "layers": list(measures.layer_names),
        "unlabelled_predictions": recorder.unlabelled_predictions,
    }
    if verdict is not None and verdict.verdict is not None:
        result["verdict"] = verdict.verdict.as_dict()
        result["verdict_summary"] = verdict.summary()
    if dynamics is not None and curvature is not None:
        result["per_sample"] = per_sample_detection(dynamics, curvature, y, data["true_train"])
    result["_model"] = model
    result["_data"] = data
    result["_callbacks"] = callbacks
    return result


def per_sample_detection(dynamics: Any, curvature: Any, assigned: Tensor, true: Tensor) -> dict[str, dict[str, float]]:
    """AUROC and found fraction of each per-sample score for the relabelled training samples (assigned != true)."""
    from lightning_infomem.demos.digits import detection_auroc, found_fraction

    noisy = assigned != true
    if not bool(noisy.any()) or bool(noisy.all()):
        return {}
    scores = {
        f"dynamics:{name}": (value, dynamics.suspicious_when_high[name]) for name, value in dynamics.scores.items()
    }
    scores["curvature"] = (curvature.scores["curvature"], True)
    out = {}
    for name, (value, high) in scores.items():
        if name == "dynamics:presentations":
            continue
        oriented = value.double() if high else -value.double()
        out[name] = {
            "auroc": detection_auroc(oriented, noisy),
            "found": found_fraction(oriented, noisy),
        }
    out["noisy_fraction"] = {"value": float(noisy.double().mean())}
    return out


# -------------------------------------------------------------------------------------- rules
def chosen_checkpoint(curves: list[dict[str, Any]], rule: str) -> Optional[dict[str, Any]]:
    """The recorded epoch a rule keeps: its best value (the earliest of ties), or the last epoch.

    ``"key:stop"`` is Label Wave's rule on a key of prediction changes: the first local minimum of their
    3-epoch moving average (`lightning_infomem.functional.label_wave_stop`), or the last epoch if they never
    rise again.
    """
    if rule == "last_epoch":
        return curves[-1]
    key, _, direction = rule.rpartition(":")
    if direction == "stop":
        from lightning_infomem.functional.peers import label_wave_stop

        rows = [row for row in curves if key in row]
        stop = label_wave_stop([row[key] for row in rows], window=3) if rows else None
        return rows[stop] if stop is not None else curves[-1]
    candidates = [(rule_value(row, rule), -i, row) for i, row in enumerate(curves)]
    candidates = [c for c in candidates if math.isfinite(c[0])]
    if not candidates:
        return None
    return max(candidates, key=lambda c: (c[0], c[1]))[2]  # ties: the earliest epoch, as ModelCheckpoint keeps


def checkpoint_selection(runs: list[dict[str, Any]], rules: Optional[list[str]] = None) -> dict[str, Any]:
    """For each rule, the ground-truth accuracy of the checkpoint it keeps and its regret against each run's best.

    A rule picks the recorded epoch where its value is best (the earliest of ties, as ``ModelCheckpoint``
    keeps the first; see `chosen_checkpoint`); the regret is the best ground-truth accuracy of the run minus
    the picked one's (``regrets[rule]``: per run). ``rules``: as for `model_selection`.
    """
    out: dict[str, Any] = {
        "mean_regret": {},
        "regret_sd": {},
        "mean_truth_acc": {},
        "mean_chosen_epoch": {},
        "regrets": {},
    }
    for rule in rules_of(runs) if rules is None else rules:
        regrets, accs, epochs = [], [], []
        for run in runs:
            chosen = chosen_checkpoint(run["curves"], rule)
            if chosen is None:
                continue
            best = max(row["truth_acc"] for row in run["curves"])
            regrets.append(best - chosen["truth_acc"])
            accs.append(chosen["truth_acc"])
            epochs.append(chosen["epoch"])
        if not regrets:
            continue
        out["regrets"][rule] = regrets
        out["mean_regret"][rule] = float(np.mean(regrets))
        out["regret_sd"][rule] = float(np.std(regrets, ddof=1)) if len(regrets) > 1 else 0.0
        out["mean_truth_acc"][rule] = float(np.mean(accs))
        out["mean_chosen_epoch"][rule] = float(np.mean(epochs))
    best_epochs = [max(run["curves"], key=lambda row: row["truth_acc"])["epoch"] for run in runs]
    out["mean_best_epoch"] = float(np.mean(best_epochs))
    out["mean_best_truth_acc"] = float(np.mean([max(row["truth_acc"] for row in run["curves"]) for run in runs]))
    return out


def early_stopping(runs: list[dict[str, Any]], patience: int = 5) -> dict[str, Any]:
    """``EarlyStopping(patience)`` on each rule, replayed on the recorded curves (Lightning's rule: stop once
    ``patience`` checks in a row did not strictly improve on the best).

    Reports the epoch it stops at, the ground-truth accuracy of the model there and of the best checkpoint
    by the same rule up to then (``ModelCheckpoint`` beside it), against the epoch where ground truth peaks.
    """
    out: dict[str, Any] = {"patience": patience, "rules": {}}
    for rule in rules_of(runs):
        if rule == "last_epoch":
            continue
        stops, at_stop, kept, peaks, regrets = [], [], [], [], []
        for run in runs:
            rows = [row for row in run["curves"] if math.isfinite(rule_value(row, rule))]
            if not rows:
                continue
            best, wait, stop = -math.inf, 0, rows[-1]
            for row in rows:
                value = rule_value(row, rule)
                if value > best:
                    best, wait = value, 0
                else:
                    wait += 1
                    if wait >= patience:
                        stop = row
                        break
            up_to = [row for row in rows if row["epoch"] <= stop["epoch"]]
            keep = chosen_checkpoint(up_to, rule)
            peak = max(run["curves"], key=lambda row: row["truth_acc"])
            stops.append(stop["epoch"])
            at_stop.append(stop["truth_acc"])
            kept.append(keep["truth_acc"] if keep is not None else math.nan)
            peaks.append(peak["epoch"])
            regrets.append(peak["truth_acc"] - (keep["truth_acc"] if keep is not None else math.nan))
        if stops:
            out["rules"][rule] = {
                "mean_stop_epoch": float(np.mean(stops)),
                "mean_truth_acc_at_stop": float(np.mean(at_stop)),
                "mean_truth_acc_kept": float(np.nanmean(kept)),
                "mean_regret_kept": float(np.nanmean(regrets)),
                "mean_peak_epoch": float(np.mean(peaks)),
            }
    return out
