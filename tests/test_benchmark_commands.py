"""The benchmark commands the docs name run, with their smallest settings (smoke runs: no figure is checked)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.parametrize(
    "command",
    [
        ["benchmarks/curvature_cost.py", "--probes", "1", "--repeats", "1", "--lightning-epochs", "1"],
        ["benchmarks/callback_overhead.py", "--families", "mlp", "--samples", "64", "--repeats", "1"],
    ],
    ids=["curvature_cost", "callback_overhead"],
)
def test_the_benchmark_command_runs(command):
    result = subprocess.run([sys.executable, *command], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
