"""lightning_infomem: see whether a network memorizes, and which kind, while it trains.

Every public name is importable from here; the submodules load on first use, so that ``import
lightning_infomem`` and ``python -m lightning_infomem.demo --help`` do not wait for torch and Lightning.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what type checkers and IDEs read; at run time the names load on first use
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

_WHERE = {
    "GroupAccuracy": "lightning_infomem.metrics",
    "GroupMemorizationGap": "lightning_infomem.metrics",
    "IndexedDataset": "lightning_infomem.data",
    "InformationMeasures": "lightning_infomem.callbacks",
    "LayerResult": "lightning_infomem.metrics",
    "LossCurvature": "lightning_infomem.callbacks",
    "MaskedConsistency": "lightning_infomem.callbacks",
    "MaskedConsistencyModule": "lightning_infomem.callbacks",
    "MeasurementSettings": "lightning_infomem.metrics",
    "MemorizationVerdict": "lightning_infomem.callbacks",
    "NeuronEntropy": "lightning_infomem.metrics",
    "NeuronMutualInformation": "lightning_infomem.metrics",
    "PredictionPeers": "lightning_infomem.callbacks",
    "ProbeResult": "lightning_infomem.spurious",
    "RecordError": "lightning_infomem.subsampling",
    "SoftmaxPeers": "lightning_infomem.metrics",
    "StateTooLargeError": "lightning_infomem.metrics",
    "SubsampleRecords": "lightning_infomem.subsampling",
    "TrainingDynamics": "lightning_infomem.callbacks",
    "Verdict": "lightning_infomem.functional.verdict",
    "VerdictSettings": "lightning_infomem.functional.verdict",
    "WorstGroupAccuracy": "lightning_infomem.metrics",
    "load_records": "lightning_infomem.subsampling",
    "probe_critical_neurons": "lightning_infomem.spurious",
    "train_on_subsets": "lightning_infomem.subsampling",
}


def __getattr__(name: str) -> Any:
    if name == "functional":
        return importlib.import_module("lightning_infomem.functional")
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module 'lightning_infomem' has no attribute {name!r}")
    value = getattr(importlib.import_module(where), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])


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
