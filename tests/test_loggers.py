"""Histograms and images for every logger: W&B (offline), MLflow (a local file store), several loggers, others.

The scalars reach every logger through ``pl_module.log``; these tests check what the loggers that can
show more receive, at which step, and what a logger that cannot is told. TensorBoard's side is in
``tests/test_callback.py`` (``test_tensorboard_scalars_histograms_and_heatmaps``).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from torch.utils.data import DataLoader

from lightning_infomem import InformationMeasures, MeasurementSettings, TrainingDynamics
from tests.lightning_helpers import DigitsMLP, digits_loaders, fast_trainer

LAYERS = ["net.0", "net.2"]


def fit_with(tmp_path: Path, loggers: list, epochs: int = 2, heatmap_every: int = 1) -> InformationMeasures:
    train, val = digits_loaders(num_val=256)
    callback = InformationMeasures(
        layers=LAYERS,
        max_neurons=16,
        heatmap_every_n_measurements=heatmap_every,
        settings=MeasurementSettings(calibration_samples=64),
    )
    trainer = fast_trainer(tmp_path, max_epochs=epochs, limit_train_batches=3, logger=loggers, callbacks=[callback])
    trainer.fit(DigitsMLP(), train, val)
    return callback


@pytest.fixture
def offline_wandb(monkeypatch, tmp_path):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "config"))


def test_wandb_gets_histograms_and_heatmap_images(offline_wandb, tmp_path):
    from lightning.pytorch.loggers import WandbLogger

    logger = WandbLogger(offline=True, save_dir=str(tmp_path), project="infomem-test")
    try:
        callback = fit_with(tmp_path, [logger])
        summary = dict(logger.experiment.summary)
    finally:
        logger.experiment.finish()
    assert len(callback.history) == 2
    for layer in LAYERS:
        for kind in ("entropy_per_neuron", "mutual_info_pairs"):
            value = summary[f"infomem/{layer}/{kind}"]
            assert value["_type"] == "histogram", value
            assert sum(value["values"]) == (16 if kind == "entropy_per_neuron" else 16 * 15 // 2)
        image = summary[f"infomem/{layer}/mutual_info_matrix"]
        assert image["_type"] in ("images/separated", "image-file"), image
    # the scalars are there too, through Lightning's own path
    assert summary["infomem/mutual_info"] == pytest.approx(callback.history[-1]["infomem/mutual_info"], rel=1e-6)


@pytest.fixture
def mlflow_file_store(monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # mlflow 3 asks for a database unless told otherwise


def test_mlflow_gets_heatmaps_as_artifacts_of_the_run(mlflow_file_store, tmp_path):
    from lightning.pytorch.loggers import MLFlowLogger
    from mlflow import MlflowClient

    uri = (tmp_path / "mlruns").as_uri()
    logger = MLFlowLogger(experiment_name="infomem-test", tracking_uri=uri)
    callback = fit_with(tmp_path, [logger])
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(logger.run_id)
    assert run.data.metrics["infomem/mutual_info"] == pytest.approx(
        callback.history[-1]["infomem/mutual_info"], rel=1e-6
    )
    steps = {int(m.step) for m in client.get_metric_history(logger.run_id, "infomem/mutual_info")}
    for layer in LAYERS:
        files = client.list_artifacts(logger.run_id, f"infomem/{layer}/mutual_info_matrix")
        names = sorted(os.path.basename(f.path) for f in files)
        assert names == [f"step_{step:06d}.png" for step in sorted(steps)]  # one per measurement, at its step
    local = client.download_artifacts(
        logger.run_id, f"infomem/{LAYERS[0]}/mutual_info_matrix/{names[0]}", str(tmp_path)
    )
    from PIL import Image

    assert min(Image.open(local).size) >= 256


def test_each_logger_gets_what_it_can_show_and_others_are_told(tmp_path, info_lines):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tensorboard = TensorBoardLogger(str(tmp_path), name="tb", version=0)
    csv = CSVLogger(str(tmp_path), name="csv", version=0)
    callback = fit_with(tmp_path, [tensorboard, csv], epochs=3)
    notes = [line for line in info_lines if "gets the scalars only" in line]
    assert len(notes) == 1 and "CSVLogger" in notes[0] and "TensorBoardLogger" in notes[0]
    events = EventAccumulator(tensorboard.log_dir, size_guidance={"histograms": 0, "images": 0})
    events.Reload()
    assert f"infomem/{LAYERS[0]}/entropy_per_neuron" in events.Tags()["histograms"]
    assert len(events.Images(f"infomem/{LAYERS[0]}/mutual_info_matrix")) == 3
    metrics = Path(csv.log_dir, "metrics.csv").read_text()
    assert "infomem/mutual_info" in metrics.splitlines()[0]
    assert len(callback.history) == 3


def test_per_sample_callbacks_reach_wandb_and_mlflow(offline_wandb, mlflow_file_store, tmp_path):
    from lightning.pytorch.loggers import MLFlowLogger, WandbLogger
    from mlflow import MlflowClient

    from tests.test_training_dynamics import IndexedMLP, indexed_digits

    wandb_logger = WandbLogger(offline=True, save_dir=str(tmp_path), project="infomem-test")
    uri = (tmp_path / "mlruns").as_uri()
    mlflow_logger = MLFlowLogger(experiment_name="infomem-test", tracking_uri=uri)
    dynamics = TrainingDynamics(num_images=4)
    trainer = fast_trainer(tmp_path, max_epochs=2, logger=[wandb_logger, mlflow_logger], callbacks=[dynamics])
    try:
        trainer.fit(IndexedMLP(image=True), DataLoader(indexed_digits(64, image=True), batch_size=32))
        summary = dict(wandb_logger.experiment.summary)
    finally:
        wandb_logger.experiment.finish()
    assert summary["dynamics/cumulative_loss"]["_type"] == "histogram"
    assert summary["dynamics/top_cumulative_loss"]["_type"] in ("image-file", "images/separated")
    files = MlflowClient(tracking_uri=uri).list_artifacts(mlflow_logger.run_id, "dynamics/top_cumulative_loss")
    assert len(files) == 2  # one grid per epoch


@pytest.mark.slow
def test_tensorboard_is_not_needed_without_a_tensorboard_logger():
    # the package imports and measures without touching tensorboard: it is only needed by TensorBoardLogger
    import subprocess
    import sys

    code = (
        "import sys, builtins, torch\n"
        "real = builtins.__import__\n"
        "def guard(name, *a, **k):\n"
        "    if name.split('.')[0] in ('tensorboard', 'tensorboardX'): raise ImportError('blocked: ' + name)\n"
        "    return real(name, *a, **k)\n"
        "builtins.__import__ = guard\n"
        "from lightning_infomem import NeuronEntropy, InformationMeasures, TrainingDynamics\n"
        "print(NeuronEntropy(3, 4)(torch.randn(8, 3)).shape)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "torch.Size([3])" in out.stdout
