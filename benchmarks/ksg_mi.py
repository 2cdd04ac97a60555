"""Benchmark: batched all-pairs KSG mutual information against a per-pair scikit-learn loop.

Times :func:`lightning_infomem.functional.ksg_mutual_information` (KSG algorithm 1, k = 3, max-norm) on an
``[S, N]`` activation matrix against the per-pair loop that the paper's numbers come from: scikit-learn's
``_compute_mi_cc`` (KSG algorithm 1 with ``NearestNeighbors`` / ``KDTree``; the authors' ``_get_knn_mi`` is
the same code without the final ``max(0, mi)``), called on the same raw data, without scaling or noise.
The sklearn loop is timed on a random subset of pairs and extrapolated linearly to all ``N (N - 1) / 2``
pairs; the same subset checks that both give the same values (ours clipped at 0 like sklearn's).

Run from the repository root::

    python benchmarks/ksg_mi.py                    # S=2000, N=64 on CPU
    python benchmarks/ksg_mi.py --neurons 128      # the paper's "about 65 s for 128 neurons" setting
    python benchmarks/ksg_mi.py --threads 1        # one core each (sklearn's KDTree is single-threaded)
    python benchmarks/ksg_mi.py --device cuda      # GPU (CUDA synchronised around every timing)
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
import time
from typing import Sequence

import numpy as np
import sklearn
import torch
from machine import cpu_name, fmt_seconds, make_synchronize, print_table, usable_cores
from sklearn.feature_selection._mutual_info import _compute_mi_cc

import lightning_infomem
from lightning_infomem.functional import ksg_mutual_information, mean_off_diagonal, pair_indices


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--samples", type=int, default=2000, help="samples S of the activation matrix")
    parser.add_argument("--neurons", type=int, default=64, help="neurons N (all pairs are computed); try 128")
    parser.add_argument("--k", type=int, default=3, help="KSG neighbours")
    parser.add_argument(
        "--data",
        choices=["latent", "independent", "relu"],
        default="latent",
        help="latent: unit-variance neurons sharing 16 latent factors (pre-ReLU-like, most pairs dependent); "
        "independent: i.i.d. Gaussians; relu: ReLU of 'latent' (about half exact zeros, KSG's failure case)",
    )
    parser.add_argument(
        "--sklearn-pairs", type=int, default=100, help="random pairs timed with sklearn (extrapolated to all pairs)"
    )
    parser.add_argument("--repeats", type=int, default=2, help="timed repeats of ours (best is reported)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of data and pair subset")
    args = parser.parse_args(argv)
    if args.neurons < 2:
        parser.error("--neurons must be at least 2")
    if not 1 <= args.k < args.samples:
        parser.error("--k must satisfy 1 <= k < samples")
    if args.sklearn_pairs < 1 or args.repeats < 1:
        parser.error("--sklearn-pairs and --repeats must be positive")
    return args


def make_activations(args: argparse.Namespace) -> torch.Tensor:
    """``[S, N]`` float32 activations of the chosen kind (float32, as a network would produce them)."""
    generator = torch.Generator().manual_seed(args.seed)
    shape = (args.samples, args.neurons)
    if args.data == "independent":
        return torch.randn(shape, generator=generator)
    rank = 16
    latent = torch.randn(args.samples, rank, generator=generator)
    mixing = torch.randn(rank, args.neurons, generator=generator)
    mixing /= mixing.norm(dim=0, keepdim=True)
    x = math.sqrt(0.7) * latent @ mixing + math.sqrt(0.3) * torch.randn(shape, generator=generator)
    return torch.relu(x) if args.data == "relu" else x


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = make_synchronize(device)
    activations = make_activations(args).to(device)
    num_pairs = args.neurons * (args.neurons - 1) // 2

    versions = f"torch {torch.__version__}, sklearn {sklearn.__version__}"
    print(f"lightning_infomem {lightning_infomem.__version__}, {versions}")
    print(f"python {sys.version.split()[0]}, {platform.system()}, CPU: {cpu_name()}, {usable_cores()} usable cores")
    print(f"device {device}, torch threads {torch.get_num_threads()} (sklearn's KDTree loop uses one core)")

    ksg_mutual_information(activations[: min(args.samples, 500), : min(args.neurons, 8)], k=args.k)  # warm-up
    times = []
    for _ in range(args.repeats):
        sync()
        start = time.perf_counter()
        matrix = ksg_mutual_information(activations, k=args.k)
        sync()
        times.append(time.perf_counter() - start)
    best = min(times)

    data = activations.cpu().double().numpy()  # what sklearn computes in, whatever the input dtype
    rows, cols = (t.numpy() for t in pair_indices(args.neurons))
    rng = np.random.default_rng(args.seed)
    subset_size = min(args.sklearn_pairs, num_pairs)
    subset = np.sort(rng.choice(num_pairs, size=subset_size, replace=False))
    columns = [np.ascontiguousarray(data[:, j]) for j in range(args.neurons)]
    _compute_mi_cc(columns[0], columns[1], args.k)  # warm-up
    sklearn_values = np.empty(subset_size)
    start = time.perf_counter()
    for out, p in enumerate(subset):
        sklearn_values[out] = _compute_mi_cc(columns[rows[p]], columns[cols[p]], args.k)
    sklearn_subset_time = time.perf_counter() - start
    per_pair = sklearn_subset_time / subset_size
    sklearn_total = per_pair * num_pairs
    matrix_cpu = matrix.cpu().numpy()
    ours_subset = matrix_cpu[rows[subset], cols[subset]]
    max_diff = float(np.max(np.abs(np.maximum(ours_subset, 0.0) - sklearn_values)))
    extrapolated = subset_size < num_pairs

    print_table(
        f"KSG MI (k={args.k}), S={args.samples} samples x N={args.neurons} neurons, '{args.data}' data, "
        f"{num_pairs:,} pairs (nats)",
        [
            (f"ours: ksg_mutual_information, best of {args.repeats} (after warm-up)", fmt_seconds(best)),
            ("ours: median of the repeats", fmt_seconds(float(np.median(times)))),
            ("ours: per pair", fmt_seconds(best / num_pairs)),
            (f"sklearn _compute_mi_cc loop: {subset_size:,} pairs timed", fmt_seconds(sklearn_subset_time)),
            ("sklearn: per pair", fmt_seconds(per_pair)),
            (
                f"sklearn: all {num_pairs:,} pairs" + (" (EXTRAPOLATED from the subset)" if extrapolated else ""),
                fmt_seconds(sklearn_total),
            ),
            ("speed ratio sklearn / ours", f"{sklearn_total / best:,.1f}x"),
            (f"max |max(ours, 0) - sklearn| over the {subset_size:,} pairs", f"{max_diff:.2e} nats"),
            ("mean off-diagonal MI (ours, unclipped)", f"{float(mean_off_diagonal(matrix)):.4f} nats"),
            ("mean diagonal (self-MI, excluded from the mean)", f"{float(matrix_cpu.diagonal().mean()):.4f} nats"),
        ],
    )
    print(
        "Ours returns the full symmetric [N, N] matrix, diagonal (N more pairs) included, exact KSG in float64.\n"
        "sklearn gets the same raw data (float64), one pair per call, without its scaling and noise."
        + (
            f"\nThe sklearn time for all pairs is the per-pair time of {subset_size:,} random pairs times "
            f"{num_pairs:,}\n(use --sklearn-pairs {num_pairs} to time them all)."
            if extrapolated
            else ""
        )
    )


if __name__ == "__main__":
    main()
