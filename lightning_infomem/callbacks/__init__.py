"""Lightning callbacks: each owns one method's lifecycle (hooks, sampling, logging, checkpoint state).

`InformationMeasures` (entropy and mutual information of activations), `TrainingDynamics` and
`LossCurvature` (per-sample scores, one result API: `PerSampleScores`), `MaskedConsistency`, and
`PredictionPeers` (label-free statistics of the validation predictions), and `MemorizationVerdict` (whether,
since when and which kind, from `TrainingDynamics`' record).
"""

from lightning_infomem.callbacks.curvature import LossCurvature
from lightning_infomem.callbacks.information import InformationMeasures
from lightning_infomem.callbacks.masked_consistency import MaskedConsistency, MaskedConsistencyModule
from lightning_infomem.callbacks.peers import PredictionPeers
from lightning_infomem.callbacks.training_dynamics import TrainingDynamics
from lightning_infomem.callbacks.verdict import MemorizationVerdict
from lightning_infomem.per_sample import PerSampleScores

__all__ = [
    "InformationMeasures",
    "LossCurvature",
    "MaskedConsistency",
    "MaskedConsistencyModule",
    "MemorizationVerdict",
    "PerSampleScores",
    "PredictionPeers",
    "TrainingDynamics",
]
