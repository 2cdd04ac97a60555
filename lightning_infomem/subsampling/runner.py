"""Train many Lightning models on random subsets and estimate memorization and influence (Feldman & Zhang).

`train_on_subsets` trains ``num_models`` fresh models, model ``i`` on a random subset of
``round(fraction * n)`` training examples drawn from a generator seeded by ``(seed, i)``. Each finished
model's record (subset mask, per-example correctness on the training and test sets, and the identity
of its run) is written at once to ``out_dir/model_{i:05d}.pt``: into a temporary file, flushed and
fsynced, then atomically renamed, so a file is complete or absent. A rerun verifies every record
already there (a damaged one is retrained, with a warning naming it; one from another run is
refused, naming it) and skips the models whose record is sound, so a crash or Ctrl-C loses only the
models in progress; several worker processes train models in parallel, and they exit when the
process that started them dies. Model ``i``'s subset, data order and initial seed depend only on
``(seed, i)``, so the result does not depend on the number of workers or on interruptions.
`SubsampleRecords` holds the stacked records and computes the estimates.

A run's identity is what changes what its models learn: the training and test data (a fingerprint
of their contents), ``fraction``, ``seed``, ``batch_size``, the user's ``settings`` and, read off
each built model and trainer, the module class and its hyperparameters, the optimizer and its
settings, and the trainer's epoch and step limits, gradient accumulation, clipping and precision.
Records of different runs are never mixed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import multiprocessing.connection
import os
import random
import re
import sys
import threading
import time
import warnings
from collections.abc import Mapping
from typing import Any, Callable, Optional, Union

import numpy as np
import torch
from lightning.pytorch import LightningModule, Trainer
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from lightning_infomem.checks import check_float, check_int, check_optional_int
from lightning_infomem.subsampling.records import (
    RecordError,
    SubsampleRecords,
    check_regular_file,
    describe_difference,
    load_records,
    read_record,
    record_path,
)

__all__ = ["Builder", "subset_mask", "train_on_subsets"]

Builder = Callable[[int], tuple[LightningModule, Trainer]]
Predict = Callable[[LightningModule, Tensor], Tensor]
_CONFIG = "config.json"
_LOCK = ".lightning_infomem.lock"
_TMP_PREFIX = ".lightning_infomem_tmp_"  # records being written; only files of exactly this form are cleaned up
_TMP_NAME = re.compile(r"^\.lightning_infomem_tmp_\d{5}_\d+\.pt$")


def _model_seed(seed: int, index: int) -> np.random.SeedSequence:
    return np.random.SeedSequence([int(seed), int(index)])


def subset_mask(num_examples: int, fraction: float, seed: int, index: int) -> Tensor:
    """``[n]`` bool mask of model ``index``'s subset: ``round(fraction * n)`` examples, seeded by ``(seed, index)``.

    Example:
        >>> mask = subset_mask(10, 0.7, seed=0, index=3)
        >>> int(mask.sum()), bool((mask == subset_mask(10, 0.7, seed=0, index=3)).all())
        (7, True)
    """
    rng = np.random.default_rng(_model_seed(seed, index).spawn(1)[0])
    mask = np.zeros(num_examples, dtype=bool)
    mask[rng.permutation(num_examples)[: round(fraction * num_examples)]] = True
    return torch.from_numpy(mask)


def _labels_and_fingerprint(dataset: Dataset) -> tuple[Tensor, str]:
    """Labels of ``(x, y)`` items, in order, and a hash of every item's contents."""
    digest = hashlib.blake2b(digest_size=16)
    labels = []
    for x, y in DataLoader(dataset, batch_size=4096):
        for value in (torch.as_tensor(x), torch.as_tensor(y)):
            value = value.detach().cpu().contiguous()
            digest.update(f"{value.dtype}{tuple(value.shape)}".encode())
            digest.update(value.numpy().tobytes() if value.dtype != torch.bfloat16 else value.view(torch.int16).numpy())
        labels.append(torch.as_tensor(y).reshape(-1))
    return torch.cat(labels).long(), digest.hexdigest()


_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def canonical_settings(settings: Optional[Mapping[str, Any]]) -> str:
    """The user's ``settings`` as a canonical JSON text: equal for equal settings (NaN included), compared as text.

    Settings that JSON cannot hold are refused, naming them.

    Example:
        >>> canonical_settings({"wd": float("nan"), "lr": 0.1}) == canonical_settings({"lr": 0.1, "wd": float("nan")})
        True
    """
    if settings is not None and not isinstance(settings, Mapping):
        raise ValueError(f"settings must be a mapping, received {type(settings).__name__}")
    try:
        return json.dumps(dict(settings or {}), sort_keys=True)
    except (TypeError, ValueError) as error:
        bad = [str(k) for k, v in dict(settings or {}).items() if not _json_representable(v)]
        raise ValueError(
            f"settings {bad or list(dict(settings or {}))} cannot be recorded ({error}): give numbers, strings, "
            "bools, None, or lists and dicts of them, so that a rerun can tell equal settings apart from others"
        ) from None


def _json_representable(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def _stable_repr(name: str, value: Any) -> str:
    """``repr(value)``, refused when it holds a memory address (it would differ in every run)."""
    text = repr(value)
    if _ADDRESS.search(text):
        raise ValueError(
            f"{name} = {text} has no stable description (its repr holds a memory address, different in every "
            "process), so the records of one run could not be told apart from another's; give it a value whose "
            "repr is the same in every run (a name, a number), or leave it out of save_hyperparameters"
        )
    return text


def _training_identity(module: LightningModule, trainer: Trainer) -> dict[str, Any]:
    """What the built model and trainer say about how a model learns (compared between records)."""
    hparams = getattr(module, "hparams", {}) or {}
    identity: dict[str, Any] = {
        "module": f"{type(module).__module__}.{type(module).__qualname__}",
        "hparams": {
            str(k): _stable_repr(f"hyperparameter {k!r}", v)
            for k, v in sorted(dict(hparams).items(), key=lambda kv: str(kv[0]))
        },
    }
    for name in ("max_epochs", "min_epochs", "max_steps", "accumulate_grad_batches", "gradient_clip_val", "precision"):
        identity[name] = repr(getattr(trainer, name, None))
    return identity


def _optimizer_identity(trainer: Trainer) -> list[Any]:
    """The optimizers' classes and constructor settings (``defaults``: unchanged by learning-rate schedules)."""
    return [
        [
            type(optimizer).__name__,
            {str(k): _stable_repr(f"optimizer setting {k!r}", v) for k, v in sorted(optimizer.defaults.items())},
        ]
        for optimizer in getattr(trainer, "optimizers", [])
    ]


@torch.no_grad()
def _correct(module: LightningModule, dataset: Dataset, predict: Optional[Predict], batch_size: int) -> Tensor:
    module.eval()
    out = []
    for x, y in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        x = x.to(module.device)
        outputs = predict(module, x) if predict is not None else module(x)
        predicted = outputs.argmax(-1) if outputs.is_floating_point() else outputs
        out.append(predicted.cpu().reshape(-1) == torch.as_tensor(y).reshape(-1))
    return torch.cat(out)


# State of a worker process (set by `_init_worker`) or of the main process when training in-process.
_JOB: dict[str, Any] = {}
# Held while a record is written, so that a worker whose parent died exits between writes, never inside one
# (an exit inside one would leave a temp file behind).
_WRITING = threading.Lock()


def _exit_with_parent() -> None:
    """In a worker process: exit as soon as the process that started it dies (even by SIGKILL).

    Otherwise orphaned workers would go on writing records for seconds, racing a rerun started at once.
    """
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        multiprocessing.connection.wait([parent.sentinel])
        _WRITING.acquire()  # a record being written is finished or removed first; never released
        os._exit(1)

    threading.Thread(target=watch, name="lightning_infomem-parent-watch", daemon=True).start()


def _parent_alive() -> bool:
    parent = multiprocessing.parent_process()
    return parent is None or parent.is_alive()


def _init_worker(job: dict[str, Any]) -> None:
    if job.get("in_worker"):
        _exit_with_parent()
    _JOB.clear()
    _JOB.update(job)
    torch.set_num_threads(job["threads"])
    if job["quiet"]:
        for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
            logging.getLogger(name).setLevel(logging.WARNING)


def _checked_build(built: Any, index: int) -> tuple[LightningModule, Trainer]:
    """``build(index)``'s result if it is ``(LightningModule, Trainer)``; else a ``TypeError`` saying what it is."""
    what = (
        f"a {type(built).__name__} of {len(built)} ({', '.join(type(item).__name__ for item in built)})"
        if isinstance(built, (tuple, list))
        else f"a {type(built).__name__}"
    )
    if not (
        isinstance(built, (tuple, list))
        and len(built) == 2
        and isinstance(built[0], LightningModule)
        and isinstance(built[1], Trainer)
    ):
        raise TypeError(
            f"build({index}) returned {what}; it must return (module, trainer): a fresh LightningModule and a fresh "
            "lightning.pytorch.Trainer, e.g. return MyModel(), Trainer(max_epochs=10)"
        )
    return built[0], built[1]


def _train_one(index: int) -> tuple[int, float, dict[str, Any]]:
    job = _JOB
    start = time.perf_counter()
    train, n = job["train"], job["num_train"]
    mask = subset_mask(n, job["fraction"], job["seed"], index)
    init_seed = int(_model_seed(job["seed"], index).generate_state(1)[0])
    torch.manual_seed(init_seed)
    random.seed(init_seed)
    np.random.seed(init_seed)  # noqa: NPY002 (the global generator user code may rely on)
    module, trainer = _checked_build(job["build"](index), index)
    training = _training_identity(module, trainer)
    loader = DataLoader(
        Subset(train, torch.nonzero(mask)[:, 0].tolist()),
        batch_size=job["batch_size"],
        shuffle=True,
        generator=torch.Generator().manual_seed(init_seed),
    )
    trainer.fit(module, loader)
    training["optimizers"] = _optimizer_identity(trainer)
    record = {
        "index": index,
        "seed": job["seed"],
        "fraction": job["fraction"],
        "run": job["identity"],
        "training": training,
        "mask": mask,
        "train_correct": _correct(module, train, job["predict"], job["eval_batch_size"]),
        "test_correct": None
        if job["test"] is None
        else _correct(module, job["test"], job["predict"], job["eval_batch_size"]),
        "seconds": time.perf_counter() - start,
    }
    _write_record(record, job["out_dir"], index)
    return index, record["seconds"], training


def _write_record(record: dict[str, Any], out_dir: str, index: int) -> None:
    """Write a record so that a crash leaves it complete or absent: temp file, flush, fsync, atomic rename."""
    path = record_path(out_dir, index)
    tmp = os.path.join(out_dir, f"{_TMP_PREFIX}{index:05d}_{os.getpid()}.pt")
    with _WRITING:
        with open(tmp, "wb") as handle:
            torch.save(record, handle)
            handle.flush()
            os.fsync(handle.fileno())
        if not _parent_alive():  # the run was killed: leave nothing for a rerun to race with
            os.remove(tmp)
            os._exit(1)
        os.replace(tmp, path)
        _fsync_directory(out_dir)


def _fsync_directory(path: str) -> None:
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:  # not possible on some platforms (Windows); the rename is still atomic
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def _format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    return (
        f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s"
        if seconds >= 3600
        else (f"{seconds // 60}m{seconds % 60:02d}s")
    )


def _check_config(out_dir: str, config: dict[str, Any]) -> None:
    path = os.path.join(out_dir, _CONFIG)
    check_regular_file(path, "the run's settings file")
    if os.path.exists(path):
        try:
            with open(path) as handle:
                saved = json.load(handle)
            if not isinstance(saved, dict):
                raise ValueError(f"holds a {type(saved).__name__}, not a settings object")
        except ValueError as error:
            raise RecordError(
                f"{path} is damaged ({error}); it records the settings of the run in {out_dir}: restore it, "
                "delete it to rebuild it from the records' own identity, or use a new out_dir"
            ) from None
        different = {k: (saved.get(k), v) for k, v in config.items() if saved.get(k) != v}
        if different:
            details = ", ".join(f"{k}: saved {a!r}, now {b!r}" for k, (a, b) in different.items())
            raise ValueError(
                f"{out_dir} holds models of a different run ({details}; see {path}); pass the same settings and "
                "data to continue it, or a new out_dir"
            )
        return
    tmp = path + f".tmp{os.getpid()}"
    with open(tmp, "w") as handle:
        json.dump(config, handle, indent=2)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _verified_records(out_dir: str, num_models: int, identity: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """The sound records of this run in ``out_dir``; damaged ones are set aside (to retrain), foreign ones refused."""
    sound: dict[int, dict[str, Any]] = {}
    for index in range(num_models):
        path = record_path(out_dir, index)
        if not os.path.exists(path):
            continue
        try:
            record = read_record(path)
        except RecordError as error:
            aside, copy = path + ".damaged", 1
            while os.path.exists(aside):  # keep every damaged copy
                aside, copy = f"{path}.damaged.{copy}", copy + 1
            os.replace(path, aside)
            warnings.warn(f"subsampling: {error}; moved it to {aside} and training model {index} again", stacklevel=3)
            continue
        if record["run"] != identity:
            raise RecordError(
                f"record {path} belongs to another run "
                f"({describe_difference(record['run'], identity, 'that record', 'this call')}); "
                "continue that run with its own settings, or use a new out_dir"
            )
        sound[index] = record
    return sound


def train_on_subsets(
    build: Builder,
    train_dataset: Dataset,
    out_dir: Union[str, os.PathLike],
    *,
    test_dataset: Optional[Dataset] = None,
    num_models: int = 100,
    fraction: float = 0.7,
    seed: int = 0,
    batch_size: int = 64,
    workers: int = 1,
    threads_per_worker: int = 1,
    max_models: Optional[int] = None,
    predict: Optional[Predict] = None,
    eval_batch_size: int = 1024,
    progress: bool = True,
    quiet: bool = True,
    settings: Optional[Mapping[str, Any]] = None,
) -> SubsampleRecords:
    """Train ``num_models`` models on random subsets (resumable, parallel) and return their records.

    Model ``i`` is ``build(i)`` -> ``(module, trainer)``, fitted with
    ``trainer.fit(module, DataLoader(Subset(train_dataset, subset_i), batch_size, shuffle=True))``; then
    every training (and test) example is predicted in eval mode and compared with its label. Before
    ``build(i)`` the torch, numpy and ``random`` seeds are set from ``(seed, i)``; the data order too.

    Requirements: dataset items are ``(x, y)`` with an integer label ``y``; ``module(x)`` returns logits
    ``[B, classes]`` (or pass ``predict(module, x)`` returning logits or predicted labels). The trainer
    should be quiet and light: ``logger=False, enable_checkpointing=False, enable_progress_bar=False,
    enable_model_summary=False``. With ``workers > 1``, ``build``, ``predict`` and the datasets are
    pickled into ``spawn`` processes: ``build`` must be a module-level function (or a
    ``functools.partial`` of one) importable by the workers, not a lambda or a local function, and a
    script using workers needs an ``if __name__ == "__main__":`` guard.

    Resume: records already in ``out_dir`` are verified and their models skipped, so rerunning the same
    call after a crash or Ctrl-C continues where it stopped. A damaged record (truncated, empty,
    unreadable) is moved aside to ``model_XXXXX.pt.damaged`` and its model trained again, with a
    warning naming it; a record of another run (other data, ``fraction``, ``seed``, ``batch_size`` or
    ``settings``, also when ``config.json`` was deleted) and a model built with other training settings
    than the records already there raise `RecordError` naming the file. Raising ``num_models`` later
    adds models.

    Args:
        build: ``index -> (LightningModule, Trainer)``, fresh objects each call.
        train_dataset: map-style dataset of ``(x, y)``; memorization is about these examples.
        out_dir: folder of the per-model records.
        test_dataset: optional ``(x, y)`` dataset for influence estimates.
        num_models: ``t``, the number of models wanted in total.
        fraction: subset size as a fraction of the training set (the paper's 0.7).
        seed: base seed; model ``i`` uses ``(seed, i)``.
        batch_size: training batch size.
        workers: processes training in parallel (1: in this process).
        threads_per_worker: ``torch.set_num_threads`` while training (also in-process, restored after).
        max_models: train at most this many new models in this call, then return (``None``: all).
        predict: ``(module, x) -> logits or labels``; default ``module(x)``.
        eval_batch_size: batch size when predicting the datasets.
        progress: print progress and the estimated time left to stderr.
        quiet: silence Lightning's info messages while training.
        settings: anything else that changes what the models learn and that the run cannot see (data
            augmentation, a pretrained checkpoint, ...), as a JSON-serialisable mapping; part of the run's
            identity.

    Returns:
        `SubsampleRecords` of all models finished in ``out_dir`` with index ``< num_models``.

    Example:
        >>> import tempfile
        >>> from torch import nn
        >>> from torch.utils.data import TensorDataset
        >>> class Net(LightningModule):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.net = nn.Linear(4, 2)
        ...     def forward(self, x):
        ...         return self.net(x)
        ...     def training_step(self, batch, batch_idx):
        ...         x, y = batch
        ...         return nn.functional.cross_entropy(self(x), y)
        ...     def configure_optimizers(self):
        ...         return torch.optim.SGD(self.parameters(), lr=0.1)
        >>> def build(index):
        ...     return Net(), Trainer(max_epochs=1, logger=False, enable_checkpointing=False,
        ...                           enable_progress_bar=False, enable_model_summary=False)
        >>> data = TensorDataset(torch.randn(20, 4), torch.randint(0, 2, (20,)))
        >>> records = train_on_subsets(build, data, tempfile.mkdtemp(), num_models=4, progress=False)
        >>> records.in_train.shape, records.memorization().value.shape
        (torch.Size([4, 20]), torch.Size([20]))
    """
    num_models = check_int(num_models, "num_models", minimum=1)
    fraction = check_float(
        fraction, "fraction", minimum=0.0, maximum=1.0, exclusive_minimum=True, exclusive_maximum=True
    )
    seed = check_int(seed, "seed", minimum=0, maximum=2**63 - 1)  # numpy's SeedSequence takes non-negative seeds
    batch_size = check_int(batch_size, "batch_size", minimum=1)
    workers = check_int(workers, "workers", minimum=1)
    threads_per_worker = check_int(threads_per_worker, "threads_per_worker", minimum=1)
    max_models = check_optional_int(max_models, "max_models", minimum=0)
    eval_batch_size = check_int(eval_batch_size, "eval_batch_size", minimum=1)
    user_settings = canonical_settings(settings)
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    train_labels, train_fingerprint = _labels_and_fingerprint(train_dataset)
    test_labels, test_fingerprint = (None, None) if test_dataset is None else _labels_and_fingerprint(test_dataset)
    subset_size = round(fraction * train_labels.numel())
    if not 1 <= subset_size < train_labels.numel():
        raise ValueError(
            f"fraction={fraction} of {train_labels.numel()} training examples gives subsets of {subset_size}: "
            "each model must train on at least one example and leave at least one out (memorization compares "
            "models with and without an example); choose a fraction between "
            f"{1 / train_labels.numel():.3g} and {1 - 1 / train_labels.numel():.3g} (the paper: 0.7)"
        )
    identity = {
        "num_train": int(train_labels.numel()),
        "num_test": None if test_labels is None else int(test_labels.numel()),
        "fraction": float(fraction),
        "seed": int(seed),
        "batch_size": int(batch_size),
        "train_fingerprint": train_fingerprint,
        "test_fingerprint": test_fingerprint,
        "settings": user_settings,
    }
    lock = _lock_directory(out_dir)
    try:
        return _train_locked(
            out_dir, identity, num_models, max_models, build, train_dataset, test_dataset, fraction, seed,
            batch_size, predict, eval_batch_size, threads_per_worker, quiet, progress, workers, train_labels,
            test_labels,
        )  # fmt: skip
    finally:
        _unlock_directory(lock)


def _lock_directory(out_dir: str) -> Any:
    """An exclusive lock on ``out_dir`` for this run (``fcntl.flock``; released when the process ends, even by
    SIGKILL); a second run in the same directory is refused, naming the lock. No lock where ``fcntl`` is missing."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks here
        return None
    check_regular_file(os.path.join(out_dir, _LOCK), "the lock file")  # a FIFO would block the open below
    handle = open(os.path.join(out_dir, _LOCK), "a")  # noqa: SIM115 - held open for the whole run
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise RuntimeError(
            f"another train_on_subsets run holds {os.path.join(out_dir, _LOCK)}: two runs in one out_dir would "
            "race for the same records; wait for it to finish (a rerun then continues where it stopped) or use "
            "another out_dir"
        ) from None
    return handle


def _unlock_directory(lock: Any) -> None:
    if lock is not None:
        lock.close()  # closing the file releases the flock


def _train_locked(
    out_dir: str,
    identity: dict[str, Any],
    num_models: int,
    max_models: Optional[int],
    build: Builder,
    train_dataset: Dataset,
    test_dataset: Optional[Dataset],
    fraction: float,
    seed: int,
    batch_size: int,
    predict: Optional[Predict],
    eval_batch_size: int,
    threads_per_worker: int,
    quiet: bool,
    progress: bool,
    workers: int,
    train_labels: Tensor,
    test_labels: Optional[Tensor],
) -> SubsampleRecords:
    """The run itself, while this process holds the lock on ``out_dir``."""
    _check_config(out_dir, identity)
    for name in os.listdir(out_dir):  # records a killed run was writing: only this package's own names
        if _TMP_NAME.match(name):
            os.remove(os.path.join(out_dir, name))

    existing = _verified_records(out_dir, num_models, identity)
    reference_training = next(iter(existing.values()))["training"] if existing else None
    reference_path = record_path(out_dir, next(iter(existing))) if existing else None
    todo = [i for i in range(num_models) if i not in existing]
    if max_models is not None:
        todo = todo[:max_models]
    job = {
        "build": build,
        "train": train_dataset,
        "test": test_dataset,
        "num_train": identity["num_train"],
        "fraction": float(fraction),
        "seed": int(seed),
        "batch_size": batch_size,
        "predict": predict,
        "eval_batch_size": eval_batch_size,
        "out_dir": out_dir,
        "threads": threads_per_worker,
        "quiet": quiet,
        "identity": identity,
    }
    done_before = len(existing)
    start = time.perf_counter()

    def finished(count: int, index: int, training: dict[str, Any]) -> None:
        nonlocal reference_training, reference_path
        if reference_training is None:
            reference_training, reference_path = training, record_path(out_dir, index)
        elif training != reference_training:
            raise RecordError(
                f"model {index} was built with other training settings than {reference_path} "
                f"({describe_difference(training, reference_training, f'model {index}', 'earlier records')}); "
                "records of one out_dir must come from "
                f"one run: build the models as before, or use a new out_dir (the new record is "
                f"{record_path(out_dir, index)})"
            )
        if not progress:
            return
        elapsed = time.perf_counter() - start
        left = elapsed / count * (len(todo) - count)
        print(
            f"subsampling: {done_before + count}/{num_models} models ({count}/{len(todo)} this run), "
            f"{_format_seconds(elapsed)} elapsed, about {_format_seconds(left)} left",
            file=sys.stderr,
            flush=True,
        )

    if todo:
        try:
            if workers == 1:
                saved_threads, saved_job = torch.get_num_threads(), dict(_JOB)
                levels = {name: logging.getLogger(name).level for name in ("lightning.pytorch", "lightning.fabric")}
                try:
                    _init_worker(job)
                    for count, index in enumerate(todo, 1):
                        _, _, training = _train_one(index)
                        finished(count, index, training)
                finally:
                    torch.set_num_threads(saved_threads)
                    _JOB.clear()
                    _JOB.update(saved_job)
                    for name, level in levels.items():
                        logging.getLogger(name).setLevel(level)
            else:
                context = multiprocessing.get_context("spawn")
                worker_job = {**job, "in_worker": True}
                with context.Pool(min(workers, len(todo)), initializer=_init_worker, initargs=(worker_job,)) as pool:
                    for count, (index, _, training) in enumerate(pool.imap_unordered(_train_one, todo, chunksize=1), 1):
                        finished(count, index, training)
        except KeyboardInterrupt:
            finished_models = len([i for i in range(num_models) if os.path.exists(record_path(out_dir, i))])
            print(
                f"subsampling: interrupted; {finished_models}/{num_models} model records are saved in {out_dir}, "
                f"rerun the same call to continue",
                file=sys.stderr,
            )
            raise
    return load_records(out_dir, num_models=num_models, train_labels=train_labels, test_labels=test_labels)
