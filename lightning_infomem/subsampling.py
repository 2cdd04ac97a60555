"""Train many Lightning models on random subsets and estimate memorization and influence (Feldman & Zhang).

`train_on_subsets` trains ``num_models`` fresh models, model ``i`` on a random subset of
``round(fraction * n)`` training examples drawn from a generator seeded by ``(seed, i)``. Each finished
model's record (subset mask, per-example correctness on the training and test sets) is written at once
to ``out_dir/model_{i:05d}.pt`` (temp file + ``os.replace``, so a file is complete or absent). A rerun
skips the models whose file exists, so a crash or Ctrl-C loses only the models in progress; several
worker processes train models in parallel. Model ``i``'s subset, data order and initial seed depend
only on ``(seed, i)``, so the result does not depend on the number of workers or on interruptions.
`SubsampleRecords` holds the stacked records and computes the estimates.
"""

from __future__ import annotations

import glob
import json
import logging
import multiprocessing
import os
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

import numpy as np
import torch
from lightning.pytorch import LightningModule, Trainer
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from lightning_infomem.functional.subsampling import (
    DEFAULT_MAX_BYTES,
    InfluenceEstimate,
    MemorizationEstimate,
    TopKInfluence,
    influence_estimates,
    influence_per_class,
    influence_topk,
    memorization_estimates,
    rms_error_bound,
)
from lightning_infomem.reporting import write_csv

__all__ = ["Builder", "SubsampleRecords", "load_records", "subset_mask", "train_on_subsets"]

Builder = Callable[[int], tuple[LightningModule, Trainer]]
Predict = Callable[[LightningModule, Tensor], Tensor]
_CONFIG = "config.json"


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


def _record_path(out_dir: str, index: int) -> str:
    return os.path.join(out_dir, f"model_{index:05d}.pt")


def _labels(dataset: Dataset) -> Tensor:
    """Labels of ``(x, y)`` items, in order."""
    return torch.cat([torch.as_tensor(y).reshape(-1) for _, y in DataLoader(dataset, batch_size=4096)]).long()


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


def _init_worker(job: dict[str, Any]) -> None:
    _JOB.clear()
    _JOB.update(job)
    torch.set_num_threads(job["threads"])
    if job["quiet"]:
        for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
            logging.getLogger(name).setLevel(logging.WARNING)


def _train_one(index: int) -> tuple[int, float]:
    job = _JOB
    start = time.perf_counter()
    train, n = job["train"], job["num_train"]
    mask = subset_mask(n, job["fraction"], job["seed"], index)
    init_seed = int(_model_seed(job["seed"], index).generate_state(1)[0])
    torch.manual_seed(init_seed)
    random.seed(init_seed)
    np.random.seed(init_seed)  # noqa: NPY002 (the global generator user code may rely on)
    module, trainer = job["build"](index)
    loader = DataLoader(
        Subset(train, torch.nonzero(mask)[:, 0].tolist()),
        batch_size=job["batch_size"],
        shuffle=True,
        generator=torch.Generator().manual_seed(init_seed),
    )
    trainer.fit(module, loader)
    record = {
        "index": index,
        "seed": job["seed"],
        "fraction": job["fraction"],
        "mask": mask,
        "train_correct": _correct(module, train, job["predict"], job["eval_batch_size"]),
        "test_correct": None
        if job["test"] is None
        else _correct(module, job["test"], job["predict"], job["eval_batch_size"]),
        "seconds": time.perf_counter() - start,
    }
    path = _record_path(job["out_dir"], index)
    tmp = f"{os.path.join(job['out_dir'], '.tmp')}_{index:05d}_{os.getpid()}.pt"
    torch.save(record, tmp)
    os.replace(tmp, path)
    return index, record["seconds"]


def _format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    return (
        f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s"
        if seconds >= 3600
        else (f"{seconds // 60}m{seconds % 60:02d}s")
    )


def _check_config(out_dir: str, config: dict[str, Any]) -> None:
    path = os.path.join(out_dir, _CONFIG)
    if os.path.exists(path):
        with open(path) as handle:
            saved = json.load(handle)
        different = {k: (saved.get(k), v) for k, v in config.items() if saved.get(k) != v}
        if different:
            details = ", ".join(f"{k}: saved {a!r}, now {b!r}" for k, (a, b) in different.items())
            raise ValueError(
                f"{out_dir} holds models of a different run ({details}); pass the same settings and data to "
                f"continue it, or a new out_dir"
            )
        return
    tmp = path + f".tmp{os.getpid()}"
    with open(tmp, "w") as handle:
        json.dump(config, handle, indent=2)
    os.replace(tmp, path)


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

    Resume: records already in ``out_dir`` are kept and their models skipped, so rerunning the same call
    after a crash or Ctrl-C continues where it stopped (``out_dir/config.json`` guards against mixing
    runs with other data, ``fraction`` or ``seed``). Raising ``num_models`` later adds models.

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
    if not isinstance(num_models, int) or num_models < 1:
        raise ValueError(f"num_models must be a positive integer, received {num_models!r}")
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1) (the paper uses 0.7), received {fraction!r}")
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive integer, received {workers!r}")
    if max_models is not None and (not isinstance(max_models, int) or max_models < 0):
        raise ValueError(f"max_models must be an integer >= 0 or None, received {max_models!r}")
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    train_labels = _labels(train_dataset)
    test_labels = None if test_dataset is None else _labels(test_dataset)
    config = {
        "num_train": int(train_labels.numel()),
        "num_test": None if test_labels is None else int(test_labels.numel()),
        "fraction": float(fraction),
        "seed": int(seed),
        "train_labels_checksum": int((train_labels * torch.arange(1, train_labels.numel() + 1)).sum()),
    }
    _check_config(out_dir, config)
    for stale in glob.glob(os.path.join(out_dir, ".tmp_*.pt")):
        os.remove(stale)  # left by a killed run

    todo = [i for i in range(num_models) if not os.path.exists(_record_path(out_dir, i))]
    if max_models is not None:
        todo = todo[:max_models]
    job = {
        "build": build,
        "train": train_dataset,
        "test": test_dataset,
        "num_train": config["num_train"],
        "fraction": float(fraction),
        "seed": int(seed),
        "batch_size": batch_size,
        "predict": predict,
        "eval_batch_size": eval_batch_size,
        "out_dir": out_dir,
        "threads": threads_per_worker,
        "quiet": quiet,
    }
    done_before = num_models - len([i for i in range(num_models) if not os.path.exists(_record_path(out_dir, i))])
    start = time.perf_counter()

    def report(count: int) -> None:
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
                        _train_one(index)
                        report(count)
                finally:
                    torch.set_num_threads(saved_threads)
                    _JOB.clear()
                    _JOB.update(saved_job)
                    for name, level in levels.items():
                        logging.getLogger(name).setLevel(level)
            else:
                context = multiprocessing.get_context("spawn")
                with context.Pool(min(workers, len(todo)), initializer=_init_worker, initargs=(job,)) as pool:
                    for count, _ in enumerate(pool.imap_unordered(_train_one, todo, chunksize=1), 1):
                        report(count)
        except KeyboardInterrupt:
            finished = len([i for i in range(num_models) if os.path.exists(_record_path(out_dir, i))])
            print(
                f"subsampling: interrupted; {finished}/{num_models} model records are saved in {out_dir}, "
                f"rerun the same call to continue",
                file=sys.stderr,
            )
            raise
    return load_records(out_dir, num_models=num_models, train_labels=train_labels, test_labels=test_labels)


def load_records(
    out_dir: Union[str, os.PathLike],
    num_models: Optional[int] = None,
    train_labels: Optional[Tensor] = None,
    test_labels: Optional[Tensor] = None,
) -> SubsampleRecords:
    """Stack the records in ``out_dir`` (those with index ``< num_models``, or all), in index order.

    Example:
        >>> import tempfile
        >>> load_records(tempfile.mkdtemp())  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: no model records (model_*.pt) in ...; train them with train_on_subsets first
    """
    out_dir = os.fspath(out_dir)
    paths = sorted(glob.glob(os.path.join(out_dir, "model_*.pt")))
    records = [torch.load(p, weights_only=True) for p in paths]
    if num_models is not None:
        records = [r for r in records if r["index"] < num_models]
    if not records:
        raise ValueError(f"no model records (model_*.pt) in {out_dir}; train them with train_on_subsets first")
    has_test = records[0]["test_correct"] is not None
    return SubsampleRecords(
        indices=torch.tensor([r["index"] for r in records]),
        in_train=torch.stack([r["mask"] for r in records]),
        train_correct=torch.stack([r["train_correct"] for r in records]),
        test_correct=torch.stack([r["test_correct"] for r in records]) if has_test else None,
        fraction=float(records[0]["fraction"]),
        seconds=torch.tensor([float(r["seconds"]) for r in records]),
        train_labels=train_labels,
        test_labels=test_labels,
    )


@dataclass
class SubsampleRecords:
    """The stacked records of ``t`` models: masks and correctness, with the estimators as methods.

    ``indices`` [t] (model indices), ``in_train`` and ``train_correct`` [t, n] bool, ``test_correct``
    [t, m] bool or ``None``, ``seconds`` [t] (training + prediction time per model), labels if known.

    Example:
        >>> records = SubsampleRecords(torch.arange(4), torch.tensor([[1, 0], [0, 1], [1, 0], [0, 1]]).bool(),
        ...                            torch.tensor([[1, 1], [0, 1], [1, 0], [0, 1]]).bool())
        >>> records.memorization().value.tolist(), round(records.rms_error_bound(), 3)
        ([1.0, 0.5], 1.091)
    """

    indices: Tensor
    in_train: Tensor
    train_correct: Tensor
    test_correct: Optional[Tensor] = None
    fraction: float = 0.7
    seconds: Optional[Tensor] = None
    train_labels: Optional[Tensor] = None
    test_labels: Optional[Tensor] = None

    @property
    def num_models(self) -> int:
        return int(self.in_train.shape[0])

    def memorization(self) -> MemorizationEstimate:
        """`memorization_estimates` of the training examples."""
        return memorization_estimates(self.in_train, self.train_correct)

    def _test(self) -> Tensor:
        if self.test_correct is None:
            raise ValueError("influence needs test correctness: pass test_dataset to train_on_subsets")
        return self.test_correct

    def influence(self, max_bytes: Optional[int] = DEFAULT_MAX_BYTES) -> InfluenceEstimate:
        """Dense `influence_estimates` ``[m, n]``; refused above ``max_bytes`` (see `influence_topk`)."""
        return influence_estimates(self.in_train, self._test(), max_bytes=max_bytes)

    def influence_topk(self, k: int, same_class: bool = True) -> TopKInfluence:
        """`influence_topk`: ``k`` most influential training examples per test example (same class if asked)."""
        if same_class and (self.train_labels is None or self.test_labels is None):
            raise ValueError("same_class=True needs train_labels and test_labels; pass same_class=False")
        labels = (self.train_labels, self.test_labels) if same_class else (None, None)
        return influence_topk(self.in_train, self._test(), k, train_labels=labels[0], test_labels=labels[1])

    def influence_per_class(self, max_bytes: Optional[int] = DEFAULT_MAX_BYTES) -> dict[int, Any]:
        """`influence_per_class`: same-class dense blocks."""
        if self.train_labels is None or self.test_labels is None:
            raise ValueError("influence_per_class needs train_labels and test_labels")
        return influence_per_class(
            self.in_train, self._test(), self.train_labels, self.test_labels, max_bytes=max_bytes
        )

    def rms_error_bound(self) -> float:
        """`rms_error_bound` for this ``t`` and ``fraction``."""
        return rms_error_bound(self.num_models, self.fraction)

    def to_csv(self, path: Union[str, os.PathLike], extra: Optional[dict[str, Sequence[Any]]] = None) -> str:
        """One row per training example: ``index``, ``label``, ``memorization``, ``stderr``, ``defined``, ``extra``."""
        est = self.memorization()
        rows = []
        for i in range(est.value.numel()):
            row: dict[str, Any] = {"index": i}
            if self.train_labels is not None:
                row["label"] = int(self.train_labels[i])
            row.update(memorization=float(est.value[i]), stderr=float(est.stderr[i]), defined=bool(est.defined[i]))
            for name, values in (extra or {}).items():
                row[name] = values[i]
            rows.append(row)
        return write_csv(rows, path)
