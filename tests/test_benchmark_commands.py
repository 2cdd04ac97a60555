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
        ["benchmarks/verdict_cost.py", "--families", "mlp", "--repeats", "1", "--epochs", "4"],
        [
            "benchmarks/memorization_kind.py",
            "--quick",
            "--families",
            "mlp",
            "--settings",
            "clean",
            "uniform_0.3",
            "--seeds",
            "0",
            "--out",
            "{tmp}",
        ],
        ["benchmarks/bert_reversal.py", "--families", "transformer", "--seeds", "0", "--epochs", "2", "--out", "{tmp}"],
    ],
    ids=["curvature_cost", "callback_overhead", "verdict_cost", "memorization_kind", "bert_reversal"],
)
def test_the_benchmark_command_runs(command, tmp_path):
    command = [part.replace("{tmp}", str(tmp_path)) for part in command]
    result = subprocess.run([sys.executable, *command], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
