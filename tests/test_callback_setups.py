"""Trainer set-ups around the callback: several validation loaders, monitor schedules, DDP before and after."""

from __future__ import annotations

import datetime
import math
import os
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning_helpers import NUM_VAL, DigitsMLP, digits_loaders, digits_tensors, fast_trainer
from torch.utils.data import DataLoader, TensorDataset

from lightning_infomem import InformationMeasures, MeasurementSettings, PredictionPeers


class TwoLoaderMLP(DigitsMLP):
    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        x, y = batch
        loss = torch.nn.functional.cross_entropy(self(x), y)
        self.log("val_loss", loss, add_dataloader_idx=True)


def two_loaders(batch_size: int = 64) -> list[DataLoader]:
    x, y = digits_tensors("val")
    shifted = x.flip(1)  # the same digits, pixels in reverse order: another distribution
    return [
        DataLoader(TensorDataset(x, y), batch_size=batch_size),
        DataLoader(TensorDataset(shifted, y), batch_size=batch_size),
    ]


def scalars(row: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in row.items() if k.endswith(("/entropy", "/mutual_info")) or "/dataloader_idx_" in k}


# ------------------------------------------------------------------------------ several dataloaders
def test_each_validation_loader_is_measured_on_its_own(tmp_path):
    model = TwoLoaderMLP()
    callback = InformationMeasures(layers=["net.0", "net.2"], max_samples=200, log_histograms=False)
    trainer = fast_trainer(tmp_path, callbacks=[callback])
    trainer.validate(model, two_loaders(), verbose=False)
    row = callback.history[-1]
    for loader in (0, 1):
        for key in ("infomem/entropy", "infomem/mutual_info", "infomem/net.0/entropy", "infomem/net.2/mutual_info"):
            assert (
                f"{key}/dataloader_idx_{loader}" in row and f"{key}/dataloader_idx_{loader}" in trainer.callback_metrics
            )
    assert "infomem/entropy" not in row  # Lightning's convention: every key carries its loader
    # each loader has its own quota and range: the values of a run on that loader alone
    for loader, data in enumerate(two_loaders()):
        alone = InformationMeasures(layers=["net.0", "net.2"], max_samples=200, log_histograms=False)
        fast_trainer(tmp_path, callbacks=[alone]).validate(TwoLoaderMLP(), data, verbose=False)
        for key, value in scalars(alone.history[-1]).items():
            assert row[f"{key}/dataloader_idx_{loader}"] == pytest.approx(value, rel=1e-12), key
        assert callback.measurements[loader].seen == {"net.0": 200, "net.2": 200}
    assert row["infomem/entropy/dataloader_idx_0"] != row["infomem/entropy/dataloader_idx_1"]


def test_chosen_loaders_only(tmp_path):
    callback = InformationMeasures(layers=["net.0"], dataloaders=[1], log_histograms=False)
    trainer = fast_trainer(tmp_path, callbacks=[callback])
    trainer.validate(TwoLoaderMLP(), two_loaders(), verbose=False)
    keys = {k for k in callback.history[-1] if k.startswith("infomem/")}
    assert keys and all(k.endswith("/dataloader_idx_1") for k in keys)
    assert set(callback.measurements) == {1}
    with pytest.raises(ValueError, match="dataloaders"):
        InformationMeasures(dataloaders="0")


# ---------------------------------------------------------------------------------- monitor schedules
def test_strict_early_stopping_with_sparse_measurements_is_refused_at_setup(tmp_path):
    callback = InformationMeasures(layers=["net.0"], every_n_epochs=2)
    trainer = fast_trainer(tmp_path, callbacks=[callback, EarlyStopping(monitor="infomem/mutual_info")])
    with pytest.raises(ValueError, match=r"strict=False.*check_val_every_n_epoch"):
        trainer.fit(DigitsMLP(), *digits_loaders())
    trainer = fast_trainer(
        tmp_path, enable_checkpointing=True, callbacks=[callback, ModelCheckpoint(monitor="infomem/entropy")]
    )
    with pytest.raises(ValueError, match=r"ModelCheckpoint\(\.\.\., every_n_epochs=2\)"):
        trainer.fit(DigitsMLP(), *digits_loaders())


def test_sparse_measurements_with_the_documented_monitors(tmp_path):
    callback = InformationMeasures(layers=["net.0", "net.2"], every_n_epochs=2, log_histograms=False)
    # Lightning keeps the latest measured value in callback_metrics after unmeasured epochs, so
    # EarlyStopping sees it again there: patience = every_n_epochs * p stops after p measurements
    # without improvement, always at a measured epoch
    stopper = EarlyStopping(monitor="infomem/mutual_info", mode="min", patience=2, strict=False)
    checkpoint = ModelCheckpoint(
        dirpath=tmp_path / "ckpt", filename="{epoch}", monitor="infomem/entropy", mode="max", every_n_epochs=2
    )
    trainer = fast_trainer(
        tmp_path, max_epochs=12, enable_checkpointing=True, callbacks=[callback, stopper, checkpoint]
    )
    trainer.fit(DigitsMLP(), *digits_loaders())
    measured = [row["epoch"] for row in callback.history]
    assert measured and all((epoch + 1) % 2 == 0 for epoch in measured)
    mutual_info = [row["infomem/mutual_info"] for row in callback.history]
    assert trainer.should_stop, "the MI of the digits MLP rises while it trains: min mode stops early"
    assert stopper.stopped_epoch == measured[-1]
    assert mutual_info[-1] >= min(mutual_info[:-1])  # one measurement without improvement
    # the checkpoint kept is the measured epoch with the highest entropy
    entropy = [row["infomem/entropy"] for row in callback.history]
    best_epoch = measured[entropy.index(max(entropy))]
    assert Path(checkpoint.best_model_path).name == f"epoch={best_epoch}.ckpt"


def test_validation_every_n_epochs_needs_no_monitor_settings(tmp_path):
    callback = InformationMeasures(layers=["net.0"], log_histograms=False)
    stopper = EarlyStopping(monitor="infomem/net.0/mutual_info", patience=2)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="{epoch}", monitor="infomem/mutual_info")
    trainer = fast_trainer(
        tmp_path,
        max_epochs=6,
        check_val_every_n_epoch=2,
        enable_checkpointing=True,
        callbacks=[callback, stopper, checkpoint],
    )
    trainer.fit(DigitsMLP(), *digits_loaders())
    assert [row["epoch"] for row in callback.history] == [1, 3, 5][: len(callback.history)]
    assert checkpoint.best_model_path


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ({"limit_val_batches": 0}, "no validation epoch ran"),
        ({"max_epochs": 2, "every": 5}, r"validation ran at epochs \[0, 1\], none of which is measured"),
    ],
)
def test_a_fit_that_measures_nothing_says_why(tmp_path, options, reason):
    every = options.pop("every", 1)
    callback = InformationMeasures(layers=["net.0"], every_n_epochs=every)
    trainer = fast_trainer(tmp_path, callbacks=[callback], **options)
    with pytest.warns(UserWarning, match=f"measured nothing in this fit: {reason}"):
        trainer.fit(DigitsMLP(), *digits_loaders())
    with pytest.raises(ValueError, match=f"measured nothing yet.*{reason}"):
        callback.to_csv(tmp_path / "curves.csv")
    assert not (tmp_path / "curves.csv").exists()


# ------------------------------------------------------------------------------------------------ DDP
pytestmark_ddp = pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
    reason="torch.distributed with gloo is not available",
)


def _validate_on_rank_zero_after_ddp(rank: int, port: int, out: str) -> None:
    """Both processes join a process group, as after a strategy="ddp" fit; then rank 1 leaves and rank 0
    validates alone with Trainer(devices=1): nothing may try to talk to the departed rank."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2, timeout=datetime.timedelta(seconds=30)
    )
    dist.barrier()
    if rank == 1:
        return  # leaves without destroying the group, like a finished DDP worker
    callback = InformationMeasures(layers=["net.0"], log_histograms=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fast_trainer(out, devices=1, callbacks=[callback]).validate(DigitsMLP(), digits_loaders()[1], verbose=False)
    torch.save(callback.history, os.path.join(out, "history.pt"))


@pytest.mark.slow
@pytest.mark.distributed
@pytestmark_ddp
def test_single_device_validation_after_a_ddp_fit_makes_no_collective_call(tmp_path):
    from lightning.fabric.plugins.environments.lightning import find_free_network_port

    torch.multiprocessing.spawn(
        _validate_on_rank_zero_after_ddp, args=(find_free_network_port(), str(tmp_path)), nprocs=2, join=True
    )
    history = torch.load(tmp_path / "history.pt", weights_only=False)
    alone = InformationMeasures(layers=["net.0"], log_histograms=False)
    fast_trainer(tmp_path, callbacks=[alone]).validate(DigitsMLP(), digits_loaders()[1], verbose=False)
    assert scalars(history[-1]) == pytest.approx(scalars(alone.history[-1]), rel=1e-12)


@pytest.mark.slow
@pytest.mark.distributed
@pytestmark_ddp
def test_ddp_spawn_results_reach_the_main_process(tmp_path, monkeypatch):
    from lightning.fabric.plugins.environments.lightning import find_free_network_port

    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(find_free_network_port()))
    # a ddp_spawn fit fails in this torch and Lightning, with or without this package, while sending an empty
    # tensor through shared memory ("unable to resize file"); the file-system strategy sends it
    strategy = torch.multiprocessing.get_sharing_strategy()
    torch.multiprocessing.set_sharing_strategy("file_system")
    callback = InformationMeasures(
        layers=["net.0", "net.2"],
        max_samples=None,
        log_histograms=False,
        settings=MeasurementSettings(calibration_samples=NUM_VAL),
    )
    peers = PredictionPeers()
    trainer = fast_trainer(tmp_path / "ddp", strategy="ddp_spawn", devices=2, max_epochs=2, callbacks=[callback, peers])
    try:
        trainer.fit(DigitsMLP(), *digits_loaders())
    finally:
        torch.multiprocessing.set_sharing_strategy(strategy)
    assert [row["epoch"] for row in callback.history] == [0, 1]  # measured in the workers, read back here
    assert [row["epoch"] for row in peers.history] == [0, 1]  # PredictionPeers' too
    assert set(callback.layer_results()) == {"net.0", "net.2"}
    path = callback.to_csv(tmp_path / "curves.csv")
    assert len(Path(path).read_text().splitlines()) == 3
    assert all(math.isfinite(row["infomem/entropy"]) for row in callback.history)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (Lightning refuses FSDP on a CPU)")
def test_cuda_fsdp_measures_what_one_device_measures(tmp_path):
    """Under FSDP (parameters sharded, activations whole) the callback logs the values of a plain run."""
    from lightning_helpers import DigitsMLP, digits_loaders, fast_trainer

    from lightning_infomem import InformationMeasures

    histories = {}
    for strategy in ("auto", "fsdp"):
        callback = InformationMeasures(log_histograms=False, heatmap_every_n_measurements=0)
        trainer = fast_trainer(
            tmp_path / strategy, callbacks=[callback], accelerator="cuda", devices=1, strategy=strategy, max_epochs=2
        )
        trainer.fit(DigitsMLP(), *digits_loaders())
        histories[strategy] = callback.history
    assert len(histories["fsdp"]) == len(histories["auto"]) == 2
    for plain, sharded in zip(histories["auto"], histories["fsdp"], strict=True):
        for key in ("infomem/entropy", "infomem/mutual_info"):
            assert sharded[key] == pytest.approx(plain[key], rel=1e-3, abs=1e-3), key


@pytest.mark.parametrize("first", ["validate", "test"])
def test_fit_after_validate_or_test_measures(tmp_path, first):
    """trainer.validate() (or test()) and then trainer.fit() on the same callback: the metric states made under
    inference mode are replaced, not updated in place, and the fit measures as a fresh one does."""
    train, val = digits_loaders()
    callback = InformationMeasures(layers=["net.0"])
    trainer = fast_trainer(tmp_path, callbacks=[callback], max_epochs=2)
    model = DigitsMLP()
    model.test_step = model.validation_step  # a module that tests as it validates
    getattr(trainer, first)(model, val, verbose=False)
    trainer.fit(model, train, val)
    fit_rows = [row for row in callback.history if row["global_step"] > 0]
    assert len(fit_rows) == 2 and all(math.isfinite(row["infomem/entropy"]) for row in fit_rows)


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads the resident memory from /proc")
def test_a_loop_of_fits_stays_flat(tmp_path):
    """A loop of fits with the cyclic collector off (as it mostly is between fits): each fit's teardown frees what the
    earlier fits left in reference cycles, their metric states included (67 MB a fit for a 3 x 256 MLP at the
    defaults: the memory grew by that much per fit before), so the resident memory stays within one fit's states."""
    import gc

    def resident_mb() -> float:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) / 1024 for line in status if line.startswith("VmRSS"))

    train, val = digits_loaders()
    sizes = []
    gc.collect()
    gc.disable()
    try:
        for _ in range(6):
            callback = InformationMeasures()
            fast_trainer(tmp_path, callbacks=[callback], max_epochs=1).fit(DigitsMLP(hidden=256), train, val)
            sizes.append(resident_mb())
    finally:
        gc.enable()
    assert sizes[-1] - sizes[1] < 100, sizes  # four more fits: about 264 MB more without the collection
