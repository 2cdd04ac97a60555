"""DDP: two CPU processes (gloo) give the identical result as one process over the same samples."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from lightning_infomem import NeuronEntropy, NeuronMutualInformation

WORLD_SIZE = 2
NUM_SAMPLES = 960
NUM_NEURONS = 6
RANK_BATCH = 40  # per process; the single-process reference uses WORLD_SIZE * RANK_BATCH

# name -> metric keyword arguments
SCENARIOS = {
    "fixed_range": {"value_range": (-2.0, 2.5)},
    "per_neuron_fixed_range": {
        "value_range": (torch.linspace(-3.0, -0.5, NUM_NEURONS), torch.linspace(0.5, 4.0, NUM_NEURONS))
    },
    # calibration finishes during updates: 100 samples in all, 50 per process -> after 2 batches of 40 each
    "calibrated": {"value_range": None, "calibration_samples": 100},
    "calibrated_per_neuron_quantile": {
        "value_range": None,
        "calibration_samples": 150,
        "per_neuron_range": True,
        "range_quantile": 0.02,
    },
    # more calibration samples than data: the range is fixed at compute() from all samples of both processes
    "calibrated_at_compute": {"value_range": None, "calibration_samples": 10_000},
}

pytestmark = [
    pytest.mark.slow,
    pytest.mark.distributed,
    pytest.mark.skipif(
        not dist.is_available() or not dist.is_gloo_available() or sys.platform == "win32",
        reason="torch.distributed with the gloo backend is not available",
    ),
]


def make_data() -> torch.Tensor:
    generator = torch.Generator().manual_seed(123)
    x = torch.randn(NUM_SAMPLES, NUM_NEURONS, generator=generator, dtype=torch.float64)
    x[:, 1] = torch.relu(x[:, 1])  # exact zeros
    x[:, 2] = 0.7 * x[:, 0] + 0.3 * x[:, 2]  # dependent on neuron 0
    x[:, 3] = x[:, 3] ** 3  # heavy tails
    x[NUM_SAMPLES // 2 :, 4] *= 4  # later samples exceed a range calibrated on the early ones
    # slow drift: the calibrated range depends on exactly which samples calibrate it
    x *= torch.linspace(1.0, 6.0, NUM_SAMPLES, dtype=torch.float64).unsqueeze(1)
    x[::37, 5] = float("nan")  # non-finite values are left out everywhere
    return x.float()


def build_metrics(kwargs: dict) -> dict[str, object]:
    return {
        "entropy": NeuronEntropy(NUM_NEURONS, num_bins=10, **kwargs),
        "mi": NeuronMutualInformation(NUM_NEURONS, num_bins=8, **kwargs),
    }


def run_metrics(kwargs: dict, data: torch.Tensor, batch_size: int) -> dict[str, object]:
    metrics = build_metrics(kwargs)
    for start in range(0, data.shape[0], batch_size):
        for metric in metrics.values():
            metric.update(data[start : start + batch_size])
    out: dict[str, object] = {}
    with pytest.warns(RuntimeWarning, match="non-finite"):
        for name, metric in metrics.items():
            out[name] = metric.compute()
            out[f"{name}_range"] = tuple(t.clone() for t in metric.value_range)
            with metric.sync_context():  # the counters summed over processes (a no-op in one process)
                out[f"{name}_num_samples"] = int(metric.num_samples)
                out[f"{name}_num_nonfinite"] = int(metric.num_nonfinite)
                out[f"{name}_clipped"] = metric.clipped_fraction
                out[f"{name}_counts"] = metric.counts.clone()
    return out


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD_SIZE)
    try:
        data = make_data()[rank::WORLD_SIZE]  # interleaved like DistributedSampler (no shuffling)
        results = {name: run_metrics(kwargs, data, RANK_BATCH) for name, kwargs in SCENARIOS.items()}
        # local state is restored after the synchronised compute: the counts are this process's own
        check = NeuronEntropy(NUM_NEURONS, num_bins=10, value_range=(-2.0, 2.5))
        check.update(data)
        check.compute()
        results["local_num_samples_after_compute"] = int(check.num_samples)
        check.update(data)  # and counting goes on from the local state
        results["local_num_samples_after_second_update"] = int(check.num_samples)
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory) -> list[dict]:
    out_dir = tmp_path_factory.mktemp("ddp")
    torch.multiprocessing.spawn(_worker, args=(_free_port(), str(out_dir)), nprocs=WORLD_SIZE, join=True)
    return [torch.load(Path(out_dir) / f"rank{rank}.pt", weights_only=False) for rank in range(WORLD_SIZE)]


def assert_same(a, b, what: str) -> None:
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), what
    elif isinstance(a, tuple):
        assert len(a) == len(b), what
        for u, v in zip(a, b, strict=True):
            assert_same(u, v, what)
    else:
        assert a == b, what


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_two_processes_match_each_other_and_a_single_process(ddp_results, scenario):
    rank0, rank1 = ddp_results[0][scenario], ddp_results[1][scenario]
    # the single process sees batches of 2 x RANK_BATCH: the union of the two processes' k-th batches,
    # so calibration uses exactly the same samples
    single = run_metrics(SCENARIOS[scenario], make_data(), WORLD_SIZE * RANK_BATCH)
    for key in single:
        assert_same(rank0[key], rank1[key], f"rank 0 vs rank 1: {key}")
        assert_same(rank0[key], single[key], f"DDP vs single process: {key}")
    assert rank0["entropy_num_samples"] == NUM_SAMPLES
    assert rank0["mi"].shape == (NUM_NEURONS, NUM_NEURONS)
    assert torch.isfinite(rank0["mi"]).all() and rank0["mi"][0, 2] > 0.1  # the dependent pair stands out


def test_calibration_scenarios_clip_later_samples(ddp_results):
    # a range calibrated on early samples clips the later, wider ones; calibrating on everything does not
    assert ddp_results[0]["calibrated"]["entropy_clipped"] > 0
    assert ddp_results[0]["calibrated_at_compute"]["entropy_clipped"] == 0
    low, high = ddp_results[0]["calibrated_at_compute"]["entropy_range"]
    data = make_data()
    finite = data[torch.isfinite(data)]
    assert (float(low), float(high)) == (float(finite.min()), float(finite.max()))


def test_local_state_is_restored_after_synchronised_compute(ddp_results):
    for rank in range(WORLD_SIZE):
        assert ddp_results[rank]["local_num_samples_after_compute"] == NUM_SAMPLES // WORLD_SIZE
        assert ddp_results[rank]["local_num_samples_after_second_update"] == NUM_SAMPLES
