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
