"""What careless or hostile input does to the estimators and metrics: a clear error or a correct value.

Each test pins one promise of docs/reliability.md: undefined values are NaN, shapes survive edge
sizes, binning never overflows, restored metrics continue exactly, arguments are checked.
"""

from __future__ import annotations

import math
import os
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from mixed_activations import NUM_MIXED, make_mixed_activations

from lightning_infomem import (
    InformationMeasures,
    MeasurementSettings,
    NeuronEntropy,
    NeuronMutualInformation,
    StateTooLargeError,
)
from lightning_infomem.functional import (
    add_joint_histogram_counts,
    bin_indices,
    calibrate_value_range,
    histogram_counts,
    input_loss_curvature,
    input_loss_curvature_estimates,
    iter_joint_histogram_counts,
    joint_histogram_counts,
    neuron_entropy,
    pairwise_mutual_information,
    pairwise_mutual_information_from_bins,
)

METRICS = [NeuronEntropy, NeuronMutualInformation]


def functional_for(metric_cls, x, num_bins, value_range, **kwargs):
    if metric_cls is NeuronEntropy:
        return neuron_entropy(x, num_bins, value_range, **kwargs)
    return pairwise_mutual_information(x, num_bins, value_range, **kwargs)


def numpy_bins(x: np.ndarray, low: float, high: float, num_bins: int) -> np.ndarray:
    """Reference bin of every value, computed by NumPy in float64 (non-finite values: ``num_bins``).

    Where the width overflows float64 itself, in NumPy's extended precision (``longdouble``).
    """
    dtype = np.float64 if math.isfinite(high - low) else np.longdouble
    if dtype is np.longdouble and np.finfo(np.longdouble).max <= np.finfo(np.float64).max:
        pytest.skip("this platform's longdouble is float64: no reference beyond float64's range")
    x, low, high = x.astype(dtype), dtype(low), dtype(high)
    with np.errstate(invalid="ignore", over="ignore"):
        position = (x - low) / (high - low) * num_bins if high > low else np.zeros_like(x)
    index = np.clip(np.floor(position), 0, num_bins - 1)
    return np.where(np.isfinite(x), index, num_bins).astype(np.int64)


# ------------------------------------------------------------------------------- undefined values
@pytest.mark.parametrize("metric_cls", METRICS)
def test_calibration_waits_for_finite_samples(metric_cls):
    """Only NaN / Inf at first: no range is fixed on them; the range comes from the first finite samples."""
    x = make_mixed_activations(700, seed=3)
    x[:250] = math.nan
    x[250:300] = math.inf
    metric = metric_cls(NUM_MIXED, num_bins=10, calibration_samples=100)
    for batch in x.split(64):
        metric.update(batch)
    low, high = metric.value_range
    expected_low, expected_high = calibrate_value_range(x[300:400])
    assert float(low) == float(expected_low) and float(high) == float(expected_high)
    with pytest.warns(RuntimeWarning, match=f"left out {300 * NUM_MIXED} non-finite"):
        result = metric.compute()
    assert torch.equal(result, functional_for(metric_cls, x, 10, (float(low), float(high))))
    assert not torch.isnan(result).any()
    assert int(metric.num_samples) == 700


@pytest.mark.parametrize("metric_cls", METRICS)
@pytest.mark.parametrize("per_neuron_range", [False, True])
def test_no_finite_value_at_all_is_undefined_not_zero(metric_cls, per_neuron_range):
    metric = metric_cls(3, num_bins=10, calibration_samples=50, per_neuron_range=per_neuron_range)
    x = torch.full((200, 3), math.nan)
    x[::3] = -math.inf
    for batch in x.split(30):
        metric.update(batch)
    with pytest.warns(RuntimeWarning, match="no value was finite"):
        result = metric.compute()
    assert metric.value_range is None
    assert bool(torch.isnan(result).all())
    assert int(metric.num_samples) == 200 and int(metric.num_nonfinite) == 600
    # finite samples after all: counted on a range read off them
    metric.update(torch.randn(60, 3))
    assert metric.value_range is not None


def test_undefined_calibration_holds_back_only_finite_rows():
    """Rows without a finite value are counted as non-finite at once, not kept in memory."""
    metric = NeuronEntropy(4, num_bins=8, calibration_samples=100)
    for _ in range(50):
        metric.update(torch.full((100, 4), math.nan))
    assert len(metric._held_back) == 0 and int(metric.num_samples) == 5000


# ------------------------------------------------------------------------------------ edge sizes
@pytest.mark.parametrize("metric_cls", METRICS)
def test_one_neuron_keeps_its_shape(metric_cls):
    metric = metric_cls(1, num_bins=8)
    x = torch.randn(300, 1, generator=torch.Generator().manual_seed(0))
    metric.update(x)
    result = metric.compute()
    expected_shape = (1,) if metric_cls is NeuronEntropy else (1, 1)
    assert result.shape == expected_shape
    assert torch.equal(result, functional_for(metric_cls, x, 8, metric.value_range))
    assert metric(x[:50]).shape == expected_shape


@pytest.mark.parametrize("metric_cls", METRICS)
def test_empty_batches_are_a_no_op(metric_cls):
    metric = metric_cls(3, num_bins=8, calibration_samples=40)
    metric.update(torch.zeros(0, 3))
    assert int(metric.num_samples) == 0 and metric.value_range is None
    x = torch.randn(100, 3, generator=torch.Generator().manual_seed(1))
    for batch in (x[:30], torch.zeros(0, 3), x[30:], torch.zeros(0, 3, dtype=torch.float16)):
        metric.update(batch)
    reference = metric_cls(3, num_bins=8, calibration_samples=40)
    reference.update(x)
    assert torch.equal(metric.compute(), reference.compute())
    # only empty batches: the right shape, undefined values
    empty = metric_cls(3, num_bins=8)
    empty.update(torch.zeros(0, 3))
    value = empty.compute()
    assert value.shape == ((3,) if metric_cls is NeuronEntropy else (3, 3)) and bool(torch.isnan(value).all())


def test_curvature_of_an_empty_batch_is_empty():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3))
    x, y = torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64)
    assert input_loss_curvature(model, x, y).shape == (0,)
    estimates = input_loss_curvature_estimates(model, x, y, chunk_size=8)
    assert all(value.shape == (0,) for value in estimates)


# ------------------------------------------------------------------------------- binning range
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_binning_matches_float64_numpy_for_extreme_ranges(dtype):
    finfo = torch.finfo(dtype)
    rng = np.random.default_rng(0)
    cases = [
        (-0.9 * finfo.max, 0.9 * finfo.max),  # width beyond the dtype's maximum
        (0.0, 64 * finfo.tiny),  # a range near the smallest normal number
        (-1.0, 1.0),
    ]
    if dtype == torch.float32:
        cases.append((0.0, 1e-40))  # below float32's smallest normal
    for low, high in cases:
        u = rng.uniform(0.0, 1.0, size=(500, 2))
        values = torch.from_numpy(low * (1 - u) + high * u).to(dtype)  # no overflow in the mixing
        values[::50, 0] = math.nan
        got = bin_indices(values, 16, (low, high))
        expected = numpy_bins(values.double().numpy(), low, high, 16)
        np.testing.assert_array_equal(got.numpy(), expected, err_msg=f"{dtype} {(low, high)}")
        # calibrated on the data itself, too
        data_low, data_high = calibrate_value_range(values)
        got = bin_indices(values, 16)
        expected = numpy_bins(values.double().numpy(), float(data_low), float(data_high), 16)
        np.testing.assert_array_equal(got.numpy(), expected, err_msg=f"calibrated {dtype} {(low, high)}")


def test_binning_float64_width_beyond_float64_max():
    values = torch.tensor([[-1.5e308], [0.0], [1.5e308], [1e308]], dtype=torch.float64)
    bins = bin_indices(values, 4, (-1.6e308, 1.6e308))
    assert bins.flatten().tolist() == [0, 2, 3, 3]
    assert not torch.isnan(neuron_entropy(values, 4, (-1.6e308, 1.6e308))).any()


@pytest.mark.parametrize("metric_cls", METRICS)
def test_metrics_take_extreme_fixed_and_calibrated_ranges(metric_cls):
    x = torch.tensor(np.random.default_rng(1).uniform(-2e38, 2e38, size=(400, 3)), dtype=torch.float32)
    fixed = metric_cls(3, num_bins=8, value_range=(-1e39, 1e39))
    fixed.update(x)
    assert torch.equal(fixed.compute(), functional_for(metric_cls, x, 8, (-1e39, 1e39)))
    calibrated = metric_cls(3, num_bins=8, calibration_samples=100)
    for batch in x.split(64):
        calibrated.update(batch)
    assert torch.equal(calibrated.compute(), functional_for(metric_cls, x, 8, calibrated.value_range))
    assert not torch.isnan(calibrated.compute()).any()


@pytest.mark.parametrize("metric_cls", METRICS)
def test_dead_unit_with_one_tiny_value_under_per_neuron_ranges(metric_cls):
    x = torch.randn(300, 3, generator=torch.Generator().manual_seed(2))
    x[:, 1] = 0.0
    x[7, 1] = 1e-41  # a float32 subnormal: the per-neuron range [0, 1e-41] overflowed float32's scale
    metric = metric_cls(3, num_bins=8, per_neuron_range=True, calibration_samples=300)
    metric.update(x)
    result = metric.compute()
    low, high = metric.value_range
    assert torch.equal(result, functional_for(metric_cls, x, 8, (low, high)))
    entropy = result if metric_cls is NeuronEntropy else result.diagonal()
    assert 0 < float(entropy[1]) < 0.05  # one sample in the top bin, 299 in the bottom one


# ---------------------------------------------------------------------------- checkpoint and resume
def _continue(metric, batches):
    for batch in batches:
        metric.update(batch)
    return metric


@pytest.mark.parametrize("metric_cls", METRICS)
@pytest.mark.parametrize("cut", [2, 6])  # 2: while calibration samples are held back; 6: after calibration
@pytest.mark.parametrize("per_neuron_range", [False, True])
def test_restored_metric_continues_exactly(metric_cls, cut, per_neuron_range):
    x = make_mixed_activations(1200, seed=4)
    batches = list(x.split(100))
    options = {"num_bins": 12, "calibration_samples": 500, "per_neuron_range": per_neuron_range}
    uninterrupted = _continue(metric_cls(NUM_MIXED, **options), batches)

    first = _continue(metric_cls(NUM_MIXED, **options), batches[:cut])
    first.persistent(True)
    state = first.state_dict()
    restored = metric_cls(NUM_MIXED, **options)
    restored.persistent(True)
    restored.load_state_dict(state)
    _continue(restored, batches[cut:])
    assert torch.equal(restored.compute(), uninterrupted.compute())
    for low, high in zip(restored.value_range, uninterrupted.value_range, strict=True):
        assert torch.equal(low, high)
    assert torch.equal(restored.counts, uninterrupted.counts)
    # merging a restored metric with another one of the same range works
    other = _continue(metric_cls(NUM_MIXED, num_bins=12, value_range=uninterrupted.value_range), batches[:3])
    restored.merge_state(other)
    assert int(restored.num_samples) == 1500


@pytest.mark.parametrize("metric_cls", METRICS)
def test_restored_fixed_range_stays_fixed(metric_cls):
    first = metric_cls(2, num_bins=4, value_range=(0.0, 1.0))
    first.persistent(True)
    first.update(torch.rand(50, 2))
    restored = metric_cls(2, num_bins=4)
    restored.persistent(True)
    restored.load_state_dict(first.state_dict())
    restored.reset()  # a fixed range survives reset; a calibrated one would not
    assert restored.value_range is not None and float(restored.value_range[1]) == 1.0
    # the default (not persistent) state dict holds no state, as torchmetrics does
    assert "range_low" not in metric_cls(2, num_bins=4).state_dict()


@pytest.mark.parametrize("metric_cls", METRICS)
def test_a_hostile_or_damaged_state_dict_is_refused_naming_what_is_wrong(metric_cls):
    """A range_status no saved state has, a NaN or reversed range, negative counts: each refused before loading,
    naming the state (not accepted and binned into nothing, not an IndexError or a silent NaN later)."""
    first = metric_cls(2, num_bins=4, value_range=(0.0, 1.0))
    first.persistent(True)
    first.update(torch.rand(50, 2))
    saved = first.state_dict()
    counts = next(name for name in ("joint_counts", "counts") if name in saved)
    damaged = {
        r"range_status is \[7\]": {**saved, "range_status": torch.tensor([7])},
        "not finite and ordered": {**saved, "range_low": torch.full_like(saved["range_low"], float("nan"))},
        "not finite and ordered ": {**saved, "range_low": saved["range_high"] + 1},
        f"{counts} holds negative counts": {**saved, counts: saved[counts] - 10**6},
    }
    for message, state in damaged.items():
        restored = metric_cls(2, num_bins=4)
        restored.persistent(True)
        with pytest.raises(ValueError, match=message.strip()):
            restored.load_state_dict(state)


# ----------------------------------------------------------------------------------- forward()
@pytest.mark.parametrize("metric_cls", METRICS)
def test_forward_first_call_fixes_the_range(metric_cls):
    x = make_mixed_activations(600, seed=5)
    metric = metric_cls(NUM_MIXED, num_bins=10)  # calibration_samples=1024 would hold back 4 batches
    values = [metric(batch) for batch in x.split(150)]
    low, high = metric.value_range
    first_low, first_high = calibrate_value_range(x[:150])
    assert float(low) == float(first_low) and float(high) == float(first_high)
    for batch, value in zip(x.split(150), values, strict=True):
        assert torch.equal(value, functional_for(metric_cls, batch, 10, (low, high)))
    assert torch.equal(metric.compute(), functional_for(metric_cls, x, 10, (low, high)))
    nan = metric_cls(2, num_bins=4)
    assert bool(torch.isnan(nan(torch.full((5, 2), math.nan))).all())


# ---------------------------------------------------------------------------------- arguments
@pytest.mark.parametrize("metric_cls", METRICS)
def test_integer_arguments_accept_integral_types_and_refuse_bools_and_floats(metric_cls):
    metric = metric_cls(np.int64(3), num_bins=torch.tensor(6), calibration_samples=np.int32(10))
    assert (metric.num_neurons, metric.num_bins, metric.calibration_samples) == (3, 6, 10)
    assert type(metric.num_neurons) is int and type(metric.num_bins) is int
    for bad in ({"num_neurons": True}, {"num_bins": 8.0}, {"calibration_samples": 1.5}, {"num_neurons": 0}):
        kwargs = {"num_neurons": 3, **bad}
        with pytest.raises(ValueError, match=next(iter(bad))):
            metric_cls(**kwargs)


@pytest.mark.parametrize("base", [0, 1, -2.0, math.inf, math.nan, True, "2"])
def test_log_base_must_be_finite_positive_and_not_one(base):
    with pytest.raises(ValueError, match="base must be"):
        NeuronEntropy(2, base=base)
    with pytest.raises(ValueError, match="base must be"):
        neuron_entropy(torch.randn(10, 2), 4, base=base)


def test_max_state_bytes_none_means_no_budget_and_hints_fit():
    assert NeuronMutualInformation(64, 32, max_state_bytes=None).max_state_bytes is None
    with pytest.raises(StateTooLargeError) as error:
        NeuronMutualInformation(64, 32, max_state_bytes=200_000)
    message = str(error.value)
    bins = int(message.split("num_bins**2; ")[1].split(" would fit")[0])
    neurons = int(message.split("num_neurons**2; ")[1].split(" would fit")[0])
    assert NeuronMutualInformation.state_bytes(64, bins) <= 200_000 < NeuronMutualInformation.state_bytes(64, bins + 1)
    assert NeuronMutualInformation.state_bytes(neurons, 32) <= 200_000
    assert NeuronMutualInformation.state_bytes(neurons + 1, 32) > 200_000
    NeuronMutualInformation(64, bins, max_state_bytes=200_000)  # the named size does fit
    # a budget that fits no size at all says so instead of naming one that does not fit
    with pytest.raises(StateTooLargeError, match="none fits 64 neurons.*none fits 32 bins"):
        NeuronMutualInformation(64, 32, max_state_bytes=100)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="max_state_bytes"):
            NeuronMutualInformation(4, 4, max_state_bytes=bad)


def test_pooled_bin_indices_fit_any_number_of_bins():
    """The bin index dtype holds every index up to num_bins (the skip index) for any num_bins, and no wider type
    is used than needed; the metric's pool and the compiled kernels' layout use the same rule."""
    from lightning_infomem.functional.binning import bin_index_dtype
    from lightning_infomem.functional.joint_counts import compiled_bin_layout

    for num_bins in (1, 254, 255, 256, 32767, 32768, 70000):
        dtype = bin_index_dtype(num_bins)
        assert torch.tensor([num_bins]).to(dtype).long().item() == num_bins, num_bins
        narrower = {torch.int16: torch.uint8, torch.int32: torch.int16}.get(dtype)
        assert narrower is None or torch.tensor([num_bins]).to(narrower).long().item() != num_bins, num_bins
        if num_bins <= 256:  # a joint histogram of num_bins**2 cells
            assert NeuronMutualInformation(2, num_bins, (0.0, 1.0))._pooled_dtype == dtype
        layout = compiled_bin_layout(torch.tensor([[num_bins, 0]]), num_bins)
        assert torch.from_numpy(layout).dtype == dtype and int(layout[0, 0]) == num_bins


def test_functional_histograms_of_zero_neurons():
    bins = bin_indices(torch.randn(5, 0), 4)
    assert histogram_counts(bins, 4).shape == (0, 4) and joint_histogram_counts(bins, 4).shape == (0, 4, 4)


# ------------------------------------------------------------------------------- the callback
from lightning.pytorch import Callback  # noqa: E402
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint  # noqa: E402
from lightning_helpers import DigitsMLP, digits_loaders, digits_tensors, fast_trainer  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from lightning_infomem.reporting import heatmap_image  # noqa: E402


class DivergeAtEpoch(Callback):
    """Sets every weight to NaN for the validation of one epoch (a diverged model), then restores them."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch
        self._saved: dict[str, torch.Tensor] = {}

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch and not trainer.sanity_checking:
            self._saved = {k: v.clone() for k, v in pl_module.state_dict().items()}
            with torch.no_grad():
                for parameter in pl_module.parameters():
                    parameter.fill_(math.nan)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if self._saved:
            pl_module.load_state_dict(self._saved)
            self._saved = {}


@pytest.mark.parametrize("nan_epoch", [0, 1])
def test_a_diverged_epoch_is_never_the_best_checkpoint(tmp_path, nan_epoch):
    checkpoints = {
        (key, mode): ModelCheckpoint(
            dirpath=tmp_path / f"{key.replace('/', '_')}_{mode}", filename="{epoch}", monitor=key, mode=mode
        )
        for key in ("infomem/mutual_info", "infomem/entropy", "infomem/net.0/mutual_info")
        for mode in ("min", "max")
    }
    callback = InformationMeasures(layers=["net.0", "net.2"])
    trainer = fast_trainer(
        tmp_path, max_epochs=3, enable_checkpointing=True, callbacks=[DivergeAtEpoch(nan_epoch), callback]
    )
    trainer.callbacks.extend(checkpoints.values())
    with pytest.warns(UserWarning, match=r"layer 'net.0' had no finite activation") as caught:
        trainer.fit(DigitsMLP(), *digits_loaders())
    assert not [w for w in caught if "before the ``update``" in str(w.message)]  # one clear warning, not two
    row = callback.history[nan_epoch]
    assert all(math.isnan(row[key]) for key in row if key.endswith(("/entropy", "/mutual_info")))
    assert all(math.isfinite(callback.history[e]["infomem/mutual_info"]) for e in range(3) if e != nan_epoch)
    for (key, mode), checkpoint in checkpoints.items():
        assert checkpoint.best_model_path, (key, mode)
        assert f"epoch={nan_epoch}" not in checkpoint.best_model_path, (key, mode, checkpoint.best_model_path)


class DieAtEpoch(DivergeAtEpoch):
    """Zeroes every weight and bias for the validation of one epoch: every unit outputs a constant (a dead network)."""

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch and not trainer.sanity_checking:
            self._saved = {k: v.clone() for k, v in pl_module.state_dict().items()}
            with torch.no_grad():
                for parameter in pl_module.parameters():
                    parameter.zero_()


@pytest.mark.parametrize("dead_epoch", [0, 1])
def test_a_dead_network_measures_nothing_and_is_never_the_best_checkpoint(tmp_path, dead_epoch):
    checkpoints = {
        (key, mode): ModelCheckpoint(
            dirpath=tmp_path / f"{key.replace('/', '_')}_{mode}", filename="{epoch}", monitor=key, mode=mode
        )
        for key in ("infomem/mutual_info", "infomem/entropy")
        for mode in ("min", "max")
    }
    callback = InformationMeasures(layers=["net.0", "net.2"])
    trainer = fast_trainer(
        tmp_path, max_epochs=3, enable_checkpointing=True, callbacks=[DieAtEpoch(dead_epoch), callback]
    )
    trainer.callbacks.extend(checkpoints.values())
    with pytest.warns(UserWarning, match=r"no monitored layer has spread .* overall keys are logged as NaN"):
        trainer.fit(DigitsMLP(), *digits_loaders())
    row = callback.history[dead_epoch]
    assert math.isnan(row["infomem/entropy"]) and math.isnan(row["infomem/mutual_info"])
    assert row["infomem/net.0/entropy"] == 0.0  # the layer's own keys say what it is: constant
    for (key, mode), checkpoint in checkpoints.items():
        assert checkpoint.best_model_path, (key, mode)
        assert f"epoch={dead_epoch}" not in checkpoint.best_model_path, (key, mode, checkpoint.best_model_path)


def test_early_stopping_stops_a_diverged_run(tmp_path):
    stopper = EarlyStopping(monitor="infomem/mutual_info", mode="min", patience=5, check_finite=True)
    trainer = fast_trainer(
        tmp_path, max_epochs=5, callbacks=[DivergeAtEpoch(1), InformationMeasures(layers=["net.0"]), stopper]
    )
    with pytest.warns(UserWarning, match="no finite activation"):
        trainer.fit(DigitsMLP(), *digits_loaders())
    assert trainer.current_epoch == 2 and stopper.stopped_epoch == 1


class NaNForMarkedSamples(torch.nn.Linear):
    """A linear layer whose output is NaN for the samples whose first input is negative (a marker)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        return torch.where((x[:, :1] < 0), math.nan, out)


def test_callback_calibrates_on_the_first_finite_samples(tmp_path):
    model = DigitsMLP()
    old = model.net[0]
    model.net[0] = NaNForMarkedSamples(64, 32)
    model.net[0].load_state_dict(old.state_dict())
    x, y = digits_tensors("val")
    x = x.clone()
    x[:150, 0] = -1.0  # the first 150 validation samples: no finite activation in net.0 (nor after it)
    model.eval()
    with torch.no_grad():
        acts = model.net[0](x)
    for batch_size in (64, 50):  # the range does not depend on the batch size
        val = DataLoader(TensorDataset(x, y), batch_size=batch_size)
        callback = InformationMeasures(
            layers=["net.0"], log_histograms=False, settings=MeasurementSettings(calibration_samples=100)
        )
        with pytest.warns(RuntimeWarning, match="non-finite"):
            fast_trainer(tmp_path, callbacks=[callback]).validate(model, val, verbose=False)
        # windows of 100 samples: [0, 100) has no finite value, [100, 200) has finite values from 150 on
        low, high = callback.entropy_metrics["net.0"].value_range
        assert float(low) == float(acts[150:200].min()) and float(high) == float(acts[150:200].max())
        expected = neuron_entropy(acts, 100, (low, high))
        assert callback.history[-1]["infomem/net.0/entropy"] == pytest.approx(float(expected.mean()), rel=1e-12)


def test_one_monitored_neuron_logs_entropy_and_zero_mutual_info(tmp_path):
    callback = InformationMeasures(layers=["net.0", "net.2"], max_neurons=1)
    trainer = fast_trainer(tmp_path, max_epochs=1, callbacks=[callback])
    trainer.fit(DigitsMLP(), *digits_loaders())
    row = callback.history[-1]
    assert row["infomem/net.0/mutual_info"] == 0.0 and row["infomem/mutual_info"] == 0.0
    assert row["infomem/net.0/entropy"] > 0 and math.isfinite(row["infomem/entropy"])
    result = callback.layer_results()["net.0"]
    assert result.entropy.shape == (1,) and result.mutual_info.shape == (1, 1)


class CountTrainingBatches(Callback):
    def __init__(self) -> None:
        self.batches = 0

    def on_train_batch_start(self, *args) -> None:
        self.batches += 1


def test_mutual_info_state_over_budget_fails_before_training(tmp_path):
    counter = CountTrainingBatches()
    callback = InformationMeasures(
        layers=["net.0"], max_neurons=None, settings=MeasurementSettings(mutual_info_bins=32, max_state_bytes=100_000)
    )
    trainer = fast_trainer(tmp_path, callbacks=[callback, counter])
    with pytest.raises(StateTooLargeError, match=r"layer 'net.0' \(32 monitored neurons\)"):
        trainer.fit(DigitsMLP(), *digits_loaders())
    assert counter.batches == 0


def test_empty_prefix_gives_keys_without_a_leading_slash(tmp_path):
    callback = InformationMeasures(layers=["net.0"], prefix="")
    trainer = fast_trainer(tmp_path, callbacks=[callback])
    trainer.validate(DigitsMLP(), digits_loaders()[1], verbose=False)
    keys = {key for key in trainer.callback_metrics if key != "val_loss"}
    assert keys == {
        "entropy",
        "mutual_info",
        "effective_rank",
        "net.0/entropy",
        "net.0/mutual_info",
        "net.0/effective_rank",
    }
    for bad in ("/x", "x/", 3):
        with pytest.raises(ValueError, match="prefix"):
            InformationMeasures(prefix=bad)


def test_dead_unit_under_per_neuron_binning_does_not_interrupt_fit(tmp_path):
    class DeadUnit(torch.nn.Linear):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = super().forward(x).clone()
            out[:, 0] = 0.0
            out[0, 0] = 1e-41  # one tiny value: the per-neuron range [0, 1e-41]
            return out

    model = DigitsMLP()
    model.net[0] = DeadUnit(64, 32)
    callback = InformationMeasures(
        layers=["net.0"], settings=MeasurementSettings(entropy_binning="neuron", mutual_info_binning="neuron")
    )
    fast_trainer(tmp_path, max_epochs=1, callbacks=[callback]).fit(model, *digits_loaders())
    assert math.isfinite(callback.history[-1]["infomem/net.0/entropy"])


def test_callback_arguments_take_integral_types_and_refuse_floats():
    callback = InformationMeasures(
        max_samples=np.int64(256), heatmap_every_n_measurements=torch.tensor(2), seed=np.int32(3)
    )
    assert (callback.max_samples, callback.heatmap_every_n_measurements, callback.seed) == (256, 2, 3)
    for kwargs in ({"heatmap_every_n_measurements": 1.5}, {"every_n_epochs": True}, {"max_neurons": 2.0}):
        with pytest.raises(ValueError, match=next(iter(kwargs))):
            InformationMeasures(**kwargs)
    assert InformationMeasures(settings=MeasurementSettings(max_state_bytes=None)).max_state_bytes is None


def test_heatmap_of_empty_and_undefined_matrices():
    assert heatmap_image(torch.zeros(0, 0), min_size=8).shape == (8, 8, 3)
    image = heatmap_image(torch.full((3, 3), math.nan), min_size=6)
    assert image.shape == (6, 6, 3) and bool(torch.isfinite(image).all())


# ------------------------------------------------------------------------------- pooled updates


def test_pooled_updates_equal_per_batch_counting_and_do_not_keep_whole_hidden_states():
    """Batches are counted in updates of 1,024 rows: the counts equal the metrics fed batch by batch, and a
    pooled batch that is a view of a larger tensor (the first token of [B, T, D] hidden states) keeps only
    its own rows alive, not the whole tensor."""
    from lightning_infomem.metrics.measurement import ActivationMeasurement, MeasurementSettings

    generator = torch.Generator().manual_seed(0)
    hidden = [torch.randn(64, 50, 16, generator=generator) for _ in range(12)]  # [B, T, D] per batch
    measurement = ActivationMeasurement(["layer"], MeasurementSettings(calibration_samples=64), max_samples=None)
    for states in hidden[:6]:
        measurement.observe("layer", states[:, 0])  # a strided view: 64 rows of a 64 x 50 x 16 tensor
    pending = [t for (t,) in measurement._pending["layer"].parts]
    assert pending and all(t.untyped_storage().nbytes() == t.numel() * t.element_size() for t in pending)
    for states in hidden[6:]:
        measurement.observe("layer", states[:, 0])
    result = measurement.results()["layer"]
    low, high = measurement.entropy_metrics["layer"].value_range
    reference = NeuronEntropy(16, 100, value_range=(low, high))
    for states in hidden:
        reference.update(states[:, 0])
    torch.testing.assert_close(result.entropy, reference.compute(), rtol=0, atol=0)


# ------------------------------------------------------------------ the compiled path never ends a run
def _run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env={**os.environ, **env}
    )


_VALUES = (
    "import torch\n"
    "from lightning_infomem.functional import neuron_entropy, pairwise_mutual_information\n"
    "x = torch.randn(500, 6, generator=torch.Generator().manual_seed(0))\n"
    "m = pairwise_mutual_information(x, 8)\n"
    "print(repr(float(m[0, 1])), repr(float(m[1, 4])), repr(float(neuron_entropy(x, 10).sum())))\n"
)


def _reference_values() -> list[float]:
    from lightning_infomem.functional import neuron_entropy, pairwise_mutual_information

    x = torch.randn(500, 6, generator=torch.Generator().manual_seed(0))
    m = pairwise_mutual_information(x, 8, backend="bincount")
    return [float(m[0, 1]), float(m[1, 4]), float(neuron_entropy(x, 10).sum())]


@pytest.mark.slow
def test_numba_that_cannot_cache_compiles_without_a_cache_and_says_so():
    pytest.importorskip("numba")
    # a read-only install without a writable cache directory: Numba finds no cache locator at import
    code = "import numba.core.caching as caching\ncaching.CacheImpl._locator_classes = []\n" + _VALUES
    result = _run_python(code)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("Numba cannot cache the compiled kernels") == 1
    values = [float(v) for v in result.stdout.split()]
    assert values == pytest.approx(_reference_values(), rel=1e-12)


@pytest.mark.slow
def test_numba_disable_jit_uses_the_torch_path_with_one_warning():
    pytest.importorskip("numba")
    result = _run_python(_VALUES, NUMBA_DISABLE_JIT="1")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "NUMBA_DISABLE_JIT is set" in result.stderr
    values = [float(v) for v in result.stdout.split()]
    # the plain-Python kernels would give 0.185 nats for pair (0, 1) (uint8 sums overflowing) instead of 0.033
    assert values == pytest.approx(_reference_values(), rel=1e-12)


def test_a_kernel_that_fails_to_load_falls_back_with_one_warning(tmp_path, monkeypatch):
    from lightning_infomem.functional._kernels import compiled

    (tmp_path / "broken_kernels.py").write_text("raise RuntimeError('cannot cache function: no locator available')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(compiled, "_warned_causes", set())
    kernel = compiled.CompiledKernel("broken_kernels", "kernel")
    with pytest.warns(RuntimeWarning, match="no locator available"):
        assert kernel.available() is False
    assert kernel.available() is False  # tried once, warned once
    with pytest.raises(ValueError, match="no locator available"):
        kernel.require("this kernel")


# ------------------------------------------------------------- bin indices checked at the public boundary
BAD_INDEX_CASES = [
    ("joint_histogram_counts", lambda b, n, backend: joint_histogram_counts(b, n, backend=backend)),
    ("iter_joint_histogram_counts", lambda b, n, backend: list(iter_joint_histogram_counts(b, n, backend))),
    (
        "add_joint_histogram_counts",
        lambda b, n, backend: add_joint_histogram_counts(
            b, n, torch.zeros(b.shape[1] * (b.shape[1] - 1) // 2, n, n, dtype=torch.int64), backend
        ),
    ),
    (
        "pairwise_mutual_information_from_bins",
        lambda b, n, backend: pairwise_mutual_information_from_bins(b, n, backend=backend),
    ),
    ("histogram_counts", lambda b, n, backend: histogram_counts(b, n)),
]


@pytest.mark.parametrize("backend", ["compiled", "bincount", "matmul"])
@pytest.mark.parametrize("name, call", BAD_INDEX_CASES, ids=[name for name, _ in BAD_INDEX_CASES])
@pytest.mark.parametrize("bad", [32000, -1, 5])
def test_out_of_range_bin_indices_are_refused_before_any_kernel(name, call, backend, bad, monkeypatch):
    from lightning_infomem.functional import joint_counts, mutual_information

    if backend == "compiled" and not joint_counts.compiled_counting_available():
        pytest.skip("needs Numba")
    ran = []
    for module, attribute in ((joint_counts, "_KERNEL"), (mutual_information, "_PAIR_TERMS_KERNEL")):
        kernel = getattr(module, attribute)
        monkeypatch.setattr(kernel, "run_tasks", lambda *a, _k=kernel, **k: ran.append(_k.attribute))
    bins = torch.randint(0, 4, (1000, 6), generator=torch.Generator().manual_seed(0))
    bins[::3, 2] = bad
    with pytest.raises(ValueError, match=rf"bins\[0, 2\] = {bad} is not a bin index for num_bins=4"):
        call(bins, 4, backend)
    assert not ran  # refused before a kernel could read or write out of bounds
    with pytest.raises(ValueError, match="integer bin indices"):
        call(bins.float(), 4, backend)


def test_uint8_bin_indices_are_counted_exactly():
    bins = torch.randint(0, 4, (1000, 7), generator=torch.Generator().manual_seed(0))
    expected = histogram_counts(bins, 4)
    assert torch.equal(histogram_counts(bins.to(torch.uint8), 4), expected)
    assert expected.sum(1).tolist() == [1000] * 7
    assert torch.equal(joint_histogram_counts(bins.to(torch.uint8), 4), joint_histogram_counts(bins, 4))


# ----------------------------------------------------------------- no code from a file it did not write
class _Payload:
    def __reduce__(self):
        return (os.system, ("touch payload_ran",))


def test_spawned_results_are_private_and_never_unpickle_code(tmp_path, monkeypatch):
    from lightning_infomem.callbacks._spawn import SpawnedResults

    monkeypatch.chdir(tmp_path)
    channel = SpawnedResults()
    assert os.stat(channel.directory).st_mode & 0o777 == 0o700  # only this user can plant anything there
    with open(os.path.join(channel.directory, "results.pt"), "wb") as handle:
        pickle.dump({"history": _Payload()}, handle)
    with pytest.raises(pickle.UnpicklingError):
        channel.receive()
    assert not (tmp_path / "payload_ran").exists()
    channel.send({"history": [{"epoch": 0, "infomem/entropy": 1.5}], "neuron_indices": {"a": torch.arange(3)}})
    received = channel.receive()
    assert received["history"] == [{"epoch": 0, "infomem/entropy": 1.5}]
    assert channel.receive() is None  # read once


def test_the_history_getter_reads_no_file_outside_its_own_directory(tmp_path, monkeypatch):
    # the former channel: a predictable name in the shared temporary directory, read with weights_only=False
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    callback = InformationMeasures(layers=["net.0"])
    for name in os.listdir(tmp_path):
        if name.startswith("lightning_infomem_") and os.path.isdir(tmp_path / name):
            continue
        raise AssertionError(f"unexpected file {name}")
    (tmp_path / f"lightning_infomem_{'0' * 32}.pt").write_bytes(pickle.dumps(_Payload()))
    assert callback.history == []
    assert not Path("payload_ran").exists() and not (tmp_path / "payload_ran").exists()


# ------------------------------------------------------------------------- booleans are booleans
@pytest.mark.parametrize(
    "make",
    [
        lambda: InformationMeasures(settings=MeasurementSettings(miller_madow="False")),
        lambda: InformationMeasures(log_histograms="no"),
        lambda: NeuronEntropy(4, normalized="false"),
        lambda: NeuronMutualInformation(4, miller_madow=0),
        lambda: neuron_entropy(torch.randn(10, 2), 4, miller_madow="False"),
        lambda: pairwise_mutual_information(torch.randn(10, 2), 4, normalized="false"),
    ],
)
def test_string_and_number_booleans_are_refused(make):
    with pytest.raises(ValueError, match="must be True or False"):
        make()


def test_numpy_booleans_are_booleans():
    assert NeuronEntropy(4, normalized=np.bool_(True)).normalized is True


def test_an_oversized_entropy_state_is_refused_at_setup_and_the_advised_fix_works(tmp_path):
    callback = InformationMeasures(layers=["net.0"], settings=MeasurementSettings(entropy_bins=10**7))
    trainer = fast_trainer(tmp_path, max_epochs=1, callbacks=[callback])
    with pytest.raises(StateTooLargeError, match="NeuronEntropy would need .* entropy_bins") as caught:
        trainer.fit(DigitsMLP(), *digits_loaders())
    assert trainer.current_epoch == 0 and trainer.global_step == 0  # before any training step
    assert "raise max_state_bytes (None: no budget)" in str(caught.value)  # the fix the message names...
    callback = InformationMeasures(
        layers=["net.0"], max_neurons=4, settings=MeasurementSettings(entropy_bins=10**7, max_state_bytes=None)
    )
    trainer = fast_trainer(tmp_path, callbacks=[callback])
    trainer.validate(DigitsMLP(), digits_loaders(num_val=64)[1], verbose=False)  # ...works
    assert math.isfinite(callback.history[-1]["infomem/entropy"])


def test_a_layer_never_called_does_not_make_the_others_hold_back_every_sample():
    from lightning_infomem.metrics import ActivationMeasurement, MeasurementSettings

    measurement = ActivationMeasurement(
        ["called", "never_called"], MeasurementSettings(calibration_samples=512), max_samples=None
    )
    generator = torch.Generator().manual_seed(0)
    for _ in range(100):  # 30,000 rows of one layer, none of the other
        measurement.observe("called", torch.randn(300, 16, generator=generator))
    held = sum(len(h) for h in measurement._held_back.values())
    pending = sum(len(p) for p in measurement._pending.values())
    assert held + pending <= 4 * 512 + 1024  # bounded by the wait and one pooled update, not by the stream
    result = measurement.results()
    assert set(result) == {"called"} and result["called"].defined
    assert int(measurement.entropy_metrics["called"].num_samples) == 30_000  # every sample counted


@pytest.mark.parametrize("metric_cls", METRICS)
def test_metric_state_mismatches_are_refused_or_exact(metric_cls):
    x = make_mixed_activations(2000)
    source = metric_cls(NUM_MIXED, 16)
    source.persistent(True)
    source.update(x)
    state = source.state_dict()
    other_bins = metric_cls(NUM_MIXED, 8)
    other_bins.persistent(True)
    with pytest.raises(ValueError, match=r"has shape \[.*16.*\], this metric's \[.*8.*\]"):
        other_bins.load_state_dict(state)
    without_range = {key: value for key, value in state.items() if not key.startswith(("range", "held"))}
    restored = metric_cls(NUM_MIXED, 16)
    restored.persistent(True)
    with pytest.raises(ValueError, match="not the binning range they were counted with"):
        restored.load_state_dict(without_range, strict=False)
    with pytest.raises(ValueError, match="needs the other metric itself"):
        restored.merge_state(source.metric_state)
    fixed = metric_cls(NUM_MIXED, 8, value_range=(0.1, 0.7)).to(torch.bfloat16)
    low, high = fixed.value_range
    assert low.dtype == high.dtype == torch.float64 and (float(low), float(high)) == (0.1, 0.7)
    fixed.update(x)
    reference = metric_cls(NUM_MIXED, 8, value_range=(0.1, 0.7))
    reference.update(x)
    torch.testing.assert_close(fixed.compute(), reference.compute(), equal_nan=True, rtol=0, atol=0)


# ------------------------------------------------------------------------ messages that name the problem
def test_arguments_that_would_fail_later_are_refused_at_once():
    with pytest.raises(ValueError, match=r"layers must be None, a module name or path pattern .* received 5 \(int\)"):
        InformationMeasures(layers=5)
    with pytest.raises(ValueError, match=r"seed must be an integer in \[0, "):
        InformationMeasures(seed=2**70)
    with pytest.raises(ValueError, match="output_transform must be None or a function"):
        InformationMeasures(output_transform=5)
    with pytest.raises(ValueError, match=r"num_bins must be an integer in \[1, 16777216\], received 2147483648"):
        neuron_entropy(torch.randn(10, 2), 2**31)


class _Hidden:
    def __init__(self, tensor):
        self.hidden = tensor


class _DataclassBlock(torch.nn.Module):
    def __init__(self, wrap):
        super().__init__()
        self.linear, self.wrap = torch.nn.Linear(64, 16), wrap

    def forward(self, x):
        return self.wrap(self.linear(x))


@pytest.mark.parametrize(
    "wrap, expected",
    [
        (_Hidden, r"a _Hidden with the tensor attributes \['hidden'\]"),
        (lambda t: "a string", r"a str \('a string'\)"),
    ],
)
def test_an_output_without_a_tensor_is_described(tmp_path, wrap, expected):
    class Net(DigitsMLP):
        def __init__(self):
            super().__init__()
            self.block = _DataclassBlock(wrap)

        def validation_step(self, batch, batch_idx):
            self.block(batch[0])
            return super().validation_step(batch, batch_idx)

    trainer = fast_trainer(tmp_path, callbacks=[InformationMeasures(layers=["block"])])
    with pytest.raises(TypeError, match=expected):
        trainer.validate(Net(), digits_loaders(num_val=64)[1], verbose=False)


def test_unknown_dataloaders_and_empty_outputs_are_named(tmp_path):
    trainer = fast_trainer(tmp_path, callbacks=[InformationMeasures(layers=["net.0"], dataloaders=[5])])
    with pytest.raises(ValueError, match=r"\[5\] name no validation dataloader; this validation has 1"):
        trainer.validate(DigitsMLP(), digits_loaders(num_val=64)[1], verbose=False)

    class EmptyRows(torch.nn.Module):
        def forward(self, x):
            return x[:0]

    class Net(DigitsMLP):
        def __init__(self):
            super().__init__()
            self.empty = EmptyRows()

        def validation_step(self, batch, batch_idx):
            self.empty(batch[0])
            return super().validation_step(batch, batch_idx)

    trainer = fast_trainer(tmp_path, callbacks=[InformationMeasures(layers=["empty", "net.0"])])
    with pytest.warns(UserWarning, match=r"\['empty'\] were called during validation but every output had 0 rows"):
        trainer.validate(Net(), digits_loaders(num_val=64)[1], verbose=False)


def test_a_gram_matrix_that_cannot_be_allocated_names_the_layer_and_the_fix(tmp_path, monkeypatch):
    """A layer so wide that the effective rank's Gram matrix cannot be allocated (1e5 neurons with no budget: 80 GB)
    fails naming the layer and the fix, not with the allocator's words; simulated by an allocator that fails for
    that matrix."""
    real_zeros = torch.zeros

    def failing_zeros(*size, **kwargs):
        if tuple(size) == (64, 64) and kwargs.get("dtype") == torch.float64:
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory")
        return real_zeros(*size, **kwargs)

    monkeypatch.setattr(torch, "zeros", failing_zeros)
    callback = InformationMeasures(layers=["net.0"], settings=MeasurementSettings(max_state_bytes=None))
    with pytest.raises(StateTooLargeError, match=r"layer 'net.0': the effective rank's Gram matrix of its 64 neurons"):
        fast_trainer(tmp_path, callbacks=[callback]).validate(DigitsMLP(hidden=64), digits_loaders()[1], verbose=False)
