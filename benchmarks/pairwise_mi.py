"""Benchmark: batched all-pairs mutual information against a per-pair scikit-learn loop, and metric throughput.

Part 1 times :func:`lightning_infomem.functional.pairwise_mutual_information` on an ``[S, N]`` activation
matrix against the obvious alternative, a Python loop of :func:`sklearn.metrics.mutual_info_score` over
all ``N (N - 1) / 2`` neuron pairs of the *same* binned data (bins from
:func:`lightning_infomem.functional.bin_indices`). The sklearn loop is timed on a random subset of pairs
and extrapolated linearly to all pairs; the same subset checks that both give the same values.

Part 2 measures the update throughput (samples/s) of the streaming metrics
``NeuronMutualInformation`` and ``NeuronEntropy``, and the ``compute()`` time of the MI metric.

Run from the repository root::

    python benchmarks/pairwise_mi.py                 # CPU, defaults (well under 2 minutes on 2 cores)
    python benchmarks/pairwise_mi.py --device cuda   # GPU (CUDA synchronised around every timing)
"""

from __future__ import annotations

import argparse
import copy
import math
import platform
import sys
import time
from typing import Callable, Sequence


def build_parser() -> argparse.ArgumentParser:
    """The command line (built before the heavy imports, so that --help answers at once)."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    group = parser.add_argument_group("pairwise MI vs scikit-learn")
    group.add_argument("--samples", type=int, default=2048, help="samples S of the activation matrix")
    group.add_argument("--neurons", type=int, default=256, help="neurons N (all N(N-1)/2 pairs are computed)")
    group.add_argument("--bins", type=int, default=32, help="equal-width bins per neuron")
    group.add_argument(
        "--sklearn-pairs", type=int, default=1000, help="random pairs timed with sklearn (extrapolated to all pairs)"
    )
    group.add_argument("--repeats", type=int, default=5, help="timed repeats of ours (best is reported)")
    group = parser.add_argument_group("metric throughput")
    group.add_argument("--metric-neurons", type=int, default=256, help="num_neurons of both metrics")
    group.add_argument("--mi-bins", type=int, default=32, help="num_bins of NeuronMutualInformation")
    group.add_argument("--entropy-bins", type=int, default=100, help="num_bins of NeuronEntropy")
    group.add_argument("--batch-size", type=int, default=256, help="samples per update() call")
    group.add_argument("--batches", type=int, default=300, help="timed update() calls per metric, at least")
    group.add_argument(
        "--min-seconds", type=float, default=2.0, help="timed updates per metric last this long, at least"
    )
    group.add_argument(
        "--seconds", type=float, default=20.0, help="time budget of the timed updates per metric, at most"
    )
    group = parser.add_argument_group("general")
    group.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1")
    group.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    group.add_argument("--seed", type=int, default=0, help="random seed of data and pair subset")
    return parser


if __name__ == "__main__" and {"-h", "--help"} & set(sys.argv[1:]):
    build_parser().parse_args()  # prints the help and exits

import numpy as np
import sklearn
import torch
from machine import cpu_name, fmt_seconds, make_synchronize, print_table, usable_cores
from sklearn.metrics import mutual_info_score
from torchmetrics import Metric

import lightning_infomem
from lightning_infomem import NeuronEntropy, NeuronMutualInformation
from lightning_infomem.functional import bin_indices, joint_histogram_counts, pair_indices, pairwise_mutual_information


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("samples", "bins", "sklearn_pairs", "repeats", "metric_neurons", "mi_bins", "entropy_bins"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    if args.neurons < 2:
        parser.error("--neurons must be at least 2")
    if args.batch_size < 1 or args.batches < 1 or args.seconds <= 0 or args.min_seconds < 0:
        parser.error("--batch-size, --batches and --seconds must be positive, --min-seconds non-negative")
    return args


# ------------------------------------------------------------------------------------------ utilities


def make_activations(num_samples: int, num_neurons: int, generator: torch.Generator) -> torch.Tensor:
    """Unit-variance activations with shared latent factors, so that many pairs have non-trivial MI."""
    rank = 16
    latent = torch.randn(num_samples, rank, generator=generator)
    mixing = torch.randn(rank, num_neurons, generator=generator)
    mixing /= mixing.norm(dim=0, keepdim=True)
    noise = torch.randn(num_samples, num_neurons, generator=generator)
    return math.sqrt(0.7) * latent @ mixing + math.sqrt(0.3) * noise


# ------------------------------------------------------------------------------ part 1: pairwise MI
def bench_pairwise(args: argparse.Namespace, device: torch.device, sync: Callable[[], None]) -> None:
    generator = torch.Generator().manual_seed(args.seed)
    activations = make_activations(args.samples, args.neurons, generator).to(device)
    num_pairs = args.neurons * (args.neurons - 1) // 2

    def ours() -> torch.Tensor:
        return pairwise_mutual_information(activations, num_bins=args.bins)

    sync()
    ours()  # warm-up
    sync()
    times = []
    for _ in range(args.repeats):
        sync()
        start = time.perf_counter()
        matrix = ours()
        sync()
        times.append(time.perf_counter() - start)
    best = min(times)

    # the same binned data for sklearn (same global range, same binning code, on the same device)
    bins = bin_indices(activations, args.bins).cpu().numpy()
    rows, cols = (t.numpy() for t in pair_indices(args.neurons))
    rng = np.random.default_rng(args.seed)
    subset_size = min(args.sklearn_pairs, num_pairs)
    subset = np.sort(rng.choice(num_pairs, size=subset_size, replace=False))
    columns = [np.ascontiguousarray(bins[:, j]) for j in range(args.neurons)]
    for k in subset[: min(20, subset_size)]:  # warm-up
        mutual_info_score(columns[rows[k]], columns[cols[k]])
    sklearn_values = np.empty(subset_size)
    start = time.perf_counter()
    for out, k in enumerate(subset):
        sklearn_values[out] = mutual_info_score(columns[rows[k]], columns[cols[k]])
    sklearn_subset_time = time.perf_counter() - start
    per_pair = sklearn_subset_time / subset_size
    sklearn_total = per_pair * num_pairs
    matrix_cpu = matrix.cpu().numpy()
    max_diff = float(np.max(np.abs(matrix_cpu[rows[subset], cols[subset]] - sklearn_values)))
    # exact counts: the package's joint histograms of those pairs against NumPy's bincount of the joint codes
    counts = joint_histogram_counts(bin_indices(activations, args.bins), args.bins).cpu().numpy()[subset]
    skip = args.bins  # a non-finite value's index: left out of a pair (none here)
    reference = []
    for k in subset:
        a, b = columns[rows[k]], columns[cols[k]]
        codes = (a * args.bins + b)[(a < skip) & (b < skip)]
        reference.append(np.bincount(codes, minlength=args.bins * args.bins).reshape(args.bins, args.bins))
    counts_equal = bool(np.array_equal(counts, np.stack(reference)))
    extrapolated = subset_size < num_pairs

    print_table(
        f"Pairwise MI, S={args.samples} samples x N={args.neurons} neurons, {args.bins} bins, "
        f"{num_pairs:,} pairs (nats)",
        [
            (
                f"ours: pairwise_mutual_information, best of {args.repeats} (after warm-up)",
                fmt_seconds(best),
            ),
            ("ours: median of the repeats", fmt_seconds(float(np.median(times)))),
            ("ours: per pair", fmt_seconds(best / num_pairs)),
            (f"sklearn mutual_info_score loop: {subset_size:,} pairs timed", fmt_seconds(sklearn_subset_time)),
            ("sklearn: per pair", fmt_seconds(per_pair)),
            (
                f"sklearn: all {num_pairs:,} pairs" + (" (EXTRAPOLATED from the subset)" if extrapolated else ""),
                fmt_seconds(sklearn_total),
            ),
            ("speed ratio sklearn / ours", f"{sklearn_total / best:,.0f}x"),
            (f"max |ours - sklearn| over the {subset_size:,} pairs", f"{max_diff:.2e} nats"),
            ("joint counts of those pairs equal NumPy's bincount", "yes" if counts_equal else "NO"),
            ("mean off-diagonal MI (ours)", f"{float(matrix_cpu[rows, cols].mean()):.4f} nats"),
        ],
    )
    print(
        "Ours includes binning and returns the full [N, N] matrix; sklearn gets the already binned data\n"
        "(identical bins from lightning_infomem.functional.bin_indices)."
        + (
            f"\nThe sklearn time for all pairs is the per-pair time of {subset_size:,} random pairs times "
            f"{num_pairs:,}\n(use --sklearn-pairs {num_pairs} to time them all)."
            if extrapolated
            else ""
        )
    )
    if max_diff > 1e-12 or not counts_equal:
        print(f"FAILED: values differ by up to {max_diff:.3e} nats, counts equal: {counts_equal}")
        sys.exit(1)


# ------------------------------------------------------------------------- part 2: metric throughput
def time_updates(
    metric: Metric, pool: Sequence[torch.Tensor], args: argparse.Namespace, sync: Callable[[], None]
) -> tuple[int, float]:
    """Timed ``update`` calls cycling through ``pool``: at least ``--batches`` calls and ``--min-seconds``,
    but no longer than ``--seconds``."""
    sync()
    start = time.perf_counter()
    done = 0
    while True:
        metric.update(pool[done % len(pool)])
        done += 1
        # the stopping rule reads the clock without synchronising (a GPU queue runs only a little behind);
        # the reported time is taken after a synchronisation
        elapsed = time.perf_counter() - start
        if elapsed >= args.seconds or (done >= args.batches and elapsed >= args.min_seconds):
            # sync() first counts any samples the metric still pools (NeuronMutualInformation pools small
            # batches before counting them); outside DDP it does nothing else
            metric.sync()
            sync()
            return done, time.perf_counter() - start


def bench_metrics(args: argparse.Namespace, device: torch.device, sync: Callable[[], None]) -> None:
    generator = torch.Generator().manual_seed(args.seed + 1)
    pool = [  # generated beforehand, not timed
        make_activations(args.batch_size, args.metric_neurons, generator).to(device) for _ in range(8)
    ]
    n = args.metric_neurons
    results: list[tuple[str, int, float]] = []

    mi_metric = NeuronMutualInformation(num_neurons=n, num_bins=args.mi_bins, value_range=(-4.0, 4.0)).to(device)
    mi_metric.update(pool[0])  # warm-up
    mi_label = f"NeuronMutualInformation({n}, {args.mi_bins}, value_range=(-4.0, 4.0))"
    results.append((mi_label, *time_updates(mi_metric, pool, args, sync)))

    compute_times = []
    for _ in range(3):  # compute() caches its result, so each timing uses a fresh copy of the state
        fresh = copy.deepcopy(mi_metric)
        sync()
        start = time.perf_counter()
        fresh.compute()
        sync()
        compute_times.append(time.perf_counter() - start)
        del fresh
    pool_samples = getattr(mi_metric, "pool_samples", None)  # newer versions pool small batches
    del mi_metric

    entropy_metric = NeuronEntropy(n, args.entropy_bins).to(device)
    calls = 0
    while entropy_metric.value_range is None or calls < len(pool):  # warm-up, through the range calibration
        entropy_metric.update(pool[calls % len(pool)])
        calls += 1
    results.append((f"NeuronEntropy({n}, {args.entropy_bins})", *time_updates(entropy_metric, pool, args, sync)))

    header = ("metric", "update() calls", "time", "per update()", "samples/s")
    table = [header] + [
        (
            label,
            f"{done:,}",
            fmt_seconds(elapsed),
            fmt_seconds(elapsed / done),
            f"{done * args.batch_size / elapsed:,.0f}",
        )
        for label, done, elapsed in results
    ]
    widths = [max(len(row[c]) for row in table) for c in range(len(header))]
    rule = "-" * (sum(widths) + 3 * (len(widths) - 1))
    print(f"\nStreaming metrics on {device}, update() with batches of {args.batch_size} samples\n{rule}")
    for i, row in enumerate(table):
        cells = [row[0].ljust(widths[0])] + [cell.rjust(w) for cell, w in zip(row[1:], widths[1:], strict=True)]
        print("   ".join(cells))
        if i == 0:
            print(rule)
    print(rule)
    state_mib = NeuronMutualInformation.state_bytes(n, args.mi_bins) / 2**20
    print(
        f"NeuronMutualInformation compute(): {fmt_seconds(min(compute_times))} (best of 3); state {state_mib:,.1f} MiB"
    )
    print(
        "Timed after warm-up (the entropy metric after its range calibration of 1024 samples), up to a final\n"
        "metric.sync() that counts any pooled samples; the data is generated beforehand and cycled."
    )
    if pool_samples:
        print(
            f"NeuronMutualInformation pools batches until {pool_samples:,} samples before counting them: counting\n"
            "touches every pair's (bins + 1)**2 cells whatever the number of samples."
        )


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda requested but torch.cuda.is_available() is False")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    sync = make_synchronize(device)

    environment = [
        ("python", platform.python_version()),
        ("torch", torch.__version__),
        ("numpy / scikit-learn", f"{np.__version__} / {sklearn.__version__}"),
        ("lightning_infomem", lightning_infomem.__version__),
        ("CPU", f"{cpu_name()} ({usable_cores()} usable cores)"),
        ("torch threads (intra-op)", str(torch.get_num_threads())),
        ("device", str(device)),
    ]
    if device.type == "cuda":
        environment.append(("GPU", torch.cuda.get_device_name(device)))
    print_table("Environment", environment)

    bench_pairwise(args, device, sync)
    bench_metrics(args, device, sync)


if __name__ == "__main__":
    main()
