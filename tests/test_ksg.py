"""KSG all-pairs mutual information against scikit-learn on the same data, closed forms, and edge cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from mixed_activations import CONSTANT, CORRELATED, GAUSS, NUM_MIXED, RELU, make_mixed_activations
from scipy.special import digamma
from sklearn.feature_selection import mutual_info_regression
from sklearn.feature_selection._mutual_info import _compute_mi_cc
from sklearn.neighbors import KDTree, NearestNeighbors

import lightning_infomem.functional.ksg as ksg_module
from lightning_infomem.functional import ksg_mutual_information, mean_off_diagonal
from lightning_infomem.functional._kernels.compiled import CompiledKernel

NO_NUMBA = CompiledKernel("numba_is_absent", "kernel", error="No module named 'numba'")  # as without Numba


@pytest.fixture(autouse=True, params=["torch", "compiled"])
def backend(request, monkeypatch):
    """Every test runs on both backends (the default of ``backend`` is switched), the compiled one if Numba is here."""
    if request.param == "compiled" and not ksg_module.compiled_kernel_available():
        pytest.skip("Numba is not installed")
    monkeypatch.setitem(ksg_mutual_information.__kwdefaults__, "backend", request.param)
    return request.param


@pytest.fixture(autouse=True)
def _one_thread():
    # The estimator runs many mid-sized ops; on a shared 2-core machine, two OpenMP threads stall whenever a
    # core is taken by another job (seen: 10x slower). Results do not depend on the thread count.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# --------------------------------------------------------------------------------------- references


def sklearn_ksg_unclipped(x: np.ndarray, y: np.ndarray, k: int) -> float:
    """Algorithm 1 from scikit-learn's own neighbour searches, as in sklearn's ``_compute_mi_cc`` and the
    authors' ``_get_knn_mi``, without the final ``max(0, mi)``: the reference for negative values."""
    x, y = x.reshape(-1, 1), y.reshape(-1, 1)
    nn = NearestNeighbors(metric="chebyshev", n_neighbors=k).fit(np.hstack((x, y)))
    radius = np.nextafter(nn.kneighbors()[0][:, -1], 0)
    n_x = KDTree(x, metric="chebyshev").query_radius(x, radius, count_only=True) - 1.0
    n_y = KDTree(y, metric="chebyshev").query_radius(y, radius, count_only=True) - 1.0
    return float(digamma(x.shape[0]) + digamma(k) - np.mean(digamma(n_x + 1)) - np.mean(digamma(n_y + 1)))


def reference_matrix(activations: np.ndarray, k: int, pair_mi=sklearn_ksg_unclipped) -> np.ndarray:
    """Per-pair Python loop over i <= j, the way the authors' ``get_square_mi`` fills the matrix."""
    num_neurons = activations.shape[1]
    out = np.zeros((num_neurons, num_neurons))
    for i in range(num_neurons):
        for j in range(i, num_neurons):
            out[i, j] = out[j, i] = pair_mi(activations[:, i].copy(), activations[:, j].copy(), k)
    return out


def gaussian_pairs(num_samples: int, rhos: list[float], seed: int) -> torch.Tensor:
    """``[S, 2 R]`` float64: for each rho a standard bivariate Gaussian pair with correlation rho."""
    g = torch.Generator().manual_seed(seed)
    columns = []
    for rho in rhos:
        x, e = torch.randn(2, num_samples, generator=g, dtype=torch.float64)
        columns += [x, rho * x + math.sqrt(1 - rho**2) * e]
    return torch.stack(columns, dim=1)


def tie_free(num_samples: int = 800, seed: int = 0) -> np.ndarray:
    """``[S, 6]`` continuous data without repeated values: Gaussian, dependent, heavy-tailed, skewed, scaled."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((num_samples, 3))
    return np.stack(
        [z[:, 0], 0.8 * z[:, 0] + 0.6 * z[:, 1], rng.standard_cauchy(num_samples), np.exp(z[:, 0]), 50 * z[:, 2],
         np.sin(3 * z[:, 1]) + 0.1 * z[:, 2]],
        axis=1,
    )  # fmt: skip


# ------------------------------------------------------------------------------- against scikit-learn


@pytest.mark.parametrize("k", [1, 3, 7])
def test_matches_sklearn_compute_mi_cc_without_ties(k):
    # Same data, no noise, no scaling: sklearn's _compute_mi_cc is algorithm 1 clipped at 0, so clip ours too.
    data = tie_free()
    ours = ksg_mutual_information(torch.from_numpy(data), k=k).numpy()
    expected = reference_matrix(data, k, _compute_mi_cc)
    np.testing.assert_allclose(np.maximum(ours, 0.0), expected, rtol=0, atol=1e-9)
    # and unclipped: negative values too (neighbour counts are identical, only summation order differs)
    np.testing.assert_allclose(ours, reference_matrix(data, k), rtol=0, atol=1e-9)


def test_matches_sklearn_with_ties_relu_and_constant():
    # Exact zeros (ReLU), a constant and heavy tails: ties follow sklearn's "<= nextafter(eps, 0)" rule exactly.
    data = make_mixed_activations(num_samples=1000, seed=3).numpy()
    rng = np.random.default_rng(3)
    data = np.concatenate([data, np.round(2 * data[:, [GAUSS]]) / 2, rng.integers(0, 4, (1000, 1))], axis=1)
    ours = ksg_mutual_information(torch.from_numpy(data), k=3).numpy()
    expected = reference_matrix(data, 3)
    varying = np.ptp(data, axis=0) > 0
    both = varying[:, None] & varying[None, :]
    np.testing.assert_allclose(ours[both], expected[both], rtol=0, atol=1e-9)
    assert np.all(ours[~both] == 0.0)  # documented: a constant neuron's row and column are exactly 0


def test_matches_mutual_info_regression_with_standardize_and_noise():
    # mutual_info_regression scales each feature to unit variance (no centring) and adds 1e-10 * max(1, mean|x|)
    # Gaussian noise, then clips at 0. Same recipe here, with a different noise draw: on tie-free data the
    # jitter (1e-10) is far below every neighbour distance (>= 1e-6 here), so the neighbour counts agree and the
    # values match to rounding; 1e-6 would still tolerate a rare flipped count of one sample (<= 1 / (n S)).
    data = tie_free(num_samples=600, seed=1)
    ours = ksg_mutual_information(
        torch.from_numpy(data), k=3, standardize=True, noise=1e-10, generator=torch.Generator().manual_seed(0)
    ).numpy()
    for j in range(data.shape[1]):
        expected = mutual_info_regression(data, data[:, j], n_neighbors=3, discrete_features=False, random_state=0)
        others = np.arange(data.shape[1]) != j  # sklearn jitters feature and target apart: no self-MI to compare
        np.testing.assert_allclose(np.maximum(ours[others, j], 0.0), expected[others], rtol=0, atol=1e-6)


def test_float32_input_equals_float64_of_same_values():
    data = torch.from_numpy(tie_free(num_samples=500)).to(torch.float32)
    ours = ksg_mutual_information(data)
    assert ours.dtype == torch.float64
    expected = reference_matrix(data.double().numpy(), 3)
    np.testing.assert_allclose(ours.numpy(), expected, rtol=0, atol=1e-9)


# ------------------------------------------------------------------------------------- closed forms


def test_bivariate_gaussian_closed_form():
    # I = -log(1 - rho^2) / 2. At S = 3000, k = 3 the KSG estimate has a standard deviation of about 0.015
    # nats and a bias below 0.012 for these rho (measured over 10 seeds); 0.06 is about 3 sd plus the bias.
    rhos = [0.0, 0.3, 0.6, 0.9, -0.75]
    mi = ksg_mutual_information(gaussian_pairs(3000, rhos, seed=0))
    for r, rho in enumerate(rhos):
        assert float(mi[2 * r, 2 * r + 1]) == pytest.approx(-0.5 * math.log(1 - rho**2), abs=0.06)


def test_independent_neurons_near_zero_and_not_clipped():
    g = torch.Generator().manual_seed(1)
    mi = ksg_mutual_information(torch.randn(3000, 12, generator=g, dtype=torch.float64))
    off = mi[~torch.eye(12, dtype=torch.bool)]
    assert off.abs().max() < 0.06  # about 4 sd of a single pair at S = 3000
    assert abs(float(mean_off_diagonal(mi))) < 0.01  # mean of 66 pairs: sd about 0.002
    assert bool((off < 0).any())  # not clipped: independent pairs scatter on both sides of 0


def test_diagonal_is_ksg_self_information():
    # I(X; X) by the same formula: eps is the k-th neighbour distance in x and n_x = n_y = k - 1 without ties.
    num_samples, k = 2000, 3
    x = torch.from_numpy(tie_free(num_samples))
    mi = ksg_mutual_information(x, k=k)
    expected = float(digamma(num_samples) - digamma(k))  # about 6.68
    torch.testing.assert_close(mi.diagonal(), torch.full((x.shape[1],), expected, dtype=torch.float64))
    # the diagonal dwarfs every pair: means must leave it out
    assert float(mean_off_diagonal(mi)) < float(mi.mean()) - 1.0


# ------------------------------------------------------------------------------- structure and batching


def test_symmetric_and_equivariant_under_permutations():
    data = torch.from_numpy(tie_free(600))
    mi = ksg_mutual_information(data)
    assert torch.equal(mi, mi.T)
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    torch.testing.assert_close(ksg_mutual_information(data[:, perm]), mi[perm][:, perm], rtol=0, atol=1e-12)
    shuffled = data[torch.randperm(600, generator=torch.Generator().manual_seed(0))]
    torch.testing.assert_close(ksg_mutual_information(shuffled), mi, rtol=0, atol=1e-12)


@pytest.mark.parametrize("budget", [1, 100, 4096, 2**24])
def test_memory_budget_does_not_change_the_result(budget):
    data = make_mixed_activations(num_samples=120, seed=5)[:, :5]
    expected = ksg_mutual_information(data, backend="torch")
    assert torch.equal(ksg_mutual_information(data, max_chunk_elements=budget, backend="torch"), expected)


def test_exact_whatever_the_search_parameters(monkeypatch):
    # Narrow strips and windows force every retry path (wider windows, more strips, comparison with all
    # samples): the neighbour search is exact, so the values must not move. (The order in which a pair's
    # samples are summed depends on the strips: equal up to float rounding.)
    data = make_mixed_activations(num_samples=300, seed=7)
    expected = ksg_mutual_information(data, k=4, backend="torch")
    for width, half_window in [(0.05, 1), (0.05, 4), (100.0, 1), (100.0, 4)]:  # 100: a single strip
        monkeypatch.setattr(ksg_module, "_STRIP_WIDTH", width)
        monkeypatch.setattr(ksg_module, "_FIRST_HALF_WINDOW", half_window)
        torch.testing.assert_close(ksg_mutual_information(data, k=4, backend="torch"), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.compiled
def test_backends_agree_on_ties_relu_and_constants(k):
    data = make_mixed_activations(num_samples=500, seed=3)
    data[:, RELU] = torch.relu(data[:, GAUSS] - 0.3)  # many exact zeros
    data = torch.cat([data, torch.round(data[:, :3] * 2) / 2], dim=1)  # coarse values: long runs of ties
    by_torch = ksg_mutual_information(data, k=k, backend="torch")
    by_compiled = ksg_mutual_information(data, k=k, backend="compiled")
    torch.testing.assert_close(by_compiled, by_torch, rtol=0, atol=1e-12)


@pytest.mark.compiled
def test_compiled_backend_gives_the_same_values_on_any_thread_count():
    data = make_mixed_activations(num_samples=200, seed=4)
    torch.set_num_threads(1)
    one = ksg_mutual_information(data, backend="compiled")
    torch.set_num_threads(2)
    assert torch.equal(ksg_mutual_information(data, backend="compiled"), one)  # pairs split, values equal


@pytest.mark.parametrize("num_samples,k", [(2, 1), (3, 2), (5, 1), (9, 8)])
def test_tiny_sample_counts(num_samples, k):
    data = np.random.default_rng(num_samples).standard_normal((num_samples, 3))
    ours = ksg_mutual_information(torch.from_numpy(data), k=k).numpy()
    np.testing.assert_allclose(ours, reference_matrix(data, k), rtol=0, atol=1e-9)


def test_zero_and_one_neuron():
    assert ksg_mutual_information(torch.randn(10, 0)).shape == (0, 0)
    one = ksg_mutual_information(torch.randn(10, 1, dtype=torch.float64), k=2)
    assert one.shape == (1, 1) and float(one) == pytest.approx(float(digamma(10) - digamma(2)))


# ------------------------------------------------------------------------------ ties, ReLU, constants


def test_relu_with_many_exact_zeros_is_finite_and_documented():
    # METHODS.md: kNN MI breaks on post-ReLU activations with many exact zeros. Plain KSG (the default, as
    # in the authors' code) counts exact duplicates when eps = 0 and comes out strongly negative - but finite.
    pre = gaussian_pairs(3000, [0.8], seed=2)
    post = torch.relu(pre)
    assert float((post == 0).double().mean()) > 0.45
    before = float(ksg_mutual_information(pre)[0, 1])
    after = ksg_mutual_information(post)
    assert torch.isfinite(after).all()
    assert before == pytest.approx(-0.5 * math.log(1 - 0.64), abs=0.06)
    assert float(after[0, 1]) < -1.0  # the documented failure (0.51 -> about -2 nats)
    # scikit-learn's recipe (unit variance + 1e-10 jitter) breaks the ties: finite, non-negative, and below
    # the pre-ReLU value (data processing inequality, up to estimation error)
    jittered = ksg_mutual_information(post, standardize=True, noise=1e-10, generator=torch.Generator().manual_seed(0))
    assert 0.0 < float(jittered[0, 1]) < before + 0.06


def test_constant_neurons_give_exact_zeros_never_nan(mixed_activations):
    mi = ksg_mutual_information(mixed_activations)
    assert torch.isfinite(mi).all()
    assert torch.equal(mi[CONSTANT], torch.zeros(NUM_MIXED, dtype=torch.float64))
    assert torch.equal(mi[:, CONSTANT], torch.zeros(NUM_MIXED, dtype=torch.float64))
    assert float(mi[GAUSS, CORRELATED]) > 0.4
    # two constant neurons: plain KSG would give psi(k) - psi(S); documented as 0
    two = ksg_mutual_information(
        torch.tensor([[1.0, 2.0, 0.1], [1.0, 2.0, 0.7], [1.0, 2.0, 0.3], [1.0, 2.0, 0.9]]), k=1
    )
    assert torch.equal(two[:2], torch.zeros(2, 3, dtype=torch.float64))
    # noise never turns a constant into a varying neuron
    noisy = ksg_mutual_information(mixed_activations, noise=1e-3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(noisy[CONSTANT], torch.zeros(NUM_MIXED, dtype=torch.float64))


def test_noise_is_reproducible_with_a_generator():
    data = torch.relu(gaussian_pairs(500, [0.5, 0.2], seed=3))

    def run(seed):
        return ksg_mutual_information(data, noise=1e-8, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(run(0), run(0))
    assert not torch.equal(run(0), run(1))
    assert not torch.equal(run(0), ksg_mutual_information(data))  # jitter changes the tie structure of ReLU data


def test_standardize_removes_the_dependence_on_scale():
    data = torch.from_numpy(tie_free(600))
    scaled = data * torch.tensor([1e-3, 1.0, 7.0, 1e4, 0.5, 2.0], dtype=torch.float64)
    plain, rescaled = ksg_mutual_information(data, standardize=True), ksg_mutual_information(scaled, standardize=True)
    torch.testing.assert_close(rescaled, plain, rtol=0, atol=1e-9)
    # without it the max-norm makes finite-sample estimates depend on the relative scales (as in the authors' code)
    assert not torch.allclose(ksg_mutual_information(scaled), ksg_mutual_information(data), atol=1e-3)


# ----------------------------------------------------------------------------------------- bad input


def test_non_finite_values_raise_with_their_number():
    data = torch.randn(50, 4)
    data[3, 1] = float("nan")
    data[7, 2] = float("inf")
    data[9, 2] = -float("inf")
    with pytest.raises(ValueError, match=r"3 non-finite value\(s\).*isfinite\(activations\)\.all\(dim=1\)"):
        ksg_mutual_information(data)


@pytest.mark.parametrize(
    "activations,kwargs,error,match",
    [
        (torch.randn(20), {}, ValueError, r"shape \[S, N\].*received shape \[20\]"),
        (torch.randn(20, 3, 2), {}, ValueError, r"received shape \[20, 3, 2\]"),
        (torch.arange(20).view(10, 2), {}, TypeError, "floating-point"),
        (np.zeros((10, 2)), {}, TypeError, "torch.Tensor"),
        (torch.randn(20, 3), {"k": 0}, ValueError, "k must be an integer >= 1, received 0"),
        (torch.randn(20, 3), {"k": 2.0}, ValueError, "k must be an integer >= 1"),
        (torch.randn(20, 3), {"k": True}, ValueError, "k must be an integer >= 1"),
        (torch.randn(20, 3), {"k": 20}, ValueError, r"k=20 for activations of shape \[20, 3\]"),
        (torch.randn(1, 3), {"k": 1}, ValueError, "smaller than the number of samples"),
        (torch.randn(20, 3), {"noise": -1.0}, ValueError, "noise must be a finite number >= 0"),
        (torch.randn(20, 3), {"noise": float("nan")}, ValueError, "noise must be"),
        (torch.randn(20, 3), {"max_chunk_elements": 0}, ValueError, "max_chunk_elements"),
        (torch.randn(20, 3), {"backend": "numpy"}, ValueError, "backend must be 'auto', 'torch' or 'compiled'"),
    ],
)
def test_bad_arguments(activations, kwargs, error, match):
    with pytest.raises(error, match=match):
        ksg_mutual_information(activations, **kwargs)


# ----------------------------------------------------------------------------------------------- CUDA


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    data = make_mixed_activations(num_samples=700, seed=11)
    data[:, RELU] = torch.relu(data[:, GAUSS] - 0.3)
    expected = ksg_mutual_information(data)  # the CPU backend under test
    on_gpu = ksg_mutual_information(data.cuda(), backend="torch")
    assert on_gpu.device.type == "cuda"
    torch.testing.assert_close(on_gpu.cpu(), expected, rtol=0, atol=1e-12)


def test_without_numba_auto_uses_torch_and_compiled_says_how_to_install(monkeypatch):
    data = make_mixed_activations(num_samples=150, seed=6)[:, :4]
    expected = ksg_mutual_information(data, backend="torch")
    monkeypatch.setattr(ksg_module, "_KERNEL", NO_NUMBA)
    monkeypatch.setitem(ksg_mutual_information.__kwdefaults__, "backend", "auto")
    assert torch.equal(ksg_mutual_information(data), expected)
    with pytest.raises(ValueError, match="pip install numba"):
        ksg_mutual_information(data, backend="compiled")
