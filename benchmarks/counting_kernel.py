"""The compiled joint-histogram kernel on the callback's own problem: one layer's 128 neurons x 2,048 samples, 16 bins.

The three hidden layers of the 3 x 256 MLP of ``callback_breakdown.py`` (random weights, 2,048 random
inputs), 128 random neurons each, binned on each layer's range (the callback's MI binning). Each
layer's 8,128 pairs x 2,048 samples (16.6 M pair-sample increments) are reduced to their MI by the
fused kernel (`pairwise_mutual_information_from_bins` on CPU with Numba), timed on one thread and
on all of torch's threads:

* **idle**: back to back;
* **after torch's parallel work**: right after 20 products of 256 x 256 matrices on torch's threads
  (as after a model's forward pass): torch's idle OpenMP threads spin for a while before they sleep,
  and share cores with the kernel;
* **after a pause**: the same, then 20 ms of sleep first.

It also checks that the kernel's values equal the torch path's (offset ``bincount`` counts and the
torch plug-in terms) to 1e-12, and exits with status 1 otherwise. Run from the repository root::

    python benchmarks/counting_kernel.py
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Callable

import torch
from machine import cpu_name, print_table, usable_cores

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from callback_overhead import MLP  # noqa: E402

from lightning_infomem.functional import bin_indices, pairwise_mutual_information_from_bins  # noqa: E402
from lightning_infomem.threads import limited_threads  # noqa: E402


def layer_bins(num_samples: int, num_neurons: int, num_bins: int) -> list[torch.Tensor]:
    """Bin indices ``[S, num_neurons]`` of the MLP's three hidden (pre-activation) layers."""
    torch.manual_seed(0)
    model = MLP().eval()
    x = torch.randn(num_samples, 64, generator=torch.Generator().manual_seed(0))
    layers, out = [], x
    with torch.no_grad():
        for module in model.net:
            out = module(out)
            if isinstance(module, torch.nn.Linear) and out.shape[1] == 256:
                layers.append(out)
    generator = torch.Generator().manual_seed(0)
    subsets = [torch.randperm(256, generator=generator)[:num_neurons].sort().values for _ in layers]
    pairs = zip(layers, subsets, strict=True)
    return [bin_indices(layer[:, subset], num_bins).to(torch.uint8) for layer, subset in pairs]


def timed(run: Callable[[], object], before: Callable[[], object], threads: int, repeats: int) -> float:
    """Median time of ``run`` with the compiled kernels on ``threads`` threads, each after ``before()``."""
    times, default = [], torch.get_num_threads()
    for _ in range(repeats):
        before()  # on torch's default threads
        torch.set_num_threads(threads)  # the count the compiled kernels follow
        with limited_threads(1):  # as inside the callback: torch's own operations on one thread
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
        torch.set_num_threads(default)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=2048)
    parser.add_argument("--neurons", type=int, default=128)
    parser.add_argument("--bins", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    all_bins = layer_bins(args.samples, args.neurons, args.bins)
    increments = args.neurons * (args.neurons - 1) // 2 * args.samples

    worst = 0.0
    for bins in all_bins:  # exactness first (and the warm-up)
        fused = pairwise_mutual_information_from_bins(bins, args.bins, method="compiled")
        reference = pairwise_mutual_information_from_bins(bins.long(), args.bins, method="bincount")
        worst = max(worst, float((fused - reference).abs().max()))

    matrix = torch.randn(256, 256)
    busy = lambda: [matrix @ matrix for _ in range(20)]  # noqa: E731
    paused = lambda: (busy(), time.sleep(0.02))  # noqa: E731
    rows = []
    for threads in sorted({1, torch.get_num_threads()}):
        for label, before in (("idle", lambda: None), ("after torch's parallel work", busy), ("after a pause", paused)):
            per_layer = [
                timed(lambda b=b: pairwise_mutual_information_from_bins(b, args.bins), before, threads, args.repeats)
                for b in all_bins
            ]
            mean = sum(per_layer) / len(per_layer)
            rows.append(
                (
                    f"kernel on {threads} thread(s), {label}",
                    f"{mean * 1e3:.2f} ms per layer ({mean / increments * 1e9:.2f} ns per increment)",
                )
            )
    rows.append(("max |fused - torch path| over the 3 layers", f"{worst:.1e} nats"))
    print(f"CPU: {cpu_name()}, {usable_cores()} usable cores, torch threads {torch.get_num_threads()}")
    print_table(
        f"MI of all pairs from bins, {args.neurons} neurons x {args.samples} samples, {args.bins} bins "
        f"({increments / 1e6:.1f} M increments per layer), median of {args.repeats} per layer",
        rows,
    )
    if worst > 1e-12:
        print("FAILED: the fused kernel's values differ from the torch path's")
        sys.exit(1)


if __name__ == "__main__":
    main()
