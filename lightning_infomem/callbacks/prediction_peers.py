"""Deprecated module path: `PredictionPeers` lives in `lightning_infomem.callbacks.peers`.

The label-free peers have one name; this alias goes in the next release.
"""

import warnings

from lightning_infomem.callbacks.peers import PredictionPeers

__all__ = ["PredictionPeers"]

warnings.warn(
    "lightning_infomem.callbacks.prediction_peers: import PredictionPeers from lightning_infomem.callbacks.peers; "
    "or from lightning_infomem; this path goes in the next release",
    FutureWarning,
    stacklevel=2,
)
