"""The records of a subsampling run: one file per model, read back, checked and stacked for the estimators.

Each model that `train_on_subsets` finishes leaves ``out_dir/model_{i:05d}.pt``: its subset mask,
its per-example correctness on the training (and test) set and the identity of its run.
`load_records` reads every record, refuses damaged ones and records of other runs (naming the
file), and stacks them into `SubsampleRecords`, whose methods are the Feldman-Zhang estimators.
"""

from __future__ import annotations

import glob
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Optional, Union

import torch
from torch import Tensor

from lightning_infomem.functional.subsampling import (
    DEFAULT_MAX_RESULT_BYTES,
    InfluenceEstimate,
    MemorizationEstimate,
    TopKInfluence,
    influence_estimates,
    influence_per_class,
    influence_topk,
    memorization_estimates,
    rms_error_bound,
)
from lightning_infomem.per_sample import PerSampleScores

__all__ = ["RecordError", "SubsampleRecords", "load_records"]


def record_path(out_dir: str, index: int) -> str:
    return os.path.join(out_dir, f"model_{index:05d}.pt")


class RecordError(ValueError):
    """A record file (or the run's ``config.json``) is damaged or belongs to another run; the message names it."""


def describe_difference(
    first: Mapping[str, Any], second: Mapping[str, Any], first_label: str, second_label: str
) -> str:
    """The settings in which two identities differ, ``"key: value (label), value (label)"``."""
    keys = sorted(set(first) | set(second))
    return "; ".join(
        f"{k}: {first.get(k)!r} ({first_label}), {second.get(k)!r} ({second_label})"
        for k in keys
        if first.get(k) != second.get(k)
    )


def check_regular_file(path: str, what: str = "record") -> None:
    """Refuse, before opening it, anything at ``path`` but a regular file, or a link to one in the same directory: a
    FIFO would block the run (and the directory's lock) forever, a device or a link out of the directory is not
    this run's file. `RecordError` names the file and what it is."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(info.st_mode):
        target = os.path.realpath(path)
        directory = os.path.realpath(os.path.dirname(os.path.abspath(path)))
        if os.path.dirname(target) != directory:
            raise RecordError(f"{what} {path} is a link to {target}, outside its directory; remove it")
        info = os.stat(target)
    if not stat.S_ISREG(info.st_mode):
        kind = (
            "a FIFO"
            if stat.S_ISFIFO(info.st_mode)
            else "a directory"
            if stat.S_ISDIR(info.st_mode)
            else "a socket"
            if stat.S_ISSOCK(info.st_mode)
            else "a device"
        )
        raise RecordError(
            f"{what} {path} is {kind}, not a regular file; remove it (only this run's files belong there)"
        )


def read_record(path: str) -> dict[str, Any]:
    """A record file's contents, checked for the fields and shapes a record has; `RecordError` names the file."""
    check_regular_file(path)
    try:
        record = torch.load(path, weights_only=True)
    except Exception as error:  # noqa: BLE001 - truncated, empty or not a torch file: all mean "damaged"
        first_line = (str(error).splitlines() or [""])[0][:160]
        raise RecordError(
            f"record {path} cannot be read: it is truncated, empty or not a record ({type(error).__name__}: "
            f"{first_line})"
        ) from error
    problem = None if isinstance(record, dict) else f"holds a {type(record).__name__}, not a record"
    if problem is None:
        problem = _record_problem(record)
    if problem is None and os.path.basename(path) != os.path.basename(record_path("", int(record["index"]))):
        problem = f"holds the record of model {record['index']}"
    if problem:
        raise RecordError(f"record {path} {problem}")
    return record


_FIELDS = ("index", "mask", "train_correct", "test_correct", "run", "training", "fraction", "seconds")


def _record_problem(record: dict[str, Any]) -> Optional[str]:
    """What is wrong with a record's fields (``None``: nothing), in words that name the field."""
    missing = [k for k in _FIELDS if k not in record]
    if missing:
        return f"lacks {missing} (written by another program or an older version)"
    mask, train, test = record["mask"], record["train_correct"], record["test_correct"]
    if isinstance(record["index"], bool) or not isinstance(record["index"], int) or record["index"] < 0:
        return f"has index {record['index']!r}, not a model number"
    if not (isinstance(mask, Tensor) and mask.dtype == torch.bool and mask.ndim == 1):
        return "has no boolean subset mask"
    if not (isinstance(train, Tensor) and train.dtype == torch.bool and train.shape == mask.shape):
        return "has training correctness that is not a boolean tensor of its mask's shape"
    if test is not None and not (isinstance(test, Tensor) and test.dtype == torch.bool and test.ndim == 1):
        return "has test correctness that is neither None nor a boolean vector"
    for field in ("fraction", "seconds"):
        if isinstance(record[field], bool) or not isinstance(record[field], (int, float)):
            return f"has {field} {record[field]!r}, not a number"
    for field in ("run", "training"):
        if not isinstance(record[field], dict):
            return f"has {field} {type(record[field]).__name__}, not the identity of a run"
    return None


def load_records(
    out_dir: Union[str, os.PathLike],
    num_models: Optional[int] = None,
    train_labels: Optional[Tensor] = None,
    test_labels: Optional[Tensor] = None,
) -> SubsampleRecords:
    """Stack the records in ``out_dir`` (those with index ``< num_models``, or all), in index order.

    Every record is read and checked: a damaged one, records of different runs (data, ``fraction``,
    ``seed``, ``batch_size``, ``settings``) and models built with different training settings raise
    `RecordError` naming the first odd file.

    Example:
        >>> import tempfile
        >>> load_records(tempfile.mkdtemp())  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: no model records (model_*.pt) in ...; train them with train_on_subsets first
    """
    out_dir = os.fspath(out_dir)
    paths = sorted(glob.glob(os.path.join(out_dir, "model_*.pt")))
    records, first = [], None
    for path in paths:
        record = read_record(path)
        if num_models is not None and record["index"] >= num_models:
            continue
        if first is None:
            first = (path, record)
        else:
            for part, what in (("run", "another run"), ("training", "models built with other training settings")):
                if record[part] != first[1][part]:
                    raise RecordError(
                        f"record {path} belongs to {what} than {first[0]} "
                        f"({describe_difference(record[part], first[1][part], 'that record', 'the first')}); "
                        "keep one run per out_dir"
                    )
            if (record["test_correct"] is None) != (first[1]["test_correct"] is None):
                raise RecordError(f"record {path} and {first[0]} disagree on whether there is a test set")
            for field, what in (("mask", "training samples"), ("test_correct", "test samples")):
                mine, theirs = record[field], first[1][field]
                if mine is not None and theirs is not None and mine.shape != theirs.shape:
                    raise RecordError(
                        f"record {path} covers {mine.shape[0]} {what} ({field}), {first[0]} {theirs.shape[0]}: the "
                        "records come from different data; keep one run per out_dir"
                    )
        records.append(record)
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
class SubsampleRecords(PerSampleScores):
    """The stacked records of ``t`` models: masks and correctness, with the estimators as methods.

    The per-sample result API of the package (`PerSampleScores`): `scores` holds ``memorization`` and
    ``memorization_stderr`` (NaN where undefined: an example in every subset or in none), with ``topk``,
    ``rows``, ``to_csv`` and ``log_scores`` as on `TrainingDynamics` and `LossCurvature`.

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

    def influence(self, max_result_bytes: Optional[int] = DEFAULT_MAX_RESULT_BYTES) -> InfluenceEstimate:
        """Dense `influence_estimates` ``[m, n]``; refused above ``max_result_bytes`` (see `influence_topk`)."""
        return influence_estimates(self.in_train, self._test(), max_result_bytes=max_result_bytes)

    def influence_topk(self, k: int, same_class: bool = True) -> TopKInfluence:
        """`influence_topk`: ``k`` most influential training examples per test example (same class if asked)."""
        if same_class and (self.train_labels is None or self.test_labels is None):
            raise ValueError("same_class=True needs train_labels and test_labels; pass same_class=False")
        labels = (self.train_labels, self.test_labels) if same_class else (None, None)
        return influence_topk(self.in_train, self._test(), k, train_labels=labels[0], test_labels=labels[1])

    def influence_per_class(self, max_result_bytes: Optional[int] = DEFAULT_MAX_RESULT_BYTES) -> dict[int, Any]:
        """`influence_per_class`: same-class dense blocks."""
        if self.train_labels is None or self.test_labels is None:
            raise ValueError("influence_per_class needs train_labels and test_labels")
        return influence_per_class(
            self.in_train, self._test(), self.train_labels, self.test_labels, max_result_bytes=max_result_bytes
        )

    def rms_error_bound(self) -> float:
        """`rms_error_bound` for this ``t`` and ``fraction``."""
        return rms_error_bound(self.num_models, self.fraction)

    # ------------------------------------------------------------------------ per-sample results
    primary_score = "memorization"
    suspicious_when_high = {"memorization": True, "memorization_stderr": True}

    @property
    def scores(self) -> dict[str, Tensor]:
        """``memorization`` and its ``memorization_stderr``, ``[n]`` float64 each; NaN where undefined."""
        estimate = self.memorization()
        undefined = torch.tensor(float("nan"), dtype=torch.float64)
        value = torch.where(estimate.defined, estimate.value.double(), undefined)
        stderr = torch.where(estimate.defined, estimate.stderr.double(), undefined)
        return {"memorization": value, "memorization_stderr": stderr}

    @property
    def labels(self) -> Tensor:  # type: ignore[override]
        """The training labels when known, else -1 for every example."""
        if self.train_labels is not None:
            return self.train_labels.long()
        return torch.full((int(self.in_train.shape[1]),), -1, dtype=torch.int64)
