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
        [
            "benchmarks/pairwise_mi.py",
            "--samples",
            "256",
            "--neurons",
            "16",
            "--sklearn-pairs",
            "4",
            "--repeats",
            "1",
            "--metric-neurons",
            "16",
            "--batches",
            "2",
            "--seconds",
            "0.1",
        ],
        ["benchmarks/ksg_mi.py", "--samples", "128", "--neurons", "6", "--reference-pairs", "2", "--repeats", "1"],
        ["benchmarks/counting_kernel.py", "--samples", "256", "--neurons", "16", "--repeats", "1"],
        ["benchmarks/training_dynamics_cost.py", "--models", "mlp", "--epochs", "2", "--repeats", "1"],
        ["benchmarks/callback_breakdown.py", "--samples", "256", "--repeats", "1"],
        ["benchmarks/busy_cores.py", "--repeats", "1"],
        ["benchmarks/checkpoint_selection.py", "--quick", "--families", "mlp", "--epochs", "3", "--out", "{tmp}"],
        ["benchmarks/mask_alignment.py", "--seeds", "0", "--families", "transformer", "late", "translation", "peft"],
        ["examples/mislabeled_scores.py", "--quick", "--out", "{tmp}"],
        ["examples/subsample_memorization.py", "--quick", "--out", "{tmp}"],
        ["examples/spurious_memorization.py", "--quick", "--out", "{tmp}"],
    ],
    ids=[
        "curvature_cost",
        "callback_overhead",
        "verdict_cost",
        "memorization_kind",
        "bert_reversal",
        "pairwise_mi",
        "ksg_mi",
        "counting_kernel",
        "training_dynamics_cost",
        "callback_breakdown",
        "busy_cores",
        "checkpoint_selection",
        "mask_alignment",
        "mislabeled_scores",
        "subsample_memorization",
        "spurious_memorization",
    ],
)
def test_the_benchmark_command_runs(command, tmp_path):
    command = [part.replace("{tmp}", str(tmp_path)) for part in command]
    result = subprocess.run([sys.executable, *command], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


SCRIPTS = sorted(
    str(path.relative_to(ROOT))
    for folder in ("benchmarks", "examples")
    for path in (ROOT / folder).glob("*.py")
    if path.name != "machine.py"
)


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_answers_before_torch_is_imported(script):
    path = str(ROOT / script)
    probe = (
        "import runpy, sys\n"
        f"sys.argv = [{path!r}, '--help']\n"
        "try:\n"
        f"    runpy.run_path({path!r}, run_name='__main__')\n"
        "except SystemExit as stop:\n"
        "    assert stop.code in (0, None), stop.code\n"
        "print('torch' in sys.modules, 'lightning' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT / script.split("/")[0], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage:" in result.stdout and result.stdout.strip().endswith("False False"), result.stdout[-500:]


def test_the_demo_answers_help_before_torch_is_imported():
    probe = (
        "import sys\n"
        "from lightning_infomem.demos.demo import main\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('torch' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip().endswith("False"), (
        result.stdout[-500:] + result.stderr[-500:]
    )
