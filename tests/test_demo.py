"""The main demo's quick mode end to end, and the constructions and selection rules it shares with the benchmark."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys

import pytest
import torch

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

from study.experiments import (  # noqa: E402
    checkpoint_selection,
    chosen_checkpoint,
    early_stopping,
    make_data,
    model_selection,
    rule_value,
)

from lightning_infomem.demos.digits import coloured_digits, redraw_labels  # noqa: E402

pytestmark = [pytest.mark.slow]


@pytest.fixture(scope="module")
def demo_output(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    completed = subprocess.run(
        [sys.executable, "-m", "lightning_infomem.demos.demo", "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return out, completed.stdout


def test_prints_progress_tables_and_tensorboard_command(demo_output):
    out, stdout = demo_output
    assert f"tensorboard --logdir {out / 'tensorboard'}" in stdout
    assert "[1/10]" in stdout and "[10/10]" in stdout
    assert "shortcut series" in stdout and "label_noise series" in stdout
    assert stdout.count("Ranking the final models") == 2
    assert "QUICK RUN: one seed" in stdout  # quick mode draws no conclusions
    assert "MemorizationVerdict: " in stdout and "| verdict |" in stdout  # the verdict of every run, one paragraph
    assert "peak memory of a worker" in stdout


def test_results_json_is_complete_and_finite(demo_output):
    out, _ = demo_output
    report = json.loads((out / "results.json").read_text())
    assert report["quick"] is True and set(report["series"]) == {"shortcut", "label_noise"}
    for name, series in report["series"].items():
        rows = series["rows"]
        assert sorted(row["level"] for row in rows) == [0.0, 0.25, 0.5, 0.75, 1.0]
        for row in rows:
            for key in ("infomem/entropy", "infomem/mutual_info", "infomem_paper/entropy", "infomem_paper/mutual_info"):
                assert math.isfinite(row[key]) and row[key] >= 0, (name, key)
            assert math.isfinite(row["ksg/mutual_info"])
            assert row["train_acc"] > 0.95, "the models fit their training labels"
        direction = "min" if name == "shortcut" else "max"  # the paper's: a shortcut raises I, label noise lowers it
        assert set(series["kendall_tau"]) >= {
            f"infomem/mutual_info:{direction}",
            "val_acc:max",
            f"ksg/mutual_info:{direction}",
        }
        for figure in series["figures"]:
            with open(figure, "rb") as handle:
                assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
    # the shortcut is taken: accuracy with random colour falls as the colour gets more predictive
    truth = {row["level"]: row["truth_acc"] for row in report["series"]["shortcut"]["rows"]}
    assert truth[1.0] < truth[0.0] - 0.1


def test_csv_tables_and_curves(demo_output):
    out, _ = demo_output
    for setting in ("shortcut", "label_noise"):
        with open(out / f"{setting}_results.csv") as handle:
            rows = list(csv.DictReader(handle))
        assert len(rows) == 5 and "infomem_paper/entropy" in rows[0] and "ksg/mutual_info" in rows[0]
    curves = sorted((out / "curves").glob("*.csv"))
    assert len(curves) == 10
    with open(curves[0]) as handle:
        rows = list(csv.DictReader(handle))
    assert rows and "infomem/entropy" in rows[0] and "infomem/mutual_info" in rows[0]
    # what docs/demo.md says the files hold: one row per epoch, the logged keys and the ground truth
    from lightning_infomem.demos.demo import EPOCHS

    for path in curves:
        with open(path) as handle:
            rows = list(csv.DictReader(handle))
        setting = "label_noise" if path.name.startswith("label_noise") else "shortcut"
        assert [int(row["epoch"]) for row in rows] == list(range(EPOCHS[setting])), path.name
        assert {"truth_acc", "train_acc", "verdict/memorizing_score", "infomem/entropy"} <= set(rows[-1]), path.name


def test_tensorboard_event_files_hold_the_curves(demo_output):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, _ = demo_output
    runs = sorted(p for p in (out / "tensorboard").iterdir() if p.is_dir())
    assert len(runs) == 10
    accumulator = EventAccumulator(str(next(runs[0].rglob("events.out.tfevents*")).parent))
    accumulator.Reload()
    assert {"infomem/entropy", "infomem/mutual_info"} <= set(accumulator.Tags()["scalars"])


# ------------------------------------------------------------------------------- the constructions
def test_coloured_digits_follow_the_papers_construction():
    generator = torch.Generator().manual_seed(0)
    digits = torch.randint(0, 10, (20_000,), generator=generator)
    images = torch.rand(20_000, 64, generator=generator)
    for alpha in (0.0, 0.5, 1.0):
        coloured, labels, colours = coloured_digits(images, digits, alpha, torch.Generator().manual_seed(1))
        clean = (digits >= 5).long()
        assert abs(float((labels != clean).double().mean()) - 0.25) < 0.01  # label noise 0.25
        assert abs(float((colours == labels).double().mean()) - (1 + alpha) / 2) < 0.01
        # the digit is drawn in exactly one channel, the colour's
        assert torch.equal(coloured.flatten(2)[torch.arange(20_000), colours], images)
        assert float(coloured.flatten(2)[torch.arange(20_000), 1 - colours].abs().sum()) == 0.0
    with pytest.raises(ValueError, match="alpha"):
        coloured_digits(images, digits, 1.5, generator)
    redrawn = redraw_labels(digits, 0.5, torch.Generator().manual_seed(2))
    assert abs(float((redrawn != digits).double().mean()) - 0.45) < 0.01  # half redrawn, a tenth unchanged


def test_make_data_splits_and_ground_truth():
    shortcut = make_data("shortcut", 1.0, seed=0)
    assert shortcut["train"][0].shape == (1078, 2, 8, 8) and shortcut["classes"] == 2
    truth_x, truth_y = shortcut["truth"]
    assert truth_x.shape[0] == truth_y.shape[0] == 360
    noise = make_data("label_noise", 0.25, seed=0)
    assert noise["train"][0].shape == (1078, 64) and noise["classes"] == 10
    noisy = float((noise["train"][1] != noise["true_train"]).double().mean())
    assert 0.18 < noisy < 0.27
    assert make_data("label_noise", 0.0, seed=3)["train"][1].equal(make_data("label_noise", 0.0, seed=3)["true_train"])


# ------------------------------------------------------------------------------------ the rules
def _run(level: float, seed: int, values: list[float], truth: list[float]) -> dict:
    curves = [
        {"epoch": e, "infomem/mutual_info": v, "truth_acc": t, "val_loss": -t}
        for e, (v, t) in enumerate(zip(values, truth, strict=True))
    ]
    return {"level": level, "seed": seed, "curves": curves, "final": curves[-1]}


def test_selection_rules_by_hand():
    runs = [
        _run(0.0, 0, [0.3, 0.2, 0.1, 0.2], [0.5, 0.7, 0.9, 0.6]),
        _run(1.0, 0, [0.9, 0.8, 0.85, 0.95], [0.4, 0.3, 0.35, 0.2]),
    ]
    assert rule_value(runs[0]["curves"][0], "infomem/mutual_info:min") == -0.3
    assert math.isnan(rule_value({"epoch": 0}, "ksg/mutual_info:min"))
    assert chosen_checkpoint(runs[0]["curves"], "infomem/mutual_info:min")["epoch"] == 2
    assert chosen_checkpoint(runs[0]["curves"], "last_epoch")["epoch"] == 3
    selection = checkpoint_selection(runs)
    # run 0 keeps epoch 2 (the best, regret 0); run 1 keeps epoch 1 (truth 0.3, best 0.4: regret 0.1)
    assert selection["mean_regret"]["infomem/mutual_info:min"] == pytest.approx(0.05)
    assert selection["mean_regret"]["last_epoch"] == pytest.approx((0.3 + 0.2) / 2)
    ranking = model_selection(runs)
    # the final model with the lower MI has the higher truth: "min" agrees perfectly
    assert ranking["kendall_tau"]["infomem/mutual_info:min"] == pytest.approx(1.0)
    assert ranking["kendall_tau"]["infomem/mutual_info:max"] == pytest.approx(-1.0)
    stopping = early_stopping(runs, patience=1)["rules"]["infomem/mutual_info:min"]
    # run 0 stops at epoch 3 (no improvement after epoch 2) keeping epoch 2; run 1 stops at epoch 2 keeping 1
    assert stopping["mean_stop_epoch"] == pytest.approx(2.5)
    assert stopping["mean_truth_acc_kept"] == pytest.approx((0.9 + 0.3) / 2)


def test_the_readme_demo_command_runs_the_demo():
    # python -m lightning_infomem.demo (the README's command) is the demo of lightning_infomem.demos.demo
    completed = subprocess.run(
        [sys.executable, "-m", "lightning_infomem.demo", "--help"], capture_output=True, text=True, timeout=120
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert "usage: python -m lightning_infomem.demo" in completed.stdout and "--quick" in completed.stdout
