"""The ``InformationMeasures`` callback inside real Lightning runs on scikit-learn's digits."""

from __future__ import annotations

import csv
import gc
import math
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning_helpers import (
    NUM_VAL,
    DigitsCNN,
    DigitsDataModule,
    DigitsMLP,
    DigitsSequenceModel,
    HistoryDump,
    NaNDigitsMLP,
    digits_loaders,
    digits_tensors,
    fast_trainer,
)
from torch import Tensor, nn

from lightning_infomem import InformationMeasures, MeasurementSettings
from lightning_infomem.functional import mean_off_diagonal, neuron_entropy, pairwise_mutual_information

SCALAR_SUFFIXES = ("/entropy", "/mutual_info", "/effective_rank")


# --------------------------------------------------------------------------------------------- helpers
class CountingInformationMeasures(InformationMeasures):
    """Records every activation batch that reaches a measurement, and the train/eval mode of every hook call."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.observed: list[tuple[str, int]] = []
        self.hook_modes: list[bool] = []
        self._counting_hooks: dict[str, Any] = {}

    def _hook_for(self, name: str, module: nn.Module, model: nn.Module) -> Any:
        if name not in self._counting_hooks:
            hook = super()._hook_for(name, module, model)

            def counting(module: nn.Module, args: Any, output: Any) -> None:
                self.hook_modes.append(module.training)
                hook(module, args, output)

            self._counting_hooks[name] = counting
        return self._counting_hooks[name]

    def _observe(self, measurement: Any, name: str, activations: Tensor) -> None:
        self.observed.append((name, int(activations.shape[0])))
        super()._observe(measurement, name, activations)


class ActivationRecorder(Callback):
    """A forward hook of its own on the same modules: stores their outputs at every real validation epoch,
    and counts the forward hooks present on them during training batches."""

    def __init__(self, names: list[str]) -> None:
        self.names = names
        self.epochs: list[dict[str, list[Tensor]]] = []
        self.train_hook_counts: list[int] = []
        self._handles: list[Any] = []

    def on_validation_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        if trainer.sanity_checking:
            return
        store: dict[str, list[Tensor]] = {name: [] for name in self.names}
        self.epochs.append(store)
        modules = dict(pl_module.named_modules())
        for name in self.names:
            hook = _storing_hook(store[name])
            self._handles.append(modules[name].register_forward_hook(hook))

    def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        modules = dict(pl_module.named_modules())
        self.train_hook_counts.append(sum(len(modules[name]._forward_hooks) for name in self.names))

    def activations(self, epoch_index: int, name: str) -> Tensor:
        return torch.cat(self.epochs[epoch_index][name])


def _storing_hook(store: list[Tensor]):
    def hook(module: nn.Module, args: Any, output: Tensor) -> None:
        store.append(output.detach().clone())

    return hook


def infomem_scalars(metrics: dict[str, Any], prefix: str = "infomem") -> dict[str, float]:
    return {
        key: float(value)
        for key, value in metrics.items()
        if key.startswith(prefix + "/") and key.endswith(SCALAR_SUFFIXES)
    }


def expected_keys(layers: list[str], prefix: str = "infomem") -> set[str]:
    stats = ("entropy", "mutual_info", "effective_rank")
    keys = {f"{prefix}/{stat}" for stat in stats}
    for layer in layers:
        keys |= {f"{prefix}/{layer}/{stat}" for stat in stats}
    return keys


def functional_values(
    acts: Tensor, value_range: Any, entropy_bins: int = 100, mi_bins: int = 16, entropy_range: Any = None
) -> tuple:
    """Per-neuron entropies and the MI matrix of one layer from the functional core."""
    entropy = neuron_entropy(acts, entropy_bins, value_range=value_range if entropy_range is None else entropy_range)
    mutual_info = pairwise_mutual_information(acts, mi_bins, value_range=value_range)
    return entropy, mutual_info


def global_ranges(ranges: dict[str, Any]) -> dict[str, Any]:
    """One range over all layers (the callback's default for entropy) from per-layer min..max ranges."""
    low = min(float(r[0]) for r in ranges.values())
    high = max(float(r[1]) for r in ranges.values())
    return {name: (low, high) for name in ranges}


def assert_row_matches_functional(
    row: dict[str, Any], per_layer_acts: dict[str, Tensor], ranges: dict[str, Any], entropy_ranges: Any = None
):
    """The row's per-layer and overall values equal the functional core on the given activations.

    ``ranges`` are the MI ranges; ``entropy_ranges`` default to one global range over them (the defaults).
    """
    entropy_ranges = global_ranges(ranges) if entropy_ranges is None else entropy_ranges
    all_entropies, pair_sum, pair_count = [], 0.0, 0
    for name, acts in per_layer_acts.items():
        entropy, mutual_info = functional_values(acts, ranges[name], entropy_range=entropy_ranges[name])
        assert row[f"infomem/{name}/entropy"] == pytest.approx(float(entropy.mean()), rel=1e-9, abs=1e-12)
        assert row[f"infomem/{name}/mutual_info"] == pytest.approx(
            float(mean_off_diagonal(mutual_info)), rel=1e-9, abs=1e-12
        )
        all_entropies.append(entropy)
        n = mutual_info.shape[0]
        pair_sum += float(mutual_info.sum() - mutual_info.diagonal().sum())
        pair_count += n * (n - 1)
    assert row["infomem/entropy"] == pytest.approx(float(torch.cat(all_entropies).mean()), rel=1e-9)
    assert row["infomem/mutual_info"] == pytest.approx(pair_sum / pair_count, rel=1e-9)


def min_max(acts: Tensor) -> tuple[Tensor, Tensor]:
    finite = acts[torch.isfinite(acts)]
    return finite.min(), finite.max()


# ------------------------------------------------------------------------------- one shared, richer run
@pytest.fixture(scope="module")
def mlp_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Fit the digits MLP for 3 epochs (with a 2-batch sanity check), then ``trainer.validate()`` once.

    Monitors the default layers with a TensorBoardLogger, a ModelCheckpoint on the MI (min) and one on
    the entropy (max), and a recorder of the monitored layers' outputs.
    """
    root = tmp_path_factory.mktemp("mlp_run")
    callback = CountingInformationMeasures()
    recorder = ActivationRecorder(["net.0", "net.2"])
    ckpt_mi = ModelCheckpoint(
        dirpath=root / "ckpt_mi", monitor="infomem/mutual_info", mode="min", save_top_k=1, filename="{epoch}"
    )
    ckpt_h = ModelCheckpoint(
        dirpath=root / "ckpt_h", monitor="infomem/entropy", mode="max", save_top_k=1, filename="{epoch}"
    )
    logger = TensorBoardLogger(save_dir=str(root), name="tb", version=0)
    trainer = fast_trainer(
        root,
        max_epochs=3,
        num_sanity_val_steps=2,
        logger=logger,
        enable_checkpointing=True,
        callbacks=[callback, recorder, ckpt_mi, ckpt_h],
    )
    model = DigitsMLP()
    train, val = digits_loaders(batch_size=128)
    trainer.fit(model, train, val)
    after_fit = dict(trainer.callback_metrics)
    history_after_fit = [dict(row) for row in callback.history]
    observed_after_fit = list(callback.observed)
    hooks_after_fit = {name: len(model.net[int(name[-1])]._forward_hooks) for name in ("net.0", "net.2")}
    validate_results = trainer.validate(model, val, verbose=False)
    after_validate = dict(trainer.callback_metrics)
    hooks_after_validate = {name: len(model.net[int(name[-1])]._forward_hooks) for name in ("net.0", "net.2")}
    return {
        "callback": callback,
        "recorder": recorder,
        "ckpt_mi": ckpt_mi,
        "ckpt_h": ckpt_h,
        "logger": logger,
        "model": model,
        "trainer": trainer,
        "after_fit": after_fit,
        "after_validate": after_validate,
        "validate_results": validate_results,
        "history_after_fit": history_after_fit,
        "observed_after_fit": observed_after_fit,
        "hooks_after_fit": hooks_after_fit,
        "hooks_after_validate": hooks_after_validate,
        "root": root,
    }


def test_default_layers_of_the_mlp_are_the_hidden_linear_layers(mlp_run):
    assert mlp_run["callback"].layer_names == ["net.0", "net.2"]


def test_logged_keys_after_fit_and_validate(mlp_run):
    keys = expected_keys(["net.0", "net.2"])
    for metrics, row in (
        (mlp_run["after_fit"], mlp_run["history_after_fit"][-1]),
        (mlp_run["after_validate"], mlp_run["callback"].history[-1]),
    ):
        scalars = infomem_scalars(metrics)
        assert set(scalars) == keys
        for key, value in scalars.items():
            assert math.isfinite(value), key
            # the logged float32 value is the history row's float64 value
            assert value == pytest.approx(row[key], rel=1e-6, abs=1e-7), key
    # trainer.validate() also returns them
    assert keys <= set(mlp_run["validate_results"][0])
    # entropies are positive (in nats, below log(100)); MI is non-negative and below the entropy
    row = mlp_run["callback"].history[-1]
    for layer in ("net.0", "net.2"):
        assert 0 < row[f"infomem/{layer}/entropy"] <= math.log(100)
        assert 0 <= row[f"infomem/{layer}/mutual_info"] < row[f"infomem/{layer}/entropy"]
        assert row[f"infomem/{layer}/clipped_fraction"] == 0.0  # calibrated on all 360 samples


def test_sanity_check_is_not_measured_and_history_has_one_row_per_epoch(mlp_run):
    callback = mlp_run["callback"]
    assert [row["epoch"] for row in mlp_run["history_after_fit"]] == [0, 1, 2]
    steps = [row["global_step"] for row in mlp_run["history_after_fit"]]
    assert steps == sorted(steps) and steps[0] > 0  # measured after training steps, not in the sanity check
    assert len(callback.history) == 4  # + the trainer.validate() row
    # every delivered batch came from a real validation epoch: 3 epochs x 3 batches x 2 layers during fit
    observed = mlp_run["observed_after_fit"]
    assert len(observed) == 3 * 3 * 2
    assert sum(size for _, size in observed) == 3 * 2 * NUM_VAL


def test_hooks_exist_only_during_validation(mlp_run):
    assert mlp_run["hooks_after_fit"] == {"net.0": 0, "net.2": 0}
    assert mlp_run["hooks_after_validate"] == {"net.0": 0, "net.2": 0}
    recorder = mlp_run["recorder"]
    assert recorder.train_hook_counts and set(recorder.train_hook_counts) == {0}
    # the callback's hook never fired in training mode
    assert mlp_run["callback"].hook_modes and not any(mlp_run["callback"].hook_modes)
    assert not mlp_run["callback"]._handles


def test_values_equal_the_functional_core_at_every_measurement(mlp_run):
    callback, recorder = mlp_run["callback"], mlp_run["recorder"]
    assert len(recorder.epochs) == len(callback.history) == 4
    for index, row in enumerate(callback.history):
        acts = {name: recorder.activations(index, name) for name in ("net.0", "net.2")}
        assert all(a.shape == (NUM_VAL, 32) for a in acts.values())
        # calibration_samples=512 >= 360: the per-layer range is the min..max of all samples
        ranges = {name: min_max(a) for name, a in acts.items()}
        assert_row_matches_functional(row, acts, ranges)
    # the last ranges the metrics used: min..max of each layer for MI, over both layers for entropy
    last = {name: min_max(recorder.activations(3, name)) for name in ("net.0", "net.2")}
    for name in ("net.0", "net.2"):
        low, high = callback.mutual_info_metrics[name].value_range
        assert float(low) == float(last[name][0]) and float(high) == float(last[name][1])
        assert [float(v) for v in callback.entropy_metrics[name].value_range] == list(global_ranges(last)[name])


def test_checkpoint_monitoring_mutual_info_keeps_the_minimum(mlp_run):
    history = mlp_run["history_after_fit"]
    values = [row["infomem/mutual_info"] for row in history]
    assert len(set(values)) == 3  # the curve moves, so the choice means something
    best_epoch = min(range(3), key=values.__getitem__)
    ckpt = mlp_run["ckpt_mi"]
    assert float(ckpt.best_model_score) == pytest.approx(min(values), rel=1e-6)
    assert Path(ckpt.best_model_path).name == f"epoch={best_epoch}.ckpt"
    assert torch.load(ckpt.best_model_path, weights_only=False)["epoch"] == best_epoch


def test_checkpoint_monitoring_entropy_keeps_the_maximum(mlp_run):
    values = [row["infomem/entropy"] for row in mlp_run["history_after_fit"]]
    best_epoch = max(range(3), key=values.__getitem__)
    ckpt = mlp_run["ckpt_h"]
    assert float(ckpt.best_model_score) == pytest.approx(max(values), rel=1e-6)
    assert Path(ckpt.best_model_path).name == f"epoch={best_epoch}.ckpt"


def test_tensorboard_scalars_histograms_and_heatmaps(mlp_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(
        mlp_run["logger"].log_dir, size_guidance={"scalars": 0, "histograms": 0, "images": 0}
    )
    accumulator.Reload()
    tags = accumulator.Tags()
    assert expected_keys(["net.0", "net.2"]) <= set(tags["scalars"])
    history = mlp_run["callback"].history
    logged = [event.value for event in accumulator.Scalars("infomem/mutual_info")]
    assert logged == pytest.approx([row["infomem/mutual_info"] for row in history], rel=1e-6)
    for layer in ("net.0", "net.2"):
        entropy_tag = f"infomem/{layer}/entropy_per_neuron"
        pairs_tag = f"infomem/{layer}/mutual_info_pairs"
        image_tag = f"infomem/{layer}/mutual_info_matrix"
        assert entropy_tag in tags["histograms"] and pairs_tag in tags["histograms"]
        assert image_tag in tags["images"]
        entropy_events = accumulator.Histograms(entropy_tag)
        assert len(entropy_events) == 4  # 3 fit epochs + validate
        assert entropy_events[0].histogram_value.num == 32  # one value per neuron
        assert accumulator.Histograms(pairs_tag)[0].histogram_value.num == 32 * 31 // 2  # each pair once
        assert entropy_events[-1].histogram_value.sum == pytest.approx(
            32 * history[-1][f"infomem/{layer}/entropy"], rel=1e-5
        )
        images = accumulator.Images(image_tag)
        assert len(images) == 1  # heatmap_every_n_measurements=5: only the first measurement
        assert images[0].width >= 256 and images[0].height >= 256  # 32 neurons, enlarged
        # histograms and images at the step of the scalars of the same measurement
        scalar_steps = [event.step for event in accumulator.Scalars(f"infomem/{layer}/entropy")]
        assert [event.step for event in entropy_events] == scalar_steps
        assert [event.step for event in accumulator.Histograms(pairs_tag)] == scalar_steps
        assert [event.step for event in images] == scalar_steps[:1]


def test_to_csv_writes_one_row_per_measurement(mlp_run, tmp_path):
    callback = mlp_run["callback"]
    path = callback.to_csv(tmp_path / "sub" / "curves.csv")
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    header, body = rows[0], rows[1:]
    assert header[:2] == ["epoch", "global_step"]
    assert expected_keys(["net.0", "net.2"]) <= set(header)
    assert "infomem/net.0/clipped_fraction" in header
    assert len(body) == len(callback.history) == 4
    column = header.index("infomem/mutual_info")
    assert [float(r[column]) for r in body] == [row["infomem/mutual_info"] for row in callback.history]
    assert [int(r[0]) for r in body[:3]] == [0, 1, 2]


# ------------------------------------------------------------------------------------ separate runs
def test_non_finite_activations_give_finite_values_and_a_warning(tmp_path):
    callback = InformationMeasures(layers=["net.0", "net.2"])
    trainer = fast_trainer(tmp_path, max_epochs=1, callbacks=[callback])
    model = NaNDigitsMLP()
    train, val = digits_loaders()
    with pytest.warns(RuntimeWarning, match="non-finite"):
        trainer.fit(model, train, val)
    after_fit = infomem_scalars(trainer.callback_metrics)
    with pytest.warns(RuntimeWarning, match="non-finite"):
        trainer.validate(model, val, verbose=False)
    after_validate = infomem_scalars(trainer.callback_metrics)
    for scalars in (after_fit, after_validate):
        assert set(scalars) == expected_keys(["net.0", "net.2"])
        assert all(math.isfinite(v) for v in scalars.values()), scalars
    # NaN and Inf values are left out, the rest is counted as by the functional core
    model.eval()
    x, _ = digits_tensors("val")
    with torch.no_grad():  # batch by batch, as validation saw it (the NaN pattern restarts in every batch)
        acts = torch.cat([model.net[0](batch) for batch in x.split(128)])
    assert not bool(torch.isfinite(acts).all())
    low, high = min_max(acts)
    # entropy on the metric's range (one over both layers, the default), MI on the layer's own
    entropy, mutual_info = functional_values(
        acts, (low, high), entropy_range=callback.entropy_metrics["net.0"].value_range
    )
    assert float(callback.mutual_info_metrics["net.0"].value_range[0]) == float(low)
    row = callback.history[-1]
    assert row["infomem/net.0/entropy"] == pytest.approx(float(entropy.mean()), rel=1e-9)
    assert row["infomem/net.0/mutual_info"] == pytest.approx(float(mean_off_diagonal(mutual_info)), rel=1e-9)


def test_early_stopping_on_entropy_stops_the_run(tmp_path):
    callback = InformationMeasures(layers=["net.0"], log_histograms=False, heatmap_every_n_measurements=0)
    # no later epoch can beat the first by 100 nats: the run stops after epoch 1
    stopper = EarlyStopping(monitor="infomem/entropy", mode="max", patience=0, min_delta=100.0)
    max_epochs = 6
    trainer = fast_trainer(tmp_path, max_epochs=max_epochs, callbacks=[callback, stopper])
    trainer.fit(DigitsMLP(), *digits_loaders())
    assert stopper.stopped_epoch == 1
    assert trainer.current_epoch < max_epochs - 1
    assert [row["epoch"] for row in callback.history] == [0, 1]
    assert float(stopper.best_score) == pytest.approx(callback.history[0]["infomem/entropy"], rel=1e-6)


def _where_notes(info_lines: list[str]) -> list[str]:
    return [line for line in info_lines if "InformationMeasures" in line and "scalars only" in line]


def test_csv_logger_gets_scalars_and_one_line_saying_where_the_rest_went(tmp_path, info_lines):
    callback = InformationMeasures(layers=["net.0"])
    logger = CSVLogger(save_dir=str(tmp_path), name="csv", version=0)
    trainer = fast_trainer(tmp_path, max_epochs=3, logger=logger, callbacks=[callback])
    trainer.fit(DigitsMLP(), *digits_loaders())
    notes = _where_notes(info_lines)
    assert len(notes) == 1 and "CSVLogger" in notes[0]  # once per run, not once per epoch
    assert "add a TensorBoardLogger, WandbLogger or MLFlowLogger" in notes[0]
    assert set(infomem_scalars(trainer.callback_metrics)) == expected_keys(["net.0"])
    assert len(callback.history) == 3
    with open(Path(logger.log_dir) / "metrics.csv", newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("infomem/entropy")]
    assert [float(r["infomem/entropy"]) for r in rows] == pytest.approx(
        [row["infomem/entropy"] for row in callback.history], rel=1e-6
    )


def test_without_histograms_and_heatmaps_a_csv_logger_gets_no_note(tmp_path, info_lines):
    callback = InformationMeasures(layers=["net.0"], log_histograms=False, heatmap_every_n_measurements=0)
    logger = CSVLogger(save_dir=str(tmp_path), name="csv", version=0)
    trainer = fast_trainer(tmp_path, logger=logger, callbacks=[callback])
    trainer.validate(DigitsMLP(), digits_loaders()[1], verbose=False)
    assert not _where_notes(info_lines)
    assert set(infomem_scalars(trainer.callback_metrics)) == expected_keys(["net.0"])


def test_logger_false_still_feeds_callback_metrics(tmp_path, info_lines):
    callback = InformationMeasures(layers=["net.0", "net.2"])
    stopper = EarlyStopping(monitor="infomem/mutual_info", mode="min", patience=5)
    trainer = fast_trainer(tmp_path, max_epochs=2, logger=False, callbacks=[callback, stopper])
    trainer.fit(DigitsMLP(), *digits_loaders())
    # logging is switched off on purpose: nothing to say about it
    assert not _where_notes(info_lines)
    scalars = infomem_scalars(trainer.callback_metrics)
    assert set(scalars) == expected_keys(["net.0", "net.2"])
    assert scalars["infomem/mutual_info"] == pytest.approx(callback.history[-1]["infomem/mutual_info"], rel=1e-6)
    assert float(stopper.best_score) == pytest.approx(min(r["infomem/mutual_info"] for r in callback.history), rel=1e-6)


def test_every_n_epochs_measures_odd_epochs_only(tmp_path):
    callback = CountingInformationMeasures(layers=["net.0"], every_n_epochs=2)
    trainer = fast_trainer(tmp_path, max_epochs=4, callbacks=[callback])
    model = DigitsMLP()
    train, val = digits_loaders()
    trainer.fit(model, train, val)
    assert [row["epoch"] for row in callback.history] == [1, 3]
    assert len(callback.observed) == 2 * 3  # 2 measured epochs x 3 batches
    assert not model.net[0]._forward_hooks
    trainer.validate(model, val, verbose=False)  # validate() always measures
    assert len(callback.history) == 3


@pytest.mark.parametrize("binning", ["layer", "neuron", "global"])
def test_max_samples_and_max_neurons_select_what_the_functional_core_sees(tmp_path, binning):
    """Only the first ``max_samples`` samples and the ``neuron_indices`` subset are measured; the range
    comes from the first ``calibration_samples`` of them; later outliers are clipped into the edge bins."""
    max_samples, calibration = 200, 40  # 200 = 3 batches of 64 + 8, 40 < 64: both cut inside a batch
    settings = MeasurementSettings(calibration_samples=calibration).replace(binning=binning)  # both H and I
    callback = InformationMeasures(
        layers=["net.0", "net.2"], max_samples=max_samples, max_neurons=12, settings=settings
    )
    trainer = fast_trainer(tmp_path, callbacks=[callback])
    model = DigitsMLP()
    trainer.validate(model, digits_loaders(batch_size=64)[1], verbose=False)
    x, _ = digits_tensors("val")
    with torch.no_grad():
        full = {"net.0": model.net[0](x)}
        full["net.2"] = model.net[2](torch.relu(full["net.0"]))
    acts, ranges = {}, {}
    for name in ("net.0", "net.2"):
        index = callback.neuron_indices[name]
        assert index is not None and index.shape == (12,)
        assert bool((index[1:] > index[:-1]).all()) and int(index.max()) < 32
        assert callback.layer_widths[name] == 32
        acts[name] = full[name][:max_samples].index_select(1, index)
        ranges[name] = callback.entropy_metrics[name].value_range
    calib = {name: a[:calibration] for name, a in acts.items()}
    if binning == "layer":
        for name in acts:
            assert [float(v) for v in ranges[name]] == [float(v) for v in min_max(calib[name])]
    elif binning == "neuron":
        for name in acts:
            low, high = ranges[name]
            assert low.shape == (12,)
            assert torch.equal(low.float(), calib[name].amin(0)) and torch.equal(high.float(), calib[name].amax(0))
    else:
        pooled = torch.cat([calib["net.0"].flatten(), calib["net.2"].flatten()])
        for name in acts:
            assert [float(v) for v in ranges[name]] == [float(pooled.min()), float(pooled.max())]
    row = callback.history[-1]
    assert_row_matches_functional(row, acts, ranges, entropy_ranges=ranges)
    for name, a in acts.items():
        low, high = (r.float() for r in ranges[name])
        outside = ((a < low) | (a > high)).sum().item()
        assert row[f"infomem/{name}/clipped_fraction"] == pytest.approx(outside / a.numel())
    assert any(row[f"infomem/{name}/clipped_fraction"] > 0 for name in acts)  # the check above is not vacuous
    # a different seed draws a different subset
    other = InformationMeasures(layers=["net.0"], max_neurons=12, seed=1, max_samples=16)
    fast_trainer(tmp_path, callbacks=[other]).validate(model, digits_loaders(batch_size=64)[1], verbose=False)
    assert not torch.equal(other.neuron_indices["net.0"], callback.neuron_indices["net.0"])


def test_values_do_not_depend_on_the_validation_batch_size(tmp_path):
    """The range comes from exactly the first ``calibration_samples`` samples and counting stops after exactly
    ``max_samples``, whatever the batch boundaries."""
    model = DigitsMLP()
    rows = []
    for batch_size in (50, 64, NUM_VAL):
        callback = InformationMeasures(
            layers=["net.0", "net.2"],
            max_samples=300,
            max_neurons=16,
            settings=MeasurementSettings(
                entropy_binning="neuron", mutual_info_binning="neuron", calibration_samples=100
            ),
        )
        fast_trainer(tmp_path, callbacks=[callback]).validate(model, digits_loaders(batch_size)[1], verbose=False)
        rows.append({k: v for k, v in callback.history[-1].items() if k.startswith("infomem/")})
    assert rows[0]["infomem/net.0/clipped_fraction"] > 0  # calibration saw fewer samples than were counted
    # H and I are integer counts: exactly the same for any batching; the effective rank sums float64 Gram matrices
    # batch by batch, so it differs by float64 rounding alone
    exact = [{k: v for k, v in row.items() if not k.endswith("effective_rank")} for row in rows]
    assert exact[0] == exact[1] == exact[2]
    for key in (k for k in rows[0] if k.endswith("effective_rank")):
        assert rows[1][key] == pytest.approx(rows[0][key], rel=1e-10) and rows[2][key] == pytest.approx(
            rows[0][key], rel=1e-10
        )


def test_values_do_not_depend_on_the_threads_and_torch_threads_are_restored(tmp_path):
    """The callback's own work runs on ``threads`` torch threads; the training loop keeps torch's setting."""
    model = DigitsMLP()
    seen: list[int] = []

    class RecordThreads(Callback):
        def on_validation_batch_start(self, *args: Any) -> None:
            seen.append(torch.get_num_threads())

    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        rows = []
        for threads in (1, 2, None):
            callback = InformationMeasures(layers=["net.0", "net.2"], max_neurons=16, threads=threads)
            trainer = fast_trainer(tmp_path, callbacks=[callback, RecordThreads()])
            trainer.validate(model, digits_loaders(batch_size=64)[1], verbose=False)
            rows.append({k: v for k, v in callback.history[-1].items() if k.startswith("infomem/")})
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(previous)
    assert set(seen) == {2}  # the model's forward passes ran on torch's own setting
    # H and I are integer counts: exactly the same for any batching; the effective rank sums float64 Gram matrices
    # batch by batch, so it differs by float64 rounding alone
    exact = [{k: v for k, v in row.items() if not k.endswith("effective_rank")} for row in rows]
    assert exact[0] == exact[1] == exact[2]
    for key in (k for k in rows[0] if k.endswith("effective_rank")):
        assert rows[1][key] == pytest.approx(rows[0][key], rel=1e-10) and rows[2][key] == pytest.approx(
            rows[0][key], rel=1e-10
        )
    with pytest.raises(ValueError, match="threads must be None or an integer >= 1"):
        InformationMeasures(threads=0)


def test_layer_selection_by_glob_and_type(tmp_path):
    model = DigitsMLP()
    val = digits_loaders()[1]
    by_glob = InformationMeasures(layers="net.[02]", prefix="glob")
    by_type = InformationMeasures(layers=[nn.Linear], prefix="type")
    by_mixed = InformationMeasures(layers=["net.4", nn.ReLU], prefix="mixed")
    trainer = fast_trainer(tmp_path, callbacks=[by_glob, by_type, by_mixed])
    trainer.validate(model, val, verbose=False)
    assert by_glob.layer_names == ["net.0", "net.2"]
    assert by_type.layer_names == ["net.0", "net.2", "net.4"]
    assert by_mixed.layer_names == ["net.1", "net.3", "net.4"]
    metrics = trainer.callback_metrics
    assert set(infomem_scalars(metrics, "glob")) == expected_keys(["net.0", "net.2"], "glob")
    assert set(infomem_scalars(metrics, "type")) == expected_keys(["net.0", "net.2", "net.4"], "type")
    assert set(infomem_scalars(metrics, "mixed")) == expected_keys(["net.1", "net.3", "net.4"], "mixed")
    # the same layer gives the same value whichever way it was selected
    assert by_glob.history[-1]["glob/net.2/entropy"] == by_type.history[-1]["type/net.2/entropy"]


def test_unknown_layer_name_fails_at_setup_and_lists_valid_names(tmp_path):
    callback = InformationMeasures(layers=["net.0", "net.9"])
    trainer = fast_trainer(tmp_path, callbacks=[callback])
    model = DigitsMLP()
    with pytest.raises(ValueError, match="net.9") as info:
        trainer.fit(model, *digits_loaders())
    message = str(info.value)
    assert "Valid names" in message and "net.0 (Linear)" in message and "net.4 (Linear)" in message
    assert trainer.global_step == 0  # failed before training
    assert not any(module._forward_hooks for module in model.modules())


class _ConditionalMLP(DigitsMLP):
    """The digits MLP with an auxiliary layer that validation calls only while ``use_aux`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.aux = nn.Linear(64, 4)
        self.use_aux = True

    def logits(self, x: Tensor) -> Tensor:
        if self.use_aux:
            self.aux(x)
        return self(x)


def test_a_layer_not_reached_in_a_later_evaluation_is_left_out_with_a_warning(tmp_path):
    callback = InformationMeasures(layers=["net.0", "aux"])
    trainer = fast_trainer(tmp_path, callbacks=[callback])
    model = _ConditionalMLP()
    val = digits_loaders()[1]
    trainer.validate(model, val, verbose=False)
    assert "infomem/aux/entropy" in callback.history[-1]
    model.use_aux = False
    with pytest.warns(UserWarning, match=r"no activations reached layer\(s\) \['aux'\]"):
        trainer.validate(model, val, verbose=False)
    row = callback.history[-1]
    assert not any(key.startswith("infomem/aux/") for key in row)
    assert set(infomem_scalars(trainer.callback_metrics)) == expected_keys(["net.0"])
    # the overall values then cover net.0 only
    assert row["infomem/entropy"] == row["infomem/net.0/entropy"]
    assert row["infomem/mutual_info"] == pytest.approx(row["infomem/net.0/mutual_info"], rel=1e-12)


def test_integer_activations_raise_and_hooks_are_removed(tmp_path):
    class ArgmaxModel(DigitsMLP):
        def __init__(self) -> None:
            super().__init__()
            self.argmax = _Argmax()

        def logits(self, x: Tensor) -> Tensor:
            out = self(x)
            self.argmax(out)
            return out

    callback = InformationMeasures(layers=["argmax"])
    model = ArgmaxModel()
    with pytest.raises(TypeError, match="output_transform"):
        fast_trainer(tmp_path, callbacks=[callback]).validate(model, digits_loaders()[1], verbose=False)
    assert not model.argmax._forward_hooks
    assert not callback._handles


class _Argmax(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.argmax(dim=1)


def test_conv_layers_are_pooled_over_space(tmp_path):
    callback = InformationMeasures()
    trainer = fast_trainer(tmp_path, callbacks=[callback])
    model = DigitsCNN()
    trainer.validate(model, digits_loaders(image=True)[1], verbose=False)
    assert callback.layer_names == ["net.1", "net.3"]  # the two convolutions after their ReLU, not the linear head
    x, _ = digits_tensors("val", image=True)
    with torch.no_grad():
        conv1 = torch.relu(model.net[0](x))
        conv2 = torch.relu(model.net[2](conv1))
    acts = {"net.1": conv1.mean(dim=(2, 3)), "net.3": conv2.mean(dim=(2, 3))}
    assert callback.layer_widths == {"net.1": 8, "net.3": 12}
    ranges = {name: min_max(a) for name, a in acts.items()}
    assert_row_matches_functional(callback.history[-1], acts, ranges)


def test_tuple_and_dict_outputs_are_read_on_the_stream_the_model_consumes(tmp_path):
    """The encoder returns ``(hidden [B, 8, 16], {"pooled": [B, 16]})`` and the model feeds ``pooled`` to the next
    block: that is the main stream the probe reads (not the first tensor); the block's dict gives its one tensor."""
    callback = InformationMeasures(layers=["encoder", "block"], sequence_reduction="mean")
    transformed = InformationMeasures(
        layers=["encoder"], output_transform=lambda output: output[1]["pooled"] * 2.0, prefix="transformed"
    )
    trainer = fast_trainer(tmp_path, callbacks=[callback, transformed])
    model = DigitsSequenceModel()
    trainer.validate(model, digits_loaders()[1], verbose=False)
    x, _ = digits_tensors("val")
    with torch.no_grad():
        hidden, pooled = model.encoder(x)  # tuple: ([B, 8, 16], {"pooled": [B, 16]})
        block = model.block(pooled["pooled"])["hidden"]  # the dict's tensor
    assert callback.readings["encoder"].path == (1, "pooled")
    acts = {"encoder": pooled["pooled"], "block": block}
    assert callback.layer_widths == {"encoder": 16, "block": 16}
    assert_row_matches_functional(callback.history[-1], acts, {name: min_max(a) for name, a in acts.items()})
    # output_transform picks the pooled tensor (scaled by 2: same bins, same values)
    expected = pooled["pooled"] * 2.0
    entropy, _ = functional_values(expected, min_max(expected))
    assert transformed.history[-1]["transformed/encoder/entropy"] == pytest.approx(float(entropy.mean()), rel=1e-9)


@pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty")
def test_resume_from_checkpoint_continues_history_and_neuron_subsets(tmp_path):
    """Two instances with different prefixes: each logs its own keys and restores its own state."""
    ckpt_dir = tmp_path / "ckpt"
    first = InformationMeasures(layers=["net.0"], max_neurons=8, seed=0)
    second = InformationMeasures(layers="net.2", max_neurons=6, seed=5, prefix="second")
    trainer = fast_trainer(
        tmp_path,
        max_epochs=2,
        enable_checkpointing=True,
        callbacks=[first, second, ModelCheckpoint(dirpath=ckpt_dir, save_last=True)],
    )
    trainer.fit(DigitsMLP(), *digits_loaders())
    assert first.state_key != second.state_key
    scalars = trainer.callback_metrics
    assert set(infomem_scalars(scalars)) == expected_keys(["net.0"])
    assert set(infomem_scalars(scalars, "second")) == expected_keys(["net.2"], "second")
    assert all(not key.startswith("second/") for row in first.history for key in row)
    first_history, second_history = [dict(r) for r in first.history], [dict(r) for r in second.history]

    # fresh instances with the same settings continue the history and the neuron subsets exactly
    first_again = InformationMeasures(layers=["net.0"], max_neurons=8, seed=0)
    second_again = InformationMeasures(layers="net.2", max_neurons=6, seed=5, prefix="second")
    resumed = fast_trainer(
        tmp_path,
        max_epochs=4,
        enable_checkpointing=True,
        callbacks=[first_again, second_again, ModelCheckpoint(dirpath=ckpt_dir, save_last=True)],
    )
    resumed.fit(DigitsMLP(), *digits_loaders(), ckpt_path=str(ckpt_dir / "last.ckpt"))
    for before, after, old_history in ((first, first_again, first_history), (second, second_again, second_history)):
        assert [row["epoch"] for row in after.history] == [0, 1, 2, 3]
        assert after.history[:2] == old_history
        for name, index in before.neuron_indices.items():
            assert torch.equal(after.neuron_indices[name], index)

    def draw(seed: int, size: int) -> Tensor:
        return torch.randperm(32, generator=torch.Generator().manual_seed(seed))[:size].sort().values

    assert torch.equal(first.neuron_indices["net.0"], draw(0, 8))
    assert torch.equal(second.neuron_indices["net.2"], draw(5, 6))
    assert resumed.callback_metrics["second/entropy"] == pytest.approx(second_again.history[-1]["second/entropy"])


@pytest.mark.parametrize(
    "changed, named",
    [
        (
            {"seed": 7, "max_neurons": 5},
            ["seed=0 in the checkpoint, 7 now", "max_neurons=8 in the checkpoint, 5 now"],
        ),
        ({"layers": ["net.0", "net.2"]}, ["layers=['net.0'] in the checkpoint, ['net.0', 'net.2'] now"]),
        ({"settings": MeasurementSettings(mutual_info_bins=8)}, ["mutual_info_bins=16 in the checkpoint, 8 now"]),
        (
            {"settings": MeasurementSettings().replace(binning="neuron")},
            ["entropy_binning='global' in the checkpoint, 'neuron' now"],
        ),
    ],
)
def test_resume_with_other_settings_is_refused_naming_them(tmp_path, changed, named):
    ckpt_dir = tmp_path / "ckpt"
    settings = {"layers": ["net.0"], "max_neurons": 8, "seed": 0}
    trainer = fast_trainer(
        tmp_path,
        max_epochs=1,
        enable_checkpointing=True,
        callbacks=[InformationMeasures(**settings), ModelCheckpoint(dirpath=ckpt_dir, save_last=True)],
    )
    trainer.fit(DigitsMLP(), *digits_loaders())
    other = InformationMeasures(**{**settings, **changed})
    resumed = fast_trainer(tmp_path, max_epochs=2, callbacks=[other])
    with pytest.raises(ValueError, match="measured with other settings") as caught:
        resumed.fit(DigitsMLP(), *digits_loaders(), ckpt_path=str(ckpt_dir / "last.ckpt"))
    for text in named:
        assert text in str(caught.value)
    assert other.history == []  # nothing of the other estimator was mixed in


def test_invalid_arguments_are_rejected():
    for kwargs in (
        {"entropy_bins": 0},
        {"mutual_info_bins": 1.5},
        {"max_samples": 0},
        {"max_neurons": -1},
        {"every_n_epochs": 0},
        {"binning": "model"},
        {"range_quantile": 0.5},
        {"calibration_samples": 0},
        {"sequence_reduction": "max"},
        {"heatmap_every_n_measurements": -1},
    ):
        with pytest.raises(ValueError, match=next(iter(kwargs))):
            InformationMeasures(**kwargs)


# ---------------------------------------------------------------------------------------- LightningCLI
@pytest.mark.filterwarnings("ignore::DeprecationWarning:lightning.pytorch.cli")
def test_lightning_cli_builds_the_callback_from_a_config(tmp_path, monkeypatch):
    pytest.importorskip("jsonargparse")
    monkeypatch.setattr(sys, "argv", ["lightning"])  # pytest's own arguments are not for the CLI
    from lightning.pytorch.cli import LightningCLI

    config = tmp_path / "config.yaml"
    config.write_text(
        "trainer:\n"
        "  max_epochs: 1\n"
        "  logger: false\n"
        "  enable_checkpointing: false\n"
        "  enable_progress_bar: false\n"
        "  enable_model_summary: false\n"
        f"  default_root_dir: {tmp_path.as_posix()}\n"
        "  callbacks:\n"
        "    - class_path: lightning_infomem.InformationMeasures\n"
        "      init_args:\n"
        "        layers: [net.0]\n"
        "        max_neurons: 16\n"
        "        settings:\n"
        "          mutual_info_binning: global\n"
        "model:\n"
        "  lr: 0.01\n"
    )
    cli = LightningCLI(
        DigitsMLP,
        DigitsDataModule,
        run=False,
        args=["--config", str(config)],
        save_config_callback=None,
        seed_everything_default=0,
    )
    callbacks = [c for c in cli.trainer.callbacks if isinstance(c, InformationMeasures)]
    assert len(callbacks) == 1
    callback = callbacks[0]
    assert list(callback.layers) == ["net.0"]
    assert callback.max_neurons == 16 and callback.binning == "global" and callback.entropy_bins == 100
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert set(infomem_scalars(cli.trainer.callback_metrics)) == expected_keys(["net.0"])
    assert callback.neuron_indices["net.0"].shape == (16,)

    # the same through a dict of arguments, with a glob and a single string
    cli = LightningCLI(
        DigitsMLP,
        DigitsDataModule,
        run=False,
        save_config_callback=None,
        seed_everything_default=0,
        args={
            "trainer": {
                "logger": False,
                "default_root_dir": str(tmp_path),
                "callbacks": [
                    {"class_path": "lightning_infomem.InformationMeasures", "init_args": {"layers": "net.*"}},
                ],
            }
        },
    )
    (callback,) = [c for c in cli.trainer.callbacks if isinstance(c, InformationMeasures)]
    assert callback.layers == "net.*" and callback.max_neurons == 128


# ----------------------------------------------------------------------------------------------- DDP
@pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
    reason="torch.distributed with gloo is not available",
)
@pytest.mark.slow
@pytest.mark.distributed
def test_ddp_spawn_matches_a_single_process(tmp_path, monkeypatch):
    """Two CPU processes each see half the validation set; the logged values equal one process's."""
    from lightning.fabric.plugins.environments.lightning import find_free_network_port

    # the launcher writes MASTER_PORT into this process's environment: keep it from leaking into later tests
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(find_free_network_port()))
    model = DigitsMLP()
    fast_trainer(tmp_path / "pre", max_epochs=1).fit(model, *digits_loaders())
    weights = tmp_path / "weights.pt"
    torch.save(model.state_dict(), weights)

    def make_callback() -> InformationMeasures:
        # the range is calibrated on all samples (of both processes), so the split does not matter
        return InformationMeasures(
            max_samples=None,
            max_neurons=20,
            log_histograms=False,
            heatmap_every_n_measurements=0,
            settings=MeasurementSettings(calibration_samples=NUM_VAL),
        )

    val = digits_loaders(batch_size=64)[1]
    single = make_callback()
    single_model = DigitsMLP()
    single_model.load_state_dict(torch.load(weights))
    single_trainer = fast_trainer(tmp_path / "single", callbacks=[single])
    single_trainer.validate(single_model, val, verbose=False)
    single_scalars = infomem_scalars(single_trainer.callback_metrics)

    dump = tmp_path / "ddp_history.pt"
    ddp_model = DigitsMLP()
    ddp_model.load_state_dict(torch.load(weights))
    ddp_trainer = fast_trainer(
        tmp_path / "ddp", strategy="ddp_spawn", devices=2, callbacks=[make_callback(), HistoryDump(str(dump))]
    )
    ddp_trainer.validate(ddp_model, val, verbose=False)
    ddp_scalars = infomem_scalars(ddp_trainer.callback_metrics)
    ddp_history = torch.load(dump, weights_only=False)

    assert set(ddp_scalars) == set(single_scalars) == expected_keys(["net.0", "net.2"])
    # logged scalars are float32; the history keeps float64 values
    for key, value in single_scalars.items():
        assert ddp_scalars[key] == pytest.approx(value, rel=1e-6), key
    assert len(ddp_history["history"]) == 1
    assert ddp_history["world_size"] == 2
    assert ddp_history["samples_seen"] == {"net.0": NUM_VAL // 2, "net.2": NUM_VAL // 2}
    ddp_row, single_row = ddp_history["history"][0], single.history[0]
    for key in expected_keys(["net.0", "net.2"]):
        assert ddp_row[key] == pytest.approx(single_row[key], rel=1e-9 if key.endswith("effective_rank") else 1e-12), (
            key
        )
    # the worker's results, for the main process's callback, wait in a directory only this user can open,
    # and do not outlive the callback when they are never read
    leftover = next(c for c in ddp_trainer.callbacks if isinstance(c, InformationMeasures))._spawned.directory
    assert os.path.exists(os.path.join(leftover, "results.pt"))
    assert os.stat(leftover).st_mode & 0o777 == 0o700
    del ddp_trainer
    gc.collect()
    assert not os.path.exists(leftover)
    for name in ("net.0", "net.2"):
        assert torch.equal(ddp_history["neuron_indices"][name], single.neuron_indices[name])


def test_paper_mode_is_one_switch_with_the_papers_settings(tmp_path):
    """``InformationMeasures.paper()``: one global range over all layers from every sample, 100 bins,
    all neurons; logged under its own prefix so it can run beside a default instance."""
    paper = InformationMeasures.paper()
    default = InformationMeasures()
    trainer = fast_trainer(tmp_path, callbacks=[paper, default])
    model = DigitsMLP()
    trainer.validate(model, digits_loaders(batch_size=64)[1], verbose=False)
    assert paper.layer_names == default.layer_names == ["net.0", "net.2"]  # pre-activation hidden outputs
    assert all(index is None for index in paper.neuron_indices.values())  # every neuron
    x, _ = digits_tensors("val")
    with torch.no_grad():
        acts = {"net.0": model.net[0](x)}
        acts["net.2"] = model.net[2](torch.relu(acts["net.0"]))
    pooled = torch.cat([a.flatten() for a in acts.values()])
    for name, a in acts.items():
        low, high = paper.entropy_metrics[name].value_range
        assert (float(low), float(high)) == (float(pooled.min()), float(pooled.max()))  # all samples, all layers
        expected = neuron_entropy(a, 100, value_range=(float(low), float(high))).mean()
        assert paper.history[-1][f"infomem_paper/{name}/entropy"] == pytest.approx(float(expected), abs=1e-9)
    assert "infomem_paper/entropy" in trainer.callback_metrics and "infomem/entropy" in trainer.callback_metrics
    assert paper.state_key != default.state_key


def test_effective_rank_keys_equal_rankme_of_the_measured_samples(tmp_path):
    class Keep(Callback):
        def __init__(self):
            self.rows = []

        def on_validation_epoch_start(self, trainer, pl_module):
            self.handle = pl_module.net[0].register_forward_hook(lambda m, a, out: self.rows.append(out.detach()))

        def on_validation_epoch_end(self, trainer, pl_module):
            self.handle.remove()

    keep = Keep()
    callback = InformationMeasures(layers=["net.0", "net.2"], max_neurons=None)
    trainer = fast_trainer(tmp_path, max_epochs=1, callbacks=[keep, callback])
    trainer.fit(DigitsMLP(), *digits_loaders())
    row = callback.history[-1]
    samples = torch.cat(keep.rows)[:2048].double().numpy()
    singular = np.linalg.svd(samples, compute_uv=False)
    p = singular / singular.sum() + 1e-7
    assert row["infomem/net.0/effective_rank"] == pytest.approx(float(np.exp(-(p * np.log(p)).sum())), rel=1e-5)
    assert 1.0 < row["infomem/net.0/effective_rank"] <= 32
    mean = (row["infomem/net.0/effective_rank"] + row["infomem/net.2/effective_rank"]) / 2
    assert row["infomem/effective_rank"] == pytest.approx(mean, rel=1e-12)
    assert float(trainer.callback_metrics["infomem/effective_rank"]) == pytest.approx(mean, rel=1e-6)


def test_the_effective_rank_can_be_left_out(tmp_path):
    callback = InformationMeasures(layers=["net.0"], settings=MeasurementSettings(effective_rank=False))
    trainer = fast_trainer(tmp_path, callbacks=[callback])
    trainer.validate(DigitsMLP(), digits_loaders(num_val=128)[1], verbose=False)
    assert not any(key.endswith("effective_rank") for key in callback.history[-1])
    assert {"infomem/entropy", "infomem/mutual_info"} <= set(callback.history[-1])
    assert callback.measurement._gram == {}  # nothing accumulated


class _ChannelArgmax(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return (x.view(len(x), 1, 8, 8) * 10).long()  # an integer [batch, 1, 8, 8] map, not activations


def test_integer_outputs_with_spatial_axes_raise_naming_the_fix(tmp_path):
    """A 4-D integer output is refused with a message naming output_transform, not torch's dtype error from a mean."""

    class MapModel(DigitsMLP):
        def __init__(self) -> None:
            super().__init__()
            self.to_map = _ChannelArgmax()

        def validation_step(self, batch: Any, batch_idx: int) -> Any:
            self.to_map(batch[0])
            return super().validation_step(batch, batch_idx)

    callback = InformationMeasures(layers=["to_map"])
    with pytest.raises(TypeError, match=r"torch.int64 with shape \[\d+, 1, 8, 8\].*output_transform"):
        fast_trainer(tmp_path, callbacks=[callback]).validate(MapModel(), digits_loaders()[1], verbose=False)


def test_the_estimator_keywords_of_earlier_versions_still_work_with_a_warning(tmp_path):
    with pytest.warns(FutureWarning, match=r"settings=MeasurementSettings\(binning='neuron', entropy_bins=50\)"):
        old = InformationMeasures(layers=["net.0"], binning="neuron", entropy_bins=50)
    new = InformationMeasures(layers=["net.0"], settings=MeasurementSettings(entropy_bins=50).replace(binning="neuron"))
    assert old.settings == new.settings and old.measurement_settings() == new.measurement_settings()
    assert (old.entropy_binning, old.mutual_info_binning, old.binning, old.entropy_bins) == (
        "neuron",
        "neuron",
        "neuron",
        50,
    )
    with pytest.raises(TypeError, match="unexpected keyword argument 'entropy_bin'"):
        InformationMeasures(entropy_bin=50)
    with pytest.raises(TypeError, match="MeasurementSettings"):
        InformationMeasures(settings={"entropy_bins": 50})


def test_the_callback_holds_at_most_fourteen_parameters_and_one_set_of_defaults():
    import inspect

    from lightning_infomem import NeuronEntropy, NeuronMutualInformation

    parameters = [p for p in inspect.signature(InformationMeasures).parameters.values() if p.kind is not p.VAR_KEYWORD]
    assert len(parameters) <= 14, [p.name for p in parameters]
    defaults = MeasurementSettings()
    entropy = inspect.signature(NeuronEntropy).parameters
    assert entropy["num_bins"].default == defaults.entropy_bins
    assert entropy["calibration_samples"].default == defaults.calibration_samples
    assert entropy["range_quantile"].default == defaults.range_quantile
    assert entropy["max_state_bytes"].default == defaults.max_state_bytes
    assert inspect.signature(NeuronMutualInformation).parameters["num_bins"].default == defaults.mutual_info_bins
    assert InformationMeasures().settings == defaults


def test_a_checkpoint_of_the_earlier_keywords_resumes_under_settings(tmp_path):
    """The checkpoint's settings block has the same keys as before: a run started with the old keywords
    resumes with settings=..., and the other way round."""
    ckpt_dir = tmp_path / "ckpt"
    with pytest.warns(FutureWarning):
        first = InformationMeasures(layers=["net.0"], max_neurons=8, mutual_info_bins=8)
    trainer = fast_trainer(
        tmp_path,
        max_epochs=1,
        enable_checkpointing=True,
        callbacks=[first, ModelCheckpoint(dirpath=ckpt_dir, save_last=True)],
    )
    trainer.fit(DigitsMLP(), *digits_loaders())
    resumed = InformationMeasures(layers=["net.0"], max_neurons=8, settings=MeasurementSettings(mutual_info_bins=8))
    trainer = fast_trainer(tmp_path, max_epochs=2, callbacks=[resumed])
    trainer.fit(DigitsMLP(), *digits_loaders(), ckpt_path=str(ckpt_dir / "last.ckpt"))
    assert [row["epoch"] for row in resumed.history] == [0, 1]
