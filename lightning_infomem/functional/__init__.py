"""Functional core: tensors in, tensors out. Binning, histograms, entropy, mutual information, loss curvature."""

from lightning_infomem.functional.binning import (
    ValueRange,
    assign_bins,
    bin_indices,
    calibrate_value_range,
    check_activations,
    resolve_value_range,
)
from lightning_infomem.functional.curvature import (
    CurvatureEstimates,
    input_loss_curvature,
    input_loss_curvature_estimates,
    rademacher_probes,
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
from lightning_infomem.functional.subsampling import (
    InfluenceEstimate,
    InfluenceTooLargeError,
    MemorizationEstimate,
    TopKInfluence,
    influence_estimates,
    influence_from_masks,
    influence_per_class,
    influence_topk,
    memorization_estimates,
    memorization_from_masks,
    rms_error_bound,
)

__all__ = [
    "CountingMethod",
    "CurvatureEstimates",
    "InfluenceEstimate",
    "InfluenceTooLargeError",
    "MemorizationEstimate",
    "TopKInfluence",
    "ValueRange",
    "assign_bins",
    "bin_indices",
    "calibrate_value_range",
    "check_activations",
    "entropy_from_counts",
    "histogram_counts",
    "influence_estimates",
    "influence_from_masks",
    "influence_per_class",
    "influence_topk",
    "input_loss_curvature",
    "input_loss_curvature_estimates",
    "iter_joint_histogram_counts",
    "joint_histogram_counts",
    "ksg_mutual_information",
    "mean_off_diagonal",
    "memorization_estimates",
    "memorization_from_masks",
    "mutual_information_from_joint_counts",
    "neuron_entropy",
    "pair_indices",
    "pairs_to_matrix",
    "pairwise_mutual_information",
    "rademacher_probes",
    "resolve_value_range",
    "rms_error_bound",
]
