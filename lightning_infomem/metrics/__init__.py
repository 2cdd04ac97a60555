"""torchmetrics ``Metric`` classes: streaming state over the functional core.

`NeuronEntropy` and `NeuronMutualInformation` (histogram H and I of activations), the group
metrics, and `ActivationMeasurement` (one evaluation's H and I over several layers, with one range
calibrator shared by its metrics).
"""

from lightning_infomem.metrics.groups import GroupAccuracy, GroupMemorizationGap, WorstGroupAccuracy
from lightning_infomem.metrics.information import NeuronEntropy, NeuronMutualInformation, StateTooLargeError
from lightning_infomem.metrics.measurement import ActivationMeasurement, LayerResult, MeasurementSettings
from lightning_infomem.metrics.peers import SoftmaxPeers

__all__ = [
    "ActivationMeasurement",
    "GroupAccuracy",
    "GroupMemorizationGap",
    "LayerResult",
    "MeasurementSettings",
    "NeuronEntropy",
    "NeuronMutualInformation",
    "SoftmaxPeers",
    "StateTooLargeError",
    "WorstGroupAccuracy",
]
