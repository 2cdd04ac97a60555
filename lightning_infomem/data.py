"""Stable per-sample indices in batches, and sums by index over processes.

Shared by the per-sample score callbacks (`LossCurvature`, `TrainingDynamics`): a score belongs to
a training sample through the index that `IndexedDataset` puts in every batch, which is the same
across epochs, shuffling and processes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Callable, Optional

import torch
from lightning.pytorch import Trainer
from torch import Tensor
from torch.utils.data import Dataset

__all__ = [
    "BatchUnpack",
    "IndexedDataset",
    "MissingIndexError",
    "accumulation_dtype",
    "check_indexed_loader",
    "default_batch_unpack",
    "sum_over_processes",
    "batch_size_of",
    "targets_of",
    "training_set_size",
    "TARGET_KEYS",
]

BatchUnpack = Callable[[Any], tuple[Any, Tensor, Tensor]]


class MissingIndexError(ValueError):
    """A batch carries no per-sample index, so scores cannot be attributed to samples."""


class IndexedDataset(Dataset):
    """Wrap a map-style dataset so that each item carries its position: ``(x, y)`` -> ``(x, y, index)``.

    A tuple or list item gets the index appended; a dict item gets an ``"index"`` key; any other item
    ``x`` becomes ``(x, index)``. The index is the position in the wrapped dataset, stable across epochs,
    shuffling and processes. A ``training_step`` then unpacks ``x, y, index = batch`` (or ``x, y, _``).

    Example:
        >>> import torch
        >>> data = IndexedDataset(torch.utils.data.TensorDataset(torch.zeros(3, 2), torch.tensor([0, 1, 0])))
        >>> x, y, index = data.__getitem__(2)
        >>> len(data), int(y), index
        (3, 0, 2)
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        item = self.dataset[index]
        if isinstance(item, Mapping):
            return {**item, "index": index}
        if isinstance(item, (tuple, list)):
            return (*item, index)
        return (item, index)


_HINT = (
    "wrap the dataset in lightning_infomem.IndexedDataset so that each batch is (x, y, index), or pass "
    "batch_unpack=... returning (inputs, targets, indices)"
)


TARGET_KEYS = ("y", "target", "targets", "label", "labels")  # where a dict batch holds its targets


def default_batch_unpack(batch: Any) -> tuple[Any, Tensor, Tensor]:
    """``(inputs, targets, indices)`` of a batch from `IndexedDataset`.

    Accepts a sequence ``(x, y, index)`` (index last) or a mapping with ``"index"`` and the inputs and
    targets under ``"x"``/``"input"``/``"inputs"``/``"input_ids"`` and
    ``"y"``/``"target"``/``"targets"``/``"label"``/``"labels"``.

    Example:
        >>> import torch
        >>> x, y, index = default_batch_unpack((torch.zeros(2, 3), torch.tensor([1, 0]), torch.tensor([7, 4])))
        >>> index.tolist()
        [7, 4]
    """
    if isinstance(batch, Mapping):
        if "index" not in batch:
            raise MissingIndexError(f"the batch (a dict with keys {sorted(batch)}) has no 'index'; {_HINT}")
        x = next((batch[k] for k in ("x", "input", "inputs", "input_ids") if k in batch), None)
        y = next((batch[k] for k in TARGET_KEYS if k in batch), None)
        if x is None or y is None:
            raise ValueError(f"cannot find inputs and targets among the batch keys {sorted(batch)}; {_HINT}")
        return x, y, batch["index"]
    if not isinstance(batch, Sequence) or len(batch) != 3:
        size = len(batch) if isinstance(batch, Sequence) else type(batch).__name__
        raise MissingIndexError(f"expected batches (x, y, index), received a batch of {size}; {_HINT}")
    x, y, index = batch
    if not isinstance(index, Tensor) or index.ndim != 1 or index.is_floating_point():
        raise MissingIndexError(
            f"the last element of the batch must be an integer index tensor [B], received "
            f"{type(index).__name__} {list(index.shape) if isinstance(index, Tensor) else ''}; {_HINT}"
        )
    return x, y, index


def check_indexed_loader(loader: Any, owner: str) -> None:
    """Refuse a training loader whose batches carry no `IndexedDataset` index, before any epoch runs.

    With the default `default_batch_unpack`, the last element of a batch is read as the sample index;
    a dataset of ``(x, y, group)`` would then have its groups taken for indices (4 of 200 samples
    scored, silently). So the loader's dataset must be an `IndexedDataset`, or wrap one (a ``Subset``
    of it, say). A loader whose dataset cannot be seen (not a ``DataLoader``) is not checked here.

    Example:
        >>> import torch
        >>> data = torch.utils.data.TensorDataset(torch.zeros(4, 2), torch.zeros(4), torch.zeros(4).long())
        >>> check_indexed_loader(torch.utils.data.DataLoader(IndexedDataset(data)), "TrainingDynamics")
        >>> check_indexed_loader(torch.utils.data.DataLoader(data), "TrainingDynamics")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        lightning_infomem.data.MissingIndexError: TrainingDynamics: the training dataset (TensorDataset) is not ...
    """
    loaders = list(loader.values()) if isinstance(loader, Mapping) else [loader]
    for one in loaders:
        dataset = getattr(one, "dataset", None)
        if dataset is None:
            continue
        seen: set[int] = set()
        current = dataset
        while current is not None and id(current) not in seen:
            if isinstance(current, IndexedDataset):
                break
            seen.add(id(current))
            current = getattr(current, "dataset", None)
        else:
            raise MissingIndexError(
                f"{owner}: the training dataset ({type(dataset).__name__}) is not an IndexedDataset, so its batches "
                f"carry no sample index (a third element such as a group id would be misread as one); {_HINT}"
            )


def accumulation_dtype(device: torch.device) -> torch.dtype:
    """float64 for per-sample sums (float32 on MPS, which has no float64)."""
    return torch.float32 if device.type == "mps" else torch.float64


def sum_over_processes(trainer: Trainer, tensor: Tensor) -> Tensor:
    """``tensor`` summed over the processes of ``trainer`` (a copy in a single process); a collective step.

    Always a new tensor, so that the caller may clear ``tensor`` and keep the sum.
    """
    if trainer.world_size <= 1:
        return tensor.clone()
    return trainer.strategy.reduce(tensor, reduce_op="sum")


def batch_size_of(batch: Any) -> Optional[int]:
    """The number of samples in a batch: the first axis of its first tensor (depth first in tuples, lists, dicts),
    as the dataloader collates it; ``None`` without one.

    Example:
        >>> import torch
        >>> batch_size_of({"input_ids": torch.zeros(8, 12), "labels": torch.zeros(8)})
        8
    """
    for value in (
        batch.values() if isinstance(batch, Mapping) else batch if isinstance(batch, (tuple, list)) else [batch]
    ):
        if isinstance(value, Tensor) and value.ndim:
            return int(value.shape[0])
        if isinstance(value, (Mapping, tuple, list)):
            found = batch_size_of(value)
            if found:
                return found
    return None


def targets_of(batch: Any) -> Optional[Tensor]:
    """The integer class labels of a validation batch: ``batch[1]`` of a sequence, or a mapping's ``y`` /
    ``target(s)`` / ``label(s)``; ``None`` where there are none.

    Example:
        >>> targets_of((torch.zeros(2, 3), torch.tensor([1, 0]))).tolist()
        [1, 0]
        >>> targets_of({"input_ids": torch.zeros(2, 4), "labels": torch.tensor([0, 1])}).tolist()
        [0, 1]
        >>> targets_of(torch.zeros(2, 3)) is None
        True
    """
    if isinstance(batch, Mapping):
        value = next((batch[k] for k in TARGET_KEYS if k in batch), None)
    elif isinstance(batch, Sequence) and not isinstance(batch, (str, bytes)) and len(batch) >= 2:
        value = batch[1]
    else:
        value = None
    if isinstance(value, Tensor) and value.ndim == 1 and not value.is_floating_point() and value.dtype != torch.bool:
        return value
    return None


def training_set_size(trainer: Trainer) -> Optional[int]:
    """How many sample indices the training batches can carry: the length of the `IndexedDataset` inside the loader's
    dataset (a ``Subset`` of one, from ``random_split`` say, at any depth, carries the full dataset's indices), else
    of the dataset itself; ``None`` if it is not sized."""
    loader = trainer.train_dataloader
    dataset = getattr(loader, "dataset", None)
    current, seen = dataset, set()
    while current is not None and id(current) not in seen and not isinstance(current, IndexedDataset):
        seen.add(id(current))
        current = getattr(current, "dataset", None)
    sized = current if isinstance(current, IndexedDataset) else dataset
    try:
        return len(sized) if sized is not None else None  # type: ignore[arg-type]
    except TypeError:
        return None
