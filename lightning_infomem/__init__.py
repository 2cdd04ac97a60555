"""lightning_infomem: see whether a network memorizes, and which kind, while it trains."""

from lightning_infomem import functional
from lightning_infomem.callback import InformationMeasures
from lightning_infomem.curvature import LossCurvature
from lightning_infomem.groups import GroupAccuracy, GroupMemorizationGap, WorstGroupAccuracy
from lightning_infomem.indexing import IndexedDataset
from lightning_infomem.metrics import NeuronEntropy, NeuronMutualInformation, StateTooLargeError
from lightning_infomem.spurious import MaskedConsistency, MaskedConsistencyModule, probe_critical_neurons
from lightning_infomem.subsampling import SubsampleRecords, load_records, train_on_subsets
from lightning_infomem.training_dynamics import TrainingDynamics

__version__ = "0.1.0"
__all__ = [
    "GroupAccuracy",
    "GroupMemorizationGap",
    "IndexedDataset",
    "InformationMeasures",
    "LossCurvature",
    "MaskedConsistency",
    "MaskedConsistencyModule",
    "NeuronEntropy",
    "NeuronMutualInformation",
    "StateTooLargeError",
    "SubsampleRecords",
    "TrainingDynamics",
    "WorstGroupAccuracy",
    "functional",
    "load_records",
    "probe_critical_neurons",
    "train_on_subsets",
]
