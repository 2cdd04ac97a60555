"""lightning_infomem: see whether a network memorizes, and which kind, while it trains."""

from lightning_infomem import functional
from lightning_infomem.callbacks import (
    InformationMeasures,
    LossCurvature,
    MaskedConsistency,
    MaskedConsistencyModule,
    MemorizationVerdict,
    PredictionPeers,
    TrainingDynamics,
)
from lightning_infomem.data import IndexedDataset
from lightning_infomem.functional.verdict import Verdict, VerdictSettings
from lightning_infomem.metrics import (
    GroupAccuracy,
    GroupMemorizationGap,
    LayerResult,
    MeasurementSettings,
    NeuronEntropy,
    NeuronMutualInformation,
    SoftmaxPeers,
    StateTooLargeError,
    WorstGroupAccuracy,
)
from lightning_infomem.spurious import ProbeResult, probe_critical_neurons
from lightning_infomem.subsampling import RecordError, SubsampleRecords, load_records, train_on_subsets

__version__ = "0.1.0"
__all__ = [
    "GroupAccuracy",
    "GroupMemorizationGap",
    "IndexedDataset",
    "InformationMeasures",
    "LayerResult",
    "LossCurvature",
    "MeasurementSettings",
    "MaskedConsistency",
    "MaskedConsistencyModule",
    "MemorizationVerdict",
    "NeuronEntropy",
    "NeuronMutualInformation",
    "PredictionPeers",
    "ProbeResult",
    "RecordError",
    "SoftmaxPeers",
    "StateTooLargeError",
    "SubsampleRecords",
    "TrainingDynamics",
    "Verdict",
    "VerdictSettings",
    "WorstGroupAccuracy",
    "functional",
    "load_records",
    "probe_critical_neurons",
    "train_on_subsets",
]
