"""One harness every exported torchmetrics ``Metric`` of the package passes (torchmetrics' ``MetricTester`` as the
model): its value against an independent reference, any split into batches, ``merge_state``, ``state_dict``,
dtype and device moves, and DDP (two gloo processes). Plus a guard on the torchmetrics private fields the
histogram metrics rely on, so that a torchmetrics release that renames one fails here, by name."""

from __future__ import annotations

import math
import os
import pickle
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pytest
import torch
import torchmetrics

import lightning_infomem.metrics as metrics_module
from lightning_infomem.metrics import (
    GroupAccuracy,
    GroupMemorizationGap,
    NeuronEntropy,
    NeuronMutualInformation,
    SoftmaxPeers,
    WorstGroupAccuracy,
)

BINS, LOW, HIGH, NEURONS = 6, -3.0, 3.0, 5


# ------------------------------------------------------------------------------------------ references
def _bins(x: np.ndarray) -> np.ndarray:
    return np.clip(np.floor((x - LOW) / (HIGH - LOW) * BINS), 0, BINS - 1).astype(int)


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def entropy_reference(x: np.ndarray) -> np.ndarray:
    b = _bins(x)
    return np.array([_entropy(np.bincount(b[:, i], minlength=BINS)) for i in range(b.shape[1])])


def mutual_info_reference(x: np.ndarray) -> np.ndarray:
    b = _bins(x)
    n = b.shape[1]
    out = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            joint = np.zeros((BINS, BINS))
            np.add.at(joint, (b[:, i], b[:, j]), 1)
            out[i, j] = _entropy(joint.sum(1)) + _entropy(joint.sum(0)) - _entropy(joint.ravel())
    return out


def group_accuracy_reference(preds: np.ndarray, target: np.ndarray, groups: np.ndarray, num: int) -> np.ndarray:
    return np.array(
        [(preds[groups == g] == target[groups == g]).mean() if (groups == g).any() else np.nan for g in range(num)]
    )


def softmax_reference(logits: np.ndarray) -> dict[str, float]:
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    n, c = p.shape
    return {
        "max_softmax": p.max(1).mean(),
        "nuclear_norm": np.linalg.svd(p, compute_uv=False).sum() / math.sqrt(n * min(n, c)),
    }


# ---------------------------------------------------------------------------------------------- cases
def _activations(seed: int, rows: int) -> torch.Tensor:
    """Values at bin centres (no value on an edge: the reference and the package bin them alike)."""
    g = torch.Generator().manual_seed(seed)
    k = torch.randint(-1, BINS + 1, (rows, NEURONS), generator=g).double()  # -1 and BINS: outliers, clipped
    x = LOW + (k + 0.5) * (HIGH - LOW) / BINS
    x[:, 1] = x[:, 0]  # a redundant neuron: MI equals its entropy
    return x


def _classes(seed: int, rows: int, groups: int = 3) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randint(0, 2, (rows,), generator=g),
        torch.randint(0, 2, (rows,), generator=g),
        torch.randint(0, groups, (rows,), generator=g),
    )


@dataclass
class Case:
    make: Callable[[], torchmetrics.Metric]
    batches: Callable[[int], list[tuple]]  # seed -> the update arguments of each batch
    reference: Callable[[list[tuple]], Any]


def _cat(batches: list[tuple], i: int) -> np.ndarray:
    return torch.cat([b[i] for b in batches]).numpy()


def _gap_reference(batches: list[tuple]) -> np.ndarray:
    train = [b for b in batches if b[3]]
    test = [b for b in batches if not b[3]]
    a = group_accuracy_reference(_cat(train, 0), _cat(train, 1), _cat(train, 2), 3)
    b = group_accuracy_reference(_cat(test, 0), _cat(test, 1), _cat(test, 2), 3)
    return a - b


CASES = {
    "NeuronEntropy": Case(
        lambda: NeuronEntropy(NEURONS, BINS, (LOW, HIGH)),
        lambda seed: [(_activations(seed + i, 37),) for i in range(4)],
        lambda batches: entropy_reference(_cat(batches, 0)),
    ),
    "NeuronMutualInformation": Case(
        lambda: NeuronMutualInformation(NEURONS, BINS, (LOW, HIGH)),
        lambda seed: [(_activations(seed + i, 41),) for i in range(4)],
        lambda batches: mutual_info_reference(_cat(batches, 0)),
    ),
    "GroupAccuracy": Case(
        lambda: GroupAccuracy(3),
        lambda seed: [_classes(seed + i, 29) for i in range(4)],
        lambda batches: group_accuracy_reference(_cat(batches, 0), _cat(batches, 1), _cat(batches, 2), 3),
    ),
    "WorstGroupAccuracy": Case(
        lambda: WorstGroupAccuracy(3),
        lambda seed: [_classes(seed + i, 29) for i in range(4)],
        lambda batches: np.nanmin(group_accuracy_reference(_cat(batches, 0), _cat(batches, 1), _cat(batches, 2), 3)),
    ),
    "GroupMemorizationGap": Case(
        lambda: GroupMemorizationGap(3),
        lambda seed: [(*_classes(seed + i, 31), i % 2 == 0) for i in range(4)],
        _gap_reference,
    ),
    "SoftmaxPeers": Case(
        lambda: SoftmaxPeers(4),
        lambda seed: [
            (torch.randn(23, 4, generator=torch.Generator().manual_seed(seed + i), dtype=torch.float64) * 3,)
            for i in range(4)
        ],
        lambda batches: softmax_reference(_cat(batches, 0)),
    ),
}


def _value(metric: torchmetrics.Metric) -> Any:
    value = metric.compute()
    if isinstance(value, dict):
        return {k: float(v) for k, v in value.items()}
    return value.detach().cpu().double().numpy()


def _close(a: Any, b: Any, tol: float = 1e-10) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k], tol) for k in a)
    return bool(np.allclose(np.asarray(a, float), np.asarray(b, float), rtol=tol, atol=tol, equal_nan=True))


def _fed(case: Case, batches: list[tuple]) -> torchmetrics.Metric:
    metric = case.make()
    for args in batches:
        metric.update(*args)
    return metric


def test_the_harness_covers_every_exported_metric():
    exported = {
        name
        for name in metrics_module.__all__
        if isinstance(getattr(metrics_module, name), type)
        and issubclass(getattr(metrics_module, name), torchmetrics.Metric)
    }
    assert exported == set(CASES), f"metrics without a harness case: {sorted(exported - set(CASES))}"


@pytest.mark.parametrize("name", sorted(CASES))
def test_value_equals_the_independent_reference(name):
    case = CASES[name]
    batches = case.batches(0)
    assert _close(_value(_fed(case, batches)), case.reference(batches))


@pytest.mark.parametrize("name", sorted(CASES))
def test_any_split_into_batches_gives_the_same_value(name):
    case = CASES[name]
    batches = case.batches(1)
    whole = _value(_fed(case, batches))
    if name == "GroupMemorizationGap":
        resplit = [(*(t.flip(0) for t in b[:3]), b[3]) for b in batches]  # the same samples, in another order
    else:
        joined = tuple(torch.cat([b[i] for b in batches]) for i in range(len(batches[0])))
        resplit = [tuple(t[i : i + 7] for t in joined) for i in range(0, joined[0].shape[0], 7)]
    assert _close(_value(_fed(case, resplit)), whole)


@pytest.mark.parametrize("name", sorted(CASES))
def test_merge_state_of_two_halves_equals_one_metric(name):
    case = CASES[name]
    batches = case.batches(2)
    first, second = _fed(case, batches[:2]), _fed(case, batches[2:])
    first.merge_state(second)
    assert _close(_value(first), _value(_fed(case, batches)))


@pytest.mark.filterwarnings("ignore:The ``compute`` method:UserWarning")  # a restored metric had no update() call
@pytest.mark.parametrize("name", sorted(CASES))
def test_state_dict_round_trip_and_pickling(name):
    case = CASES[name]
    batches = case.batches(3)
    metric = _fed(case, batches)
    metric.persistent(True)
    restored = case.make()
    restored.persistent(True)
    restored.load_state_dict(metric.state_dict())
    assert _close(_value(restored), _value(metric))
    assert _close(_value(pickle.loads(pickle.dumps(metric))), _value(metric))


@pytest.mark.parametrize("name", sorted(CASES))
def test_dtype_and_device_moves_keep_the_value(name):
    case = CASES[name]
    batches = case.batches(4)
    expected = _value(_fed(case, batches))
    metric = case.make().set_dtype(torch.float64).to(torch.device("cpu"))
    for args in batches:
        metric.update(*args)
    assert _close(_value(metric), expected)
    single = case.make().set_dtype(torch.float32)
    for args in batches:
        single.update(*args)
    assert _close(_value(single), expected, tol=1e-5)  # counts stay integers; float sums round to float32
    if torch.cuda.is_available():
        moved = case.make().to("cuda")
        for args in batches:
            moved.update(*(a.cuda() if isinstance(a, torch.Tensor) else a for a in args))
        assert _close(_value(moved), expected)


def _ddp_worker(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        values = {}
        for name, case in CASES.items():
            batches = case.batches(5)
            metric = _fed(case, batches[rank::world])
            values[name] = _value(metric)
        if rank == 0:
            with open(out, "wb") as handle:
                pickle.dump(values, handle)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.distributed
def test_ddp_of_two_processes_equals_one_process(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(tmp_path / "values.pkl")
    mp.spawn(_ddp_worker, args=(2, port, out), nprocs=2, join=True)
    with open(out, "rb") as handle:
        values = pickle.load(handle)
    for name, case in CASES.items():
        batches = case.batches(5)
        assert _close(values[name], case.reference(batches)), name


# ----------------------------------------------------------------------------------- torchmetrics guard
def test_the_torchmetrics_private_fields_the_histogram_metrics_rely_on_still_exist():
    """metrics/information.py reads or resets these torchmetrics internals (it synchronises integer counts
    itself and keeps a forward value of one batch); a torchmetrics release that renames one fails here."""

    class Sum(torchmetrics.Metric):
        def __init__(self) -> None:
            super().__init__()
            self.add_state("total", torch.zeros(()), dist_reduce_fx="sum")

        def update(self, x: torch.Tensor) -> None:
            self.total += x.sum()

        def compute(self) -> torch.Tensor:
            return self.total

    metric = Sum()
    for field, kind in (("_defaults", dict), ("_persistent", dict), ("_is_synced", bool), ("_update_count", int)):
        assert isinstance(getattr(metric, field, None), kind), f"torchmetrics.Metric.{field} is gone or changed"
    assert set(metric._defaults) == {"total"} and set(metric._persistent) == {"total"}
    metric(torch.ones(3))  # forward: keeps the batch's value
    assert torch.equal(metric._forward_cache, torch.tensor(3.0)), "torchmetrics.Metric._forward_cache changed"
    assert metric._update_count == 1
    metric.compute()
    assert torch.equal(metric._computed, torch.tensor(3.0)), "torchmetrics.Metric._computed changed"
    assert hasattr(metric, "_cache"), "torchmetrics.Metric._cache is gone"
    metric.reset()
    assert metric._update_count == 0 and metric._computed is None and metric._is_synced is False
