"""Streaming metrics: exact agreement with the functional core for any batching, calibration, errors."""

from __future__ import annotations

import math
import re
import warnings

import numpy as np
import pytest
import torch
from mixed_activations import CAUCHY, CONSTANT, CORRELATED, GAUSS, NUM_MIXED, RELU, make_mixed_activations

from lightning_infomem import NeuronEntropy, NeuronMutualInformation, StateTooLargeError
from lightning_infomem.functional import (
    bin_indices,
    histogram_counts,
    joint_histogram_counts,
    neuron_entropy,
    pairwise_mutual_information,
)

METRICS = [NeuronEntropy, NeuronMutualInformation]


def functional_for(metric_cls, x, num_bins, value_range, **kwargs):
    if metric_cls is NeuronEntropy:
        return neuron_entropy(x, num_bins, value_range, **kwargs)
    return pairwise_mutual_information(x, num_bins, value_range, **kwargs)


def feed(metric, x: torch.Tensor, sizes) -> None:
    start = 0
    for size in sizes:
        metric.update(x[start : start + size])
        start += size
    assert start == x.shape[0]


def splits(num_samples: int, seed: int = 0) -> dict[str, list[int]]:
    rng = np.random.default_rng(seed)
    cuts = np.sort(rng.choice(np.arange(1, num_samples), size=9, replace=False))
    random_sizes = np.diff(np.concatenate([[0], cuts, [num_samples]])).tolist()
    return {
        "one_shot": [num_samples],
        "random": random_sizes,
        "with_empty_batches": [0, 7, 0, num_samples - 7 - 1, 1],
        "equal_batches": [num_samples // 4] * 3 + [num_samples - 3 * (num_samples // 4)],
    }


def assert_counts_match(metric, x, num_bins, value_range):
    bins = bin_indices(x, num_bins, value_range)
    assert torch.equal(metric.counts, histogram_counts(bins, num_bins))
    if isinstance(metric, NeuronMutualInformation):
        assert torch.equal(metric.joint_counts, joint_histogram_counts(bins, num_bins))
    assert int(metric.num_samples) == x.shape[0]


@pytest.fixture
def data() -> torch.Tensor:
    return make_mixed_activations(1200, seed=21)


# ------------------------------------------------------------------------------------ fixed range


@pytest.mark.parametrize("metric_cls", METRICS)
@pytest.mark.parametrize(
    "value_range",
    [(-2.5, 4.0), "per_neuron_tensors"],
)
def test_any_split_equals_one_shot_with_fixed_range(data, metric_cls, value_range):
    if value_range == "per_neuron_tensors":
        value_range = (torch.quantile(data, 0.05, dim=0), torch.quantile(data, 0.95, dim=0))
    results = {}
    for name, sizes in splits(data.shape[0]).items():
        metric = metric_cls(NUM_MIXED, num_bins=13, value_range=value_range)
        feed(metric, data, sizes)
        results[name] = metric.compute()
        assert_counts_match(metric, data, 13, value_range)
    expected = functional_for(metric_cls, data, 13, value_range)
    for name, result in results.items():
        assert torch.equal(result, results["one_shot"]), name
        assert torch.equal(result, expected), name


@pytest.mark.parametrize("metric_cls", METRICS)
@pytest.mark.parametrize(
    "options", [{"base": 2.0}, {"miller_madow": True}, {"normalized": True}, {"miller_madow": True, "base": 10.0}]
)
def test_estimator_options_match_functional(data, metric_cls, options):
    metric = metric_cls(NUM_MIXED, num_bins=9, value_range=(-3.0, 3.0), **options)
    feed(metric, data, splits(data.shape[0])["random"])
    result = metric.compute()
    assert torch.equal(result, functional_for(metric_cls, data, 9, (-3.0, 3.0), **options))
    assert not torch.equal(result, functional_for(metric_cls, data, 9, (-3.0, 3.0)))


@pytest.mark.parametrize("metric_cls", METRICS)
def test_forward_counts_like_update(data, metric_cls):
    a = metric_cls(NUM_MIXED, num_bins=8, value_range=(-2.0, 2.0))
    b = metric_cls(NUM_MIXED, num_bins=8, value_range=(-2.0, 2.0))
    for batch in data.split(100):
        value = a(batch)  # the convention: the batch's own value, binned on the metric's range
        assert torch.equal(value, functional_for(metric_cls, batch, 8, (-2.0, 2.0)))
        b.update(batch)
    assert torch.equal(a.compute(), b.compute())
    assert torch.equal(a.counts, b.counts)


def test_metric_result_shapes_and_dtype(data):
    entropy = NeuronEntropy(NUM_MIXED, 10)
    mi = NeuronMutualInformation(NUM_MIXED, 10)
    entropy.update(data)
    mi.update(data)
    assert entropy.compute().shape == (NUM_MIXED,) and entropy.compute().dtype == torch.float64
    result = mi.compute()
    assert result.shape == (NUM_MIXED, NUM_MIXED) and result.dtype == torch.float64
    assert torch.equal(result, result.T)
    assert mi.joint_counts.shape == (NUM_MIXED * (NUM_MIXED - 1) // 2, 10, 10)


# ------------------------------------------------------------------------------------ calibration


@pytest.mark.parametrize("metric_cls", METRICS)
def test_calibration_larger_than_data_fixes_range_at_compute(data, metric_cls):
    for name, sizes in splits(data.shape[0]).items():
        metric = metric_cls(NUM_MIXED, num_bins=12, calibration_samples=5000)
        feed(metric, data, sizes)
        assert metric.value_range is None, name  # nothing counted yet: all samples held back
        result = metric.compute()
        low, high = metric.value_range
        assert (float(low), float(high)) == (float(data.min()), float(data.max())), name
        # the range is the functional's global range over all samples: results identical
        assert torch.equal(result, functional_for(metric_cls, data, 12, None)), name
        assert_counts_match(metric, data, 12, None)
        assert metric.num_clipped == 0 and metric.clipped_fraction == 0.0


@pytest.mark.parametrize("metric_cls", METRICS)
@pytest.mark.parametrize("per_neuron_range", [False, True])
def test_calibration_smaller_than_data_uses_first_samples(metric_cls, per_neuron_range):
    # the first samples are tame, later ones exceed their range: they must go to the edge bins
    data = make_mixed_activations(900, seed=8)
    data[:300] = data[:300].clamp(-1.0, 1.0)
    ranges = set()
    for name, sizes in splits(data.shape[0], seed=3).items():
        metric = metric_cls(NUM_MIXED, num_bins=10, calibration_samples=250, per_neuron_range=per_neuron_range)
        feed(metric, data, sizes)
        # the range comes from exactly the first 250 samples, whatever the batch sizes (the rest
        # of the batch that completes them is counted with that range)
        calibration = data[:250]
        low, high = metric.value_range
        if per_neuron_range:
            assert low.shape == high.shape == (NUM_MIXED,)
            assert torch.equal(low, calibration.amin(0)) and torch.equal(high, calibration.amax(0)), name
        else:
            assert low.ndim == 0
            assert (float(low), float(high)) == (float(calibration.min()), float(calibration.max())), name
        result = metric.compute()
        assert torch.equal(result, functional_for(metric_cls, data, 10, metric.value_range)), name
        assert_counts_match(metric, data, 10, metric.value_range)
        outside = ((data < low) | (data > high)).sum().item()
        assert int(metric.num_clipped) == outside, name
        assert outside > 0, name  # calibrated on tame samples: the later ones are clipped
        assert metric.clipped_fraction == pytest.approx(outside / data.numel()), name
        ranges.add(tuple(tuple(t.flatten().tolist()) for t in metric.value_range))
    assert len(ranges) == 1  # independent of the batch split


@pytest.mark.parametrize("metric_cls", METRICS)
def test_calibration_with_same_batches_is_reproducible(data, metric_cls):
    # with calibration, splits that deliver the same samples up to calibration give identical results
    a = metric_cls(NUM_MIXED, num_bins=10, calibration_samples=200)
    b = metric_cls(NUM_MIXED, num_bins=10, calibration_samples=200)
    feed(a, data, [200, 1000])
    feed(b, data, [50, 150] + [100] * 10)
    assert torch.equal(a.compute(), b.compute())
    assert all(torch.equal(u, v) for u, v in zip(a.value_range, b.value_range, strict=True))


@pytest.mark.parametrize("metric_cls", METRICS)
@pytest.mark.parametrize("per_neuron_range", [False, True])
def test_range_quantile_calibration_and_clipped_fraction(data, metric_cls, per_neuron_range):
    q = 0.05
    metric = metric_cls(
        NUM_MIXED, num_bins=10, range_quantile=q, per_neuron_range=per_neuron_range, calibration_samples=400
    )
    feed(metric, data, [100] * 12)
    calibration = data[:400].numpy()
    low, high = metric.value_range
    axis = 0 if per_neuron_range else None
    np.testing.assert_allclose(low.numpy(), np.quantile(calibration, q, axis=axis), rtol=0, atol=1e-12)
    np.testing.assert_allclose(high.numpy(), np.quantile(calibration, 1 - q, axis=axis), rtol=0, atol=1e-12)
    result = metric.compute()
    assert torch.equal(result, functional_for(metric_cls, data, 10, metric.value_range))
    outside = ((data < low) | (data > high)).sum().item()
    assert metric.clipped_fraction > 0.02
    assert metric.clipped_fraction == pytest.approx(outside / data.numel())


def test_clipped_fraction_leaves_out_nonfinite_values():
    x = torch.tensor([[0.0, math.nan], [0.5, 3.0], [2.0, math.inf], [-1.0, 0.2]])
    metric = NeuronEntropy(2, 4, value_range=(0.0, 1.0))
    metric.update(x)
    # finite values: 0, 0.5, 2, -1, 3, 0.2 -> 3 of 6 outside [0, 1]
    assert int(metric.num_clipped) == 3 and int(metric.num_nonfinite) == 2
    assert metric.clipped_fraction == 0.5


@pytest.mark.parametrize("metric_cls", METRICS)
def test_reset_clears_counts_and_calibrated_range(data, metric_cls):
    metric = metric_cls(NUM_MIXED, num_bins=10, calibration_samples=100)
    feed(metric, data[:600], [150] * 4)
    first_range = metric.value_range
    assert first_range is not None
    metric.reset()
    assert metric.value_range is None
    assert int(metric.num_samples) == 0 and int(metric.counts.sum()) == 0
    if metric_cls is NeuronMutualInformation:
        assert int(metric.joint_counts.sum()) == 0
    # after the reset the range is calibrated again, from the new samples only
    second = data[600:] * 10
    feed(metric, second, [150] * 4)
    fresh = metric_cls(NUM_MIXED, num_bins=10, calibration_samples=100)
    feed(fresh, second, [150] * 4)
    assert not torch.equal(metric.value_range[1], first_range[1])
    assert torch.equal(metric.compute(), fresh.compute())
    assert torch.equal(metric.counts, fresh.counts)


@pytest.mark.parametrize("metric_cls", METRICS)
def test_reset_keeps_fixed_range(data, metric_cls):
    metric = metric_cls(NUM_MIXED, num_bins=10, value_range=(-1.0, 2.0))
    metric.update(data)
    metric.compute()
    metric.reset()
    low, high = metric.value_range
    assert (float(low), float(high)) == (-1.0, 2.0)
    assert int(metric.counts.sum()) == 0 and int(metric.num_samples) == 0
    metric.update(data[:500])
    assert torch.equal(metric.compute(), functional_for(metric_cls, data[:500], 10, (-1.0, 2.0)))


# ------------------------------------------------------------------------------------ merge_state


@pytest.mark.parametrize("metric_cls", METRICS)
def test_merge_state_of_two_halves_equals_one_metric(data, metric_cls):
    value_range = (-3.0, 3.0)
    first = metric_cls(NUM_MIXED, num_bins=11, value_range=value_range)
    second = metric_cls(NUM_MIXED, num_bins=11, value_range=value_range)
    whole = metric_cls(NUM_MIXED, num_bins=11, value_range=value_range)
    feed(first, data[:700], [300, 400])
    feed(second, data[700:], [500])
    whole.update(data)
    whole_value = whole.compute()  # counts the pooled samples too
    first.merge_state(second)
    assert torch.equal(first.counts, whole.counts)
    assert int(first.num_samples) == data.shape[0]
    if metric_cls is NeuronMutualInformation:
        assert torch.equal(first.joint_counts, whole.joint_counts)
    assert torch.equal(first.compute(), whole_value)


@pytest.mark.parametrize("metric_cls", METRICS)
def test_merge_state_with_different_ranges_raises(data, metric_cls):
    a = metric_cls(NUM_MIXED, num_bins=11, value_range=(-3.0, 3.0))
    b = metric_cls(NUM_MIXED, num_bins=11, value_range=(-3.0, 4.0))
    a.update(data[:100])
    b.update(data[100:200])
    with pytest.raises(ValueError, match="different ranges"):
        a.merge_state(b)
    # two calibrated metrics on different samples end up with different ranges too
    c = metric_cls(NUM_MIXED, num_bins=11)
    d = metric_cls(NUM_MIXED, num_bins=11)
    c.update(data[:100])
    d.update(data[100:200] * 2)
    with pytest.raises(ValueError, match="different ranges"):
        c.merge_state(d)
    # a metric that has counted cannot merge one that has seen nothing
    e = metric_cls(NUM_MIXED, num_bins=11)
    with pytest.raises(ValueError):
        c.merge_state(e)
    assert int(a.num_samples) == 100  # the failed merges left the state alone


# ------------------------------------------------------------------------------------------ dtypes


@pytest.mark.parametrize("metric_cls", METRICS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
@pytest.mark.parametrize("value_range", [None, (-2.0, 3.0)])
def test_metric_dtypes(metric_cls, dtype, value_range):
    x = make_mixed_activations(800, seed=4)[:, [GAUSS, RELU, CAUCHY, CONSTANT, CORRELATED]]
    x = x.clamp(-1000.0, 1000.0).to(dtype)
    metric = metric_cls(5, num_bins=12, value_range=value_range, calibration_samples=100)
    feed(metric, x, [100] * 8)
    result = metric.compute()
    assert result.dtype == torch.float64
    assert torch.isfinite(result).all()
    assert result.abs().sum() > 0
    if dtype in (torch.float32, torch.float64):
        assert torch.equal(result, functional_for(metric_cls, x, 12, metric.value_range))
    else:  # half precision is binned through float32
        assert torch.equal(result, functional_for(metric_cls, x.float(), 12, metric.value_range))


def test_mixed_dtype_batches_during_calibration():
    x = make_mixed_activations(400, seed=1).float()
    metric = NeuronMutualInformation(NUM_MIXED, num_bins=6, calibration_samples=300)
    metric.update(x[:100].half())
    metric.update(x[100:200].bfloat16())
    metric.update(x[200:])
    result = metric.compute()
    assert torch.isfinite(result).all()
    assert int(metric.num_samples) == 400


# ---------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("metric_cls", METRICS)
def test_update_rejects_wrong_shapes_with_both_shapes_in_message(metric_cls):
    metric = metric_cls(4, num_bins=5)
    with pytest.raises(ValueError, match=re.escape("[S, 4]") + ".*" + re.escape("[10, 3]")):
        metric.update(torch.randn(10, 3))
    with pytest.raises(ValueError, match=re.escape("[S, 4]") + ".*" + re.escape("[10, 4, 2]")):
        metric.update(torch.randn(10, 4, 2))
    with pytest.raises(ValueError, match=re.escape("[S, 4]") + ".*" + re.escape("[4]")):
        metric.update(torch.randn(4))
    with pytest.raises(TypeError, match="floating"):
        metric.update(torch.ones(10, 4, dtype=torch.int32))
    with pytest.raises(TypeError, match="floating"):
        metric.update(torch.ones(10, 4, dtype=torch.bool))
    assert int(metric.num_samples) == 0 and metric.value_range is None


@pytest.mark.parametrize("metric_cls", METRICS)
@pytest.mark.parametrize("value_range", [None, (-2.0, 2.0)])
def test_nonfinite_values_are_left_out_counted_and_warned(metric_cls, value_range):
    x = make_mixed_activations(600, seed=2)
    rng = np.random.default_rng(0)
    x[torch.from_numpy(rng.random(x.shape) < 0.03)] = math.nan
    x[torch.from_numpy(rng.random(x.shape) < 0.01)] = math.inf
    x[::40, GAUSS] = -math.inf
    num_nonfinite = int((~torch.isfinite(x)).sum())
    metric = metric_cls(NUM_MIXED, num_bins=10, value_range=value_range, calibration_samples=200)
    feed(metric, x, [150] * 4)
    with pytest.warns(RuntimeWarning, match=rf"left out {num_nonfinite} non-finite .* of {x.numel()}"):
        result = metric.compute()
    assert int(metric.num_nonfinite) == num_nonfinite
    assert not torch.isnan(result).any()
    assert torch.equal(result, functional_for(metric_cls, x, 10, metric.value_range))


@pytest.mark.parametrize("metric_cls", METRICS)
def test_all_nan_neurons_give_nan_and_constant_neurons_give_zero(metric_cls):
    x = make_mixed_activations(500, seed=6)
    x[:, CAUCHY] = math.nan
    metric = metric_cls(NUM_MIXED, num_bins=10, per_neuron_range=True, calibration_samples=100)
    feed(metric, x, [100] * 5)
    with pytest.warns(RuntimeWarning, match="left out 500 .* the histograms count the finite values only"):
        result = metric.compute()
    low, high = metric.value_range
    # no finite value: that neuron takes the range of all finite calibration values, never a made-up (0, 0)
    finite = x[:100][torch.isfinite(x[:100])]
    assert (float(low[CAUCHY]), float(high[CAUCHY])) == (float(finite.min()), float(finite.max()))
    assert float(low[CONSTANT]) == float(high[CONSTANT]) == 1.25
    others = [c for c in range(NUM_MIXED) if c != CAUCHY]
    if metric_cls is NeuronEntropy:
        assert math.isnan(result[CAUCHY]) and result[CONSTANT] == 0.0
        assert not torch.isnan(result[others]).any()
    else:
        assert bool(torch.isnan(result[CAUCHY]).all() and torch.isnan(result[:, CAUCHY]).all())
        assert torch.equal(result[CONSTANT, others], torch.zeros(len(others), dtype=torch.float64))
        assert not torch.isnan(result[others][:, others]).any()
    assert (result > 0).sum() > 3


@pytest.mark.parametrize("metric_cls", METRICS)
def test_samples_counted_as_undefined_are_an_update(metric_cls):
    # a caller that found no finite value counts the rows; compute() then gives NaN, and torchmetrics does
    # not also warn that compute() came before any update
    metric = metric_cls(3, num_bins=10)
    metric.count_undefined(4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = metric.compute()
    assert bool(torch.isnan(result).all())
    messages = [str(w.message) for w in caught]
    assert not [m for m in messages if "before the ``update``" in m], messages
    assert [m for m in messages if "left out 12 non-finite" in m], messages


def test_no_warning_without_nonfinite_values(data):
    metric = NeuronEntropy(NUM_MIXED, num_bins=10)
    metric.update(data)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        metric.compute()


def test_state_too_large_is_refused_up_front():
    # 100,000 neurons x 100 bins would need ~3.6 PiB of joint histograms; it must fail before allocating
    with pytest.raises(StateTooLargeError) as excinfo:
        NeuronMutualInformation(100_000, num_bins=100)
    assert isinstance(excinfo.value, ValueError)
    need = NeuronMutualInformation.state_bytes(100_000, 100)
    assert need == 8 * 100_000 * 100 + 8 * (100_000 * 99_999 // 2) * 100**2
    message = str(excinfo.value)
    assert f"{need / 2**40:.1f} TiB" in message  # the size needed
    assert "num_bins" in message and "max_state_bytes" in message

    # a small budget: 10 neurons x 16 bins need 8*10*16 + 8*45*256 = 93,440 bytes
    with pytest.raises(StateTooLargeError) as excinfo:
        NeuronMutualInformation(10, num_bins=16, max_state_bytes=50_000)
    message = str(excinfo.value)
    assert "91.2 KiB" in message and "num_bins=16" in message and "max_state_bytes=50000" in message
    # right at the budget it is accepted
    metric = NeuronMutualInformation(10, num_bins=16, max_state_bytes=93_440)
    assert metric.joint_counts.numel() * 8 + metric.counts.numel() * 8 == 93_440
    with pytest.raises(StateTooLargeError, match="max_state_bytes"):
        NeuronEntropy(1000, num_bins=100, max_state_bytes=1000)


@pytest.mark.parametrize("metric_cls", METRICS)
@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_bins": 0}, "num_bins"),
        ({"num_bins": 2.5}, "num_bins"),
        ({"num_bins": True}, "num_bins"),
        ({"base": 1.0}, "base"),
        ({"base": 0.0}, "base"),
        ({"base": -2.0}, "base"),
        ({"value_range": (1.0, 0.0)}, "value_range"),
        ({"value_range": (0.0, math.inf)}, "value_range"),
        ({"value_range": (math.nan, 1.0)}, "value_range"),
        ({"value_range": (0.0,)}, "value_range"),
        ({"value_range": 1.0}, "value_range"),
        ({"value_range": (torch.zeros(3), torch.ones(3))}, "value_range"),
        ({"value_range": (torch.zeros(4, 1), torch.ones(4, 1))}, "value_range"),
        ({"range_quantile": 0.5}, "range_quantile"),
        ({"range_quantile": -0.1}, "range_quantile"),
        ({"calibration_samples": 0}, "calibration_samples"),
        ({"num_neurons": 0}, "num_neurons"),
    ],
)
def test_invalid_arguments_raise_value_error(metric_cls, kwargs, match):
    arguments = {"num_neurons": 4, "num_bins": 8, **kwargs}
    with pytest.raises(ValueError, match=match):
        metric_cls(**arguments)


def test_invalid_counting_method_raises():
    with pytest.raises(ValueError, match="backend"):
        NeuronMutualInformation(4, 8, backend="einsum")


def test_matmul_method_metric_equals_bincount(data):
    a = NeuronMutualInformation(NUM_MIXED, 6, (-2.0, 2.0), backend="matmul")
    b = NeuronMutualInformation(NUM_MIXED, 6, (-2.0, 2.0), backend="bincount")
    feed(a, data[:300], [100, 200])
    feed(b, data[:300], [300])
    assert torch.equal(a.joint_counts, b.joint_counts)
    assert torch.equal(a.compute(), b.compute())


@pytest.mark.parametrize("backend", ["auto", "bincount"])
@pytest.mark.parametrize("pool_samples", [4096, 64])  # all samples pooled at compute(), or counted on the way
def test_joint_state_after_reset_holds_only_the_new_samples(data, backend, pool_samples):
    # reset() marks the joint histograms as zero instead of clearing them: whatever path counts or reads
    # them next (a full pool, compute() from pooled indices, a direct read) must not see the old counts
    metric = NeuronMutualInformation(NUM_MIXED, 8, (-2.0, 2.0), backend=backend)
    metric.pool_samples = pool_samples
    feed(metric, data[:500], [200, 300])
    before = metric.compute()
    metric.reset()
    feed(metric, data[500:800], [100, 200])
    fresh = NeuronMutualInformation(NUM_MIXED, 8, (-2.0, 2.0), backend="bincount")
    fresh.update(data[500:800])
    assert torch.allclose(metric.compute(), fresh.compute(), rtol=0, atol=1e-12, equal_nan=True)
    assert not torch.allclose(metric.compute(), before, equal_nan=True)
    assert torch.equal(metric.joint_counts, fresh.joint_counts)
    # reset twice without samples in between: zeros, and a NaN result (no sample)
    metric.reset()
    metric.reset()
    assert int(metric.joint_counts.sum()) == 0
    assert bool(torch.isnan(metric.compute()).all())


def test_pooled_samples_survive_copies_device_moves_and_state_reads(data):
    import copy
    import pickle

    metric = NeuronMutualInformation(NUM_MIXED, 8, (-2.0, 2.0))
    metric.update(data[:300])
    metric.compute()  # from the pooled indices: nothing counted into the state yet
    metric.update(data[300:400])
    expected = joint_histogram_counts(bin_indices(data[:400], 8, (-2.0, 2.0)), 8)
    for copied in (copy.deepcopy(metric), pickle.loads(pickle.dumps(metric)), copy.deepcopy(metric).to("cpu")):
        assert torch.equal(copied.joint_counts, expected)
    assert torch.equal(metric.metric_state["joint_counts"], expected)  # torchmetrics' own view of the state
    assert torch.equal(metric.joint_counts, expected)
    # assigning the state replaces it whole (as a load or a DDP reduction does)
    metric.update(data[400:500])
    metric.joint_counts = expected.clone()
    assert torch.equal(metric.joint_counts, expected)


@pytest.mark.parametrize("metric_cls", METRICS)
def test_merge_state_of_other_bins_or_neurons_raises_naming_both(data, metric_cls):
    a = metric_cls(NUM_MIXED, num_bins=11, value_range=(-3.0, 3.0))
    b = metric_cls(NUM_MIXED, num_bins=12, value_range=(-3.0, 3.0))
    c = metric_cls(NUM_MIXED - 1, num_bins=11, value_range=(-3.0, 3.0))
    a.update(data[:100])
    b.update(data[100:200])
    c.update(data[100:200, :-1])
    with pytest.raises(ValueError, match=r"num_bins=12\) into a .*num_bins=11\): their histograms count different"):
        a.merge_state(b)
    with pytest.raises(ValueError, match=rf"num_neurons={NUM_MIXED - 1}, num_bins=11\) into"):
        a.merge_state(c)
