"""Functional core: tensors in, tensors out.

Binning, histograms, entropy, mutual information, KSG, effective rank, loss curvature, training dynamics,
subsampled memorization and influence, group accuracy, the critical-neuron and NT-Xent math.
"""

from lightning_infomem.functional._kernels.threads import limited_threads
from lightning_infomem.functional.binning import (
    BinGrid,
    ValueRange,
    assign_bins,
    bin_grid,
    bin_indices,
    calibrate_value_range,
    check_activations,
    grid_bin_indices,
    resolve_value_range,
)
from lightning_infomem.functional.curvature import (
    CurvatureEstimates,
    input_loss_curvature,
    input_loss_curvature_estimates,
    rademacher_probes,
)
from lightning_infomem.functional.effective_rank import effective_rank, effective_rank_from_gram
from lightning_infomem.functional.entropy import entropy_from_counts, histogram_counts, neuron_entropy
from lightning_infomem.functional.groups import group_accuracy_counts
from lightning_infomem.functional.joint_counts import (
    CountingBackend,
    add_joint_histogram_counts,
    iter_joint_histogram_counts,
    joint_histogram_counts,
    pair_indices,
)
from lightning_infomem.functional.ksg import ksg_mutual_information
from lightning_infomem.functional.mutual_information import (
    mean_off_diagonal,
    mutual_information_from_joint_counts,
    pairs_to_matrix,
    pairwise_mutual_information,
    pairwise_mutual_information_from_bins,
)
from lightning_infomem.functional.peers import (
    label_wave_stop,
    mean_max_softmax,
    prediction_changes,
    prediction_disagreement,
    softmax_nuclear_norm,
)
from lightning_infomem.functional.spurious import (
    Unit,
    critical_units,
    magnitude_mask,
    masked_consistency_loss,
    masked_forward,
    nt_xent,
    random_units,
    top_weights,
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
from lightning_infomem.functional.training_dynamics import (
    STATISTICS,
    ForgettingState,
    dynamics_scores,
    new_forgetting_state,
    presentation_statistics,
    update_forgetting,
)
from lightning_infomem.functional.verdict import (
    KINDS,
    Verdict,
    VerdictSettings,
    memorization_evidence,
    memorization_verdict,
)

__all__ = [
    "limited_threads",
    "add_joint_histogram_counts",
    "assign_bins",
    "bin_grid",
    "bin_indices",
    "BinGrid",
    "calibrate_value_range",
    "check_activations",
    "CountingBackend",
    "critical_units",
    "CurvatureEstimates",
    "dynamics_scores",
    "effective_rank",
    "effective_rank_from_gram",
    "entropy_from_counts",
    "ForgettingState",
    "grid_bin_indices",
    "group_accuracy_counts",
    "histogram_counts",
    "influence_estimates",
    "influence_from_masks",
    "influence_per_class",
    "influence_topk",
    "InfluenceEstimate",
    "InfluenceTooLargeError",
    "input_loss_curvature",
    "input_loss_curvature_estimates",
    "iter_joint_histogram_counts",
    "joint_histogram_counts",
    "ksg_mutual_information",
    "label_wave_stop",
    "magnitude_mask",
    "masked_consistency_loss",
    "masked_forward",
    "mean_max_softmax",
    "mean_off_diagonal",
    "memorization_estimates",
    "memorization_from_masks",
    "MemorizationEstimate",
    "mutual_information_from_joint_counts",
    "neuron_entropy",
    "new_forgetting_state",
    "nt_xent",
    "pair_indices",
    "pairs_to_matrix",
    "pairwise_mutual_information",
    "pairwise_mutual_information_from_bins",
    "prediction_changes",
    "prediction_disagreement",
    "presentation_statistics",
    "rademacher_probes",
    "random_units",
    "resolve_value_range",
    "rms_error_bound",
    "softmax_nuclear_norm",
    "STATISTICS",
    "top_weights",
    "TopKInfluence",
    "Unit",
    "update_forgetting",
    "KINDS",
    "Verdict",
    "VerdictSettings",
    "memorization_evidence",
    "memorization_verdict",
    "ValueRange",
]
