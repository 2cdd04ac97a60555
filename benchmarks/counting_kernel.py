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

Two comparisons with alternatives compiled in this script from the package's own loop bodies:

* the same counting loop as a Numba ``parallel=True`` kernel (``numba.prange`` over the tasks, on
  Numba's work queue, as the package compiled it before), on one thread and on all;
* the binning kernel (`compiled_bin_and_count`, one update of the callback: 1,024 rows of 128
  neurons, 100 bins) against the same kernel compiled with Numba's default Python error model,
  which checks each float division for a zero divisor (and so kept the loop from vectorising).

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


def build_parser() -> argparse.ArgumentParser:
    """The command line (built before the heavy imports, so that --help answers at once)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=2048)
    parser.add_argument("--neurons", type=int, default=128)
    parser.add_argument("--bins", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=9)
    return parser


if __name__ == "__main__" and {"-h", "--help"} & set(sys.argv[1:]):
    build_parser().parse_args()  # prints the help and exits

import numpy as np
import torch
from machine import cpu_name, median_time, print_table, usable_cores

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from callback_overhead import MLP  # noqa: E402

import lightning_infomem.functional.joint_counts as joint_counts_module  # noqa: E402
import lightning_infomem.functional.mutual_information as mi_module  # noqa: E402
from lightning_infomem.functional import bin_indices, pairwise_mutual_information_from_bins  # noqa: E402
from lightning_infomem.functional._kernels import counting as counting_kernels  # noqa: E402
from lightning_infomem.functional._kernels.threads import limited_threads  # noqa: E402
from lightning_infomem.functional.binning import bin_grid, compiled_bin_and_count, compiled_grid  # noqa: E402
from lightning_infomem.functional.entropy import nlogn_table  # noqa: E402


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


def prange_kernel():  # type: ignore[no-untyped-def]
    """The fused counting loop of `joint_plugin_terms` as a ``numba.prange`` kernel over all tasks."""
    import numba

    if numba.config.THREADING_LAYER == "default":
        numba.config.THREADING_LAYER = "workqueue"
    from lightning_infomem.functional._kernels import counting as kernels

    @numba.njit(nogil=True, parallel=True)
    def terms_prange(bins, i0, i1, num_bins, table, terms):  # type: ignore[no-untyped-def]
        num_neurons = bins.shape[0]
        width = num_bins + 1
        cells = width * width
        for task in numba.prange((i1 - i0 + 1) // 2):
            hist = np.empty(4 * cells, dtype=np.int32)
            columns = np.empty(num_bins, dtype=np.int64)
            for side in range(2):
                i = kernels._task_row(task, side, i0, i1)
                if i < 0:
                    break
                first, row, j = kernels._first_pair(i, i0, num_neurons), bins[i], i + 1
                while j < num_neurons:
                    group = kernels._count_four(row, bins, j, width, hist)
                    for g in range(group):
                        kernels._terms(hist, g * cells, num_bins, width, table, terms, first + j + g - i - 1, columns)
                    j += group

    return terms_prange


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
    args = build_parser().parse_args()
    all_bins = layer_bins(args.samples, args.neurons, args.bins)
    increments = args.neurons * (args.neurons - 1) // 2 * args.samples

    worst = 0.0
    for bins in all_bins:  # exactness first (and the warm-up)
        fused = pairwise_mutual_information_from_bins(bins, args.bins, backend="compiled")
        reference = pairwise_mutual_information_from_bins(bins.long(), args.bins, backend="bincount")
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

    # the same loop as a numba.prange kernel
    import numba

    terms_prange = prange_kernel()
    pairs = args.neurons * (args.neurons - 1) // 2
    table = nlogn_table(args.samples).numpy()
    ours_terms, prange_terms = np.empty((pairs, 7)), np.empty((pairs, 7))
    transposed = [joint_counts_module.compiled_bin_layout(b, args.bins) for b in all_bins]
    tasks = joint_counts_module.compiled_row_tasks(0, args.neurons - 1)
    kernel = mi_module._PAIR_TERMS_KERNEL
    problem = (0, args.neurons - 1, args.bins, table)  # rows i0, i1, bins, n log n table
    same = True
    for t in transposed:
        kernel.run_tasks(tasks, t, 0, args.neurons - 1, args.bins, table, ours_terms)
        terms_prange(t, 0, args.neurons - 1, args.bins, table, prange_terms)
        same = same and np.array_equal(ours_terms, prange_terms)
    default_threads = torch.get_num_threads()
    for threads in sorted({1, default_threads}):
        torch.set_num_threads(threads)
        numba.set_num_threads(threads)
        ours = statistics.mean(
            median_time(
                lambda t=t: kernel.run_tasks(tasks, t, 0, args.neurons - 1, args.bins, table, ours_terms), args.repeats
            )
            for t in transposed
        )
        other = statistics.mean(
            median_time(lambda t=t: terms_prange(t, *problem, prange_terms), args.repeats) for t in transposed
        )
        rows.append(
            (
                f"counting loop on {threads} thread(s): package's kernel / as numba.prange kernel",
                f"{ours * 1e3:.2f} / {other * 1e3:.2f} ms per layer ({other / ours:.2f}x)",
            )
        )
    torch.set_num_threads(default_threads)
    rows.append(("numba.prange kernel's terms equal the package's", "yes" if same else "NO"))

    # binning: NumPy's error model (the package's) against Python's
    python_model = numba.njit(nogil=True, error_model="python")(counting_kernels.bin_and_count.py_func)
    torch.manual_seed(1)
    values = torch.randn(1024, args.neurons)
    low, high = values.min().double(), values.max().double()
    grid = compiled_grid(bin_grid(low, high, 100), low, high, args.neurons)
    counts = torch.zeros(args.neurons, 100, dtype=torch.int64)
    out_ours, out_python = (torch.empty(values.shape, dtype=torch.uint8) for _ in range(2))
    arrays = (values.numpy(), grid.low, grid.width, grid.factor, grid.defined, grid.range_low, grid.range_high, 100)
    python_counts = counts.clone()
    compiled_bin_and_count(values, grid, counts, out_ours)
    python_model(*arrays, python_counts.numpy(), out_python.numpy(), True)
    binning_same = torch.equal(out_ours, out_python) and torch.equal(counts, python_counts)
    ours = median_time(lambda: compiled_bin_and_count(values, grid, counts, out_ours), 10 * args.repeats)
    other = median_time(
        lambda: python_model(*arrays, python_counts.numpy(), out_python.numpy(), True), 10 * args.repeats
    )
    per_value = 1e9 / values.numel()
    rows.append(
        (
            f"binning 1024 x {args.neurons}, 100 bins: NumPy / Python error model",
            f"{ours * per_value:.2f} / {other * per_value:.2f} ns per value ({other / ours:.2f}x)",
        )
    )
    rows.append(("both binning kernels give the same indices and counts", "yes" if binning_same else "NO"))
    print(f"CPU: {cpu_name()}, {usable_cores()} usable cores, torch threads {torch.get_num_threads()}")
    print_table(
        f"MI of all pairs from bins, {args.neurons} neurons x {args.samples} samples, {args.bins} bins "
        f"({increments / 1e6:.1f} M increments per layer), median of {args.repeats} per layer",
        rows,
    )
    if worst > 1e-12 or not same or not binning_same:
        print("FAILED: the fused kernel's values differ from the torch path's, or an alternative's from ours")
        sys.exit(1)


if __name__ == "__main__":
    main()
