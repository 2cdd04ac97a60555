"""Subsampled memorization and influence: estimators against direct loops, resume, and parallel workers."""

from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning_helpers import DigitsMLP, digits_tensors, fast_trainer
from torch.utils.data import TensorDataset

from lightning_infomem import SubsampleRecords, load_records, train_on_subsets
from lightning_infomem.functional import (
    InfluenceTooLargeError,
    influence_estimates,
    influence_from_masks,
    influence_per_class,
    influence_topk,
    memorization_estimates,
    memorization_from_masks,
    rms_error_bound,
)
from lightning_infomem.subsampling import RecordError

NUM_MODELS = 6


# ------------------------------------------------------------------------------------- estimators
def _direct(in_train: torch.Tensor, hits: torch.Tensor) -> tuple[float, float, bool]:
    """One column: (difference of masked means, its stderr, defined) by a plain loop."""
    inside = [float(h) for h, m in zip(hits.tolist(), in_train.tolist(), strict=True) if m]
    outside = [float(h) for h, m in zip(hits.tolist(), in_train.tolist(), strict=True) if not m]
    if not inside or not outside:
        return 0.0, 0.0, False
    p_in, p_out = sum(inside) / len(inside), sum(outside) / len(outside)
    se = math.sqrt(p_in * (1 - p_in) / len(inside) + p_out * (1 - p_out) / len(outside))
    return p_in - p_out, se, True


def _random_masks(t: int = 30, n: int = 25, m: int = 7, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    in_train = torch.rand(t, n, generator=g) < 0.7
    in_train[:, 0] = True  # every model saw example 0
    in_train[:, 1] = False  # no model saw example 1
    correct = torch.rand(t, n, generator=g) < 0.5 + 0.4 * in_train.float()
    test_correct = torch.rand(t, m, generator=g) < 0.6
    return in_train, correct, test_correct


def test_memorization_matches_direct_computation() -> None:
    in_train, correct, _ = _random_masks()
    est = memorization_estimates(in_train, correct)
    for i in range(in_train.shape[1]):
        value, se, defined = _direct(in_train[:, i], correct[:, i])
        assert est.value[i].item() == pytest.approx(value, abs=1e-12)
        assert est.stderr[i].item() == pytest.approx(se, abs=1e-12)
        assert bool(est.defined[i]) is defined
    assert not est.defined[:2].any() and est.defined[2:].all()
    assert torch.isfinite(est.value).all() and torch.isfinite(est.stderr).all()
    assert torch.equal(memorization_from_masks(in_train, correct), est.value)
    assert torch.equal(memorization_from_masks(in_train.int(), correct.long()), est.value)  # 0/1 integers


def test_influence_matches_direct_computation() -> None:
    in_train, _, test_correct = _random_masks()
    est = influence_estimates(in_train, test_correct)
    assert est.value.shape == (test_correct.shape[1], in_train.shape[1])
    for j in range(test_correct.shape[1]):
        for i in range(in_train.shape[1]):
            value, se, defined = _direct(in_train[:, i], test_correct[:, j])
            assert est.value[j, i].item() == pytest.approx(value, abs=1e-6)
            assert est.stderr[j, i].item() == pytest.approx(se, abs=1e-6)
            assert bool(est.defined[i]) is defined
    assert torch.equal(influence_from_masks(in_train, test_correct), est.value)


def test_topk_and_per_class_agree_with_dense() -> None:
    in_train, _, test_correct = _random_masks(t=40, n=30, m=9, seed=1)
    dense = influence_estimates(in_train, test_correct)
    ranked = torch.where(dense.defined, dense.value, torch.tensor(float("-inf")))
    top = influence_topk(in_train, test_correct, 4)
    assert torch.allclose(top.values, ranked.topk(4, dim=1).values)
    assert torch.allclose(top.values, dense.value.gather(1, top.indices))
    assert torch.allclose(top.stderr, dense.stderr.gather(1, top.indices))
    assert not torch.isin(top.indices, torch.tensor([0, 1])).any()  # undefined examples never compete

    train_labels = torch.arange(30) % 3
    test_labels = torch.arange(9) % 3
    same = influence_topk(in_train, test_correct, 50, train_labels=train_labels, test_labels=test_labels)
    valid = same.indices >= 0
    assert (train_labels[same.indices[valid]] == test_labels[:, None].expand_as(valid)[valid]).all()
    assert (same.values[~valid] == 0).all()  # padding: index -1, value 0

    blocks = influence_per_class(in_train, test_correct, train_labels, test_labels)
    assert sorted(blocks) == [0, 1, 2]
    for test_idx, train_idx, est in blocks.values():
        assert torch.allclose(est.value, dense.value[test_idx][:, train_idx])


def test_influence_memory_budget_is_explained() -> None:
    in_train, _, test_correct = _random_masks()
    with pytest.raises(InfluenceTooLargeError, match="influence_topk.*per_class.*fewer test examples"):
        influence_from_masks(in_train, test_correct, max_result_bytes=100)
    assert influence_from_masks(in_train, test_correct, max_result_bytes=None).shape == (7, 25)


def test_input_checks_and_error_bound() -> None:
    with pytest.raises(ValueError, match="same shape"):
        memorization_estimates(torch.ones(3, 4, dtype=torch.bool), torch.ones(3, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="one row per model"):
        influence_from_masks(torch.ones(3, 4, dtype=torch.bool), torch.ones(2, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="boolean"):
        memorization_estimates(torch.ones(3, 4), torch.ones(3, 4))
    assert rms_error_bound(2000, 0.7) == pytest.approx(math.sqrt(1 / 1400 + 1 / 600))


# ------------------------------------------------------------------------------------------ runner
def _data() -> tuple[TensorDataset, TensorDataset]:
    x, y = digits_tensors("train")
    xv, yv = digits_tensors("val")
    return TensorDataset(x[:150], y[:150]), TensorDataset(xv[:40], yv[:40])


def build(index: int) -> tuple[Any, Any]:
    """Module level, so that spawned workers can unpickle it."""
    return DigitsMLP(lr=0.02, hidden=16), fast_trainer(".", max_epochs=2)


def build_crashing(index: int) -> tuple[Any, Any]:
    if index == 4:
        raise RuntimeError("simulated crash at model 4")
    return build(index)


def _run(out_dir: Any, builder: Any = build, **kwargs: Any) -> SubsampleRecords:
    train, test = _data()
    options = {"test_dataset": test, "num_models": NUM_MODELS, "batch_size": 32, "progress": False}
    options.update(kwargs)
    return train_on_subsets(builder, train, out_dir, **options)


def _assert_same(a: SubsampleRecords, b: SubsampleRecords) -> None:
    assert torch.equal(a.indices, b.indices)
    assert torch.equal(a.in_train, b.in_train)
    assert torch.equal(a.train_correct, b.train_correct)
    assert a.test_correct is not None and b.test_correct is not None
    assert torch.equal(a.test_correct, b.test_correct)
    assert torch.equal(a.memorization().value, b.memorization().value)
    assert torch.equal(a.influence().value, b.influence().value)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> SubsampleRecords:
    return _run(tmp_path_factory.mktemp("reference"))


def test_runner_records(reference: SubsampleRecords) -> None:
    assert reference.in_train.shape == (NUM_MODELS, 150)
    assert (reference.in_train.sum(1) == 105).all()  # round(0.7 * 150)
    assert reference.test_correct is not None and reference.test_correct.shape == (NUM_MODELS, 40)
    assert reference.train_labels is not None and reference.train_labels.shape == (150,)
    assert len({tuple(row.tolist()) for row in reference.in_train}) == NUM_MODELS  # independent subsets
    assert reference.train_correct.float().mean() > 0.2  # better than chance (0.1)
    top = reference.influence_topk(3)
    assert top.indices.shape == (40, 3)


def test_resume_after_crash_equals_uninterrupted(tmp_path: Any, reference: SubsampleRecords) -> None:
    partial = _run(tmp_path, max_models=2)
    assert partial.num_models == 2
    with pytest.raises(RuntimeError, match="simulated crash"):
        _run(tmp_path, builder=build_crashing)
    assert sorted(os.listdir(tmp_path)) == [
        ".lightning_infomem.lock",
        "config.json",
        *[f"model_{i:05d}.pt" for i in range(4)],
    ]
    _assert_same(_run(tmp_path), reference)  # trains models 4 and 5 only
    _assert_same(load_records(tmp_path, train_labels=reference.train_labels), reference)


@pytest.mark.slow
def test_two_workers_equal_one(tmp_path: Any, reference: SubsampleRecords) -> None:
    _assert_same(_run(tmp_path, workers=2), reference)


def test_rerun_with_other_settings_is_refused(tmp_path: Any) -> None:
    _run(tmp_path, num_models=1)
    with pytest.raises(ValueError, match="different run.*fraction"):
        _run(tmp_path, num_models=1, fraction=0.5)


# ----------------------------------------------------------------------------- damaged and foreign records
def build_longer(index: int) -> tuple[Any, Any]:
    return DigitsMLP(lr=0.02, hidden=16), fast_trainer(".", max_epochs=3)


@pytest.mark.parametrize("damage", ["truncate", "empty", "garbage"])
def test_damaged_record_is_retrained_with_a_warning_naming_it(tmp_path: Any, reference: SubsampleRecords, damage):
    _run(tmp_path)
    path = tmp_path / "model_00003.pt"
    data = path.read_bytes()
    path.write_bytes({"truncate": data[: len(data) // 2], "empty": b"", "garbage": b"not a torch file"}[damage])
    with pytest.raises(RecordError, match="model_00003.pt cannot be read"):
        load_records(tmp_path)
    with pytest.warns(UserWarning, match=r"model_00003.pt cannot be read.*training model 3 again"):
        again = _run(tmp_path)
    _assert_same(again, reference)
    assert (tmp_path / "model_00003.pt.damaged").exists()


def test_rerun_without_config_at_another_fraction_is_refused(tmp_path: Any) -> None:
    _run(tmp_path, num_models=2)
    os.remove(tmp_path / "config.json")
    with pytest.raises(
        RecordError, match=r"model_00000.pt belongs to another run \(fraction: 0.7 \(that record\), 0.5"
    ):
        _run(tmp_path, num_models=3, fraction=0.5)


def test_record_of_another_seed_is_refused(tmp_path: Any) -> None:
    _run(tmp_path / "a", num_models=2)
    _run(tmp_path / "b", num_models=3, seed=7)
    shutil.copy(tmp_path / "b" / "model_00002.pt", tmp_path / "a" / "model_00002.pt")
    with pytest.raises(RecordError, match=r"model_00002.pt belongs to another run.*seed: 7"):
        load_records(tmp_path / "a")
    with pytest.raises(RecordError, match=r"model_00002.pt belongs to another run.*seed: 7"):
        _run(tmp_path / "a", num_models=3)


def test_models_built_with_other_training_settings_are_refused(tmp_path: Any) -> None:
    _run(tmp_path, num_models=2)
    with pytest.raises(RecordError, match=r"model 2 was built with other training settings.*max_epochs"):
        _run(tmp_path, builder=build_longer, num_models=3)
    with pytest.raises(RecordError, match=r"model_00002.pt belongs to models built with other training settings"):
        load_records(tmp_path)


def test_damaged_config_is_named(tmp_path: Any) -> None:
    _run(tmp_path, num_models=1)
    (tmp_path / "config.json").write_text("{ not json")
    with pytest.raises(RecordError, match=r"config.json is damaged"):
        _run(tmp_path, num_models=1)


def test_runner_arguments_are_checked(tmp_path: Any) -> None:
    for kwargs in ({"num_models": 2.0}, {"workers": True}, {"fraction": 1.0}, {"batch_size": 0}):
        with pytest.raises(ValueError, match=next(iter(kwargs))):
            _run(tmp_path, **kwargs)
    with pytest.raises(ValueError, match=r"settings \[.augment.\] cannot be recorded"):
        _run(tmp_path, settings={"augment": object()})


KILL_SCRIPT = """
import os, sys, time
import torch
from torch import nn
from torch.utils.data import TensorDataset
from lightning.pytorch import LightningModule, Trainer
from lightning_infomem import train_on_subsets


class Slow(LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Linear(4, 2)

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        time.sleep(0.05)
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def build(index):
    pids = os.path.join(sys.argv[1], "pids")
    os.makedirs(pids, exist_ok=True)
    open(os.path.join(pids, str(os.getpid())), "w").close()
    return Slow(), Trainer(max_epochs=4, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                           enable_model_summary=False, accelerator="cpu")


if __name__ == "__main__":
    data = TensorDataset(torch.randn(64, 4), torch.randint(0, 2, (64,)))
    train_on_subsets(build, data, sys.argv[1], num_models=40, batch_size=8, workers=2, progress=False)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as handle:  # a zombie has exited
        return handle.read().split(")")[-1].split()[0] != "Z"


def _kill_the_parent_once(tmp_path: Any, script_text: str, ready: str, workers: int = 0) -> tuple[Path, float]:
    """Run ``script_text`` as the parent of a run writing under ``out``; SIGKILL it as soon as a file matching
    ``ready`` is there (and, with ``workers``, that many workers have written their pid under ``out/pids``: the
    kill waits for the events the test needs, not for a time). Returns ``out`` and the time of the kill."""
    script = tmp_path / "run.py"
    script.write_text(script_text)
    out = tmp_path / "out"
    out.mkdir()
    parent = subprocess.Popen([sys.executable, str(script), str(out)], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120

        def is_ready() -> bool:
            started = len(list((out / "pids").iterdir())) if (out / "pids").is_dir() else 0
            return bool(list(out.glob(ready))) and started >= workers

        while not is_ready() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert is_ready(), f"the run never wrote {ready} with {workers} workers started"
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    return out, time.monotonic()


def _wait_until_exited(pids: list[int], killed_at: float) -> None:
    """Wait until the workers have exited. Not a timing check: a worker the parent's death does not end never exits
    (it waits for tasks from a dead parent), so the bound only keeps a broken run from hanging the suite."""
    while any(_alive(pid) for pid in pids) and time.monotonic() < killed_at + 120:
        time.sleep(0.05)
    assert not any(_alive(pid) for pid in pids), "orphaned workers still run 120 s after the parent died"


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_exit_when_the_parent_is_killed(tmp_path: Any) -> None:
    out, killed_at = _kill_the_parent_once(tmp_path, KILL_SCRIPT, "model_*.pt", workers=2)
    records_at_kill = len(list(out.glob("model_*.pt")))
    workers = [int(p.name) for p in (out / "pids").iterdir()]
    assert len(workers) == 2
    _wait_until_exited(workers, killed_at)
    # a worker that saw its parent alive just before the kill may still rename the record it had written
    assert len(list(out.glob("model_*.pt"))) <= records_at_kill + len(workers)
    assert not list(out.glob(".lightning_infomem_tmp_*"))  # the name records are written under


MID_WRITE_SCRIPT = """
import multiprocessing, os, sys, time
from lightning_infomem.subsampling import runner


def slow_save(record, handle):  # a record that takes long to write, so the parent dies in the middle of it
    open(os.path.join(sys.argv[1], "writing"), "w").close()
    time.sleep(1.0)
    handle.write(b"record")


def worker(out):
    runner._exit_with_parent()
    open(os.path.join(out, "worker_pid"), "w").write(str(os.getpid()))
    runner.torch.save = slow_save
    runner._write_record({"index": 0}, out, 0)
    time.sleep(60)


if __name__ == "__main__":
    process = multiprocessing.get_context("spawn").Process(target=worker, args=(sys.argv[1],))
    process.start()
    process.join()
"""


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_worker_whose_parent_dies_mid_write_leaves_no_temp_file(tmp_path: Any) -> None:
    out, killed_at = _kill_the_parent_once(tmp_path, MID_WRITE_SCRIPT, "writing")
    _wait_until_exited([int((out / "worker_pid").read_text())], killed_at)
    # the write was finished, then thrown away: neither a temp file nor a record written after the parent died
    assert not list(out.glob(".lightning_infomem_tmp_*"))
    assert not list(out.glob("model_*.pt"))


def test_records_share_the_per_sample_result_api(tmp_path):
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from lightning_infomem import LossCurvature, TrainingDynamics
    from lightning_infomem.per_sample import PerSampleScores

    in_train = torch.tensor([[1, 0, 1], [0, 1, 1], [1, 0, 0], [0, 1, 0]]).bool()
    correct = torch.tensor([[1, 1, 1], [0, 1, 1], [1, 0, 1], [0, 1, 0]]).bool()
    records = SubsampleRecords(torch.arange(4), in_train, correct, train_labels=torch.tensor([3, 1, 2]))
    estimate = records.memorization()
    assert set(records.scores) == {"memorization", "memorization_stderr"}
    torch.testing.assert_close(records.scores["memorization"], estimate.value.double())
    torch.testing.assert_close(records.scores["memorization_stderr"], estimate.stderr.double())
    values, indices = records.topk(2)
    assert indices.tolist() == estimate.value.argsort(descending=True)[:2].tolist()
    rows = records.rows(extra={"flipped": [True, False, False]})
    assert [row["label"] for row in rows] == [3, 1, 2] and rows[0]["flipped"] is True
    lines = Path(records.to_csv(tmp_path / "m.csv", extra={"flipped": [1, 0, 0]})).read_text().splitlines()
    assert lines[0] == "index,label,memorization,memorization_stderr,flipped" and len(lines) == 4
    with pytest.raises(ValueError, match="extra column 'flipped' has 2 values for 3 samples"):
        records.rows(extra={"flipped": [1, 0]})
    logger = TensorBoardLogger(str(tmp_path), name="tb", version=0)
    records.log_scores([logger], step=7)
    logger.experiment.flush()
    events = EventAccumulator(logger.log_dir, size_guidance={"histograms": 0})
    events.Reload()
    assert [e.step for e in events.Histograms("memorization")] == [7]
    # one implementation: the three classes share the mixin's methods, not copies of them
    for cls in (TrainingDynamics, LossCurvature, SubsampleRecords):
        assert issubclass(cls, PerSampleScores)
        for method in ("topk", "rows", "to_csv", "log_scores"):
            assert getattr(cls, method) is getattr(PerSampleScores, method), (cls, method)
    # before anything is scored, there is no file to write
    for empty in (TrainingDynamics(), LossCurvature()):
        with pytest.raises(ValueError, match="nothing to write"):
            empty.to_csv(tmp_path / "empty.csv")
        assert not (tmp_path / "empty.csv").exists()


# ------------------------------------------------------------------------ the runner keeps its records usable
def test_nan_settings_compare_equal_and_the_run_continues(tmp_path: Any) -> None:
    first = _run(tmp_path, num_models=2, settings={"wd": float("nan"), "aug": [1, 2]})
    again = _run(tmp_path, num_models=3, settings={"aug": [1, 2], "wd": float("nan")})  # same settings, any order
    assert torch.equal(again.in_train[:2], first.in_train)
    with pytest.raises(ValueError, match=r"different run \(settings: saved .*NaN.*, now .*0\.1"):
        _run(tmp_path, num_models=3, settings={"aug": [1, 2], "wd": 0.1})


class WithFunctionHparam(DigitsMLP):
    def __init__(self) -> None:
        super().__init__(lr=0.02, hidden=16)
        self.hparams["loss"] = lambda logits, y: logits  # its repr holds a memory address


def build_with_function(index: int) -> tuple[Any, Any]:
    return WithFunctionHparam(), fast_trainer(".", max_epochs=1)


def test_settings_without_a_stable_description_are_refused_up_front(tmp_path: Any) -> None:
    with pytest.raises(ValueError, match="hyperparameter 'loss' = <function .* has no stable description"):
        _run(tmp_path, builder=build_with_function, num_models=1)
    assert not list(tmp_path.glob("model_*.pt"))


def test_a_second_run_in_the_same_directory_is_refused_naming_the_lock(tmp_path: Any) -> None:
    from lightning_infomem.subsampling.runner import _lock_directory, _unlock_directory

    held = _lock_directory(str(tmp_path))  # as a run in another process would hold it
    try:
        with pytest.raises(RuntimeError, match=r"another train_on_subsets run holds .*\.lightning_infomem\.lock"):
            _run(tmp_path, num_models=1)
    finally:
        _unlock_directory(held)
    (tmp_path / ".tmp_mine.pt").write_bytes(b"the user's own file")
    (tmp_path / ".lightning_infomem_tmp_00007_12345.pt").write_bytes(b"a record a killed run was writing")
    _run(tmp_path, num_models=1)
    assert (tmp_path / ".tmp_mine.pt").read_bytes() == b"the user's own file"  # not ours: kept
    assert not (tmp_path / ".lightning_infomem_tmp_00007_12345.pt").exists()  # ours, stale: removed


def test_every_damaged_copy_is_kept(tmp_path: Any) -> None:
    _run(tmp_path, num_models=2)
    path = tmp_path / "model_00001.pt"
    for damage in (b"first damage", b"second damage"):
        path.write_bytes(damage)
        with pytest.warns(UserWarning, match="model_00001.pt cannot be read"):
            _run(tmp_path, num_models=2)
    assert (tmp_path / "model_00001.pt.damaged").read_bytes() == b"first damage"
    assert (tmp_path / "model_00001.pt.damaged.1").read_bytes() == b"second damage"


def test_seed_and_fraction_errors_name_the_problem(tmp_path: Any) -> None:
    with pytest.raises(ValueError, match=r"seed must be an integer in \[0, "):
        _run(tmp_path, seed=-1)
    with pytest.raises(ValueError, match=r"fraction=0.001 of 150 training examples gives subsets of 0"):
        _run(tmp_path, fraction=0.001)


@pytest.mark.parametrize(
    "field, value, named",
    [
        ("index", "3", "has index '3', not a model number"),
        ("train_correct", torch.zeros(150), "has training correctness that is not a boolean tensor"),
        ("test_correct", torch.zeros(40), "has test correctness that is neither None nor a boolean vector"),
        ("fraction", "0.7", "has fraction '0.7', not a number"),
        ("seconds", None, "has seconds None, not a number"),
        ("run", [1], "has run list, not the identity of a run"),
    ],
)
def test_corrupted_record_fields_name_the_field_and_the_file(tmp_path: Any, field, value, named) -> None:
    _run(tmp_path, num_models=2)
    path = tmp_path / "model_00001.pt"
    record = torch.load(path, weights_only=True)
    record[field] = value
    torch.save(record, path)
    with pytest.raises(RecordError, match=rf"record .*model_00001.pt {named}"):
        load_records(tmp_path)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs are a POSIX thing")
def test_special_files_in_the_directory_are_refused_not_opened(tmp_path: Any) -> None:
    """A FIFO named like a record or like the lock file, and a record that links out of the directory: refused at
    once naming the file (opening a FIFO would block the run, and the directory's lock, forever); the lock is
    released, so the run goes on once the file is removed."""
    import threading

    pytest.importorskip("sklearn")  # the runs train on the digits (a failure inside _catch would hide it)

    def within_a_minute(call: Any) -> BaseException:
        found: list[BaseException] = []
        thread = threading.Thread(target=lambda: _catch(call, found), daemon=True)
        thread.start()
        thread.join(60)
        assert not thread.is_alive(), "blocked on a special file"
        return found[0]

    fifo = tmp_path / "model_00001.pt"
    os.mkfifo(fifo)
    error = within_a_minute(lambda: load_records(tmp_path))
    assert isinstance(error, RecordError) and "is a FIFO, not a regular file" in str(error)
    found: list[BaseException] = []
    with pytest.warns(UserWarning, match="is a FIFO"):  # a run sets it aside as a damaged record and retrains it
        _catch(lambda: _run(tmp_path, num_models=2), found)
    assert not found and os.path.exists(str(fifo) + ".damaged") and fifo.is_file()
    for name in os.listdir(tmp_path):
        if name != ".lightning_infomem.lock":
            os.remove(tmp_path / name)
    lock = tmp_path / ".lightning_infomem.lock"
    lock.unlink(missing_ok=True)  # the lock file a run leaves (a regular file)
    os.mkfifo(lock)
    error = within_a_minute(lambda: _run(tmp_path, num_models=1))
    assert isinstance(error, RecordError) and "the lock file" in str(error)
    lock.unlink()
    outside = tmp_path.parent / f"{tmp_path.name}_outside.pt"
    outside.write_bytes(b"not this run's")
    os.symlink(outside, tmp_path / "model_00001.pt")
    error = within_a_minute(lambda: load_records(tmp_path))
    assert isinstance(error, RecordError) and "outside its directory" in str(error)
    (tmp_path / "model_00001.pt").unlink()
    assert _run(tmp_path, num_models=1).in_train.shape[0] == 1  # the lock was released each time


def _catch(call: Any, found: list[BaseException]) -> None:
    try:
        call()
    except BaseException as error:  # noqa: BLE001 - handed to the test
        found.append(error)


def build_model_only(index: int) -> Any:
    return DigitsMLP(lr=0.02, hidden=16)


def build_swapped(index: int) -> Any:
    return fast_trainer(".", max_epochs=1), DigitsMLP(lr=0.02, hidden=16)


@pytest.mark.parametrize(
    "builder, what",
    [(build_model_only, r"returned a DigitsMLP;"), (build_swapped, r"returned a tuple of 2 \(Trainer, DigitsMLP\);")],
)
def test_a_build_that_returns_the_wrong_thing_is_named(tmp_path: Any, builder: Any, what: str) -> None:
    with pytest.raises(TypeError, match=rf"build\(0\) {what} it must return \(module, trainer\)"):
        _run(tmp_path, builder, num_models=1)


def test_records_of_other_lengths_are_refused_naming_the_file(tmp_path: Any) -> None:
    """A record whose subset mask (or test correctness) covers another number of samples than the first record's:
    RecordError naming the file, not torch.stack's error naming none."""
    _run(tmp_path, num_models=2)
    for field in ("mask", "test_correct"):
        path = tmp_path / "model_00001.pt"
        original = torch.load(path, weights_only=True)
        record = dict(original)
        record[field] = record[field][:-3]
        if field == "mask":
            record["train_correct"] = record["train_correct"][:-3]
        torch.save(record, path)
        with pytest.raises(RecordError, match=rf"model_00001.pt covers \d+ (training|test) samples \({field}\)"):
            load_records(tmp_path)
        torch.save(original, path)
