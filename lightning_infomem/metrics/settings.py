"""How H, I and the effective rank are estimated: the one set of estimator settings and their defaults.

`MeasurementSettings` is read by the streaming metrics (their defaults), by one evaluation of several layers
(`lightning_infomem.metrics.measurement`), by `InformationMeasures` (its ``settings``), by its checkpoints
(a resumed run must measure the same way) and by LightningCLI (a nested ``settings:`` block).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional

from lightning_infomem.checks import check_bool, check_float, check_int, check_optional_int
from lightning_infomem.metrics.calibration import Binning

__all__ = ["BINNINGS", "DEFAULT_MAX_STATE_BYTES", "MeasurementSettings"]

DEFAULT_MAX_STATE_BYTES = 2**30
BINNINGS = ("global", "layer", "neuron")


@dataclass(frozen=True)
class MeasurementSettings:
    """The estimator settings: bins, binning ranges, bias correction, memory budget, the effective rank.

    Args:
        entropy_bins: equal-width bins for entropy (the paper uses 100).
        mutual_info_bins: bins per neuron for MI; the plug-in bias of MI grows like
            ``(bins - 1)**2 / (2 * samples)``, so MI uses fewer bins than entropy.
        entropy_binning: the range of the entropy's bins, re-calibrated at every evaluation on its first
            ``calibration_samples`` samples: ``"global"`` one over all monitored layers (the paper's choice,
            and the default: on the package's experiments it kept the direction of H that per-layer ranges
            lost), ``"layer"`` one per layer, ``"neuron"`` one per neuron.
        mutual_info_binning: the same for MI; default ``"layer"`` (on the same experiments per-layer ranges
            kept the MI signal better than one global range).
        range_quantile: calibrate with the ``q`` / ``1 - q`` quantiles instead of min / max.
        calibration_samples: samples used to fix a range; later outliers go to the edge bins.
        miller_madow: Miller-Madow bias correction of entropy and MI.
        max_state_bytes: memory budget of each layer's MI histogram state (``None``: no budget).
        effective_rank: also compute the effective rank (RankMe) of each layer.

    Example:
        >>> MeasurementSettings().mutual_info_binning, MeasurementSettings.paper().mutual_info_binning
        ('layer', 'global')
        >>> MeasurementSettings(entropy_bins=50).replace(binning="neuron").entropy_binning
        'neuron'
    """

    entropy_bins: int = 100
    mutual_info_bins: int = 16
    entropy_binning: Binning = "global"
    mutual_info_binning: Binning = "layer"
    range_quantile: float = 0.0
    calibration_samples: int = 512
    miller_madow: bool = False
    max_state_bytes: Optional[int] = DEFAULT_MAX_STATE_BYTES
    effective_rank: bool = True

    def __post_init__(self) -> None:
        check_int(self.entropy_bins, "entropy_bins", minimum=1)
        check_int(self.mutual_info_bins, "mutual_info_bins", minimum=1)
        for name in ("entropy_binning", "mutual_info_binning"):
            if getattr(self, name) not in BINNINGS:
                raise ValueError(f"{name} must be 'layer', 'neuron' or 'global', received {getattr(self, name)!r}")
        check_float(self.range_quantile, "range_quantile", minimum=0.0, maximum=0.5, exclusive_maximum=True)
        check_int(self.calibration_samples, "calibration_samples", minimum=1)
        check_bool(self.miller_madow, "miller_madow")
        check_optional_int(self.max_state_bytes, "max_state_bytes", minimum=1)
        check_bool(self.effective_rank, "effective_rank")

    @classmethod
    def paper(cls, **changes: Any) -> MeasurementSettings:
        """The estimator settings of Bansal et al. (2022): one global range over all layers, calibrated on the
        whole evaluation set, 100 entropy bins (MI keeps 16: 100 bins per neuron would make the plug-in MI
        mostly bias). ``changes`` override any field."""
        paper = {
            "entropy_binning": "global",
            "mutual_info_binning": "global",
            "entropy_bins": 100,
            "calibration_samples": 2**31 - 1,
        }
        return cls().replace(**{**paper, **changes})

    def replace(self, binning: Optional[Binning] = None, **changes: Any) -> MeasurementSettings:
        """A copy with ``changes``; ``binning`` sets both ``entropy_binning`` and ``mutual_info_binning``."""
        if binning is not None:
            changes = {"entropy_binning": binning, "mutual_info_binning": binning, **changes}
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise TypeError(f"MeasurementSettings has no setting {', '.join(map(repr, unknown))}")
        return dataclasses.replace(self, **changes)
