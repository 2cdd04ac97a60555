"""The study's analysis (benchmarks/checkpoint_selection.py) on hand-made runs."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
from study.experiments import chosen_checkpoint

_path = Path(__file__).resolve().parents[1] / "benchmarks" / "checkpoint_selection.py"
_spec = importlib.util.spec_from_file_location("checkpoint_selection", _path)
study = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(study)


def test_the_papers_direction_flips_between_settings():
    assert study.paper_rule("infomem/entropy", "shortcut") == "infomem/entropy:max"
    assert study.paper_rule("infomem/mutual_info", "shortcut") == "infomem/mutual_info:min"
    assert study.paper_rule("infomem/entropy", "label_noise") == "infomem/entropy:min"
    assert study.paper_rule("ksg/mutual_info", "label_noise") == "ksg/mutual_info:max"


def _run(seed, level, truth, train=1.0, family="mlp", setting="shortcut", waves=(), predictions=(0, 1, 1, 0)):
    curves = [
        {"epoch": i, "truth_acc": t, "peer/label_wave": w} for i, (t, w) in enumerate(zip(truth, waves, strict=True))
    ]
    final = {"truth_acc": truth[-1], "train_acc": train}
    return {
        "family": family,
        "setting": setting,
        "seed": seed,
        "level": level,
        "curves": curves,
        "final": final,
        "unlabelled_predictions": list(predictions),
    }


def test_evidence_requires_the_shortcut_to_be_taken_and_the_noise_fitted():
    taken = [_run(0, 0.0, [0.8], waves=[1]), _run(0, 1.0, [0.5], waves=[1])]
    ignored = [_run(1, 0.0, [0.8], waves=[1]), _run(1, 1.0, [0.78], waves=[1])]
    cell = study.evidence(taken + ignored, "shortcut")
    assert cell["per_seed"][0]["memorized"] and not cell["per_seed"][1]["memorized"]
    assert cell["valid_seeds"] == [0] and cell["usable"]  # one of two seeds: half
    unfitted = [_run(0, 0.0, [0.9], train=1.0, waves=[1]), _run(0, 1.0, [0.1], train=0.7, waves=[1])]
    assert not study.evidence(unfitted, "label_noise")["usable"]


def test_label_wave_keeps_the_first_local_minimum_and_disagreement_compares_seeds():
    run = _run(0, 0.5, [0.5, 0.7, 0.9, 0.8, 0.6, 0.5, 0.4], waves=[90, 60, 30, 20, 40, 50, 60])
    # trailing moving average of 3: 90, 75, 60, 36.7, 30, 36.7, 50: the first local minimum is epoch 4
    assert chosen_checkpoint(run["curves"], "peer/label_wave:stop")["epoch"] == 4
    runs = [
        _run(0, 0.5, [0.5], waves=[0], predictions=(0, 1, 1, 0)),
        _run(1, 0.5, [0.5], waves=[0], predictions=(0, 1, 0, 0)),
    ]
    study.add_disagreement(runs)
    assert runs[0]["final"]["peer/disagreement"] == pytest.approx(0.25)
    assert math.isclose(runs[1]["curves"][-1]["peer/disagreement"], 0.25)
