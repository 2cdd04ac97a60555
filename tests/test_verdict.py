"""MemorizationVerdict and functional.verdict: the evidence against a direct computation, the kinds, the callback
on small real runs (a clean run is not called memorizing, a noisy one is, with the flipped samples named)."""

from __future__ import annotations

import math
import warnings
from typing import Any

import pytest
import torch
from lightning.pytorch import LightningModule
from lightning_helpers import fast_trainer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_infomem import (
    IndexedDataset,
    InformationMeasures,
    MemorizationVerdict,
    TrainingDynamics,
    Verdict,
    VerdictSettings,
)
from lightning_infomem.data import targets_of
from lightning_infomem.demos.digits import load_digits
from lightning_infomem.functional import KINDS, memorization_evidence, memorization_verdict


# ------------------------------------------------------------------------------------------ functional
def direct_evidence(train: list[float], val: list[float], learned: list[float], s: VerdictSettings) -> dict:
    """The module docs' definitions, written out as loops."""
    gaps = [t - v for t, v in zip(train, val, strict=True)]
    onset = next((e for e, g in enumerate(gaps) if g >= s.gap_opening), None)
    gap = (gaps[-1] + gaps[-2]) / 2
    cut = onset if onset is not None else len(train) - 1
    late = sum(1 for v in learned if cut < v < math.inf) / len(learned)
    instant = sum(1 for v in learned if v <= s.instant_epochs) / len(learned)

    def ramp(x: float, lo: float, hi: float) -> float:
        return min(1.0, max(0.0, (x - lo) / (hi - lo)))

    noise = ramp(min(gap, late), s.noise_low, s.noise_high)
    shortcut = (
        ramp(instant, s.mixed_low, s.mixed_high) if noise >= 0.5 else ramp(instant, s.shortcut_low, s.shortcut_high)
    )
    return {
        "gap": gap,
        "late_fraction": late,
        "instant_fraction": instant,
        "noise": noise,
        "shortcut": shortcut,
        "gap_opened": float(onset) if onset is not None else math.nan,
    }


@pytest.mark.parametrize("seed", range(6))
def test_evidence_equals_the_definitions(seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    epochs = 6 + seed
    train = torch.rand(epochs, generator=generator).sort().values.tolist()
    val = (torch.tensor(train) - 0.15 * torch.rand(epochs, generator=generator)).tolist()
    learned = torch.randint(0, epochs, (50,), generator=generator).double()
    learned[torch.rand(50, generator=generator) < 0.1] = math.inf
    settings = VerdictSettings()
    got = memorization_evidence(train, val, learned, settings)
    want = direct_evidence(train, val, learned.tolist(), settings)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-12, nan_ok=True), key
    assert got["epochs"] == epochs


def test_samples_never_presented_are_left_out_and_missing_epochs_are_skipped() -> None:
    learned = torch.tensor([0.0, 0.0, 5.0, math.nan, math.nan])
    e = memorization_evidence([0.5, math.nan, 0.8, 0.9], [0.5, 0.6, 0.6, 0.6], learned)
    assert e["epochs"] == 3 and e["instant_fraction"] == pytest.approx(2 / 3)
    assert e["gap_opened"] == 2.0 and e["late_fraction"] == pytest.approx(1 / 3) and math.isnan(e["loss_turn"])


@pytest.mark.parametrize(
    "noise, shortcut, kind",
    [
        (1.0, 0.0, "label_noise"),
        (0.0, 1.0, "shortcut"),
        (1.0, 1.0, "both"),
        (0.0, 0.0, "none"),
        (0.5, 0.0, "undetermined"),
    ],
)
def test_each_kind(noise: float, shortcut: float, kind: str) -> None:
    evidence = {
        "epochs": 10.0,
        "gap": 0.2,
        "late_fraction": 0.2,
        "instant_fraction": 1.0,
        "gap_opened": 3.0,
        "loss_turn": 3.0,
        "noise": noise,
        "shortcut": shortcut,
    }
    v = memorization_verdict(evidence, [0.5, 1.0] + [1.0] * 8)
    assert v.kind == kind and v.kind in KINDS
    assert -1.0 <= v.kind_score <= 1.0 and v.kind_score == pytest.approx(noise - shortcut)
    assert v.memorizing is {"none": False, "undetermined": None}.get(kind, True)
    if kind == "label_noise":
        assert v.onset_epoch == 3
    elif kind in ("shortcut", "both"):
        assert v.onset_epoch == 1  # the first epoch at the share fitted at once
    else:
        assert v.onset_epoch is None
    if kind == "undetermined":
        assert "weak evidence" in v.reason


def test_too_few_epochs_is_undetermined_not_a_guess() -> None:
    e = memorization_evidence([0.9, 1.0], [0.5, 0.5], torch.zeros(10))
    v = memorization_verdict(e)
    assert v.memorizing is None and v.kind == "undetermined" and "needs 4" in v.reason


def test_bad_settings_and_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="noise_low < noise_high"):
        VerdictSettings(noise_low=0.2, noise_high=0.1)
    with pytest.raises(ValueError, match="gap_opening"):
        VerdictSettings(gap_opening=0.0)
    with pytest.raises(ValueError, match="min_epochs"):
        VerdictSettings(min_epochs=-1)
    with pytest.raises(ValueError, match="same epochs"):
        memorization_evidence([0.5, 0.6], [0.5], torch.zeros(3))
    with pytest.raises(TypeError, match="VerdictSettings"):
        MemorizationVerdict(settings={"noise_low": 0.1})


def test_targets_of_reads_common_batches() -> None:
    assert targets_of((torch.zeros(2, 3), torch.tensor([1, 0]), torch.tensor([4, 5]))).tolist() == [1, 0]
    assert targets_of({"x": torch.zeros(2), "label": torch.tensor([2, 2])}).tolist() == [2, 2]
    assert targets_of((torch.zeros(2, 3), torch.rand(2))) is None  # regression targets: no classes
    assert targets_of([torch.zeros(2, 3)]) is None


# ------------------------------------------------------------------------------------------ callback
class BinaryMLP(LightningModule):
    """Digits (64 pixels) to ``digit >= 5``: 3 x 128 ReLU, Adam."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(
            nn.Linear(64, 128),
            nn.ReLU(),
            nn.Linear(128, 128),
            nn.ReLU(),
            nn.Linear(128, 128),
            nn.ReLU(),
            nn.Linear(128, 2),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return nn.functional.cross_entropy(self(batch[0]), batch[1])

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self(batch[0])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def digits_run(tmp_path: Any, flip: float, epochs: int = 30, **verdict_kwargs: Any) -> tuple[MemorizationVerdict, Any]:
    x, digits = load_digits(0)
    labels = (digits >= 5).long()
    generator = torch.Generator().manual_seed(1)
    flipped = torch.rand(len(labels), generator=generator) < flip
    noisy = torch.where(flipped, 1 - labels, labels)
    cut, end = 1078, 1437
    train = DataLoader(
        IndexedDataset(TensorDataset(x[:cut], noisy[:cut])),
        batch_size=64,
        shuffle=True,
        generator=torch.Generator().manual_seed(0),
    )
    val = DataLoader(TensorDataset(x[cut:end], noisy[cut:end]), batch_size=512)
    verdict = MemorizationVerdict(print_summary=False, **verdict_kwargs)
    callbacks = [InformationMeasures(layers=["net.0", "net.2", "net.4"], seed=0), TrainingDynamics(), verdict]
    trainer = fast_trainer(tmp_path, max_epochs=epochs, callbacks=callbacks)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(BinaryMLP(), train, val)
    return verdict, (trainer, flipped[:cut])


def test_a_clean_run_is_not_called_memorizing(tmp_path: Any) -> None:
    verdict, (trainer, _) = digits_run(tmp_path, flip=0.0)
    v = verdict.verdict
    assert isinstance(v, Verdict)
    assert v.memorizing is False and v.kind == "none" and v.onset_epoch is None
    assert v.suspicious == [] and v.layers == []
    assert len(verdict.history) == 30
    for key in ("verdict/memorizing_score", "verdict/kind_score", "verdict/gap"):
        assert key in trainer.callback_metrics
    assert "not memorizing" in verdict.summary()


def test_a_run_with_flipped_labels_is_called_label_noise_and_names_the_flipped_samples(tmp_path: Any) -> None:
    verdict, (trainer, flipped) = digits_run(tmp_path, flip=0.3)
    v = verdict.verdict
    assert v.memorizing is True and v.kind == "label_noise" and v.kind_score > 0.5
    assert v.onset_epoch is not None and 0 <= v.onset_epoch < 30
    assert len(v.suspicious) == 20
    assert float(flipped[v.suspicious].double().mean()) >= 0.8  # 30 % of the samples are flipped
    assert v.layers and all("effective rank" in text for text in v.layers)
    text = verdict.summary()
    assert f"since epoch {v.onset_epoch}" in text and "val_loss" in text and str(v.suspicious[0]) in text
    assert float(trainer.callback_metrics["verdict/memorizing_score"]) > 0.5
    restored = MemorizationVerdict()
    restored.load_state_dict(verdict.state_dict())
    assert restored.history == verdict.history


def test_without_training_dynamics_the_fit_stops_before_training(tmp_path: Any) -> None:
    trainer = fast_trainer(tmp_path, max_epochs=1, callbacks=[MemorizationVerdict()])
    x = torch.randn(32, 64)
    loader = DataLoader(TensorDataset(x, torch.zeros(32, dtype=torch.long)), batch_size=8)
    with pytest.raises(ValueError, match="add TrainingDynamics"):
        trainer.fit(BinaryMLP(), loader, loader)


def test_validation_without_labels_is_said_and_undetermined(tmp_path: Any) -> None:
    x = torch.randn(64, 64)
    train = DataLoader(IndexedDataset(TensorDataset(x, torch.randint(0, 2, (64,)))), batch_size=16)
    val = DataLoader(TensorDataset(x[:32]), batch_size=16)  # inputs only

    class NoLabels(BinaryMLP):
        def validation_step(self, batch: Any, batch_idx: int) -> None:
            self(batch[0])

    verdict = MemorizationVerdict(print_summary=False)
    trainer = fast_trainer(tmp_path, max_epochs=5, callbacks=[TrainingDynamics(), verdict])
    with pytest.warns(UserWarning, match="carry no integer labels"):
        trainer.fit(NoLabels(), train, val)
    assert verdict.verdict.kind == "undetermined" and verdict.verdict.memorizing is None


def test_without_validation_the_verdict_says_why(tmp_path: Any) -> None:
    x = torch.randn(64, 64)
    train = DataLoader(IndexedDataset(TensorDataset(x, torch.randint(0, 2, (64,)))), batch_size=16)
    verdict = MemorizationVerdict(print_summary=False)
    trainer = fast_trainer(tmp_path, max_epochs=5, callbacks=[TrainingDynamics(), verdict])
    trainer.fit(BinaryMLP(), train)
    assert verdict.verdict.kind == "undetermined" and "no validation epoch" in verdict.verdict.reason


def test_the_onset_is_where_the_validation_loss_turns_up_else_where_the_gap_opened():
    train = [0.6, 0.7, 0.75, 0.8, 0.9, 1.0, 1.0, 1.0]
    val = [0.6, 0.7, 0.72, 0.7, 0.65, 0.6, 0.6, 0.6]
    learned = torch.tensor([0.0] * 6 + [5.0] * 4)
    loss = [0.7, 0.6, 0.5, 0.55, 0.7, 0.9, 1.0, 1.1]
    with_loss = memorization_verdict(memorization_evidence(train, val, learned, val_loss=loss), train)
    without = memorization_verdict(memorization_evidence(train, val, learned), train)
    assert with_loss.kind == without.kind == "label_noise"
    assert with_loss.onset_epoch == 2 and without.onset_epoch == 3  # gap 0.1 >= 0.05 first at epoch 3
    with pytest.raises(ValueError, match="val_loss must cover"):
        memorization_evidence(train, val, learned, val_loss=loss[:3])
