"""TrainingDynamics: every statistic equals a direct loop over the recorded logits; DDP, resume, API."""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from lightning.pytorch import Callback, LightningModule
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning_helpers import digits_tensors, fast_trainer, tiny_gpt2_classifier
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_infomem import IndexedDataset, TrainingDynamics
from lightning_infomem.data import MissingIndexError
from lightning_infomem.functional import (
    STATISTICS,
    dynamics_scores,
    new_forgetting_state,
    presentation_statistics,
    update_forgetting,
)


class IndexedMLP(LightningModule):
    """A digits MLP trained on ``(x, y, index)`` batches; ``shift`` adds an epoch-dependent bias to the logits."""

    def __init__(self, lr: float = 0.05, hidden: int = 32, image: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.image = image
        self.net = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))
        self.lr = lr
        self.register_buffer("shift", torch.zeros(10))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.flatten(1)) + self.shift

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y, _ = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def indexed_digits(num: int = 200, image: bool = False) -> IndexedDataset:
    x, y = digits_tensors("train", image=image)
    return IndexedDataset(TensorDataset(x[:num], y[:num]))


class LogitsRecorder(Callback):
    """Its own forward hook on the head: (epoch, index, logits, labels) of every training batch."""

    def __init__(self) -> None:
        self.records: list[tuple[int, Tensor, Tensor, Tensor]] = []
        self._store: list[Tensor] = []
        self._handle: Any = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._handle = pl_module.net[-1].register_forward_hook(lambda m, a, out: self._store.append(out.detach()))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._handle.remove()
        logits = self._store.pop(0) + pl_module.shift
        self._store.clear()
        self.records.append((trainer.current_epoch, batch[2].clone(), logits.double(), batch[1].clone()))


def direct_scores(records: list[tuple[int, Tensor, Tensor, Tensor]], num: int) -> dict[str, list[float]]:
    """Every score by a plain Python loop over the presentations, one sample at a time."""
    presentations: dict[int, list[tuple[int, float, float, float, bool]]] = {i: [] for i in range(num)}
    for epoch, index, logits, labels in records:
        for row, i in enumerate(index.tolist()):
            z, y = logits[row].tolist(), int(labels[row])
            top = max(z)
            log_sum = top + math.log(sum(math.exp(v - top) for v in z))
            loss = log_sum - z[y]
            margin = z[y] - max(v for c, v in enumerate(z) if c != y)
            presentations[i].append((epoch, loss, margin, math.exp(-loss), margin > 0))
    out: dict[str, list[float]] = {
        name: []
        for name in ("cumulative_loss", "mean_loss", "aum", "forgetting", "learned_epoch", "confidence", "variability")
    }
    for i in range(num):
        seen = presentations[i]
        if not seen:
            for values in out.values():
                values.append(math.nan)
            continue
        losses = [p[1] for p in seen]
        probs = [p[3] for p in seen]
        out["cumulative_loss"].append(sum(losses))
        out["mean_loss"].append(sum(losses) / len(seen))
        out["aum"].append(sum(p[2] for p in seen) / len(seen))
        mean = sum(probs) / len(probs)
        out["confidence"].append(mean)
        out["variability"].append(math.sqrt(max(0.0, sum(p * p for p in probs) / len(probs) - mean * mean)))
        # per epoch: correct when correct at every presentation of that epoch
        by_epoch: dict[int, bool] = {}
        for epoch, *_, correct in seen:
            by_epoch[epoch] = by_epoch.get(epoch, True) and correct
        epochs = sorted(by_epoch)
        events = sum(1 for a, b in zip(epochs, epochs[1:], strict=False) if by_epoch[a] and not by_epoch[b])
        out["forgetting"].append(float(events) if any(by_epoch.values()) else math.inf)
        if not by_epoch[epochs[-1]]:
            out["learned_epoch"].append(math.inf)
        else:
            incorrect = [e for e in epochs if not by_epoch[e]]
            out["learned_epoch"].append(float(incorrect[-1] + 1 if incorrect else epochs[0]))
    return out


def assert_scores_close(ours: dict[str, Tensor], reference: dict[str, list[float]]) -> None:
    for name, values in reference.items():
        expected = torch.tensor(values, dtype=torch.float64)
        torch.testing.assert_close(ours[name], expected, rtol=1e-12, atol=1e-12, equal_nan=True, msg=name)


# ------------------------------------------------------------------------------- functional core
def test_presentation_statistics_against_a_loop():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(50, 7, generator=generator, dtype=torch.float64) * 3
    targets = torch.randint(0, 7, (50,), generator=generator)
    stats = presentation_statistics(logits, targets)
    reference = direct_scores([(0, torch.arange(50), logits, targets)], 50)
    assert stats.shape == (50, len(STATISTICS))
    expected = {name: torch.tensor(values, dtype=torch.float64) for name, values in reference.items()}
    torch.testing.assert_close(stats[:, STATISTICS.index("loss")], expected["cumulative_loss"], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(stats[:, STATISTICS.index("margin")], expected["aum"], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(
        stats[:, STATISTICS.index("probability")], expected["confidence"], rtol=1e-12, atol=1e-12
    )
    assert torch.equal(stats[:, STATISTICS.index("presentations")], torch.ones(50, dtype=torch.float64))
    # half-precision logits are promoted, not computed in half precision
    half = presentation_statistics(logits.bfloat16(), targets)
    assert half.dtype == torch.float64
    with pytest.raises(ValueError, match=r"\[batch, classes\]"):
        presentation_statistics(logits[:, :, None], targets)
    with pytest.raises(ValueError, match="integer class labels"):
        presentation_statistics(logits, targets.double())


def test_forgetting_and_learned_epoch_by_hand():
    # sample 0: correct, wrong, correct -> 1 event, learned from epoch 2; sample 1: never correct -> inf;
    # sample 2: always correct -> 0 events, learned from 0; sample 3: never seen -> NaN
    state = new_forgetting_state(4)
    pattern = [[1, 0, 1, 0], [0, 0, 1, 0], [1, 0, 1, 0]]
    for epoch, correct in enumerate(pattern):
        seen = torch.tensor([1, 1, 1, 0])
        state = update_forgetting(state, seen, torch.tensor(correct), epoch)
    sums = torch.zeros(4, len(STATISTICS), dtype=torch.float64)
    sums[:3, 0] = 3
    scores = dynamics_scores(sums, state)
    assert scores["forgetting"][:3].tolist() == [1.0, math.inf, 0.0] and math.isnan(scores["forgetting"][3])
    assert scores["learned_epoch"][:3].tolist() == [2.0, math.inf, 0.0] and math.isnan(scores["learned_epoch"][3])


# ------------------------------------------------------------------------------------- callback
def _fit(tmp_path: Path, epochs: int = 6, **trainer_kwargs: Any) -> tuple[TrainingDynamics, LogitsRecorder]:
    dynamics, recorder = TrainingDynamics(num_images=0), LogitsRecorder()
    trainer = fast_trainer(tmp_path, max_epochs=epochs, callbacks=[recorder, dynamics], **trainer_kwargs)
    loader = DataLoader(indexed_digits(200), batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0))
    trainer.fit(IndexedMLP(), loader)
    return dynamics, recorder


def test_every_statistic_equals_a_direct_loop_over_the_logits(tmp_path):
    dynamics, recorder = _fit(tmp_path)
    scores = dynamics.scores
    assert set(scores) >= {"cumulative_loss", "aum", "forgetting", "learned_epoch", "confidence", "variability"}
    assert all(value.shape == (200,) for value in scores.values())
    assert_scores_close(scores, direct_scores(recorder.records, 200))
    assert dynamics.epochs_scored == list(range(6))
    assert torch.equal(scores["presentations"], torch.full((200,), 6.0, dtype=torch.float64))
    assert float(scores["forgetting"].nan_to_num(posinf=0).sum()) > 0  # training forgets some samples
    assert torch.equal(dynamics.labels, digits_tensors("train")[1][:200])


def test_each_epochs_history_row_equals_a_direct_loop(tmp_path):
    # per-epoch mean loss and learned fraction, from the recorded logits of that epoch alone
    dynamics, recorder = _fit(tmp_path, epochs=3)
    assert [row["epoch"] for row in dynamics.history] == [0, 1, 2]
    learned: dict[int, bool] = {}
    for row in dynamics.history:
        epoch = row["epoch"]
        records = [r for r in recorder.records if r[0] == epoch]
        losses = torch.cat([nn.functional.cross_entropy(z, y, reduction="none") for _, _, z, y in records])
        correct_by_sample: dict[int, bool] = {}
        for _, index, logits, labels in records:
            for i, ok in zip(index.tolist(), (logits.argmax(1) == labels).tolist(), strict=True):
                correct_by_sample[i] = correct_by_sample.get(i, True) and ok
        learned.update(correct_by_sample)
        assert row["dynamics/mean_loss"] == pytest.approx(float(losses.mean()), rel=1e-9)
        assert row["dynamics/mean_loss"] > 0.01
        assert row["dynamics/learned_fraction"] == pytest.approx(sum(learned.values()) / len(learned), rel=1e-12)


def test_gradient_accumulation_and_mixed_precision_record_every_presentation(tmp_path):
    dynamics, recorder = _fit(tmp_path, epochs=3, accumulate_grad_batches=2, precision="bf16-mixed")
    assert torch.equal(dynamics.scores["presentations"], torch.full((200,), 3.0, dtype=torch.float64))
    reference = direct_scores(recorder.records, 200)
    torch.testing.assert_close(
        dynamics.scores["aum"], torch.tensor(reference["aum"], dtype=torch.float64), rtol=1e-12, atol=1e-12
    )


def test_results_api_matches_loss_curvature(tmp_path):
    dynamics, _ = _fit(tmp_path, epochs=3)
    scores = dynamics.scores
    values, indices = dynamics.topk(5)  # cumulative loss, highest first
    assert torch.equal(values, scores["cumulative_loss"].sort(descending=True).values[:5])
    values, indices = dynamics.topk(5, "aum")  # lowest AUM first: low marks mislabelled
    assert torch.equal(values, scores["aum"].sort().values[:5])
    with pytest.raises(ValueError, match="no score 'margin'"):
        dynamics.topk(3, "margin")
    rows = dynamics.rows()
    assert len(rows) == 200 and set(rows[0]) == {"index", "label", *scores}
    path = dynamics.to_csv(tmp_path / "dynamics.csv", sort_by="forgetting")
    lines = Path(path).read_text().splitlines()
    assert len(lines) == 201 and lines[0].startswith("index,label,cumulative_loss")


def test_tensorboard_histograms_and_image_grid(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorBoardLogger(str(tmp_path), name="tb", version=0)
    dynamics = TrainingDynamics(num_images=8)
    trainer = fast_trainer(tmp_path, max_epochs=2, logger=logger, callbacks=[dynamics])
    trainer.fit(IndexedMLP(image=True), DataLoader(indexed_digits(100, image=True), batch_size=32))
    events = EventAccumulator(str(Path(logger.log_dir)), size_guidance={"histograms": 0, "images": 0})
    events.Reload()
    assert {"dynamics/cumulative_loss", "dynamics/aum", "dynamics/confidence"} <= set(events.Tags()["histograms"])
    assert "dynamics/top_cumulative_loss" in events.Tags()["images"]
    assert "dynamics/forgetting_events" in trainer.callback_metrics
    assert {"dynamics/mean_loss", "dynamics/learned_fraction"} <= set(dynamics.history[-1])


def test_resume_continues_every_statistic_exactly(tmp_path):
    def loader() -> DataLoader:
        return DataLoader(indexed_digits(120), batch_size=24, shuffle=False)

    uninterrupted = TrainingDynamics(num_images=0)
    fast_trainer(tmp_path / "a", max_epochs=4, callbacks=[uninterrupted]).fit(IndexedMLP(), loader())

    first = TrainingDynamics(num_images=0)
    checkpoint = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), save_last=True)
    fast_trainer(tmp_path / "b", max_epochs=2, enable_checkpointing=True, callbacks=[first, checkpoint]).fit(
        IndexedMLP(), loader()
    )
    resumed = TrainingDynamics(num_images=0)
    trainer = fast_trainer(tmp_path / "b", max_epochs=4, callbacks=[resumed])
    trainer.fit(IndexedMLP(), loader(), ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert resumed.epochs_scored == [0, 1, 2, 3]
    for name, value in uninterrupted.scores.items():
        torch.testing.assert_close(resumed.scores[name], value, rtol=0, atol=0, equal_nan=True, msg=name)


def test_errors_name_the_fix(tmp_path):
    trainer = fast_trainer(tmp_path, max_epochs=1, callbacks=[TrainingDynamics()])
    unindexed = DataLoader(TensorDataset(*digits_tensors("train")), batch_size=64)

    class Plain(IndexedMLP):
        def training_step(self, batch: Any, batch_idx: int) -> Tensor:
            x, y = batch
            return nn.functional.cross_entropy(self(x), y)

    with pytest.raises(MissingIndexError, match="IndexedDataset"):
        trainer.fit(Plain(), unindexed)
    trainer = fast_trainer(tmp_path, max_epochs=1, callbacks=[TrainingDynamics(logits_module="head")])
    with pytest.raises(ValueError, match="no module named 'head'.*net.1"):
        trainer.fit(IndexedMLP(), DataLoader(indexed_digits(64), batch_size=32))
    for kwargs in ({"logits_module": 3}, {"prefix": "dynamics/"}, {"num_images": -1}):
        with pytest.raises(ValueError):
            TrainingDynamics(**kwargs)


# ------------------------------------------------------------------------------------------------ DDP
class ShiftEachEpoch(Callback):
    """Makes the predictions change with the epoch (lr = 0: the same on one process or two)."""

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        generator = torch.Generator().manual_seed(trainer.current_epoch)
        pl_module.shift.copy_(torch.randn(10, generator=generator) * 3)


class SaveScores(Callback):
    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_end(self, trainer, pl_module) -> None:
        (dynamics,) = [c for c in trainer.callbacks if isinstance(c, TrainingDynamics)]
        torch.save(dynamics.scores, os.path.join(self.path, f"rank{trainer.global_rank}.pt"))


@pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available() or sys.platform == "win32",
    reason="torch.distributed with the gloo backend is not available",
)
@pytest.mark.slow
@pytest.mark.distributed
def test_two_processes_equal_one(tmp_path, monkeypatch):
    from lightning.fabric.plugins.environments.lightning import find_free_network_port

    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(find_free_network_port()))
    strategy = torch.multiprocessing.get_sharing_strategy()
    torch.multiprocessing.set_sharing_strategy("file_system")  # see test_callback_setups: ddp_spawn needs it here

    def run(devices: int, out: Path, samples: int = 100) -> TrainingDynamics:
        out.mkdir()
        dynamics = TrainingDynamics(logits_module="", num_images=0)  # the LightningModule's output: shifted logits
        options: dict[str, Any] = {"strategy": "ddp_spawn", "devices": 2} if devices == 2 else {}
        trainer = fast_trainer(
            out, max_epochs=4, callbacks=[ShiftEachEpoch(), dynamics, SaveScores(str(out))], **options
        )
        trainer.fit(IndexedMLP(lr=0.0), DataLoader(indexed_digits(samples), batch_size=10, shuffle=False))
        return dynamics

    try:
        run(1, tmp_path / "one")
        main_process = run(2, tmp_path / "two")
        # 101 samples on two processes: the distributed sampler repeats one to pad the shares; counted once
        run(1, tmp_path / "odd_one", samples=101)
        run(2, tmp_path / "odd_two", samples=101)
    finally:
        torch.multiprocessing.set_sharing_strategy(strategy)
    odd_one, odd_two = (torch.load(tmp_path / name / "rank0.pt") for name in ("odd_one", "odd_two"))
    for name in odd_one:
        torch.testing.assert_close(odd_two[name], odd_one[name], rtol=1e-6, atol=1e-6, equal_nan=True, msg=name)
    # the callback the user holds, in the main process, has rank 0's results back
    worker = torch.load(tmp_path / "two" / "rank0.pt")
    assert main_process.epochs_scored == [0, 1, 2, 3] and len(main_process.history) == 4
    for name, value in main_process.scores.items():
        torch.testing.assert_close(value, worker[name], rtol=0, atol=0, equal_nan=True, msg=name)
    assert main_process.topk(5)[1].numel() == 5
    one = torch.load(tmp_path / "one" / "rank0.pt")
    ranks = [torch.load(tmp_path / "two" / f"rank{r}.pt") for r in (0, 1)]
    for name in one:
        # every process holds the same combined scores ...
        torch.testing.assert_close(ranks[1][name], ranks[0][name], rtol=0, atol=0, equal_nan=True, msg=name)
        # ... equal to one process's up to float32 rounding: the logits of a batch of 5 per process and of
        # 10 in one come from different matrix-multiply kernels on some CPUs (oneDNN with AMX)
        torch.testing.assert_close(ranks[0][name], one[name], rtol=1e-6, atol=1e-6, equal_nan=True, msg=name)
    assert float(one["forgetting"].nan_to_num(posinf=0).sum()) > 0


def test_a_third_element_that_is_not_an_index_is_refused_before_training(tmp_path):
    x, y = digits_tensors("train")
    groups = (y % 2).long()  # (x, y, group): a third integer element that is not a sample index
    dynamics = TrainingDynamics()
    trainer = fast_trainer(tmp_path, max_epochs=1, callbacks=[dynamics])
    with pytest.raises(MissingIndexError, match="is not an IndexedDataset"):
        trainer.fit(IndexedMLP(), DataLoader(TensorDataset(x[:200], y[:200], groups[:200]), batch_size=32))
    assert trainer.global_step == 0 and dynamics.epochs_scored == []
    # the same data through IndexedDataset, or a Subset of it, is fine
    subset = torch.utils.data.Subset(IndexedDataset(TensorDataset(x[:200], y[:200])), list(range(100)))
    fast_trainer(tmp_path, max_epochs=1, callbacks=[TrainingDynamics()]).fit(IndexedMLP(), DataLoader(subset, 32))


def test_resuming_on_a_smaller_dataset_is_refused(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer = fast_trainer(tmp_path, max_epochs=1, enable_checkpointing=True, callbacks=[TrainingDynamics(), ckpt])
    trainer.fit(IndexedMLP(), DataLoader(indexed_digits(200), batch_size=32))
    resumed = TrainingDynamics()
    trainer = fast_trainer(tmp_path, max_epochs=2, callbacks=[resumed])
    with pytest.raises(ValueError, match="cover 200 samples but the training set has 120"):
        trainer.fit(IndexedMLP(), DataLoader(indexed_digits(120), batch_size=32), ckpt_path=str(ckpt.last_model_path))


# ------------------------------------------------------------------------------ real model trees
class TokenClassifier(LightningModule):
    """A Hugging Face GPT-2 sequence classifier from a tiny config (random weights, no download)."""

    def __init__(self):
        super().__init__()
        self.model = tiny_gpt2_classifier(num_labels=3)

    def training_step(self, batch, batch_idx):
        ids, y, _ = batch
        return nn.functional.cross_entropy(self.model(input_ids=ids).logits, y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def token_data(num: int = 64) -> IndexedDataset:
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(2, 50, (num, 8), generator=generator)
    ids[::3, 6:] = 0  # padded sequences
    return IndexedDataset(TensorDataset(ids, torch.randint(0, 3, (num,), generator=generator)))


def test_sequence_classification_logits_are_the_models_pooled_ones(tmp_path):
    dynamics = TrainingDynamics()
    trainer = fast_trainer(tmp_path, max_epochs=1, callbacks=[dynamics])
    trainer.fit(TokenClassifier(), DataLoader(token_data(), batch_size=16))
    assert dynamics._module_name == "model"  # not model.score, whose output is per token [B, T, C]
    assert torch.isfinite(dynamics.scores["cumulative_loss"]).all()
    assert dynamics.scores["presentations"].eq(1).all()  # the first batch was recorded too


def test_per_token_logits_are_refused_on_the_first_batch(tmp_path):
    dynamics = TrainingDynamics(logits_module="model.score")
    trainer = fast_trainer(tmp_path, max_epochs=2, callbacks=[dynamics])
    with pytest.raises(ValueError, match=r"'model.score' have shape \[16, 8, 3\], not \[batch, classes\]"):
        trainer.fit(TokenClassifier(), DataLoader(token_data(), batch_size=16))
    assert trainer.global_step <= 1 and dynamics.epochs_scored == []


def test_a_distilled_model_is_scored_on_the_average_it_returns_not_on_one_head(tmp_path):
    """A distilled ViT (timm's DeiT) returns the mean of its head and its distillation head: the logits scored are
    the model's output, not the head's, and not the distillation head's (registered last)."""

    class Distilled(IndexedMLP):
        def __init__(self):
            super().__init__()
            self.head = nn.Linear(10, 10)
            self.head_dist = nn.Linear(10, 10)  # a distilled ViT's second head, last in the module tree

        def forward(self, x):
            features = super().forward(x)
            return (self.head(features) + self.head_dist(features)) / 2

    dynamics = TrainingDynamics()
    trainer = fast_trainer(tmp_path, max_epochs=1, callbacks=[dynamics])
    model = Distilled()
    trainer.fit(model, DataLoader(indexed_digits(64), batch_size=32))
    assert dynamics._module_name == ""  # the LightningModule's output: the average


class CheckpointedMLP(IndexedMLP):
    """The whole network under activation checkpointing: its forward (the head's included) runs again in backward."""

    def forward(self, x: Tensor) -> Tensor:
        if self.training:  # early stop off: the recomputation runs the whole network, head included
            with torch.utils.checkpoint.set_checkpoint_early_stop(False):
                return torch.utils.checkpoint.checkpoint(self.net, x.flatten(1), use_reentrant=False) + self.shift
        return super().forward(x)


def test_activation_checkpointing_counts_each_presentation_once(tmp_path):
    """Checkpointed modules run their forward again during the backward pass: the head's hook fires twice a batch,
    and each presentation still counts once, with the logits of the forward pass."""
    model = CheckpointedMLP()
    calls = []
    model.net[-1].register_forward_hook(lambda m, a, out: calls.append(1) and None)
    dynamics = TrainingDynamics()
    loader = DataLoader(indexed_digits(), batch_size=50, shuffle=True, generator=torch.Generator().manual_seed(0))
    fast_trainer(tmp_path, callbacks=[dynamics], max_epochs=3).fit(model, loader)
    assert len(calls) == 2 * 3 * 4  # recomputed in backward: twice per batch
    assert torch.equal(dynamics.scores["presentations"], torch.full((200,), 3.0, dtype=torch.float64))
    plain = TrainingDynamics()
    loader = DataLoader(indexed_digits(), batch_size=50, shuffle=True, generator=torch.Generator().manual_seed(0))
    fast_trainer(tmp_path, callbacks=[plain], max_epochs=3).fit(IndexedMLP(), loader)
    torch.testing.assert_close(dynamics.scores["cumulative_loss"], plain.scores["cumulative_loss"])


def test_prediction_changes_equal_a_direct_count_between_epochs(tmp_path):
    """Label Wave's signal: per epoch, the samples whose predicted class at their training pass differs from
    their previous epoch's, counted by hand from the recorded logits."""
    dynamics, recorder = _fit(tmp_path, epochs=4)
    previous: dict[int, int] = {}
    for row in dynamics.history:
        epoch = row["epoch"]
        current: dict[int, int] = {}
        for record_epoch, index, logits, _ in recorder.records:
            if record_epoch == epoch:
                current.update(zip(index.tolist(), logits.argmax(1).tolist(), strict=True))
        changes = sum(1 for i, c in current.items() if i in previous and previous[i] != c)
        if epoch == 0:
            assert math.isnan(row["dynamics/prediction_changes"])  # nothing to compare with yet
        else:
            assert row["dynamics/prediction_changes"] == changes
        previous.update(current)
    assert any(row["dynamics/prediction_changes"] > 0 for row in dynamics.history[1:])


def test_a_random_split_of_an_indexed_dataset_is_scored_on_the_full_datasets_indices(tmp_path):
    """random_split(IndexedDataset(...)) gives Subsets whose batches carry the full dataset's indices (up to 199 of
    200): the scores cover all 200 samples, the 40 left out of training are NaN (never scored, not zero), and a
    Subset of that Subset works the same way."""
    x, y = digits_tensors("train")
    full = IndexedDataset(TensorDataset(x[:200], y[:200]))
    train, _ = torch.utils.data.random_split(full, [160, 40], generator=torch.Generator().manual_seed(0))
    nested = torch.utils.data.Subset(train, list(range(120)))
    for dataset, count in ((train, 160), (nested, 120)):
        dynamics = TrainingDynamics()
        trainer = fast_trainer(tmp_path, max_epochs=2, callbacks=[dynamics])
        trainer.fit(IndexedMLP(), DataLoader(dataset, batch_size=32, shuffle=True))
        loss = dynamics.scores["cumulative_loss"]
        assert loss.shape == (200,)
        seen = torch.tensor(sorted(int(dataset[i][-1]) for i in range(len(dataset))))
        assert int(torch.isfinite(loss).sum()) == count and bool(torch.isfinite(loss[seen]).all())


def test_indices_and_labels_a_batch_unpack_gets_wrong_are_named_and_ignored_labels_left_out(tmp_path):
    """A batch_unpack giving indices outside the training set or labels outside the classes fails naming them (not a
    bare index_add_ error); labels of -100 (Hugging Face's ignored label) leave those samples unscored, with one
    warning."""
    data = indexed_digits(64)

    def shifted(batch):
        x, y, index = batch
        return x, y, index + 1000

    def out_of_classes(batch):
        x, y, index = batch
        return x, torch.full_like(y, 12), index

    def some_ignored(batch):
        x, y, index = batch
        return x, torch.where(index % 4 == 0, -100, y), index

    for unpack, message in ((shifted, r"sample indices \[10\d\d, .*outside 0..63"), (out_of_classes, r"labels \[12,")):
        trainer = fast_trainer(tmp_path, max_epochs=1, callbacks=[TrainingDynamics(batch_unpack=unpack)])
        with pytest.raises(ValueError, match=message):
            trainer.fit(IndexedMLP(), DataLoader(data, batch_size=32))
    dynamics = TrainingDynamics(batch_unpack=some_ignored)
    with pytest.warns(UserWarning, match="labelled -100"):
        fast_trainer(tmp_path, max_epochs=2, callbacks=[dynamics]).fit(IndexedMLP(), DataLoader(data, batch_size=32))
    loss = dynamics.scores["cumulative_loss"]
    ignored = torch.arange(64) % 4 == 0
    assert bool(torch.isnan(loss[ignored]).all()) and bool(torch.isfinite(loss[~ignored]).all())
