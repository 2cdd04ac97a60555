"""Where the callback's time goes: one validation epoch of the 3 x 256 MLP over 2,048 samples, part by part.

The callback runs at its defaults (2,048 samples, 128 neurons per layer, 100 entropy bins, 16 MI bins)
on the three hidden linear layers, with a ``TensorBoardLogger`` (histograms and the MI heatmap
included). Two figures:

* **ratio**: the monitored validation epoch over the plain one (medians of ``--repeats`` each,
  alternated so that drifts of the machine hit both), without any profiler; the monitored epochs
  that draw the MI heatmaps (every fifth measurement by default) are also given apart from the
  others. Both trainers have a ``TensorBoardLogger`` (the logger's own cost is not the callback's),
  and the garbage collector runs before every timed epoch: otherwise the garbage of one run (a
  ``Trainer`` and its loop objects) is collected inside the next, and a plain epoch after a
  monitored one took 50 ms instead of 29. Each kind has one trainer, validated repeatedly, as in a
  fit;
* **parts**: one monitored epoch under ``cProfile``, its time attributed to the package's functions:
  joint-histogram counting (MI), binning and per-neuron counting (entropy), calibration of the
  ranges, the epoch-end computation of H and I, TensorBoard reporting, and the rest of the callback
  (forward hooks, copies of the activations, bookkeeping). cProfile slows Python-heavy parts more
  than tensor kernels, so the parts add up to more than the unprofiled overhead.

Run from the repository root (threads: torch's default unless ``--threads``)::

    python benchmarks/callback_breakdown.py
    python benchmarks/callback_breakdown.py --samples 512 --threads 1
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import inspect
import logging
import os
import pstats
import statistics
import sys
import tempfile
import time
import warnings
from typing import Any, Sequence


def build_parser() -> argparse.ArgumentParser:
    """The command line (built before the heavy imports, so that --help answers at once)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=2048, help="validation samples per epoch")
    parser.add_argument(
        "--no-effective-rank", action="store_true", help="MeasurementSettings(effective_rank=False): H and I only"
    )
    parser.add_argument("--repeats", type=int, default=7, help="timed epochs of each kind")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument(
        "--callback-threads", type=int, default=1, help="InformationMeasures(threads=...); 0: None (torch's)"
    )
    return parser


if __name__ == "__main__" and {"-h", "--help"} & set(sys.argv[1:]):
    build_parser().parse_args()  # prints the help and exits

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from machine import cpu_name, print_table, usable_cores

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from callback_overhead import MLP  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

import lightning_infomem  # noqa: E402
from lightning_infomem import InformationMeasures  # noqa: E402

LAYERS = ["net.0", "net.2", "net.4"]
# parts: cumulative times of these functions; the joint counting (_flush_pending, or the MI of pooled bins
# reduced in cache) runs both inside the per-batch counting and at the epoch end, and is taken out of both
METRICS = "metrics/information.py"
CALLBACK = "callbacks/information.py"
MI_COUNTING = [(METRICS, "_flush_pending"), ("mutual_information.py", "pairwise_mutual_information_in_range")]
PARTS = [
    ("MI: joint-histogram counting", MI_COUNTING),
    ("H: binning and per-neuron counting", [(METRICS, "_count")]),
    ("calibration of the bin ranges", [("metrics/measurement.py", "_try_calibration")]),
    (
        "effective rank (RankMe: Gram sums, eigenvalues)",
        [("metrics/measurement.py", "_add_to_gram"), ("metrics/measurement.py", "_effective_rank")],
    ),
    ("epoch end: H and I from the counts", [("metrics/measurement.py", "results")]),
    ("TensorBoard: histograms and heatmap", [(CALLBACK, "_log_histograms_and_heatmaps"), (CALLBACK, "_report_layers")]),
]
CALLBACK_ENTRY = [
    (CALLBACK, "on_validation_epoch_start"),
    (CALLBACK, "on_validation_batch_end"),
    (CALLBACK, "on_validation_epoch_end"),
    (CALLBACK, "hook"),
]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    args.callback_threads = args.callback_threads or None
    return args


def _matches(key: tuple[str, int, str], wanted: list[tuple[str, str]]) -> bool:
    path, _, name = key
    return any(path.endswith(os.sep + file) and name == function for file, function in wanted)


def _cumulative(stats: pstats.Stats, wanted: list[tuple[str, str]]) -> float:
    """Cumulative seconds of the ``wanted`` functions (they must not call one another)."""
    return sum(v[3] for key, v in stats.stats.items() if _matches(key, wanted))  # type: ignore[attr-defined]


def _flush_inside(stats: pstats.Stats, caller: list[tuple[str, str]]) -> float:
    """Cumulative seconds of the joint counting called, directly or not, from ``caller``: from ``_count`` it is
    called through ``_count_pairs``, from ``results`` through the metrics' ``_settle`` and ``compute``."""
    through = {
        "_count": [(METRICS, "_count_pairs")],
        "results": [(METRICS, "_settle"), (METRICS, "compute"), (METRICS, "joint_counts")],
    }[caller[0][1]]
    total = 0.0
    for key, (_, _, _, _, callers) in stats.stats.items():  # type: ignore[attr-defined]
        if _matches(key, MI_COUNTING):
            total += sum(c[3] for caller_key, c in callers.items() if _matches(caller_key, through))
    return total


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(args.samples, 64, generator=generator), torch.randint(0, 10, (args.samples,)))
    loader = DataLoader(data, batch_size=256)
    model = MLP()
    log_dir = tempfile.mkdtemp()
    options = (
        {"threads": args.callback_threads} if "threads" in inspect.signature(InformationMeasures).parameters else {}
    )
    if args.no_effective_rank:
        from lightning_infomem import MeasurementSettings

        options["settings"] = MeasurementSettings(effective_rank=False)
    callback = InformationMeasures(layers=LAYERS, **options)  # (an older version has no threads argument)

    def trainer(with_callback: bool) -> Trainer:
        return Trainer(
            accelerator="cpu",
            logger=TensorBoardLogger(log_dir, name="monitored" if with_callback else "plain"),
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
            callbacks=[callback] if with_callback else [],
        )

    # one trainer of each kind, validated again and again, as in a fit (a new Trainer per epoch would add
    # Lightning's first-epoch set-up, such as the logged keys' result objects, to every epoch)
    trainers = {kind: trainer(kind) for kind in (False, True)}

    def run(with_callback: bool, profiler: cProfile.Profile | None = None) -> float:
        t = trainers[with_callback]
        gc.collect()
        start = time.perf_counter()
        if profiler is not None:
            profiler.enable()
        t.validate(model, loader, verbose=False)
        if profiler is not None:
            profiler.disable()
        return time.perf_counter() - start

    run(False), run(True), run(True)  # warm-up: allocations, kernel choice, the counting method measured once
    plain, monitored, heatmap_epochs = [], [], []
    every = getattr(callback, "heatmap_every_n_measurements", 0)
    for _ in range(args.repeats):
        plain.append(run(False))
        # the callback draws the MI heatmaps when its count of measurements so far is a multiple of `every`
        heatmap_epochs.append(every > 0 and getattr(callback, "_measurements", 1) % every == 0)
        monitored.append(run(True))
    p, m = statistics.median(plain), statistics.median(monitored)
    with_heatmap = [t for t, heat in zip(monitored, heatmap_epochs, strict=True) if heat]
    without_heatmap = [t for t, heat in zip(monitored, heatmap_epochs, strict=True) if not heat]

    profiler = cProfile.Profile()
    profiled = run(True, profiler)
    stats = pstats.Stats(profiler)
    inside = _cumulative(stats, CALLBACK_ENTRY)
    parts: dict[str, float] = {}
    for part, functions in PARTS:
        parts[part] = _cumulative(stats, functions)
    parts["H: binning and per-neuron counting"] -= _flush_inside(stats, [(METRICS, "_count")])
    parts["epoch end: H and I from the counts"] -= _flush_inside(stats, [("metrics/measurement.py", "results")])
    parts["epoch end: H and I from the counts"] -= _cumulative(stats, [("metrics/measurement.py", "_effective_rank")])
    parts["other: hooks, activation copies, bookkeeping"] = inside - sum(parts.values())

    print(f"lightning_infomem {lightning_infomem.__version__} from {os.path.dirname(lightning_infomem.__file__)}")
    print(f"torch {torch.__version__}")
    print(f"CPU: {cpu_name()}, {usable_cores()} usable cores, torch threads {torch.get_num_threads()}")
    rows: list[tuple[str, Any]] = [
        (f"plain validation epoch (median of {args.repeats})", f"{p * 1e3:.1f} ms"),
        (f"with InformationMeasures (median of {args.repeats})", f"{m * 1e3:.1f} ms"),
        ("ratio monitored / plain", f"{m / p:.2f}x"),
    ]
    if with_heatmap and without_heatmap:
        rows += [
            (
                f"  epochs with the MI heatmaps (every {every}th; median of {len(with_heatmap)})",
                f"{statistics.median(with_heatmap) * 1e3:.1f} ms",
            ),
            (
                f"  the other epochs (median of {len(without_heatmap)})",
                f"{statistics.median(without_heatmap) * 1e3:.1f} ms",
            ),
        ]
    rows += [
        ("profiled monitored epoch (cProfile on)", f"{profiled * 1e3:.1f} ms"),
        ("  of which inside the callback", f"{inside * 1e3:.1f} ms"),
    ]
    rows += [(f"    {part}", f"{seconds * 1e3:.1f} ms") for part, seconds in parts.items()]
    print_table(
        f"InformationMeasures (threads={args.callback_threads}, otherwise its defaults), 3 x 256 MLP, "
        f"{args.samples} validation samples, layers {LAYERS}",
        rows,
    )


if __name__ == "__main__":
    main()
