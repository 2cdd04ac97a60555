"""Shared test data: activations with the shapes of trouble that real networks produce."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

# The study's engine lives outside the package, in benchmarks/study: its tests import it as ``study``.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from mixed_activations import make_mixed_activations  # noqa: E402


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
    from lightning_infomem import per_sample
    from lightning_infomem.callbacks import information

    lines: list[str] = []
    for module in (information, per_sample):
        original = module.rank_zero_info

        def record(message, *args, _original=original, **kwargs):
            lines.append(str(message))
            return _original(message, *args, **kwargs)

        monkeypatch.setattr(module, "rank_zero_info", record)
    return lines
