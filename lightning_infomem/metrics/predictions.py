"""Deprecated module path: `SoftmaxPeers` lives in `lightning_infomem.metrics.peers`.

The label-free peers have one name; this alias goes in the next release.
"""

import warnings

from lightning_infomem.metrics.peers import SoftmaxPeers

__all__ = ["SoftmaxPeers"]

warnings.warn(
    "lightning_infomem.metrics.predictions: import SoftmaxPeers from lightning_infomem.metrics.peers; "
    "or from lightning_infomem; this path goes in the next release",
    FutureWarning,
    stacklevel=2,
)
