"""Benchmark: all-pairs KSG mutual information against the authors' per-pair loop, both backends, 1 and all threads.

Times :func:`lightning_infomem.functional.ksg_mutual_information` (KSG algorithm 1, k = 3, max-norm) on an
``[S, N]`` activation matrix against the per-pair function the paper's numbers come from, the authors'
``_get_knn_mi`` (github.com/technion-cs-nlp/Information-Reflects-Memorization). Their repository is not an
installable package and nothing can be downloaded at run time, so the reference here is a line-for-line
equivalent of that function: ``NearestNeighbors(metric="chebyshev")`` on the joint ``(x, y)``,
``kneighbors()`` radii moved down by ``nextafter``, ``KDTree(metric="chebyshev").query_radius(...,
count_only=True)`` on ``x`` and on ``y``, ``psi(S) + psi(k) - mean(psi(n_x + 1)) - mean(psi(n_y + 1))``, not
clipped. It is timed on a random subset of pairs and extrapolated linearly to all ``N (N - 1) / 2`` pairs;
the same subset checks that ours equals it (to 1e-12 nats; the script exits 1 otherwise).

Ours runs with the compiled backend (Numba, when installed) and the torch backend, each with one torch
thread and with all of them, in the same run.

Run from the repository root::

    python benchmarks/ksg_mi.py                    # S=2000, N=128 on CPU
    python benchmarks/ksg_mi.py --neurons 64 --reference-pairs 50
    python benchmarks/ksg_mi.py --device cuda      # GPU (torch backend; CUDA synchronised around every timing)
"""

from __future__ import annotations

import argparse
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
    parser.add_argument("--samples", type=int, default=2000, help="samples S of the activation matrix")
    parser.add_argument("--neurons", type=int, default=128, help="neurons N (all pairs are computed)")
    parser.add_argument("--k", type=int, default=3, help="KSG neighbours")
    parser.add_argument(
        "--data",
        choices=["latent", "independent", "relu"],
        default="latent",
        help="latent: unit-variance neurons sharing 16 latent factors (pre-ReLU-like, most pairs dependent); "
        "independent: i.i.d. Gaussians; relu: ReLU of 'latent' (about half exact zeros, KSG's failure case)",
    )
    parser.add_argument(
        "--reference-pairs", type=int, default=100, help="random pairs timed with the reference (extrapolated)"
    )
    parser.add_argument("--repeats", type=int, default=2, help="timed repeats of ours (best is reported)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1")
    parser.add_argument(
        "--skip-torch-backend", action="store_true", help="time only the compiled backend (the torch one is slower)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed of data and pair subset")
    return parser


if __name__ == "__main__" and {"-h", "--help"} & set(sys.argv[1:]):
    build_parser().parse_args()  # prints the help and exits

import numpy as np
import sklearn
import torch
from machine import cpu_name, fmt_seconds, make_synchronize, print_table, usable_cores
from scipy.special import digamma
from sklearn.neighbors import KDTree, NearestNeighbors

import lightning_infomem
from lightning_infomem.functional import ksg_mutual_information, mean_off_diagonal, pair_indices
from lightning_infomem.functional.ksg import compiled_kernel_available


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.neurons < 2:
        parser.error("--neurons must be at least 2")
    if not 1 <= args.k < args.samples:
        parser.error("--k must satisfy 1 <= k < samples")
    if args.reference_pairs < 1 or args.repeats < 1:
        parser.error("--reference-pairs and --repeats must be positive")
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


def authors_knn_mi(x: np.ndarray, y: np.ndarray, n_neighbors: int) -> float:
    """The authors' ``_get_knn_mi`` step for step (see the module docs): KSG algorithm 1 of one pair, unclipped."""
    n_samples = x.size
    x, y = x.reshape((-1, 1)), y.reshape((-1, 1))
    nn = NearestNeighbors(metric="chebyshev", n_neighbors=n_neighbors)
    nn.fit(np.hstack((x, y)))
    radius = np.nextafter(nn.kneighbors()[0][:, -1], 0)
    nx = np.array(KDTree(x, metric="chebyshev").query_radius(x, radius, count_only=True, return_distance=False)) - 1.0
    ny = np.array(KDTree(y, metric="chebyshev").query_radius(y, radius, count_only=True, return_distance=False)) - 1.0
    return float(digamma(n_samples) + digamma(n_neighbors) - np.mean(digamma(nx + 1)) - np.mean(digamma(ny + 1)))


def time_ours(
    activations: torch.Tensor, args: argparse.Namespace, backend: str, threads: int, sync: Callable[[], None]
) -> tuple[float, torch.Tensor]:
    """Best of ``args.repeats`` (after a warm-up that also compiles) and the matrix."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        ksg_mutual_information(activations[: min(args.samples, 500), :8], k=args.k, backend=backend)  # warm-up
        best, matrix = math.inf, None
        for _ in range(args.repeats):
            sync()
            start = time.perf_counter()
            matrix = ksg_mutual_information(activations, k=args.k, backend=backend)
            sync()
            best = min(best, time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous)
    return best, matrix


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device)
    sync = make_synchronize(device)
    activations = make_activations(args).to(device)
    num_pairs = args.neurons * (args.neurons - 1) // 2
    all_threads = torch.get_num_threads()

    print(
        f"lightning_infomem {lightning_infomem.__version__}, torch {torch.__version__}, sklearn {sklearn.__version__}"
    )
    print(f"python {sys.version.split()[0]}, {platform.system()}, CPU: {cpu_name()}, {usable_cores()} usable cores")
    print(f"device {device}; torch threads: 1 and {all_threads}; the reference runs on one core")

    # the reference on a random subset of pairs, extrapolated
    data = activations.cpu().double().numpy()
    rows, cols = (t.numpy() for t in pair_indices(args.neurons))
    rng = np.random.default_rng(args.seed)
    subset_size = min(args.reference_pairs, num_pairs)
    subset = np.sort(rng.choice(num_pairs, size=subset_size, replace=False))
    columns = [np.ascontiguousarray(data[:, j]) for j in range(args.neurons)]
    authors_knn_mi(columns[0], columns[1], args.k)  # warm-up
    reference = np.empty(subset_size)
    start = time.perf_counter()
    for out, p in enumerate(subset):
        reference[out] = authors_knn_mi(columns[rows[p]], columns[cols[p]], args.k)
    reference_per_pair = (time.perf_counter() - start) / subset_size
    reference_total = reference_per_pair * num_pairs

    backends = ["torch"] if device.type != "cpu" else []
    if device.type == "cpu" and compiled_kernel_available():
        backends.append("compiled")
    if device.type == "cpu" and not args.skip_torch_backend:
        backends.append("torch")
    lines = [
        (f"reference (the authors' _get_knn_mi): per pair, {subset_size} pairs", fmt_seconds(reference_per_pair)),
        (f"reference: all {num_pairs:,} pairs (extrapolated)", fmt_seconds(reference_total)),
    ]
    worst, matrix = 0.0, None
    for backend in backends:
        for threads in sorted({1, all_threads}):
            best, matrix = time_ours(activations, args, backend, threads, sync)
            diff = float(np.max(np.abs(matrix.cpu().numpy()[rows[subset], cols[subset]] - reference)))
            worst = max(worst, diff)
            lines.append(
                (
                    f"ours, backend={backend}, {threads} thread(s): all pairs, best of {args.repeats}",
                    f"{fmt_seconds(best)}  ({fmt_seconds(best / num_pairs)} per pair, "
                    f"{reference_total / best:,.1f}x the reference; max |diff| {diff:.1e})",
                )
            )
    if not compiled_kernel_available() and device.type == "cpu":
        lines.append(("compiled backend", "not run: Numba is not installed (pip install numba)"))
    lines.append(("mean off-diagonal MI (ours)", f"{float(mean_off_diagonal(matrix)):.4f} nats"))
    print_table(
        f"KSG MI (k={args.k}), S={args.samples} samples x N={args.neurons} neurons, '{args.data}' data, "
        f"{num_pairs:,} pairs (nats)",
        lines,
    )
    print("Ours computes the full symmetric [N, N] matrix (diagonal included), exact KSG in float64.")
    exact = worst <= 1e-12
    print(
        f"exactness against the reference on {subset_size} pairs: max |diff| {worst:.1e} nats: "
        + ("OK" if exact else "FAILED")
    )
    if not exact:
        sys.exit(1)


if __name__ == "__main__":
    main()
