"""Functional core against independent references: numpy / scipy / scikit-learn on the same bins."""

from __future__ import annotations

import importlib.util
import math
import os
import sys
import threading
import time

import numpy as np
import pytest
import torch
from mixed_activations import CAUCHY, CONSTANT, CORRELATED, GAUSS, NUM_MIXED, RELU, STUDENT_T, make_mixed_activations
from scipy.stats import entropy as scipy_entropy
from sklearn.metrics import mutual_info_score, normalized_mutual_info_score

import lightning_infomem.functional.binning as binning_module
import lightning_infomem.functional.joint_counts as joint_counts_module
import lightning_infomem.functional.mutual_information as mi_module
from lightning_infomem.functional import (
    add_joint_histogram_counts,
    bin_indices,
    calibrate_value_range,
    effective_rank,
    entropy_from_counts,
    histogram_counts,
    iter_joint_histogram_counts,
    joint_histogram_counts,
    mean_off_diagonal,
    mutual_information_from_joint_counts,
    neuron_entropy,
    pair_indices,
    pairwise_mutual_information,
)
from lightning_infomem.functional._kernels.compiled import CompiledKernel
from lightning_infomem.functional.binning import bin_grid, compiled_bin_and_count, compiled_grid, grid_bin_indices

# --------------------------------------------------------------------------------------- references

NO_NUMBA = CompiledKernel("numba_is_absent", "kernel", error="No module named 'numba'")  # as without Numba


def ranges_for(x: torch.Tensor, mode: str) -> tuple[object, np.ndarray, np.ndarray]:
    """(value_range argument, per-neuron low, per-neuron high as numpy) for a range policy."""
    values = x.numpy()
    num_neurons = values.shape[1]
    if mode == "global":
        finite = values[np.isfinite(values)]
        low, high = finite.min(), finite.max()
        return None, np.full(num_neurons, low), np.full(num_neurons, high)
    if mode == "fixed":
        low, high = -2.5, 4.0  # clips the heavy tails and part of the Gaussian ones
        return (low, high), np.full(num_neurons, low), np.full(num_neurons, high)
    if mode == "per_neuron":
        # 2% / 98% quantiles: a different range per neuron, with clipped values at both ends
        low = np.nanquantile(values, 0.02, axis=0)
        high = np.nanquantile(values, 0.98, axis=0)
        return (torch.from_numpy(low), torch.from_numpy(high)), low, high
    raise AssertionError(mode)


def numpy_histogram(column: np.ndarray, low: float, high: float, num_bins: int) -> np.ndarray:
    """numpy.histogram counts of the finite values, outside values clamped to the edge bins."""
    column = column[np.isfinite(column)]
    if high <= low:  # numpy widens a degenerate range by +-0.5; the package's rule is "all in bin 0"
        return np.bincount(np.zeros(len(column), dtype=np.int64), minlength=num_bins)
    counts, _ = np.histogram(np.clip(column, low, high), bins=num_bins, range=(low, high))
    return counts


def numpy_labels(column: np.ndarray, low: float, high: float, num_bins: int) -> np.ndarray:
    """Bin labels by numpy.digitize on the equal-width edges (clamped to the edge bins)."""
    edges = np.linspace(low, high, num_bins + 1)
    return np.digitize(column, edges[1:-1])


def numpy_entropy_mm(counts: np.ndarray) -> float:
    """Miller-Madow entropy in nats: plug-in + (m - 1) / (2 S), m the occupied bins."""
    counts = np.asarray(counts, dtype=np.float64).ravel()
    total = counts.sum()
    if total == 0:
        return 0.0
    p = counts[counts > 0] / total
    plug_in = -np.sum(p * np.log(p))
    return plug_in + (np.count_nonzero(counts) - 1) / (2 * total)


def contingency(a: np.ndarray, b: np.ndarray, num_bins: int) -> np.ndarray:
    table = np.zeros((num_bins, num_bins), dtype=np.int64)
    np.add.at(table, (a, b), 1)
    return table


# ------------------------------------------------------------------------------------------- binning


def test_bin_indices_rule_on_hand_picked_values():
    x = torch.tensor([[-5.0], [0.0], [0.24], [0.25], [0.5], [0.99], [1.0], [7.0], [math.nan], [math.inf], [-math.inf]])
    # floor((v - 0) / 1 * 4): below the range -> bin 0, the maximum -> last bin, above -> last bin,
    # non-finite -> num_bins (ignored by the counting functions)
    expected = torch.tensor([0, 0, 0, 1, 2, 3, 3, 3, 4, 4, 4])
    assert torch.equal(bin_indices(x, num_bins=4, value_range=(0.0, 1.0)).flatten(), expected)
    # global range: min -> bin 0, max -> last bin, range from finite values only
    got = bin_indices(x, num_bins=4, value_range=None).flatten()
    assert got[0] == 0 and got[7] == 3 and torch.equal(got[8:], torch.tensor([4, 4, 4]))
    # degenerate range: everything finite goes to bin 0
    assert torch.equal(
        bin_indices(torch.tensor([[2.0], [2.0], [math.nan]]), 5, (2.0, 2.0)).flatten(), torch.tensor([0, 0, 5])
    )


@pytest.mark.parametrize("mode", ["global", "fixed", "per_neuron"])
@pytest.mark.parametrize("num_bins", [1, 7, 100])
def test_bin_indices_match_numpy_histogram_and_floor_rule(mixed_activations, mode, num_bins):
    x = mixed_activations
    value_range, low, high = ranges_for(x, mode)
    bins = bin_indices(x, num_bins, value_range)
    assert bins.dtype == torch.int64 and bins.shape == x.shape
    counts = histogram_counts(bins, num_bins)
    values = x.numpy()
    for i in range(NUM_MIXED):
        np.testing.assert_array_equal(counts[i].numpy(), numpy_histogram(values[:, i], low[i], high[i], num_bins))
        if high[i] > low[i]:
            floor_rule = np.floor((values[:, i] - low[i]) / (high[i] - low[i]) * num_bins).clip(0, num_bins - 1)
            np.testing.assert_array_equal(bins[:, i].numpy(), floor_rule.astype(np.int64))
            np.testing.assert_array_equal(bins[:, i].numpy(), numpy_labels(values[:, i], low[i], high[i], num_bins))


def test_bin_indices_max_lands_in_last_bin_and_min_in_first():
    rng = np.random.default_rng(4)
    values = np.concatenate([[-3.0, 11.0], rng.uniform(-3.0, 11.0, 5000)])
    x = torch.from_numpy(values).reshape(-1, 1)
    bins = bin_indices(x, 10).flatten()
    assert bins[0] == 0 and bins[1] == 9 and int(bins.max()) == 9
    counts, _ = np.histogram(values, bins=10)
    np.testing.assert_array_equal(histogram_counts(bins.reshape(-1, 1), 10)[0].numpy(), counts)


def test_histogram_counts_ignore_nonfinite_index():
    bins = torch.tensor([[0, 3], [3, 3], [2, 1]])
    assert torch.equal(histogram_counts(bins, 3), torch.tensor([[1, 0, 1], [0, 1, 0]]))


def test_calibrate_value_range_ignores_nonfinite_and_supports_quantiles():
    x = torch.tensor([[1.0, math.nan], [-2.0, math.nan], [math.inf, math.nan], [5.0, -math.inf]])
    low, high = calibrate_value_range(x)
    assert (float(low), float(high)) == (-2.0, 5.0) and low.ndim == 0
    low, high = calibrate_value_range(x, per_neuron=True)
    # an all-non-finite neuron has no range: NaN, not a made-up (0, 0) that would put later values in one bin
    assert low[0] == -2.0 and high[0] == 5.0 and math.isnan(low[1]) and math.isnan(high[1])
    low, high = calibrate_value_range(torch.zeros(0, 3), per_neuron=True)
    assert low.shape == (3,) and bool(torch.isnan(low).all() and torch.isnan(high).all())

    data = make_mixed_activations(2000)
    low, high = calibrate_value_range(data, per_neuron=True, quantile=0.05)
    np.testing.assert_allclose(low.numpy(), np.quantile(data.numpy(), 0.05, axis=0), rtol=0, atol=1e-12)
    np.testing.assert_allclose(high.numpy(), np.quantile(data.numpy(), 0.95, axis=0), rtol=0, atol=1e-12)
    low, high = calibrate_value_range(data, quantile=0.01)
    np.testing.assert_allclose([float(low), float(high)], np.quantile(data.numpy(), [0.01, 0.99]), atol=1e-12)
    with pytest.raises(ValueError, match="quantile"):
        calibrate_value_range(data, quantile=0.5)


# ------------------------------------------------------------------------------------------- entropy


@pytest.mark.parametrize("mode", ["global", "fixed", "per_neuron"])
@pytest.mark.parametrize("base", [None, 2.0])
def test_neuron_entropy_matches_scipy_on_numpy_histogram(mixed_activations, mode, base):
    x = mixed_activations
    num_bins = 30
    value_range, low, high = ranges_for(x, mode)
    got = neuron_entropy(x, num_bins=num_bins, value_range=value_range, base=base)
    assert got.shape == (NUM_MIXED,) and got.dtype == torch.float64
    expected = [
        scipy_entropy(numpy_histogram(x[:, i].numpy(), low[i], high[i], num_bins), base=base) for i in range(NUM_MIXED)
    ]
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12, atol=1e-12)
    assert got[CONSTANT] == 0.0
    if mode == "global":
        # the pitfall of a global range: the Cauchy outliers squeeze the Gaussian into one bin
        assert got[GAUSS] < 0.05
    else:  # the comparison would be weak if all entropies were ~0: most neurons spread over many bins
        assert (got > 0.5).sum() >= 5


def test_entropy_bits_is_nats_over_log2(mixed_activations):
    nats = neuron_entropy(mixed_activations, 16)
    bits = neuron_entropy(mixed_activations, 16, base=2)
    torch.testing.assert_close(bits, nats / math.log(2), rtol=1e-13, atol=0)
    # a uniform distribution over 8 cells is exactly 3 bits
    uniform = torch.arange(8, dtype=torch.float32).repeat(5).reshape(-1, 1)
    assert neuron_entropy(uniform, 8, (0.0, 8.0), base=2).item() == pytest.approx(3.0, abs=1e-12)


@pytest.mark.parametrize("mode", ["global", "per_neuron"])
def test_entropy_miller_madow_matches_numpy_formula(mode):
    x = make_mixed_activations(200, seed=3)  # few samples, many bins: a large correction
    num_bins = 50
    value_range, low, high = ranges_for(x, mode)
    got = neuron_entropy(x, num_bins, value_range, miller_madow=True)
    expected = [numpy_entropy_mm(numpy_histogram(x[:, i].numpy(), low[i], high[i], num_bins)) for i in range(NUM_MIXED)]
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12, atol=1e-12)
    plug_in = neuron_entropy(x, num_bins, value_range)
    assert (got - plug_in).max() > 0.01  # the correction is actually applied
    assert got[CONSTANT] == 0.0  # m = 1: no correction
    # base applies to the corrected value
    torch.testing.assert_close(neuron_entropy(x, num_bins, value_range, base=2, miller_madow=True), got / math.log(2))


def test_entropy_normalized_matches_numpy(mixed_activations):
    num_bins = 25
    value_range, low, high = ranges_for(mixed_activations, "per_neuron")
    got = neuron_entropy(mixed_activations, num_bins, value_range, normalized=True)
    expected = [
        scipy_entropy(numpy_histogram(mixed_activations[:, i].numpy(), low[i], high[i], num_bins)) / np.log(num_bins)
        for i in range(NUM_MIXED)
    ]
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12, atol=1e-12)
    assert bool(((got >= 0) & (got <= 1)).all())
    # base is ignored when normalized
    torch.testing.assert_close(neuron_entropy(mixed_activations, num_bins, value_range, base=2, normalized=True), got)
    # a single bin normalizes to 0 rather than dividing by log(1) = 0
    assert torch.equal(
        neuron_entropy(mixed_activations, 1, normalized=True), torch.zeros(NUM_MIXED, dtype=torch.float64)
    )


def test_entropy_from_counts_edge_cases():
    counts = torch.tensor([[0, 0, 0], [4, 0, 0], [1, 1, 2]])
    got = entropy_from_counts(counts)
    # an empty histogram (no finite sample) is undefined: NaN; one occupied bin is exactly 0
    np.testing.assert_allclose(got.numpy(), [math.nan, 0.0, scipy_entropy([1, 1, 2])], atol=1e-15)
    for kwargs in ({"miller_madow": True}, {"normalized": True}, {"base": 2}):
        assert math.isnan(entropy_from_counts(counts, **kwargs)[0]), kwargs
    assert math.isnan(entropy_from_counts(torch.zeros(1, 1, dtype=torch.int64), normalized=True)[0])
    # float counts work too (the streaming state may be float after a reduction)
    torch.testing.assert_close(entropy_from_counts(counts.double()), got, equal_nan=True)
    # counts above the n log n lookup table size take the direct path
    big = torch.tensor([[3 * 2**20, 2**20 + 7]])
    assert entropy_from_counts(big).item() == pytest.approx(scipy_entropy([3 * 2**20, 2**20 + 7]), rel=1e-12)


# ----------------------------------------------------------------------------------- mutual information


def pairwise_reference(x: torch.Tensor, low, high, num_bins: int, kind: str = "plain", base=None) -> np.ndarray:
    """MI of every pair from numpy.digitize labels; rows with a non-finite value in the pair left out."""
    values = x.numpy()
    n = values.shape[1]
    labels = [numpy_labels(values[:, i], low[i], high[i], num_bins) for i in range(n)]
    finite = np.isfinite(values)
    out = np.zeros((n, n))
    for i in range(n):
        for j in range(i + 1, n):
            keep = finite[:, i] & finite[:, j]
            a, b = labels[i][keep], labels[j][keep]
            if kind == "plain":
                value = mutual_info_score(a, b)
                if base is not None:
                    value /= np.log(base)
            elif kind == "miller_madow":
                table = contingency(a, b, num_bins)
                value = (
                    numpy_entropy_mm(table.sum(1)) + numpy_entropy_mm(table.sum(0)) - numpy_entropy_mm(table)
                    if table.sum()
                    else 0.0
                )
            elif kind == "normalized":
                h_a, h_b = scipy_entropy(np.bincount(a)), scipy_entropy(np.bincount(b))
                value = mutual_info_score(a, b) / np.sqrt(h_a * h_b) if h_a * h_b > 0 else 0.0
            else:
                raise AssertionError(kind)
            out[i, j] = out[j, i] = value
    return out


def off_diagonal(matrix: np.ndarray) -> np.ndarray:
    return matrix[~np.eye(matrix.shape[0], dtype=bool)]


@pytest.mark.parametrize("mode", ["global", "fixed", "per_neuron"])
def test_pairwise_mi_matches_sklearn(mixed_activations, mode):
    num_bins = 12
    value_range, low, high = ranges_for(mixed_activations, mode)
    got = pairwise_mutual_information(mixed_activations, num_bins, value_range)
    assert got.shape == (NUM_MIXED, NUM_MIXED) and got.dtype == torch.float64
    torch.testing.assert_close(got, got.T, rtol=0, atol=0)
    expected = pairwise_reference(mixed_activations, low, high, num_bins)
    np.testing.assert_allclose(off_diagonal(got.numpy()), off_diagonal(expected), rtol=1e-10, atol=1e-12)
    # the diagonal is each neuron's entropy on the same bins
    torch.testing.assert_close(got.diagonal(), neuron_entropy(mixed_activations, num_bins, value_range))
    # the correlated pair is clearly dependent, the constant neuron shares nothing
    if mode != "global":  # (the global range of Cauchy data squeezes the Gaussians into a few bins)
        assert got[GAUSS, CORRELATED] > 0.3
    assert torch.equal(got[CONSTANT], torch.zeros(NUM_MIXED, dtype=torch.float64))


def test_pairwise_mi_bits(mixed_activations):
    value_range, low, high = ranges_for(mixed_activations, "per_neuron")
    got = pairwise_mutual_information(mixed_activations, 10, value_range, base=2)
    expected = pairwise_reference(mixed_activations, low, high, 10, base=2)
    np.testing.assert_allclose(off_diagonal(got.numpy()), off_diagonal(expected), rtol=1e-10, atol=1e-12)
    nats = pairwise_mutual_information(mixed_activations, 10, value_range)
    torch.testing.assert_close(got, nats / math.log(2))


def test_pairwise_mi_with_nonfinite_values_matches_sklearn_on_shared_rows(mixed_activations):
    x = mixed_activations.clone()
    rng = np.random.default_rng(5)
    x[torch.from_numpy(rng.random(x.shape) < 0.05)] = math.nan
    x[torch.from_numpy(rng.random(x.shape) < 0.02)] = math.inf
    x[::50, STUDENT_T] = -math.inf
    value_range, low, high = ranges_for(x, "fixed")
    got = pairwise_mutual_information(x, 9, value_range)
    assert not torch.isnan(got).any()
    expected = pairwise_reference(x, low, high, 9)
    np.testing.assert_allclose(off_diagonal(got.numpy()), off_diagonal(expected), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("mode", ["fixed", "per_neuron"])
def test_pairwise_mi_miller_madow_matches_numpy(mode):
    x = make_mixed_activations(300, seed=7)
    value_range, low, high = ranges_for(x, mode)
    got = pairwise_mutual_information(x, 8, value_range, miller_madow=True)
    expected = pairwise_reference(x, low, high, 8, kind="miller_madow")
    np.testing.assert_allclose(off_diagonal(got.numpy()), off_diagonal(expected), rtol=1e-10, atol=1e-12)
    expected_diag = [numpy_entropy_mm(numpy_histogram(x[:, i].numpy(), low[i], high[i], 8)) for i in range(NUM_MIXED)]
    np.testing.assert_allclose(got.diagonal().numpy(), expected_diag, rtol=1e-12, atol=1e-12)
    plain = pairwise_mutual_information(x, 8, value_range)
    assert not torch.allclose(got, plain)  # the correction changes the values


@pytest.mark.parametrize("mode", ["fixed", "per_neuron"])
def test_pairwise_mi_normalized_matches_numpy_and_sklearn_nmi(mixed_activations, mode):
    num_bins = 11
    value_range, low, high = ranges_for(mixed_activations, mode)
    got = pairwise_mutual_information(mixed_activations, num_bins, value_range, normalized=True)
    expected = pairwise_reference(mixed_activations, low, high, num_bins, kind="normalized")
    np.testing.assert_allclose(off_diagonal(got.numpy()), off_diagonal(expected), rtol=1e-10, atol=1e-12)
    # MI / sqrt(Hx Hy) is scikit-learn's NMI with the geometric mean, for non-constant pairs
    values = mixed_activations.numpy()
    a = numpy_labels(values[:, GAUSS], low[GAUSS], high[GAUSS], num_bins)
    b = numpy_labels(values[:, CORRELATED], low[CORRELATED], high[CORRELATED], num_bins)
    nmi = normalized_mutual_info_score(a, b, average_method="geometric")
    assert got[GAUSS, CORRELATED].item() == pytest.approx(nmi, rel=1e-10)
    # the diagonal is 1, or 0 for the constant neuron; everything in [0, 1]
    expected_diag = torch.ones(NUM_MIXED, dtype=torch.float64)
    expected_diag[CONSTANT] = 0
    assert torch.equal(got.diagonal(), expected_diag)
    assert bool(((got >= 0) & (got <= 1 + 1e-12)).all())


def test_identical_neurons_have_mi_equal_to_entropy_and_normalized_one():
    x = torch.randn(4000, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    pair = torch.cat([x, x], dim=1)
    mi = pairwise_mutual_information(pair, 16, (-3.0, 3.0))
    assert mi[0, 1].item() == pytest.approx(mi[0, 0].item(), rel=1e-12)
    assert pairwise_mutual_information(pair, 16, (-3.0, 3.0), normalized=True)[0, 1].item() == pytest.approx(1.0)


def test_constant_neurons_give_zero_and_all_nan_neurons_give_nan():
    x = make_mixed_activations(500)
    x[:, STUDENT_T] = math.nan
    for kwargs in ({}, {"miller_madow": True}, {"normalized": True}, {"base": 2}):
        entropy = neuron_entropy(x, 20, **kwargs)
        mi = pairwise_mutual_information(x, 20, **kwargs)
        others = [c for c in range(NUM_MIXED) if c != STUDENT_T]
        # a constant neuron: exactly 0 with every neuron that has finite values, never NaN
        assert entropy[CONSTANT] == 0.0, kwargs
        assert torch.equal(mi[CONSTANT, others], torch.zeros(len(others), dtype=torch.float64)), kwargs
        # a neuron with no finite value: undefined, and so is every pair with it
        assert math.isnan(entropy[STUDENT_T]), kwargs
        assert bool(torch.isnan(mi[STUDENT_T]).all() and torch.isnan(mi[:, STUDENT_T]).all()), kwargs
        assert not torch.isnan(entropy[others]).any() and not torch.isnan(mi[others][:, others]).any(), kwargs


def test_constant_neuron_is_exactly_zero_for_every_sample_count():
    # log S - (S log S) / S leaves ~1e-16 for some S (23, 39, 43, ...); a constant neuron must give
    # exactly 0, else the normalized diagonal (H > 0) turns 1 and normalized MI becomes ~1e-8
    generator = torch.Generator().manual_seed(0)
    for num_samples in range(2, 120):
        x = torch.randn(num_samples, 2, generator=generator, dtype=torch.float64)
        x[:, 1] = 0.75
        assert neuron_entropy(x, 10)[1] == 0.0, num_samples
        for kwargs in ({}, {"miller_madow": True}, {"normalized": True}):
            mi = pairwise_mutual_information(x, 10, **kwargs)
            assert mi[0, 1] == 0.0 and mi[1, 1] == 0.0, (num_samples, kwargs)
    assert entropy_from_counts(torch.tensor([[0, 23, 0]]), normalized=True).item() == 0.0


def test_single_neuron_and_empty_input():
    x = torch.randn(100, 1, dtype=torch.float64)
    mi = pairwise_mutual_information(x, 8)
    assert mi.shape == (1, 1)
    torch.testing.assert_close(mi[0], neuron_entropy(x, 8))
    # no sample: the right shapes, every value undefined (NaN), with a fixed or a calibrated range
    for value_range in ((0.0, 1.0), None):
        empty = torch.zeros(0, 3)
        entropy, mi = neuron_entropy(empty, 5, value_range), pairwise_mutual_information(empty, 5, value_range)
        assert entropy.shape == (3,) and mi.shape == (3, 3)
        assert bool(torch.isnan(entropy).all() and torch.isnan(mi).all())
        assert bin_indices(empty, 5, value_range).shape == (0, 3)
    # no neuron: empty results of the right shape
    for value_range in ((0.0, 1.0), None):
        none = torch.randn(10, 0)
        assert neuron_entropy(none, 5, value_range).shape == (0,)
        assert pairwise_mutual_information(none, 5, value_range).shape == (0, 0)
        assert joint_histogram_counts(bin_indices(none, 5, value_range), 5).shape == (0, 5, 5)
        assert histogram_counts(bin_indices(none, 5, value_range), 5).shape == (0, 5)
        assert calibrate_value_range(none, per_neuron=True)[0].shape == (0,)
    assert mean_off_diagonal(torch.zeros(0, 0)).item() == 0.0


def test_mean_off_diagonal_leaves_out_the_diagonal():
    x = make_mixed_activations(800)
    mi = pairwise_mutual_information(x, 10, ranges_for(x, "per_neuron")[0])
    expected = off_diagonal(mi.numpy()).mean()
    assert mean_off_diagonal(mi).item() == pytest.approx(expected, rel=1e-12)
    assert mean_off_diagonal(torch.ones(1, 1)).item() == 0.0


# ----------------------------------------------------------------------------- bivariate Gaussian


def test_bivariate_gaussian_mi_approaches_closed_form():
    """Binned plug-in MI of a bivariate normal converges to -0.5 log(1 - rho^2).

    Settings: 64 equal-width bins on the fixed range (-5, 5). At S = 200,000 the plug-in bias
    (~ (B-1)^2 / 2S = 0.01 nats upward) and the discretisation loss (downward) nearly cancel;
    measured errors are below 0.007 nats, so the test allows 0.015 nats. At S = 2,000 the upward
    bias is about 0.13 to 0.3 nats, so the error must shrink by at least 5x with 100x the samples.
    """
    generator = torch.Generator().manual_seed(1234)
    num_bins, value_range, tolerance = 64, (-5.0, 5.0), 0.015
    for rho in (0.3, 0.6, 0.9):
        exact = -0.5 * math.log(1 - rho**2)
        errors = {}
        for num_samples in (2_000, 200_000):
            z = torch.randn(num_samples, 2, generator=generator, dtype=torch.float64)
            x = torch.stack([z[:, 0], rho * z[:, 0] + math.sqrt(1 - rho**2) * z[:, 1]], dim=1)
            estimate = pairwise_mutual_information(x, num_bins, value_range)[0, 1].item()
            errors[num_samples] = abs(estimate - exact)
        assert errors[200_000] < tolerance, (rho, errors)
        assert errors[200_000] < errors[2_000] / 5, (rho, errors)


def test_independent_gaussians_mi_bias_is_small_and_miller_madow_reduces_it():
    generator = torch.Generator().manual_seed(99)
    x = torch.randn(20_000, 2, generator=generator, dtype=torch.float64)
    plug_in = pairwise_mutual_information(x, 16, (-4.0, 4.0))[0, 1].item()
    corrected = pairwise_mutual_information(x, 16, (-4.0, 4.0), miller_madow=True)[0, 1].item()
    # plug-in bias for independent variables ~ (B-1)^2 / (2S) = 0.0056 nats (fewer occupied cells here)
    assert 0 < plug_in < 0.01
    assert abs(corrected) < plug_in / 3


# ----------------------------------------------------------------------------------- counting kernels


def naive_joint_counts(bins: torch.Tensor, num_bins: int) -> torch.Tensor:
    b = bins.numpy()
    rows, cols = pair_indices(b.shape[1])
    out = []
    for i, j in zip(rows.tolist(), cols.tolist(), strict=True):
        keep = (b[:, i] < num_bins) & (b[:, j] < num_bins)
        out.append(contingency(b[keep, i], b[keep, j], num_bins))
    return torch.from_numpy(np.stack(out))


def data_with_nonfinite(num_samples=400, num_neurons=9, seed=11) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((num_samples, num_neurons))
    x[rng.random(x.shape) < 0.04] = np.nan
    x[rng.random(x.shape) < 0.02] = np.inf
    x[rng.random(x.shape) < 0.02] = -np.inf
    x[:, 2] = np.maximum(x[:, 2], 0)
    x[:, 4] = 0.5
    return torch.from_numpy(x)


BLOCKINGS = {
    "default": {},
    "one_row_per_block": {"_CODES_PER_BLOCK": 1, "_GRAM_ELEMENTS_PER_BLOCK": 1, "_ONE_HOT_BYTES": 1},
    "few_rows_per_block": {
        "_CODES_PER_BLOCK": 2_000,
        "_GRAM_ELEMENTS_PER_BLOCK": 700,
        "_ONE_HOT_BYTES": 9 * 7 * 4 * 37,
    },
}


@pytest.mark.parametrize("products", ["int8", "float32"])
@pytest.mark.parametrize("blocking", list(BLOCKINGS))
def test_bincount_and_matmul_give_identical_joint_counts(monkeypatch, blocking, products):
    for name, value in BLOCKINGS[blocking].items():
        monkeypatch.setattr(joint_counts_module, name, value)
    # the matmul kernel's int8 products (torch._int_mm, where it runs) and its float32 fallback
    monkeypatch.setattr(
        joint_counts_module,
        "_INT8_MATMUL",
        {"cpu": products == "int8" and joint_counts_module._int8_matmul_available(torch.device("cpu"))},
    )
    monkeypatch.setattr(joint_counts_module, "_MEASURED", {})
    x = data_with_nonfinite()
    num_bins = 6
    bins = bin_indices(x, num_bins, (-2.0, 2.0))
    by_bincount = joint_histogram_counts(bins, num_bins, backend="bincount")
    by_matmul = joint_histogram_counts(bins, num_bins, backend="matmul")
    assert by_bincount.dtype == by_matmul.dtype == torch.int64
    assert by_bincount.shape == (36, num_bins, num_bins)
    assert torch.equal(by_bincount, by_matmul)
    assert torch.equal(by_bincount, naive_joint_counts(bins, num_bins))
    assert torch.equal(joint_histogram_counts(bins, num_bins, backend="auto"), by_bincount)
    if joint_counts_module.compiled_counting_available():
        cells = BLOCKINGS[blocking].get("_CODES_PER_BLOCK", 2**22)
        monkeypatch.setattr(joint_counts_module, "_COMPILED_CELLS_PER_BLOCK", cells)
        assert torch.equal(joint_histogram_counts(bins, num_bins, backend="compiled"), by_bincount)
        into = torch.ones_like(by_bincount)
        add_joint_histogram_counts(bins, num_bins, into, backend="compiled")  # adds in place
        assert torch.equal(into, by_bincount + 1)
        into = torch.ones_like(by_bincount)
        add_joint_histogram_counts(bins, num_bins, into, backend="bincount")
        assert torch.equal(into, by_bincount + 1)
    # blocks are contiguous in pair order and cover every pair once
    for method in ("bincount", "matmul", "compiled")[: 3 if joint_counts_module.compiled_counting_available() else 2]:
        firsts, total = [], 0
        for first, counts in iter_joint_histogram_counts(bins, num_bins, method):
            firsts.append(first)
            assert first == total
            total += counts.shape[0]
        assert total == 36
        if blocking == "one_row_per_block":
            assert len(firsts) == 8  # one block per row i < N - 1
    # and the MI on top of either kernel is identical
    assert torch.equal(
        pairwise_mutual_information(x, num_bins, (-2.0, 2.0), backend="bincount"),
        pairwise_mutual_information(x, num_bins, (-2.0, 2.0), backend="matmul"),
    )


@pytest.mark.compiled
@pytest.mark.parametrize("num_neurons", [2, 3, 9, 12])  # odd and even row counts: tasks pair rows
@pytest.mark.parametrize("options", [{}, {"miller_madow": True}, {"normalized": True}, {"base": 2.0}])
def test_compiled_pair_terms_equal_the_torch_path(num_neurons, options):
    # the kernel that reduces each joint histogram in cache (pairwise_mutual_information on CPU) and the one
    # that reduces stored histograms (the metric's compute) give the torch path's MI: NaN, zeros and all
    x = data_with_nonfinite(num_neurons=max(num_neurons, 5))[:, :num_neurons]
    for num_bins in (1, 2, 6, 17):
        torch_path = pairwise_mutual_information(x, num_bins, (-2.0, 2.0), backend="bincount", **options)
        fused = pairwise_mutual_information(x, num_bins, (-2.0, 2.0), backend="compiled", **options)
        assert torch.equal(torch.isnan(fused), torch.isnan(torch_path))
        assert torch.allclose(fused.nan_to_num(-7.0), torch_path.nan_to_num(-7.0), rtol=0, atol=1e-12)
        joint = joint_histogram_counts(bin_indices(x, num_bins, (-2.0, 2.0)), num_bins)
        from_counts = mutual_information_from_joint_counts(joint, **options)
        assert from_counts.shape == (joint.shape[0],)
        rows, cols = joint_counts_module.pair_indices(num_neurons)
        expected = torch_path[rows, cols]
        assert torch.allclose(from_counts.nan_to_num(-7.0), expected.nan_to_num(-7.0), rtol=0, atol=1e-12)


@pytest.mark.compiled
def test_compiled_count_terms_keep_shape_and_leave_invalid_counts_to_the_torch_path(monkeypatch):
    rng = np.random.default_rng(5)
    joint = torch.from_numpy(rng.integers(0, 30, size=(2, 3, 4, 4)))
    got = mutual_information_from_joint_counts(joint)
    assert got.shape == (2, 3)
    with monkeypatch.context() as patch:
        patch.setattr(joint_counts_module, "_KERNEL", NO_NUMBA)  # the torch path
        expected = mutual_information_from_joint_counts(joint)
    assert torch.allclose(got, expected, rtol=0, atol=1e-12)
    negative = joint.clone()
    negative[1, 2, 0, 0] = -3
    assert mi_module._compiled_count_terms(negative.reshape(-1, 4, 4), None) is None  # flagged, not read
    with pytest.raises(IndexError):  # the torch path's lookup refuses it
        mutual_information_from_joint_counts(negative)
    # a marginal bound below the counts (an inconsistent caller) is flagged too, never read out of bounds
    small = (torch.ones(6, 4, dtype=torch.int64), torch.ones(6, 4, dtype=torch.int64))
    assert mi_module._compiled_count_terms(joint.reshape(-1, 4, 4), small) is None


def test_auto_measures_the_faster_kernel_once_per_size_class(monkeypatch):
    # without Numba ("auto" on CPU is the compiled kernel when it is installed)
    monkeypatch.setattr(joint_counts_module, "_KERNEL", NO_NUMBA)
    monkeypatch.setattr(joint_counts_module, "_MEASURED", {})
    bins = torch.randint(0, 8, (700, 20), generator=torch.Generator().manual_seed(0))
    first = joint_histogram_counts(bins, 8, backend="auto")  # measures both kernels, returns the counts
    assert len(joint_counts_module._MEASURED) == 1 and set(joint_counts_module._MEASURED.values()) <= {
        "bincount",
        "matmul",
    }
    assert torch.equal(first, joint_histogram_counts(bins, 8, backend="bincount"))
    again = joint_histogram_counts(bins[:600], 8, backend="auto")  # same size class: the measured choice
    assert len(joint_counts_module._MEASURED) == 1
    assert torch.equal(again, naive_joint_counts(bins[:600], 8))


def test_joint_histogram_orientation_and_pair_order():
    bins = torch.tensor([[0, 1, 2], [1, 1, 0], [1, 0, 0]])
    counts = joint_histogram_counts(bins, 3)
    rows, cols = pair_indices(3)
    assert rows.tolist() == [0, 0, 1] and cols.tolist() == [1, 2, 2]
    # pair (0, 1): rows index neuron 0's bin, columns neuron 1's
    assert torch.equal(counts[0], torch.tensor([[0, 1, 0], [1, 1, 0], [0, 0, 0]]))
    assert torch.equal(counts[1], torch.tensor([[0, 0, 1], [2, 0, 0], [0, 0, 0]]))
    assert torch.equal(counts[2], torch.tensor([[1, 0, 0], [1, 0, 1], [0, 0, 0]]))


def test_mutual_information_from_joint_counts_against_sklearn_contingency():
    rng = np.random.default_rng(2)
    table = rng.integers(0, 20, size=(5, 5))
    table[2] = 0
    got = mutual_information_from_joint_counts(torch.from_numpy(table))
    assert got.item() == pytest.approx(mutual_info_score(None, None, contingency=table), rel=1e-12)
    # no shared sample: undefined
    assert math.isnan(mutual_information_from_joint_counts(torch.zeros(4, 4, dtype=torch.int64)).item())
    with pytest.raises(ValueError, match=r"\[\.\.\., B, B\]"):
        mutual_information_from_joint_counts(torch.zeros(3, 4))


# ---------------------------------------------------------------------------------------- dtypes


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
def test_functional_accepts_float_dtypes(dtype):
    x = make_mixed_activations(1000)[:, [GAUSS, RELU, CAUCHY, CORRELATED]]
    x = x.clamp(-60000, 60000).to(dtype)  # stay finite in fp16
    for value_range in (None, (-3.0, 3.0)):
        entropy = neuron_entropy(x, 20, value_range)
        mi = pairwise_mutual_information(x, 20, value_range)
        assert entropy.dtype == mi.dtype == torch.float64
        assert torch.isfinite(entropy).all() and torch.isfinite(mi).all()
    assert entropy[0] > 2.0 and mi[0, 3] > 0.3
    # low precision inputs are binned exactly as their float32 values
    if dtype in (torch.bfloat16, torch.float16):
        assert torch.equal(neuron_entropy(x, 20), neuron_entropy(x.float(), 20))
        assert torch.equal(mi, pairwise_mutual_information(x.float(), 20, (-3.0, 3.0)))


# ----------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("function", [neuron_entropy, pairwise_mutual_information, bin_indices])
def test_functional_rejects_bad_shapes_and_dtypes(function):
    kwargs = {"num_bins": 4}
    with pytest.raises(ValueError, match=r"\[S, N\].*\[2, 3, 4\]"):
        function(torch.zeros(2, 3, 4), **kwargs)
    with pytest.raises(ValueError, match=r"\[S, N\].*\[5\]"):
        function(torch.zeros(5), **kwargs)
    with pytest.raises(TypeError, match="floating"):
        function(torch.zeros(5, 2, dtype=torch.int64), **kwargs)
    with pytest.raises(TypeError, match="torch.Tensor"):
        function(np.zeros((5, 2)), **kwargs)


@pytest.mark.parametrize("num_bins", [0, -3, 2.5, True, "10"])
def test_invalid_num_bins(num_bins):
    x = torch.randn(10, 2)
    with pytest.raises(ValueError, match="num_bins"):
        neuron_entropy(x, num_bins)
    with pytest.raises(ValueError, match="num_bins"):
        pairwise_mutual_information(x, num_bins)


@pytest.mark.parametrize("base", [0, 1, 1.0, -2.0])
def test_invalid_base(base):
    x = torch.randn(10, 2)
    with pytest.raises(ValueError, match="base"):
        neuron_entropy(x, 4, base=base)
    with pytest.raises(ValueError, match="base"):
        pairwise_mutual_information(x, 4, base=base)


@pytest.mark.parametrize(
    "value_range",
    [
        (1.0, 0.0),
        (0.0, math.inf),
        (math.nan, 1.0),
        (0.0,),
        (0.0, 1.0, 2.0),
        "0,1",
        (torch.zeros(3), torch.ones(3)),  # wrong number of neurons
        (torch.zeros(2, 1), torch.ones(2, 1)),
        (torch.tensor([0.0, 2.0]), torch.tensor([1.0, 1.0])),  # low > high for one neuron
    ],
)
def test_invalid_value_range(value_range):
    x = torch.randn(10, 2)
    with pytest.raises(ValueError, match="value_range"):
        neuron_entropy(x, 4, value_range)
    with pytest.raises(ValueError, match="value_range"):
        pairwise_mutual_information(x, 4, value_range)


def test_invalid_counting_method():
    with pytest.raises(ValueError, match="backend"):
        pairwise_mutual_information(torch.randn(10, 3), 4, backend="einsum")


def test_compiled_counting_without_numba_says_how_to_install(monkeypatch):
    monkeypatch.setattr(joint_counts_module, "_KERNEL", NO_NUMBA)
    bins = torch.randint(0, 4, (50, 5), generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="pip install numba"):
        joint_histogram_counts(bins, 4, backend="compiled")
    assert torch.equal(joint_histogram_counts(bins, 4), naive_joint_counts(bins, 4))  # "auto" falls back


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_counts_entropy_and_mutual_information_equal_cpu():
    from lightning_infomem import NeuronEntropy, NeuronMutualInformation
    from lightning_infomem.functional import bin_indices, joint_histogram_counts

    data = make_mixed_activations(num_samples=3000, seed=12)
    bins = bin_indices(data, 16)
    on_cpu = joint_histogram_counts(bins, 16, backend="bincount")
    assert torch.equal(joint_histogram_counts(bins.cuda(), 16, backend="matmul").cpu(), on_cpu)
    for metric_class in (NeuronEntropy, NeuronMutualInformation):
        cpu_metric, gpu_metric = metric_class(data.shape[1]), metric_class(data.shape[1]).cuda()
        for chunk in data.split(700):
            cpu_metric.update(chunk)
            gpu_metric.update(chunk.cuda())
        torch.testing.assert_close(gpu_metric.compute().cpu(), cpu_metric.compute(), rtol=0, atol=1e-12)


# ------------------------------------------------------------------------- compiled binning


def _binning_cases():
    rng = np.random.default_rng(4)
    x = torch.from_numpy(rng.standard_normal((300, 5)))
    x[::7, 1] = math.nan
    x[3, 2], x[4, 2] = math.inf, -math.inf
    x[:, 3] = 0.25  # a constant neuron
    f64 = torch.float64
    per_neuron_low = torch.tensor([-1.0, -2.0, 0.0, 0.25, math.nan], dtype=f64)  # one undefined range
    per_neuron_high = torch.tensor([1.0, 2.0, 3.0, 0.25, math.nan], dtype=f64)  # one zero-width range
    huge = torch.tensor([[-1.5e308], [0.0], [1.5e308], [1e308], [-1.7e308]], dtype=f64).repeat(1, 5)
    wide = torch.from_numpy(rng.standard_normal((257, 131)).astype(np.float32))
    wide[rng.random(wide.shape) < 0.02] = math.nan
    wide[rng.random(wide.shape) < 0.02] = math.inf
    wide[rng.random(wide.shape) < 0.02] = -math.inf
    wide_low = torch.from_numpy(rng.standard_normal(131) - 1.0)
    wide_high = wide_low + torch.from_numpy(rng.random(131) * 2.0)
    wide_low[[5, 64, 130]] = math.nan  # undefined ranges, one in the remainder
    wide_high[[5, 64, 130]] = math.nan
    wide_high[7] = wide_low[7]  # a zero-width range
    return [
        (x, torch.tensor(-1.5, dtype=f64), torch.tensor(1.5, dtype=f64), 16),
        (x.float(), torch.tensor(-1.5, dtype=f64), torch.tensor(1.5, dtype=f64), 7),
        (x.to(torch.bfloat16), torch.tensor(-1.0, dtype=f64), torch.tensor(2.0, dtype=f64), 100),
        (x.half(), torch.tensor(0.0, dtype=f64), torch.tensor(1.0, dtype=f64), 1),
        (x, per_neuron_low, per_neuron_high, 16),
        (huge, torch.tensor(-1.6e308, dtype=f64), torch.tensor(1.6e308, dtype=f64), 4),  # width overflows
        (x.float() * 1e-39, torch.tensor(0.0, dtype=f64), torch.tensor(1e-40, dtype=f64), 8),  # subnormal range
        (wide, wide_low, wide_high, 100),  # wider than the vector loops, with a remainder
    ]


@pytest.mark.compiled
@pytest.mark.parametrize("case", range(8))
def test_compiled_binning_equals_the_torch_path(case):
    values, low, high, num_bins = _binning_cases()[case]
    num_neurons = values.shape[1]
    grid = bin_grid(low, high, num_bins)
    compiled = compiled_grid(grid, low, high, num_neurons)
    counts = torch.full((num_neurons, num_bins), 3, dtype=torch.int64)  # added to
    bins = torch.empty(values.shape, dtype=torch.uint8)
    nonfinite, clipped = compiled_bin_and_count(values, compiled, counts, bins)
    expected = grid_bin_indices(values, grid)
    assert torch.equal(bins.long(), expected)
    assert torch.equal(counts, histogram_counts(expected, num_bins) + 3)
    finite = torch.isfinite(values)
    as_double = values.double()
    assert nonfinite == int((~finite).sum())
    assert clipped == int((((as_double < low) | (as_double > high)) & finite).sum())
    # without the indices: the counts alone
    alone = torch.zeros(num_neurons, num_bins, dtype=torch.int64)
    assert compiled_bin_and_count(values, compiled, alone) == (nonfinite, clipped)
    assert torch.equal(alone, counts - 3)


@pytest.mark.compiled  # without Numba both sides are the torch path
@pytest.mark.parametrize("case", range(8))
def test_bin_indices_are_the_same_without_the_compiled_binning(case, monkeypatch):
    values = _binning_cases()[case][0]
    with_kernel = bin_indices(values, 16)
    monkeypatch.setattr(binning_module, "_BIN_AND_COUNT", NO_NUMBA)
    assert torch.equal(bin_indices(values, 16), with_kernel)
    assert torch.equal(bin_indices(values, 5, (-1.0, 0.5)), bin_indices(values.double(), 5, (-1.0, 0.5)))


@pytest.mark.compiled  # without Numba both sides are the torch path
def test_metrics_count_the_same_without_the_compiled_binning(monkeypatch):
    from lightning_infomem import NeuronEntropy, NeuronMutualInformation

    x = data_with_nonfinite()
    results = []
    for available in (True, False):
        with monkeypatch.context() as patch:
            if not available:
                patch.setattr(binning_module, "_BIN_AND_COUNT", NO_NUMBA)
                patch.setattr(joint_counts_module, "_KERNEL", NO_NUMBA)
            values = []
            for metric in (NeuronEntropy(9, 20, calibration_samples=64), NeuronMutualInformation(9, 6)):
                for batch in x.split(50):
                    metric.update(batch)
                values += [metric.compute(), metric.counts.clone(), metric.num_clipped.clone()]
            results.append(values)
    for compiled, torch_path in zip(*results, strict=True):
        assert torch.equal(compiled.isnan(), torch_path.isnan())
        assert torch.allclose(compiled.nan_to_num(-1.0), torch_path.nan_to_num(-1.0), rtol=0, atol=1e-12)


# ------------------------------------------------------------------ torch's idle OpenMP threads


def _process_threads() -> int:
    return len(os.listdir("/proc/self/task"))


def test_releasing_idle_openmp_threads_ends_them_and_keeps_torch_working():
    from lightning_infomem.functional._kernels import threads as threads_module

    runtimes = len(threads_module._gnu_openmp_pause_functions())
    linux_gomp = sys.platform.startswith("linux") and any("libgomp" in line for line in open("/proc/self/maps"))
    if linux_gomp:
        assert runtimes >= 1  # GNU OpenMP (torch's on Linux wheels) is loaded and has the pause
    before_threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        x = torch.randn(1 << 20, dtype=torch.float64)
        expected = x.exp()  # a parallel region: torch's OpenMP worker is idle (spinning) after it
        threads_after_torch = _process_threads() if linux_gomp else 0
        assert threads_module.release_idle_openmp_threads() == runtimes  # every runtime accepted the pause
        if linux_gomp:
            deadline = time.monotonic() + 2.0
            while _process_threads() >= threads_after_torch and time.monotonic() < deadline:
                time.sleep(0.01)
            assert _process_threads() < threads_after_torch  # the idle worker has exited
        assert torch.get_num_threads() == 2
        assert torch.equal(x.exp(), expected)  # new workers start for the next parallel region
        assert threads_module.release_idle_openmp_threads() == runtimes  # again: harmless
    finally:
        torch.set_num_threads(before_threads)


def _fill_squares(squares, threads_seen, start, stop):
    """A stand-in for a compiled kernel over tasks: each task writes its own place."""
    threads_seen.add(threading.get_ident())
    for task in range(start, stop):
        squares[task] += task * task


def test_run_tasks_runs_every_task_once_on_torchs_threads_and_releases_openmp_threads(monkeypatch):
    from lightning_infomem.functional._kernels import compiled as compiled_module

    released = []
    monkeypatch.setattr(compiled_module, "release_idle_openmp_threads", lambda: released.append(1) or 0)
    kernel = CompiledKernel(__name__, "_fill_squares")
    for threads, num_tasks in [(1, 10), (2, 1000), (2, 3), (2, 1), (2, 0)]:
        torch.set_num_threads(threads)
        squares, seen = np.zeros(num_tasks, dtype=np.int64), set()
        released.clear()
        kernel.run_tasks(num_tasks, squares, seen, chunks_per_thread=4)
        assert squares.tolist() == [task * task for task in range(num_tasks)]  # each task exactly once
        several = threads > 1 and num_tasks > 1
        assert released == ([1] if several else [])  # only before several threads start
        assert len(seen) <= threads


def _fail_on_task_five(out, start, stop):
    for task in range(start, stop):
        if task == 5:
            raise RuntimeError("task 5 failed")
        out[task] = 1


def test_run_tasks_raises_the_error_of_a_chunk_after_the_others_finished():
    kernel = CompiledKernel(__name__, "_fail_on_task_five")
    torch.set_num_threads(2)
    out = np.zeros(64, dtype=np.int64)
    with pytest.raises(RuntimeError, match="task 5 failed"):
        kernel.run_tasks(64, out, chunks_per_thread=8)  # chunks of 4 tasks: 4..7 stops at 5
    assert out[8:].all() and out[:4].all()  # every other chunk ran
    squares = np.zeros(50, dtype=np.int64)
    CompiledKernel(__name__, "_fill_squares").run_tasks(50, squares, set())  # the workers still serve
    assert squares.tolist() == [task * task for task in range(50)]


# ------------------------------------------------------------------------------------ effective rank
@pytest.mark.parametrize("shape, seed", [((300, 20), 0), ((50, 200), 1), ((2048, 128), 2), ((1, 5), 3)])
def test_effective_rank_equals_a_numpy_reference(shape, seed):
    generator = torch.Generator().manual_seed(seed)
    mixing = torch.randn(shape[1], shape[1], generator=generator) * torch.logspace(0, -3, shape[1])
    z = torch.randn(*shape, generator=generator) @ mixing  # a decaying spectrum
    singular = np.linalg.svd(z.double().numpy(), compute_uv=False)
    p = singular / singular.sum() + 1e-7
    reference = float(np.exp(-(p * np.log(p)).sum()))
    assert float(effective_rank(z)) == pytest.approx(reference, rel=1e-5)
    assert float(effective_rank(z.double())) == pytest.approx(reference, rel=1e-12)


def test_effective_rank_closed_forms_and_undefined_inputs():
    assert float(effective_rank(torch.eye(6))) == pytest.approx(6 * math.exp(0) * (1 + 1e-7) ** 0, rel=1e-5)
    assert float(effective_rank(torch.ones(10, 4))) == pytest.approx(1.0, rel=1e-5)  # one direction
    for undefined in (torch.zeros(5, 3), torch.zeros(0, 3), torch.tensor([[1.0, float("nan")]])):
        assert math.isnan(float(effective_rank(undefined)))
    with pytest.raises(ValueError, match=r"\[samples, features\]"):
        effective_rank(torch.ones(3))
    with pytest.raises(ValueError, match="floating point"):
        effective_rank(torch.ones(3, 2, dtype=torch.int64))


@pytest.mark.skipif(importlib.util.find_spec("numba") is None, reason="the compiled kernels need Numba")
@pytest.mark.skipif(not hasattr(os, "getuid"), reason="POSIX modes and owners")
def test_a_numba_cache_directory_other_users_can_write_is_never_used(tmp_path):
    """NUMBA_CACHE_DIR in a directory others can write: Numba unpickles its cache index, so a planted one would run
    code. The kernels compile without the cache (nothing is read or written there) and one warning says why."""
    import subprocess
    import sys

    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    code = (
        "import warnings; warnings.simplefilter('always'); import torch\n"
        "from lightning_infomem.functional import pairwise_mutual_information\n"
        "pairwise_mutual_information(torch.randn(64, 4), 4, backend='compiled')\n"
    )
    env = {**os.environ, "NUMBA_CACHE_DIR": str(shared)}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "is writable by other users (mode 0o777)" in result.stderr and "compiled without a cache" in result.stderr
    assert list(shared.iterdir()) == []  # nothing cached there, nothing loaded from there
    own = tmp_path / "own"
    own.mkdir(mode=0o700)
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={**env, "NUMBA_CACHE_DIR": str(own)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0 and "not safe" not in result.stderr
    assert any(own.rglob("*.nbi"))  # a directory of one's own is used
