"""Functional core: tensors in, tensors out. Binning, histograms, entropy and mutual information."""

from lightning_infomem.functional.binning import (
    ValueRange,
    assign_bins,
    bin_indices,
    calibrate_value_range,
    check_activations,
    resolve_value_range,
)
from lightning_infomem.functional.entropy import entropy_from_counts, histogram_counts, neuron_entropy
from lightning_infomem.functional.ksg import ksg_mutual_information
from lightning_infomem.functional.mutual_information import (
    CountingMethod,
    iter_joint_histogram_counts,
    joint_histogram_counts,
    mean_off_diagonal,
    mutual_information_from_joint_counts,
    pair_indices,
    pairs_to_matrix,
    pairwise_mutual_information,
)

__all__ = [
    "CountingMethod",
    "ValueRange",
    "assign_bins",
    "bin_indices",
    "calibrate_value_range",
    "check_activations",
    "entropy_from_counts",
    "histogram_counts",
    "iter_joint_histogram_counts",
    "joint_histogram_counts",
    "ksg_mutual_information",
    "mean_off_diagonal",
    "mutual_information_from_joint_counts",
    "neuron_entropy",
    "pair_indices",
    "pairs_to_matrix",
    "pairwise_mutual_information",
    "resolve_value_range",
]
