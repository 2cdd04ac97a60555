"""Input loss curvature: the estimator against exact Hessians, hygiene, and the LossCurvature callback."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning_helpers import DigitsCNN, DigitsMLP, digits_tensors, fast_trainer
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_infomem import IndexedDataset, LossCurvature
from lightning_infomem.data import MissingIndexError, default_batch_unpack
from lightning_infomem.functional import (
    input_loss_curvature,
    input_loss_curvature_estimates,
    rademacher_probes,
)

ROOT = Path(__file__).resolve().parents[1]


def smooth_model(dim: int = 5, classes: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(dim, 7), nn.Tanh(), nn.Linear(7, classes)).double()


def exact_hessians(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    def loss_of(s: int):
        return lambda z: nn.functional.cross_entropy(model(z[None]), y[s : s + 1], reduction="sum")

    return torch.stack([torch.autograd.functional.hessian(loss_of(s), x[s]) for s in range(x.shape[0])])


# ------------------------------------------------------------------------------------- estimator
def test_matches_exact_hessian_probe_by_probe() -> None:
    model = smooth_model()
    x = torch.randn(4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 1])
    step, num_probes = 1e-6, 6
    probes = rademacher_probes(tuple(x.shape), num_probes, torch.Generator().manual_seed(2), torch.float64)
    estimates = input_loss_curvature_estimates(model, x, y, num_probes, step, probes=probes)
    hessians = exact_hessians(model, x, y)  # [S, D, D]
    hv = torch.einsum("sij,psj->psi", hessians, probes)  # H v for every probe and sample
    torch.testing.assert_close(estimates.norm, (step * hv).norm(dim=2).mean(0), rtol=1e-4, atol=0)
    torch.testing.assert_close(estimates.squared_norm, (step * hv).square().sum(2).mean(0), rtol=1e-4, atol=0)
    torch.testing.assert_close(estimates.trace, (probes * hv).sum(2).mean(0), rtol=1e-4, atol=1e-9)
    same = input_loss_curvature(model, x, y, num_probes, step, squared=True, probes=probes)
    torch.testing.assert_close(same, estimates.squared_norm)


def test_converges_to_frobenius_norm_and_trace() -> None:
    model = smooth_model(dim=4)
    x = torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    y = torch.tensor([2, 0, 1])
    step, copies = 1e-4, 500
    # 500 copies of each sample with 4 probes each: 2,000 probes per sample in a few batched passes
    estimates = input_loss_curvature_estimates(
        model, x.repeat(copies, 1), y.repeat(copies), 4, step, generator=torch.Generator().manual_seed(0)
    )
    estimates = type(estimates)(*(t.reshape(copies, 3).mean(0) for t in estimates))
    hessians = exact_hessians(model, x, y)
    frobenius = hessians.square().sum(dim=(1, 2))
    torch.testing.assert_close(estimates.squared_norm / step**2, frobenius, rtol=0.05, atol=0)
    trace = hessians.diagonal(dim1=1, dim2=2).sum(1)
    assert (estimates.trace - trace).abs().max() < 0.1 * hessians.abs().sum(dim=(1, 2)).max()


def test_independent_of_batch_size_and_batch_mates() -> None:
    x, y = digits_tensors("train")
    x, y = x[:40].double(), y[:40]
    model = DigitsMLP().double()
    probes = rademacher_probes(tuple(x.shape), 4, torch.Generator().manual_seed(0), torch.float64)
    whole = input_loss_curvature(model, x, y, 4, probes=probes)
    chunked = input_loss_curvature(model, x, y, 4, probes=probes, chunk_size=7)
    torch.testing.assert_close(whole, chunked, rtol=1e-9, atol=1e-12)
    alone = input_loss_curvature(model, x[5:6], y[5:6], 4, probes=probes[:, 5:6])
    torch.testing.assert_close(alone, whole[5:6], rtol=1e-9, atol=1e-12)
    generated = input_loss_curvature(model, x, y, 4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(generated, input_loss_curvature(model, x, y, 4, generator=torch.Generator().manual_seed(0)))
    assert (whole > 0).all()


def test_reduced_loss_is_refused() -> None:
    x, y = digits_tensors("train")
    with pytest.raises(ValueError, match="one loss per sample"):
        input_loss_curvature(DigitsMLP(), x[:8], y[:8], loss_fn=nn.functional.cross_entropy)


@pytest.mark.parametrize(
    "kwargs, match",
    [({"num_probes": 0}, "num_probes"), ({"step": 0.0}, "step"), ({"chunk_size": 0}, "chunk_size")],
)
def test_argument_errors(kwargs: dict[str, Any], match: str) -> None:
    x, y = digits_tensors("train")
    with pytest.raises(ValueError, match=match):
        input_loss_curvature(DigitsMLP(), x[:4], y[:4], **kwargs)


class Hygiene(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(64, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.5))
        self.head = nn.Linear(16, 10)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


def test_eval_mode_and_gradient_hygiene() -> None:
    x, y = digits_tensors("train")
    model = Hygiene()
    model.train()
    model.head.eval()  # a submodule the user froze in eval mode stays so
    running_mean = model.body[1].running_mean.clone()
    x_in = x[:32].clone()
    first = input_loss_curvature(model, x_in, y[:32], 3, generator=torch.Generator().manual_seed(0))
    second = input_loss_curvature(model, x_in, y[:32], 3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(first, second)  # dropout off: deterministic
    alone = input_loss_curvature(model, x_in[:1], y[:1], 3, probes=torch.ones(3, 1, 64))
    batch_probes = torch.ones(3, 32, 64)
    assert torch.allclose(alone, input_loss_curvature(model, x_in, y[:32], 3, probes=batch_probes)[:1])  # BN eval
    assert model.training and model.body.training and model.body[3].training and not model.head.training
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(model.body[1].running_mean, running_mean)
    assert not x_in.requires_grad and x_in.grad is None
    assert torch.is_grad_enabled()


def test_works_inside_inference_mode() -> None:
    x, y = digits_tensors("train")
    model = DigitsMLP()
    expected = input_loss_curvature(model, x[:16], y[:16], 2, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        xi, yi = x[:16].clone(), y[:16].clone()  # inference tensors
        scores = input_loss_curvature(model, xi, yi, 2, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(scores, expected)
    assert all(p.grad is None for p in model.parameters())


# -------------------------------------------------------------------------------------- callback
class IndexedMixin:
    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y, _ = batch
        return nn.functional.cross_entropy(self(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y, *_ = batch
        return nn.functional.cross_entropy(self(x), y)


class IndexedMLP(IndexedMixin, DigitsMLP):
    pass


class IndexedCNN(IndexedMixin, DigitsCNN):
    pass


def indexed_loader(num: int = 200, image: bool = False, shuffle: bool = True, batch_size: int = 50) -> DataLoader:
    x, y = digits_tensors("train", image=image)
    data = IndexedDataset(TensorDataset(x[:num].clone(), y[:num].clone()))
    return DataLoader(data, batch_size=batch_size, shuffle=shuffle, generator=torch.Generator().manual_seed(0))


def test_indexed_dataset_items() -> None:
    base = TensorDataset(torch.zeros(3, 2), torch.tensor([0, 1, 0]))
    assert IndexedDataset(base)[1][2] == 1
    assert IndexedDataset([{"x": 1.0}])[0] == {"x": 1.0, "index": 0}
    assert IndexedDataset([5.0, 6.0])[1] == (6.0, 1)
    x, y, index = default_batch_unpack({"input": torch.zeros(2), "label": torch.ones(2), "index": torch.arange(2)})
    assert index.tolist() == [0, 1]


def test_callback_scores_every_sample_and_exports(tmp_path: Path) -> None:
    callback = LossCurvature(num_probes=2, every_n_epochs=2, num_images=0)
    trainer = fast_trainer(tmp_path, max_epochs=4, limit_val_batches=0)
    trainer.callbacks.append(callback)
    trainer.fit(IndexedMLP(), indexed_loader())
    assert callback.epochs_scored == [1, 3]
    curvature = callback.scores["curvature"]
    assert set(callback.scores) == {"curvature", "last_curvature", "epochs"}
    assert curvature.shape == (200,) and torch.isfinite(curvature).all()
    assert (callback.num_scored == 2).all()
    _, y = digits_tensors("train")
    assert torch.equal(callback.labels, y[:200])
    values, indices = callback.topk(5)
    assert torch.equal(values, curvature.sort(descending=True).values[:5])
    path = callback.to_csv(tmp_path / "scores.csv")
    lines = Path(path).read_text().splitlines()
    assert lines[0] == "index,label,curvature,last_curvature,epochs" and len(lines) == 201
    assert int(lines[1].split(",")[0]) == int(indices[0])


def test_missing_index_is_a_clear_error(tmp_path: Path) -> None:
    x, y = digits_tensors("train")
    trainer = fast_trainer(tmp_path, max_epochs=1, limit_val_batches=0)
    trainer.callbacks.append(LossCurvature(num_probes=1))
    with pytest.raises(MissingIndexError, match="IndexedDataset"):
        trainer.fit(DigitsMLP(), DataLoader(TensorDataset(x[:64], y[:64]), batch_size=32))


def test_user_dataloader_and_tensorboard(tmp_path: Path) -> None:
    logger = TensorBoardLogger(str(tmp_path), name="tb")
    callback = LossCurvature(indexed_loader(120, image=True, shuffle=False), num_probes=1, num_images=6)
    trainer = fast_trainer(tmp_path, max_epochs=1, logger=logger, limit_val_batches=0)
    trainer.callbacks.append(callback)
    trainer.fit(IndexedCNN(), indexed_loader(120, image=True))
    assert callback.scores["curvature"].shape == (120,)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(Path(logger.log_dir)), size_guidance={"histograms": 0, "images": 0})
    events.Reload()
    assert {"curvature/curvature", "curvature/last_curvature"} <= set(events.Tags()["histograms"])
    assert "curvature/top_curvature" in events.Tags()["images"]


class Snapshot(Callback):
    def __init__(self) -> None:
        self.states: list[dict[str, Any]] = []

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        (callback,) = [c for c in trainer.callbacks if isinstance(c, LossCurvature)]
        self.states.append(callback.state_dict())


def test_state_survives_checkpoint_and_resume(tmp_path: Path) -> None:
    first = LossCurvature(num_probes=1, num_images=0)
    checkpoint = ModelCheckpoint(dirpath=str(tmp_path), save_last=True)
    trainer = fast_trainer(tmp_path, max_epochs=2, enable_checkpointing=True, limit_val_batches=0)
    trainer.callbacks.extend([first, checkpoint])
    trainer.fit(IndexedMLP(), indexed_loader(100))
    saved = first.state_dict()

    resumed = LossCurvature(num_probes=1, num_images=0)
    snapshot = Snapshot()
    trainer = fast_trainer(tmp_path, max_epochs=4, enable_checkpointing=False, limit_val_batches=0)
    trainer.callbacks.extend([resumed, snapshot])  # the snapshot runs after the scoring of each epoch
    trainer.fit(IndexedMLP(), indexed_loader(100), ckpt_path=str(tmp_path / "last.ckpt"))
    assert resumed.epochs_scored == [0, 1, 2, 3]
    assert (resumed.num_scored == 4).all()
    after_epoch_2 = snapshot.states[0]
    torch.testing.assert_close(after_epoch_2["score_sum"] - after_epoch_2["last_scores"], saved["score_sum"])
    state = resumed.state_dict()
    fresh = LossCurvature()
    fresh.load_state_dict(state)
    torch.testing.assert_close(fresh.scores, resumed.scores, equal_nan=True)


def test_callback_argument_errors() -> None:
    for kwargs in ({"every_n_epochs": 0}, {"num_probes": 0}, {"step": -1.0}, {"max_batches": 0}, {"num_images": -1}):
        with pytest.raises(ValueError):
            LossCurvature(**kwargs)


# ------------------------------------------------------------------------------------------- DDP
class DumpState(Callback):
    def __init__(self, directory: str) -> None:
        self.directory = directory

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        (callback,) = [c for c in trainer.callbacks if isinstance(c, LossCurvature)]
        torch.save(callback.state_dict(), os.path.join(self.directory, f"rank{trainer.global_rank}.pt"))


@pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available() or sys.platform == "win32",
    reason="torch.distributed with the gloo backend is not available",
)
@pytest.mark.slow
@pytest.mark.distributed
def test_ddp_scores_gathered_by_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lightning.fabric.plugins.environments.lightning import find_free_network_port

    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(find_free_network_port()))
    # this sandbox cannot pass the spawned processes' tensors by file descriptor
    strategy = torch.multiprocessing.get_sharing_strategy()
    torch.multiprocessing.set_sharing_strategy("file_system")
    try:
        _run_ddp(tmp_path)
    finally:
        torch.multiprocessing.set_sharing_strategy(strategy)


def _run_ddp(tmp_path: Path) -> None:
    trainer = fast_trainer(
        tmp_path, max_epochs=1, strategy="ddp_spawn", devices=2, limit_val_batches=0, use_distributed_sampler=True
    )
    callback = LossCurvature(num_probes=1, num_images=0)
    trainer.callbacks.extend([callback, DumpState(str(tmp_path))])
    trainer.fit(IndexedMLP(), indexed_loader(101, batch_size=20))  # odd: the sampler pads one sample
    states = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    # the callback the user holds, in the main process, has rank 0's results back
    assert callback.epochs_scored == [0] and callback.scores["curvature"].shape == (101,)
    assert torch.equal(callback.score_sum, states[0]["score_sum"].double())
    for key in ("score_sum", "num_scored", "labels"):
        assert torch.equal(states[0][key], states[1][key])
    assert states[0]["score_sum"].shape == (101,) and (states[0]["num_scored"] == 1).all()
    assert (states[0]["score_sum"] > 0).all()


# --------------------------------------------------------------------------------------- example
def test_mislabeled_scores_example_quick_run(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    spec = importlib.util.spec_from_file_location("mislabeled_scores", ROOT / "examples" / "mislabeled_scores.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    threads = torch.get_num_threads()
    try:
        rows = module.main(["--quick", "--out", str(tmp_path)])
    finally:
        torch.set_num_threads(threads)
    (row,) = rows
    assert row["noise"] == 0.10 and row["flipped"] > 0
    for name, _, _ in module.SCORES:
        if f"AUROC {name}" in row:
            assert 0.0 <= row[f"AUROC {name}"] <= 1.0 and 0.0 <= row[f"found {name}"] <= 1.0
    assert row["AUROC cumulative loss"] > 0.8  # found by the training losses even after 3 epochs
    assert "AUROC FZ memorization" not in row  # the quick run trains no subset models
    summary = json.loads((tmp_path / "results.json").read_text())
    assert summary["summary"][0]["AUROC curvature"] == row["AUROC curvature"]
    assert set(summary["costs"]) >= {"dynamics", "curvature", "final loss"}
    assert (tmp_path / "results.csv").exists()
    out, err = capsys.readouterr()
    assert module.SMOKE_RUN in err and module.SMOKE_RUN in out  # said before the run and under its tables


def test_mislabeled_scores_help_answers_before_the_heavy_imports() -> None:
    code = (
        "import runpy, sys\n"
        f"sys.argv = ['mislabeled_scores.py', '--help']\n"
        "try:\n"
        f"    runpy.run_path({str(ROOT / 'examples' / 'mislabeled_scores.py')!r}, run_name='__main__')\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('imported torch' if 'torch' in sys.modules else 'torch not imported')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "--quick" in result.stdout and "torch not imported" in result.stdout, result.stdout + result.stderr


def test_a_step_that_leaves_the_inputs_range_is_refused_not_scored_nan() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    x, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    with pytest.raises(ValueError, match=r"step=1e\+300 moves the inputs out of the range of torch.float32"):
        input_loss_curvature(model, x, y, step=1e300)
    assert torch.isfinite(input_loss_curvature(model, x, y, step=1e-3)).all()


def test_scores_that_are_not_finite_are_reported_once(tmp_path: Path) -> None:
    class NaNLoss(IndexedMLP):
        pass

    def nan_loss(out: Tensor, y: Tensor) -> Tensor:
        return nn.functional.cross_entropy(out, y, reduction="none") * float("nan")

    callback = LossCurvature(num_probes=1, loss_fn=nan_loss)
    trainer = fast_trainer(tmp_path, max_epochs=2, limit_val_batches=0)
    trainer.callbacks.append(callback)
    with pytest.warns(UserWarning, match=r"LossCurvature: 200 of the 200 scores of epoch 0 are NaN or infinite"):
        trainer.fit(NaNLoss(), indexed_loader())


def test_token_ids_are_refused_on_the_first_batch_naming_the_embeddings_route(tmp_path: Path) -> None:
    ids = torch.randint(0, 50, (40, 8))
    data = IndexedDataset(TensorDataset(ids, torch.randint(0, 3, (40,))))
    for scoring in (None, DataLoader(data, batch_size=20)):
        callback = LossCurvature(scoring, num_probes=1)
        trainer = fast_trainer(tmp_path, max_epochs=2, limit_val_batches=0)
        trainer.callbacks.append(callback)
        with pytest.raises(ValueError, match=r"inputs are torch.int64 \(token ids\?\).*batch_unpack.*inputs_embeds"):
            trainer.fit(IndexedMLP(), DataLoader(data, batch_size=20))
        assert trainer.global_step == 0 and callback.epochs_scored == []


@pytest.mark.slow
def test_the_token_recipe_scores_do_not_depend_on_the_padding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/curvature.md's recipe for token models, run as written (it fits a tiny GPT-2), then scored on the same
    sequences padded with another id: the logits and the curvature are the same (the mask reaches the model and
    the pooling; without it a model given inputs_embeds pools the last position, a pad)."""
    pytest.importorskip("transformers")
    import re

    from lightning_infomem.functional import input_loss_curvature

    text = (Path(__file__).resolve().parents[1] / "docs" / "curvature.md").read_text()
    section = text[text.index("## Token models") :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, Any] = {}
    exec(compile(code, "docs/curvature.md", "exec"), namespace)  # noqa: S102 - the documented recipe, as written
    module, embeddings_of, logits_of = namespace["module"], namespace["embeddings_of"], namespace["logits_of"]
    ids, mask, labels = namespace["ids"], namespace["mask"], namespace["labels"]
    assert bool((mask == 0).any())  # the recipe's batches are padded
    index = torch.arange(len(ids))
    module.eval()
    inputs, _, _ = embeddings_of((ids, mask, labels, index))
    repadded, _, _ = embeddings_of((ids.masked_fill(mask == 0, 7), mask, labels, index))
    with torch.no_grad():
        torch.testing.assert_close(logits_of(module, inputs), logits_of(module, repadded))
    scores = [
        input_loss_curvature(lambda x: logits_of(module, x), x, labels, 2, generator=torch.Generator().manual_seed(0))
        for x in (inputs, repadded)
    ]
    torch.testing.assert_close(scores[0], scores[1], rtol=1e-4, atol=1e-6)
