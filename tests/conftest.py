"""Shared test data: activations with the shapes of trouble that real networks produce."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

# The study's engine lives outside the package, in benchmarks/study: its tests import it as ``study``.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

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


@pytest.fixture
def mixed_activations() -> torch.Tensor:
    return make_mixed_activations()


@pytest.fixture(autouse=True)
def _deterministic_threads():
    # The suite runs on small machines; avoid oversubscription and keep runs reproducible.
    previous = torch.get_num_threads()
    torch.set_num_threads(min(previous, 2))
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def info_lines(monkeypatch) -> list[str]:
    """The info lines the package's callbacks print through ``rank_zero_info`` (printed as well).

    Recorded at the call, not through ``caplog``: Lightning stops its loggers propagating to the root
    logger when that had no handler at import, which depends on the order the tests ran in.
    """
    from lightning_infomem.callbacks import information, per_sample

    lines: list[str] = []
    for module in (information, per_sample):
        original = module.rank_zero_info

        def record(message, *args, _original=original, **kwargs):
            lines.append(str(message))
            return _original(message, *args, **kwargs)

        monkeypatch.setattr(module, "rank_zero_info", record)
    return lines
