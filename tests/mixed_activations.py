"""Activations with the shapes of trouble that real networks produce (shared by the estimator tests)."""

from __future__ import annotations

import numpy as np
import torch

# Column layout of ``mixed_activations``; tests refer to columns by name.
GAUSS, RELU, CAUCHY, STUDENT_T, CONSTANT, CORRELATED, UNIFORM = range(7)
NUM_MIXED = 7


def make_mixed_activations(num_samples: int = 3000, seed: int = 0) -> torch.Tensor:
    """``[S, 7]`` float64: Gaussian, ReLU (about half exact zeros), Cauchy, Student-t (df=2),
    a constant neuron, a neuron correlated with the first one, and a uniform one."""
    rng = np.random.default_rng(seed)
    gauss = rng.standard_normal(num_samples)
    columns = [
        gauss,
        np.maximum(rng.standard_normal(num_samples), 0.0),
        rng.standard_cauchy(num_samples),
        rng.standard_t(2.0, num_samples),
        np.full(num_samples, 1.25),
        0.8 * gauss + 0.6 * rng.standard_normal(num_samples),
        rng.uniform(-2.0, 3.0, num_samples),
    ]
    return torch.from_numpy(np.stack(columns, axis=1))
