"""The main demo's quick mode, end to end: every output exists and is well-formed."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys

import pytest

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")


@pytest.fixture(scope="module")
def demo_output(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    completed = subprocess.run(
        [sys.executable, "-m", "lightning_infomem.demo", "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return out, completed.stdout


def test_prints_progress_tables_and_tensorboard_command(demo_output):
    out, stdout = demo_output
    assert f"tensorboard --logdir {out / 'tensorboard'}" in stdout
    assert "[1/10] shortcut alpha=0.00" in stdout and "[10/10] shuffled beta=1.00" in stdout
    assert "shortcut series" in stdout and "shuffled series" in stdout
    assert stdout.count("Kendall tau vs") == 2


def test_results_json_is_complete_and_finite(demo_output):
    out, _ = demo_output
    report = json.loads((out / "results.json").read_text())
    assert report["quick"] is True and set(report["series"]) == {"shortcut", "shuffled"}
    for series in report["series"].values():
        rows = series["rows"]
        assert [row["level"] for row in rows] == [0.0, 0.25, 0.5, 0.75, 1.0]
        for row in rows:
            for key in ("default_entropy", "default_mutual_info", "paper_entropy", "paper_mutual_info"):
                assert math.isfinite(row[key]) and row[key] >= 0
            assert math.isfinite(row["ksg_mutual_info"])
            assert 0.0 <= row["ood_acc"] <= 1.0 and 0.0 <= row["train_acc"] <= 1.0
        taus = series["kendall_tau"]
        assert set(taus) >= {"default_entropy", "default_mutual_info", "ksg_mutual_info"}
        assert all(-1.0 <= tau <= 1.0 for tau in taus.values())
        for figure in series["figures"]:
            with open(figure, "rb") as handle:
                assert handle.read(8) == b"\x89PNG\r\n\x1a\n"


def test_csv_tables_and_curves(demo_output):
    out, _ = demo_output
    for series in ("shortcut", "shuffled"):
        with open(out / f"{series}_results.csv") as handle:
            rows = list(csv.DictReader(handle))
        assert len(rows) == 5 and "paper_entropy" in rows[0] and "ksg_mutual_info" in rows[0]
    curves = sorted((out / "curves").glob("*.csv"))
    assert len(curves) == 10
    with open(curves[0]) as handle:
        rows = list(csv.DictReader(handle))
    assert rows and "infomem/entropy" in rows[0] and "infomem/mutual_info" in rows[0]


def test_tensorboard_event_files_hold_the_curves(demo_output):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, _ = demo_output
    runs = sorted(p for p in (out / "tensorboard").iterdir() if p.is_dir())
    assert len(runs) == 10
    accumulator = EventAccumulator(str(next(runs[0].rglob("events.out.tfevents*")).parent))
    accumulator.Reload()
    assert {"infomem/entropy", "infomem/mutual_info"} <= set(accumulator.Tags()["scalars"])
