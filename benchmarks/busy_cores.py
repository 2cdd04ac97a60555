"""What happens to torch's threads when other processes hold the cores, and what the package does about it.

Starts ``--hogs`` busy-loop processes (default: one, on a 2-core machine half the cores), then times, with
torch's default thread count and with one thread, alternately in the same run:

1. a 90-step training loop of the digits-sized MLP (3 x 256, batch 64): the user's own loop;
2. one validation epoch with ``InformationMeasures`` (3 x 256 MLP, 2,048 samples) with the callback's
   ``threads=None`` (torch's setting) and with its default ``threads=1``;
3. all-pairs histogram MI (``pairwise_mutual_information``, S = 2,048, N = 256, 32 bins);
4. all-pairs KSG MI (``ksg_mutual_information``, compiled backend, S = 2,000, N = 32, k = 3).

Then the same without the hogs. Each figure is the median of ``--repeats``. Run from the repository
root on an otherwise idle machine (the hogs are the only load it should see)::

    python benchmarks/busy_cores.py
    OMP_WAIT_POLICY=PASSIVE python benchmarks/busy_cores.py   # OpenMP threads sleep instead of spinning
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import sys
import time
import warnings
from typing import Callable, Sequence


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hogs", type=int, default=1, help="busy-loop processes started during the loaded half")
    parser.add_argument("--repeats", type=int, default=3)
    return parser.parse_args(argv)


if __name__ == "__main__":
    parse_args()  # --help and argument errors answer before torch and Lightning are imported

import torch
from machine import cpu_name, median_time, print_table, usable_cores

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from callback_overhead import MLP  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from lightning_infomem import InformationMeasures  # noqa: E402
from lightning_infomem.functional import ksg_mutual_information, pairwise_mutual_information  # noqa: E402


def _spin() -> None:
    while True:
        pass


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    from lightning.pytorch import Trainer

    default_threads = torch.get_num_threads()
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(90 * 64, 64, generator=generator), torch.randint(0, 10, (90 * 64,), generator=generator)
    val = DataLoader(TensorDataset(x[:2048], y[:2048]), batch_size=256)
    acts = torch.randn(2048, 16, generator=generator) @ torch.randn(16, 256, generator=generator)

    def training_loop() -> None:
        torch.manual_seed(0)
        model = MLP()
        optimizer = torch.optim.Adam(model.parameters(), 1e-3)
        for xb, yb in zip(x.split(64), y.split(64), strict=True):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(xb), yb).backward()
            optimizer.step()

    def validation(callback_threads: int | None) -> Callable[[], None]:
        model = MLP()
        callback = InformationMeasures(layers=["net.0", "net.2", "net.4"], threads=callback_threads)

        def run() -> None:
            Trainer(
                accelerator="cpu",
                logger=False,
                enable_progress_bar=False,
                enable_model_summary=False,
                enable_checkpointing=False,
                callbacks=[callback],
            ).validate(model, val, verbose=False)

        return run

    def with_threads(threads: int, fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            torch.set_num_threads(threads)
            try:
                fn()
            finally:
                torch.set_num_threads(default_threads)

        return run

    def pairwise() -> None:
        pairwise_mutual_information(acts, 32)

    ksg_data = torch.randn(2000, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    def ksg() -> None:
        ksg_mutual_information(ksg_data, k=3)

    cases = [
        (f"90-step training loop, torch threads {default_threads}", with_threads(default_threads, training_loop)),
        ("90-step training loop, torch threads 1", with_threads(1, training_loop)),
        (f"validation + callback(threads=None), torch threads {default_threads}", validation(None)),
        (f"validation + callback(threads=1), torch threads {default_threads}", validation(1)),
        (
            f"pairwise MI 2048 x 256, 32 bins, torch threads {default_threads}",
            with_threads(default_threads, pairwise),
        ),
        ("pairwise MI 2048 x 256, 32 bins, torch threads 1", with_threads(1, pairwise)),
        (f"KSG MI 2000 x 32, torch threads {default_threads}", with_threads(default_threads, ksg)),
        ("KSG MI 2000 x 32, torch threads 1", with_threads(1, ksg)),
    ]  # fmt: skip
    results: dict[str, dict[str, float]] = {}
    for load in ("idle", "loaded"):
        hogs = []
        if load == "loaded":
            hogs = [multiprocessing.Process(target=_spin, daemon=True) for _ in range(args.hogs)]
            for hog in hogs:
                hog.start()
            time.sleep(0.5)
        try:
            results[load] = {name: median_time(fn, args.repeats, warm_up=True) for name, fn in cases}
        finally:
            for hog in hogs:
                hog.terminate()
                hog.join()
    print(f"CPU: {cpu_name()}, {usable_cores()} usable cores; OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}")
    rows = [
        (name, f"{results['idle'][name]:.3f} s idle, {results['loaded'][name]:.3f} s with {args.hogs} busy core(s) "
         f"({results['loaded'][name] / results['idle'][name]:.1f}x)")
        for name, _ in cases
    ]  # fmt: skip
    print_table(f"median of {args.repeats}", rows)


if __name__ == "__main__":
    main()
